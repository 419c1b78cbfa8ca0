"""How long the training loop stalls for a checkpoint of a ~100M-parameter model: a synchronous
`torch.save(model + optimizer)` (what a hand-written loop does) against train.py's non-blocking writer
(src/state/writer.py: copy into reused buffers, then serialize + digest + two atomic, fsynced files in a
background thread), and train.py's own synchronous mode (--no-async-ckpt) for reference.

Saves alternate (torch.save, ours, ours in the loop, ...) with real training steps between them, so the
background write overlaps with computation as in a run. The first save of ours also allocates its buffers;
it is shown apart.

    python benchmarks/checkpoint_stall.py                    # CPU
    python benchmarks/checkpoint_stall.py --device cuda
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from src.runtime import seeding  # noqa: E402
from src.state.writer import CheckpointWriter  # noqa: E402

from common import machine, median, table  # noqa: E402


def build(width, layers, device):
    model = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers)],
                          nn.Linear(width, 10)).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)


def train_steps(model, opt, steps, width, device):
    for _ in range(steps):
        x = torch.randn(32, width, device=device)
        y = torch.randint(0, 10, (32,), device=device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_state(model, opt, step):
    """What train.py puts in a checkpoint (model, optimizer, RNG, progress)."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": seeding.capture(),
            "progress": {"step": step}}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=6, help="6 x 4096^2 + ...: about 100.7M parameters")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps-between", type=int, default=3, help="training steps between saves")
    args = p.parse_args()
    device = torch.device(args.device)
    model, opt = build(args.width, args.layers, device)
    train_steps(model, opt, 1, args.width, device)  # optimizer state exists
    n_params = sum(p.numel() for p in model.parameters())
    background, in_loop = CheckpointWriter(background=True), CheckpointWriter(background=False)
    times = {"torch.save": [], "ours (background)": [], "ours (--no-async-ckpt)": []}
    first = None
    write_times = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, str(folder / "plain.pt"))
            plain = time.perf_counter() - t0
            train_steps(model, opt, args.steps_between, args.width, device)

            t0 = time.perf_counter()
            stall = background.submit(full_state(model, opt, i), (folder / "latest.pt", folder / "step.pt"))
            train_steps(model, opt, args.steps_between, args.width, device)
            background.wait()
            write_times.append(time.perf_counter() - t0)

            sync_stall = in_loop.submit(full_state(model, opt, i), (folder / "latest2.pt", folder / "step2.pt"))
            train_steps(model, opt, args.steps_between, args.width, device)
            if i == 0:
                first = stall
                continue  # the first round also allocates buffers and warms the page cache
            times["torch.save"].append(plain)
            times["ours (background)"].append(stall)
            times["ours (--no-async-ckpt)"].append(sync_stall)
    base = median(times["torch.save"])
    print("### Checkpoint stall\n")
    print("%s; %.1fM parameters + SGD momentum (%.0f MB of state) on %s; median of %d alternating saves, %d "
          "training steps between saves\n" % (machine(device), n_params / 1e6, 2 * n_params * 4 / 2 ** 20, device,
                                                args.repeats, args.steps_between))
    rows = [(name, "%.1f" % (1000 * median(v)), "%.3f" % (median(v) / base)) for name, v in times.items()]
    print(table(("checkpoint", "loop stall ms (median)", "ratio to torch.save"), rows))
    print("\nOurs: first save (allocates the reused buffers) %.0f ms; the background write took %.0f ms "
          "(median, overlapping the training steps)." % (1000 * first, 1000 * median(write_times[1:])))


if __name__ == "__main__":
    main()
