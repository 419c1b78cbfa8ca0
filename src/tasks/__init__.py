"""Tasks, registered by name: what a model's output means. A task owns the loss of a batch, its metrics (sums
kept on the device, no host sync per step, reduced across processes), the metric --monitor defaults to, the
pictures logged at each evaluation, and how a batch and a model output are read. Every module in this folder
is imported, so adding a task is one file with a Task subclass:

    from . import Task, register

    @register("mytask")
    class MyTask(Task):
        METRICS = ("loss", "score")               # reported as val/<name> and test/<name>
        MONITOR = "val/score:max"                 # what "best" means unless --monitor says otherwise
        def loss(self, pred, target): ...         # the mean loss of a batch (a float32 scalar)
        def eval_sums(self, pred, target): ...    # {name: tensor} summed over the evaluation
        def eval_values(self, sums): ...          # {name: float} from the summed (and all-reduced) tensors

`--task NAME` picks one; each dataset names its default.
"""

from ..runtime.registry import Registry

_REGISTRY = Registry(__name__, __path__)
register, names = _REGISTRY.register, _REGISTRY.names


def get(name):
    return _REGISTRY[name]


def build(cfg, splits):
    return _REGISTRY[cfg.task](cfg, splits)


def split_batch(batch):
    """(inputs, target) of a batch given as a tuple/list (inputs, target, ...), a dict ('input'/'x' and
    'target'/'y'), or one tensor (target None: the task derives it from the inputs)."""
    if isinstance(batch, dict):
        inputs = batch["input"] if "input" in batch else batch.get("x")
        return inputs, batch["target"] if "target" in batch else batch.get("y")
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def main_output(output):
    """The prediction tensor of a model that returns a tensor, a tuple (the first item: say logits, embedding)
    or a dict ('logits', 'out' or 'pred', else its first value)."""
    if isinstance(output, dict):
        for key in ("logits", "out", "pred"):
            if key in output:
                return output[key]
        return next(iter(output.values()))
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


class Task(object):
    """Base class: the defaults every task shares; subclasses set METRICS and MONITOR and define the sums."""

    METRICS = ("loss",)
    MONITOR = "val/loss:min"

    def __init__(self, cfg, splits):
        self.cfg, self.num_outputs = cfg, splits.num_classes
        self.class_names = list(splits.classes) if splits.classes else None  # for the pictures' labels

    # ----- batches and outputs -------------------------------------------------------------------------------
    def to_device(self, batch, device, channels_last=False):
        """(inputs, target) on the device; inputs in channels-last when asked (4-d images)."""
        from ..runtime import compat
        inputs, target = split_batch(batch)
        inputs = inputs.to(device, non_blocking=True)
        if channels_last:
            inputs = compat.channels_last(inputs)
        if target is not None:
            target = target.to(device, non_blocking=True)
        return inputs, target

    def prediction(self, output):
        return main_output(output)

    # ----- training ------------------------------------------------------------------------------------------
    def loss(self, pred, target):
        raise NotImplementedError

    def train_sums(self, pred, target):
        """{name: device tensor} added up over a logging window besides the loss (no host sync)."""
        return {}

    def train_values(self, sums, samples):
        """{train/<name>: float} of a logging window from its sums."""
        return {}

    # ----- evaluation ----------------------------------------------------------------------------------------
    def eval_sums(self, pred, target):
        raise NotImplementedError

    def eval_values(self, sums):
        raise NotImplementedError

    def learned_nothing(self, values):
        """One line when the evaluated values ({name: float}) are no better than a model that ignores its inputs
        (with the likely cause and what to try), else None."""
        return None

    def pictures(self, sums, first):
        """{tag: CHW float image} logged at each evaluation; first is (inputs, target, prediction) of up to 32
        samples of the first batch (of rank 0; None elsewhere), for tasks that show examples."""
        return {}

    # ----- state ---------------------------------------------------------------------------------------------
    def state_dict(self):
        """What a checkpoint needs to use the model elsewhere (say a regression's target scale)."""
        return {}


_REGISTRY.discover()
