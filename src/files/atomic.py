"""Crash-safe file writes: temporary file in the same folder, flush, fsync, rename, fsync the folder.

A kill -9 or a power cut at any instant leaves either the old file or the new one, never a torn one.
"""
import contextlib
import os
from pathlib import Path

TMP_MARK = ".tmp-"


def fsync_dir(folder):
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path, payload):
    with _replacing(path, "wb") as f:
        f.write(payload)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def writing(path):
    """A text file written a piece at a time (memory: one piece), in place whole when the block ends, or not at all
    when it raises (a stop signal, a bad input)."""
    return _replacing(path, "w")


@contextlib.contextmanager
def _replacing(path, mode):
    """The file object of a temporary file beside path; flushed, synced and renamed over path when the block ends,
    removed when it raises."""
    path = Path(path)
    tmp = path.with_name(".%s%s%d" % (path.name, TMP_MARK, os.getpid()))
    try:
        with open(str(tmp), mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(str(tmp), str(path))
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def remove_stale_tmp(folder, name=None):
    """Delete temporary files a killed writer left behind in folder: those of file `name` exactly (the pattern
    write_bytes uses, so run `x` never touches run `x.pt2`'s), or every one when name is None."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for leftover in folder.iterdir():
        stem, mark, pid = leftover.name.rpartition(TMP_MARK)
        if mark and pid.isdigit() and stem.startswith(".") and (name is None or stem == "." + name):
            leftover.unlink()
