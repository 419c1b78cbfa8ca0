"""Non-blocking checkpoints: the training loop only copies the state into reused buffers (pinned host
memory for CUDA tensors, copied asynchronously on the current stream); a background thread serializes,
digests and writes it atomically, and logs "saved checkpoint" once the file is in place.

One write at a time: a new save first waits for the previous one. `wait()` (called before exit, on stop
signals and at the end) returns once everything is on disk and re-raises a failed write. The time the loop
spends in `submit` is its stall, reported as z_perf/ckpt_stall_ms.
"""
import logging
import threading
import time

import torch

from . import fileformat

log = logging.getLogger("train")


class CheckpointWriter(object):
    def __init__(self, background=True):
        self.background = background
        self._thread = None
        self._error = None
        self._buffers = {}

    # ----- the copy on the training path ---------------------------------------------------------------------
    def _buffer(self, key, tensor):
        buf = self._buffers.get(key)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            pin = tensor.is_cuda
            buf = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
            self._buffers[key] = buf
        return buf

    def _copy(self, obj, key):
        if isinstance(obj, torch.Tensor):
            obj = obj.detach()
            buf = self._buffer(key, obj)
            buf.copy_(obj, non_blocking=obj.is_cuda)
            return buf
        if isinstance(obj, dict):
            return type(obj)((k, self._copy(v, key + (k,))) for k, v in obj.items())
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v, key + (i,)) for i, v in enumerate(obj))
        return obj

    def snapshot(self, state):
        """A copy of state whose tensors live in this writer's buffers (valid until the next snapshot)."""
        snap = self._copy(state, ())
        cuda_event = None
        if torch.cuda.is_initialized():  # CUDA tensors were copied asynchronously: mark the point to wait for
            cuda_event = torch.cuda.Event()
            cuda_event.record()
        return snap, cuda_event

    # ----- the write, off the training path ------------------------------------------------------------------
    def submit(self, state, paths, done=None, before=None):
        """Save state to every path in paths (atomically); before() and done(seconds, bytes) run in the writer
        around it (done gets how long serializing and writing took, and the file's size). Returns the seconds the
        caller was held up."""
        start = time.perf_counter()
        self.wait()
        snap, cuda_event = self.snapshot(state)

        def job():
            if cuda_event is not None:
                cuda_event.synchronize()
            if before is not None:
                before()
            began = time.perf_counter()
            payload = fileformat.serialize(snap)
            fileformat.check_space(len(payload), paths)
            fileformat.write(payload, *paths)
            if done is not None:
                done(time.perf_counter() - began, len(payload))

        if self.background:
            self._thread = threading.Thread(target=self._guard, args=(job,), name="checkpoint-writer", daemon=True)
            self._thread.start()
        else:
            job()
        return time.perf_counter() - start  # how long the loop waited: the stall

    def _guard(self, job):
        try:
            job()
        except BaseException as err:  # re-raised in the training thread by wait()
            self._error = err

    def wait(self):
        """Block until the last submitted checkpoint is on disk; re-raise its failure."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
