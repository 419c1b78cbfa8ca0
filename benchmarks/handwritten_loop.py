"""The baseline: the plainest PyTorch loop over the same model, data, batch size, optimizer and steps as
train.py, reporting samples/s between its first and last timed step. Run by loop_throughput.py."""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from src import config, data, models  # noqa: E402  (the same builders train.py uses)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, default=10)
    args, train_args = p.parse_known_args()
    cfg, _ = config.parse(train_args)
    torch.manual_seed(cfg.seed)
    splits = data.build(cfg)
    model = models.build(cfg, splits.input_shape, splits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n, step, start = len(splits.train), 0, None
    while step < args.steps:
        for idx in torch.randperm(n).split(cfg.batch_size):
            x, y = splits.train[idx]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == args.warmup:
                float(loss.detach())
                start = time.perf_counter()
            if step == args.steps:
                break
    float(loss.detach())
    elapsed = time.perf_counter() - start
    print(json.dumps({"samples_per_sec": (args.steps - args.warmup) * cfg.batch_size / elapsed}))


if __name__ == "__main__":
    main()
