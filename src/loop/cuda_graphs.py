"""--cuda-graphs: the model's training forward and backward captured once in CUDA graphs
(torch.cuda.make_graphed_callables, torch >= 1.10) and replayed at every step, so the host launches two graphs
instead of hundreds of kernels. The optimizer step (one fused kernel on a GPU), metric sums and the schedule stay
eager: they are cheap, and the learning rate a Python number can then change every step.

What makes it exact and safe:
- the capture runs the model a few times on the first batch (warm-up): the BatchNorm statistics and the random
  generators are put back afterwards, so a graphed run and its resumed copy see the same state;
- inputs of another shape (the last, smaller batch of an epoch; a last micro-batch) and evaluation (eval mode)
  run the model eagerly;
- a model the graph cannot hold (data-dependent control flow, a host sync inside) fails at capture: the run
  goes on eagerly and says so in one line.
"""
import logging

import torch

log = logging.getLogger("train")


def available():
    return hasattr(torch.cuda, "make_graphed_callables")


def capture(module, sample):
    """Replace module.forward with graphed training forward/backward for inputs shaped like sample (eager for
    other shapes and in eval mode). True when captured; False (module unchanged, one log line) when not."""
    checking = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)  # the one-time capture waits for the GPU by design (--sync-check aside)
    eager = module.forward
    buffers = {k: v.clone() for k, v in module.state_dict().items()}
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state(sample.device))
    try:
        torch.cuda.synchronize(sample.device)
        graphed = torch.cuda.make_graphed_callables(module, (sample.detach(),))
        replay = graphed.forward
    except Exception as err:  # the model cannot be captured: train eagerly
        module.forward = eager
        log.info("--cuda-graphs: the model cannot be captured in a CUDA graph (%s); training without graphs",
                 str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__)
        return False
    finally:  # the warm-up passes moved BatchNorm statistics and drew random numbers: undo both
        with torch.no_grad():
            for key, value in module.state_dict().items():
                value.copy_(buffers[key])
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state(rng[1], sample.device)
        torch.cuda.set_sync_debug_mode(checking)
    shape, layout = tuple(sample.shape), _layout(sample)

    def forward(x, *rest):
        if module.training and not rest and tuple(x.shape) == shape and _layout(x) == layout:
            return replay(x)
        return eager(x, *rest)

    module.forward = forward
    log.info("--cuda-graphs: training forward and backward captured for batches of shape %s",
             "x".join(map(str, shape)))
    return True


def _layout(x):
    return x.is_contiguous(), x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
