"""`python train.py --doctor` (also `./setup.sh --check`): what this machine and this torch build can do.

Prints Python, torch, CUDA and cuDNN versions, each GPU with its compute capability and whether this torch
build has kernels for it (a CUDA 9.2 build meets an sm_80+ GPU: switch to the cu12 stack), then runs one
forward/backward step (with AMP on CUDA). Exit 0 when everything works, 1 otherwise.
"""
import platform
import sys
import time

import torch

from ..runtime import compat


def gpu_support(capability, arch_list):
    """(supported, how) for a GPU of this compute capability under a torch built for arch_list."""
    major, minor = capability
    if arch_list is None:
        return True, "architecture list unknown for this build"
    sass = [a for a in arch_list if a.startswith("sm_")]
    ptx = [a for a in arch_list if a.startswith("compute_")]

    def cap(arch):
        digits = arch.split("_")[1]
        return int(digits[:-1]), int(digits[-1])

    if any(cap(a)[0] == major and cap(a)[1] <= minor for a in sass):
        return True, "kernels for sm_%d%d" % (major, minor)
    if any(cap(a) <= (major, minor) for a in ptx):
        return True, "via PTX JIT (slow first start)"
    return False, "no kernels for sm_%d%d (this build has %s)" % (major, minor, " ".join(arch_list) or "none")


def unsupported(index, name, capability):
    """The advice for a GPU this torch build has no kernels for."""
    stack = "cu12" if capability >= (7, 0) else "cu92"
    return ("torch %s (CUDA %s) cannot run on gpu %d (%s, sm_%d%d); switch to the %s stack: ./setup.sh --stack %s"
            % (torch.__version__, torch.version.cuda, index, name, capability[0], capability[1], stack, stack))


def _step(device):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 10)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = device.type == "cuda"
    scaler = compat.grad_scaler(amp)
    x, y = torch.randn(32, 3, 32, 32, device=device), torch.randint(0, 10, (32,), device=device)
    start = time.perf_counter()
    with compat.autocast(device.type, torch.float16 if amp else None):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    value = float(loss.detach())
    if amp:
        torch.cuda.synchronize()
    return value, time.perf_counter() - start, amp


def run():
    problems = []
    print("python      %s (%s)" % (sys.version.split()[0], platform.platform()))
    print("torch       %s" % torch.__version__)
    cuda_built = getattr(torch.version, "cuda", None)
    print("built for   CUDA %s, cuDNN %s" % (cuda_built or "- (CPU-only build)",
                                             torch.backends.cudnn.version() if cuda_built else "-"))
    devices = [torch.device("cpu")]
    if compat.cuda_available():
        arch_list = compat.cuda_arch_list()
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            ok, how = gpu_support((props.major, props.minor), arch_list)
            print("gpu %d       %s, compute capability %d.%d, %.0f GiB: %s" % (
                i, props.name, props.major, props.minor, props.total_memory / 2 ** 30, how))
            if not ok:
                problems.append(unsupported(i, props.name, (props.major, props.minor)))
            else:
                devices.append(torch.device("cuda", i))
    else:
        print("gpu         none visible%s" % (" (this build has CUDA %s; no driver or no GPU)" % cuda_built
                                              if cuda_built else ""))
    for device in devices:
        try:
            loss, seconds, amp = _step(device)
            print("check       %s: one forward/backward step%s, loss %.3f, %.1f ms" % (
                device, " with AMP (fp16)" if amp else "", loss, 1000 * seconds))
        except Exception as err:  # the point is to report any failure, whatever it is
            problems.append("a training step on %s failed: %s" % (device, str(err).splitlines()[0]))
    if problems:
        for problem in problems:
            print("PROBLEM     " + problem)
        return 1
    print("verdict     OK: this torch build can train on %s" % ", ".join(str(d) for d in devices))
    return 0
