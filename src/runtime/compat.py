"""Every difference between torch 1.7 and torch 2.x, found by feature detection, in one place."""
import contextlib
import inspect
import os
import signal
import warnings

import torch


def _accepts(fn, name):
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def cuda_available():
    """torch.cuda.is_available() without the warning CUDA builds print on hosts with no driver (1.7)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.cuda.is_available()


def set_deterministic(enabled):
    """Ask torch for deterministic kernels (use_deterministic_algorithms from 1.8, set_deterministic in 1.7)."""
    if hasattr(torch, "use_deterministic_algorithms"):
        if _accepts(torch.use_deterministic_algorithms, "warn_only"):
            torch.use_deterministic_algorithms(enabled, warn_only=False)
        else:
            torch.use_deterministic_algorithms(enabled)
    elif hasattr(torch, "set_deterministic"):
        torch.set_deterministic(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
             "ComplexFloat", "ComplexDouble")
# every global a state dict of tensors and plain types needs: the tensor rebuilders, typed storages, OrderedDict
SAFE_GLOBALS = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                ("torch._utils", "_rebuild_parameter")} | {("torch", s + "Storage") for s in _STORAGES}


def _restricted_pickle():
    """A pickle module for torch.load(pickle_module=...) whose unpickler admits only SAFE_GLOBALS: what torch >=
    1.13 calls weights-only loading, for the torch versions without it (the cu92 stack's 1.7.1)."""
    import pickle
    import types

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in SAFE_GLOBALS:
                return super(Unpickler, self).find_class(module, name)
            raise pickle.UnpicklingError("forbidden object %s.%s in a checkpoint (only tensors and plain types "
                                         "are loaded)" % (module, name))

    def load(file, **kw):
        return Unpickler(file, **kw).load()

    module = types.ModuleType("restricted_pickle")
    module.Unpickler, module.load, module.__version__ = Unpickler, load, pickle.format_version
    return module


def load_bytes(blob, restricted=None):
    """torch.load of a file's bytes onto the CPU that can never run code: weights-only unpickling where this torch
    has it (1.13+), the restricted unpickler above before (or when restricted is true)."""
    import io
    if restricted is None:
        restricted = not _accepts(torch.load, "weights_only")
    if restricted:
        return torch.load(io.BytesIO(blob), map_location="cpu", pickle_module=_restricted_pickle())
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def load_file(path):
    """A file written by torch.save, read with load_bytes (tests and tools read checkpoints this way too)."""
    with open(str(path), "rb") as f:
        return load_bytes(f.read())


def has_compile():
    return hasattr(torch, "compile")


def unwrap_model(model):
    """The plain module under torch.compile (`_orig_mod`) and DistributedDataParallel (`module`)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def clean_state_dict(state):
    """Drop wrapper prefixes so a checkpoint's keys never depend on how the model was wrapped."""
    out = type(state)()
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def bf16_supported():
    return cuda_available() and getattr(torch.cuda, "is_bf16_supported", lambda: False)()


def grad_scaler(enabled):
    """A GradScaler for fp16 on CUDA (torch.amp from 2.3, torch.cuda.amp before)."""
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler") and _accepts(amp.GradScaler.__init__, "device"):
        return amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def autocast(device_type, dtype, cache=True):
    """Mixed precision context: torch.autocast from 1.10, torch.cuda.amp.autocast (fp16, CUDA) before. cache=False
    for CUDA graphs (autocast's cast cache must not outlive a capture)."""
    if dtype is None:
        return contextlib.nullcontext()
    if hasattr(torch, "autocast"):
        if not cache:
            return torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=False)
        return torch.autocast(device_type=device_type, dtype=dtype)
    if device_type == "cuda" and dtype == torch.float16:
        return torch.cuda.amp.autocast()
    raise RuntimeError("this torch has no autocast for %s %s" % (device_type, dtype))


def fused_optimizer_kwargs(device):
    """{optimizer class name: {"fused": True}} for the optimizers whose constructor takes `fused` in this torch
    (Adam/AdamW from 2.0, SGD from 2.3), on CUDA only: elsewhere torch's default (foreach) stays."""
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return {}
    return {cls.__name__: {"fused": True} for cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
            if _accepts(cls.__init__, "fused")}


@contextlib.contextmanager
def no_host_sync(enabled):
    """Inside: any CUDA operation that makes the host wait for the GPU raises (torch.cuda.set_sync_debug_mode, from
    torch 1.10). For tests of the training loop; a no-op when not enabled."""
    if not enabled:
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def cuda_free_bytes(device):
    """Free memory of a GPU (mem_get_info from torch 1.11; before, its total less what torch has reserved)."""
    get = getattr(torch.cuda, "mem_get_info", None)
    if get is not None:
        return get(device)[0]
    return torch.cuda.get_device_properties(device).total_memory - torch.cuda.memory_reserved(device)


def grad_norm(parameters):
    """The total 2-norm of the gradients, without clipping (get_total_norm from torch 2.6, by hand before)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    get = getattr(torch.nn.utils, "get_total_norm", None)
    if get is not None:
        return get(grads)
    return torch.norm(torch.stack([torch.norm(g.detach(), 2.0) for g in grads]), 2.0)


def tensor_buffer(tensor):
    """The bytes of a tensor as a flat uint8 numpy array (no copy for contiguous CPU tensors), bfloat16 too."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.numpy().reshape(-1).view("uint8")


def cuda_arch_list():
    """The GPU architectures this torch build has kernels for (['sm_37', ..., 'compute_75']), or None if unknown."""
    get = getattr(torch.cuda, "get_arch_list", None)
    if get is None or not cuda_available():
        return None
    try:
        return list(get())
    except Exception:  # some builds raise when CUDA is half set up
        return None


def set_tf32(enabled):
    """TF32 matmuls and convolutions on Ampere and newer CUDA GPUs (switches exist from 1.7). CPU math is left
    alone: torch.set_float32_matmul_precision would lower float32 precision on CPUs too."""
    matmul = getattr(torch.backends.cuda, "matmul", None)
    if matmul is not None and hasattr(matmul, "allow_tf32"):
        matmul.allow_tf32 = enabled
    if hasattr(torch.backends.cudnn, "allow_tf32"):
        torch.backends.cudnn.allow_tf32 = enabled


def loader_options(settings):
    """The DataLoader keywords among settings that this torch accepts (persistent_workers and prefetch_factor
    from 1.7, and only with workers)."""
    options = dict(num_workers=settings["num_workers"], pin_memory=settings["pin_memory"])
    if settings["num_workers"] > 0:
        init = torch.utils.data.DataLoader.__init__
        for key in ("persistent_workers", "prefetch_factor"):
            if settings.get(key) and _accepts(init, key):
                options[key] = settings[key]
    return options


def defer_worker_deaths(record):
    """Have a DataLoader worker's death handed to record(error) instead of raised where the main thread happens to
    be. torch's own SIGCHLD handler raises at any bytecode: inside a logging call (which swallows it and prints a
    traceback), halfway through receiving a batch (the surviving worker then prints one), or mid-step. Installed
    once, from the main thread, before the first loader with workers starts; the same private hooks exist from
    torch 1.7 to 2.x, and without them torch's handler stays. A death is still raised by the loader itself when
    it next waits on the dead worker (within seconds)."""
    import threading
    try:
        from torch.utils.data._utils import signal_handling as handling
        check = handling._error_if_any_worker_fails
    except (ImportError, AttributeError):
        return False
    if handling._SIGCHLD_handler_set or not isinstance(threading.current_thread(), threading._MainThread):
        return False
    previous = signal.getsignal(signal.SIGCHLD)

    def on_child_exit(signum, frame):
        try:
            check()
        except RuntimeError as err:
            record(err)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGCHLD, on_child_exit)
    handling._SIGCHLD_handler_set = True  # torch's loaders now leave the handler alone
    return True


def channels_last(tensor_or_module):
    """Convert a 4-d input or a model to the channels-last memory format (faster convolutions on recent GPUs)."""
    if isinstance(tensor_or_module, torch.Tensor) and tensor_or_module.dim() != 4:
        return tensor_or_module
    return tensor_or_module.to(memory_format=torch.channels_last)


def launcher(python, nproc):
    """The command that starts nproc processes on this node: torchrun (`torch.distributed.run`, torch >= 1.10)
    with a standalone rendezvous, or before it `torch.distributed.launch --use_env` on a free local port."""
    import importlib.util
    if importlib.util.find_spec("torch.distributed.run") is not None:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    import socket
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [python, "-m", "torch.distributed.launch", "--use_env", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port)]


def scheduler_state(scheduler):
    """scheduler.state_dict() without torch 1.7's warning to save the optimizer too (we save everything)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return scheduler.state_dict()


def memory_bytes():
    """This machine's physical memory (1 TiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def exit_process(code):
    """Exit with code. torch < 1.8 (seen with 1.7.1 on Python 3.9) can segfault while the interpreter shuts
    down after a run, turning a success into exit 139; and a process of a multi-process run (seen with torch
    2.13 under torchrun, about 1 exit in 10) can abort there ("terminate called without an active exception":
    a distributed thread's destructor), turning a finished run into a failed job. There, flush everything and
    leave without finalizers: the run's files are closed and on disk by now."""
    import os
    if hasattr(torch, "use_deterministic_algorithms") and int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return code  # torch >= 1.8, one process: a normal exit
    import logging
    import sys
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cross_entropy(logits, target, label_smoothing=0.0, weight=None):
    """Mean cross-entropy against targets smoothed by label_smoothing: (1 - eps) on the class, eps / K spread over
    all K (F.cross_entropy's label_smoothing from torch 1.10; the same formula by hand before); weight: one per
    class (--class-weights), the mean weighted by each sample's class weight."""
    import torch.nn.functional as F
    if not label_smoothing:
        return F.cross_entropy(logits, target, weight=weight)
    if _CE_SMOOTHING:
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    if weight is None:
        return smoothed_cross_entropy(logits, target, label_smoothing)
    logp = F.log_softmax(logits, 1)
    k = logits.shape[1]
    per = -(1 - label_smoothing) * logp.gather(1, target.view(-1, 1)).view(-1) - label_smoothing / k * (
        logp * weight.view(1, -1)).sum(1) / weight[target]
    w = weight[target]
    return (per * w).sum() / w.sum()


_CE_SMOOTHING = _accepts(torch.nn.functional.cross_entropy, "label_smoothing")  # looked up once, not every step


def smoothed_cross_entropy(logits, target, label_smoothing):
    """Label-smoothed cross-entropy by hand, for torch < 1.10 (classes on dim 1)."""
    import torch.nn.functional as F
    logp = F.log_softmax(logits, 1)
    nll = -logp.gather(1, target.unsqueeze(1)).squeeze(1)
    return ((1 - label_smoothing) * nll - label_smoothing * logp.mean(1)).mean()


def no_sync(model):
    """DistributedDataParallel's no_sync() (also under torch.compile's wrapper): backward passes inside it
    accumulate gradients without the all-reduce. A plain model: nothing to skip."""
    while model is not None:
        if hasattr(model, "no_sync"):
            return model.no_sync()
        model = getattr(model, "_orig_mod", None)
    return contextlib.nullcontext()


def lerp_(targets, sources, weight):
    """targets += (sources - targets) * weight, for lists of same-shaped tensors (torch._foreach_lerp_ where it
    exists: one kernel launch for all of them, else tensor by tensor)."""
    if not targets:
        return
    lerp = getattr(torch, "_foreach_lerp_", None)
    if lerp is not None:
        lerp(targets, sources, weight)
    else:
        for t, s in zip(targets, sources):
            t.lerp_(s, weight)
