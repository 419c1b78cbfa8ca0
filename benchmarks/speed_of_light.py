"""The limit for a model and batch: its training step alone (forward, loss, backward, optimizer step) on one
batch already on the device, nothing else. On a GPU the step is captured once in a CUDA graph and replayed, so
not even kernel launches cost host time: no loop can beat it. Same model, batch, optimizer, --amp and
--channels-last as train.py; run by loop_throughput.py; prints one JSON line (samples_per_sec, and how the step
ran: "cuda graph", or "eager" with the reason)."""
import contextlib
import json
import time

import torch
import torch.nn.functional as F

from common import baseline_parts, sync


def main():
    args, cfg, device, splits, model, opt, fmt, dtype = baseline_parts()  # fp16 runs unscaled: a speed limit only
    x, y = splits.train[torch.arange(min(cfg.batch_size, len(splits.train)))]
    x, y = x.to(device).contiguous(memory_format=fmt), y.to(device)

    def step():
        amp = torch.autocast(device.type, dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext()
        with amp:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    how = "eager"
    run = step
    if device.type == "cuda":
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: cuDNN picks its kernels, momentum buffers exist
                for _ in range(3):
                    opt.zero_grad(set_to_none=False)
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=False)  # the graph's gradients accumulate into these same buffers
            with torch.cuda.graph(graph):
                opt.zero_grad(set_to_none=False)
                step()
            run, how = graph.replay, "cuda graph"
        except Exception as err:  # say why, and measure the eager step instead
            how = "eager (capture failed: %s)" % str(err).splitlines()[0][:100]
    if run is step:
        def run():
            opt.zero_grad(set_to_none=False)
            step()
    for _ in range(args.warmup):
        run()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps - args.warmup):
        run()
    sync(device)
    elapsed = time.perf_counter() - start
    print(json.dumps({"samples_per_sec": (args.steps - args.warmup) * len(x) / elapsed, "how": how}))


if __name__ == "__main__":
    main()
