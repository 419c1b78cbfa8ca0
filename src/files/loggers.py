"""TensorBoard output of a run (logs/<run>/), a no-op when disabled or off rank 0.

A resumed run writes into the same folder. Events logged after the checkpoint it resumes from (a crash
loses its checkpoint but not its events) are cut out of the old event files first, so TensorBoard sees
every step once and in order.
"""
import contextlib
import os
import struct
from pathlib import Path

from . import atomic
from ..runtime.errors import TrainingError

_HEADER = struct.Struct("<Q")


def _records(path):
    """(raw record bytes, event payload) for each whole TFRecord in an event file; a torn tail is dropped."""
    with open(str(path), "rb") as f:
        blob = f.read()
    pos = 0
    while pos + 12 <= len(blob):
        (length,) = _HEADER.unpack_from(blob, pos)
        end = pos + 12 + length + 4
        if end > len(blob):
            break
        yield blob[pos:end], blob[pos + 12:pos + 12 + length]
        pos = end


def _keep(event, step):
    if not event.HasField("summary"):
        return True
    for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin == "hparams" or (plugin == "text" and event.step >= step):
            return False
    return event.step <= step


def trim_events(run_dir, step):
    """Remove summaries after `step` (and session texts at it, and hparams) from a run's event files."""
    from tensorboard.compat.proto.event_pb2 import Event

    removed = 0
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        kept, dropped = [], 0
        for raw, payload in _records(path):
            event = Event.FromString(payload)
            if _keep(event, step):
                kept.append(raw)
            else:
                dropped += 1
        if dropped or sum(len(r) for r in kept) != path.stat().st_size:
            atomic.write_bytes(path, b"".join(kept))
            removed += dropped
    return removed


class Logger(object):
    """What the loop reports to. Every method is a no-op here: a logger overrides what it records. The loop calls
    open() once its first step succeeded, flush(durable=True) before each checkpoint is written (so that what a
    logger holds is never behind a checkpoint), close() at the end."""

    def open(self):
        pass

    def scalars(self, values, step):
        """values: {tag: float} at step (train/*, val/*, test/*, z_perf/*)."""

    def image(self, tag, chw, step):
        """A CHW float image in [0, 1] (a task's pictures)."""

    def text(self, tag, text, step):
        pass

    def hparams(self, hparams, metrics):
        """The run's hyperparameters with its latest val/* (and, at the end, test/*) values."""

    def flush(self, durable=False):
        pass

    def close(self):
        pass


class Loggers(Logger):
    """Several loggers as one: each call goes to every one, in order."""

    def __init__(self, loggers):
        self.loggers = list(loggers)

    def open(self):
        for logger in self.loggers:
            logger.open()

    def scalars(self, values, step):
        for logger in self.loggers:
            logger.scalars(values, step)

    def image(self, tag, chw, step):
        for logger in self.loggers:
            logger.image(tag, chw, step)

    def text(self, tag, text, step):
        for logger in self.loggers:
            logger.text(tag, text, step)

    def hparams(self, hparams, metrics):
        for logger in self.loggers:
            logger.hparams(hparams, metrics)

    def flush(self, durable=False):
        for logger in self.loggers:
            logger.flush(durable)

    def close(self):
        for logger in self.loggers:
            logger.close()


class TensorBoard(Logger):
    """SummaryWriter wrapper: every method does nothing when the board is off or not yet opened.

    `open()` trims the run's old event files (see trim_events) and starts the writer; the loop opens it once
    its first step succeeded. A failed write (a full disk: TensorBoard's writer thread dies and its error comes
    back at the next call) becomes one TrainingError line.
    """

    def __init__(self, run_dir, enabled, resume_step):
        self.writer = None
        self.enabled, self.run_dir, self.resume_step = enabled, str(run_dir), resume_step

    def open(self):
        if not self.enabled or self.writer is not None:
            return
        with self._writing():
            trim_events(self.run_dir, self.resume_step)
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=self.run_dir, flush_secs=30)

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except Exception as err:
            if isinstance(err, TrainingError):
                raise
            raise TrainingError("writing TensorBoard events in %s failed (%s: %s); free space there (or use "
                                "--no-tensorboard), then --resume: the last good checkpoint is kept"
                                % (self.run_dir, type(err).__name__, err))

    def scalars(self, values, step):
        if self.writer:
            with self._writing():
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, step)

    def image(self, tag, chw, step):
        if self.writer:
            with self._writing():
                self.writer.add_image(tag, chw, step)

    def text(self, tag, text, step):
        if self.writer:
            with self._writing():
                self.writer.add_text(tag, text, step)

    def hparams(self, hparams, metrics):
        """Hyperparameters with the final metrics, inside this run (no extra run folder)."""
        if not self.writer:
            return
        from torch.utils.tensorboard.summary import hparams as make
        clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()}
        with self._writing():
            file_writer = self.writer._get_file_writer()
            for summary in make(clean, metrics):
                file_writer.add_summary(summary)

    def flush(self, durable=False):
        """Write buffered events out; durable also fsyncs the event files (done with each checkpoint)."""
        if not self.writer:
            return
        with self._writing():
            self.writer.flush()
            if durable:
                for path in Path(self.run_dir).glob("events.out.tfevents.*"):
                    fd = os.open(str(path), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

    def close(self):
        if self.writer:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except Exception:  # already reported by the write that failed
                pass
