"""PyTorch Lightning's Trainer on the same model, data, batch size, optimizer and steps as train.py, set up
the way train.py runs in the comparison: TensorBoard logging every 10 steps and a checkpoint every 100, no
progress bar, no validation inside the timed steps. Reports samples/s between the end of its warm-up step
and its last step (a callback), as one JSON line. Lightning is a benchmark-only dependency
(benchmarks/requirements.txt)."""
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from src import data, models  # noqa: E402

from common import baseline_setup, device_of, sync  # noqa: E402

import lightning as L  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402


class Classifier(L.LightningModule):
    def __init__(self, model, cfg):
        super().__init__()
        self.model, self.cfg = model, cfg

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.model(x)
        loss = F.cross_entropy(out.float(), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        c = self.cfg
        return torch.optim.SGD(self.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


class Clock(Callback):
    def __init__(self, warmup, steps):
        self.warmup, self.steps, self.start, self.end = warmup, steps, None, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step in (self.warmup, self.steps):
            sync(module.device)
            now = time.perf_counter()
            if trainer.global_step == self.warmup:
                self.start = now
            else:
                self.end = now


class Batches(torch.utils.data.Sampler):
    """Shuffled index batches, each fetched in one indexing call: the data path train.py and the hand-written
    loop use, so only the loops differ."""

    def __init__(self, n, batch_size):
        self.n, self.batch_size = n, batch_size

    def __iter__(self):
        return iter([b.tolist() for b in torch.randperm(self.n).split(self.batch_size)])

    def __len__(self):
        return (self.n + self.batch_size - 1) // self.batch_size


def main():
    args, cfg = baseline_setup()
    torch.manual_seed(cfg.seed)
    splits = data.build(cfg)
    model = models.build(cfg, splits.input_shape, splits.num_classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    accelerator = "gpu" if device_of(cfg).type == "cuda" else "cpu"
    loader = torch.utils.data.DataLoader(splits.train, sampler=Batches(len(splits.train), cfg.batch_size),
                                         batch_size=None, pin_memory=accelerator == "gpu")
    precision = {"off": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}[cfg.amp]
    clock = Clock(args.warmup, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator=accelerator, devices=1, max_steps=args.steps, precision=precision, benchmark=True,
            logger=TensorBoardLogger(tmp, name="lightning"), log_every_n_steps=10,
            callbacks=[clock, ModelCheckpoint(dirpath=tmp, every_n_train_steps=100, save_top_k=1)],
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(Classifier(model, cfg), loader)
    rate = (args.steps - args.warmup) * cfg.batch_size / (clock.end - clock.start)
    print(json.dumps({"samples_per_sec": rate}))


if __name__ == "__main__":
    main()
