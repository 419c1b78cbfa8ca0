"""The baseline: the plainest PyTorch loop over the same model, data, batch size, optimizer and steps as
train.py (and the same device, --amp and --channels-last), reporting samples/s between the end of its
warm-up step and its last step. Run by loop_throughput.py; prints one JSON line."""
import contextlib
import json
import time

import torch
import torch.nn.functional as F

from common import baseline_parts, sync


def main():
    args, cfg, device, splits, model, opt, fmt, dtype = baseline_parts()
    scaler = torch.cuda.amp.GradScaler(enabled=dtype == torch.float16)
    n, step, start = len(splits.train), 0, None
    while step < args.steps:
        for idx in torch.randperm(n).split(cfg.batch_size):
            x, y = splits.train[idx]
            x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
            y = y.to(device, non_blocking=True)
            amp = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with amp:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            if step == args.warmup:
                sync(device)
                start = time.perf_counter()
            if step == args.steps:
                break
    sync(device)
    elapsed = time.perf_counter() - start
    print(json.dumps({"samples_per_sec": (args.steps - args.warmup) * cfg.batch_size / elapsed}))


if __name__ == "__main__":
    main()
