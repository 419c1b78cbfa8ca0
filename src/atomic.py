"""Crash-safe file writes: temporary file in the same folder, flush, fsync, rename, fsync the folder.

A kill -9 or a power cut at any instant leaves either the old file or the new one, never a torn one.
"""
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
    path = Path(path)
    tmp = path.with_name(".%s%s%d" % (path.name, TMP_MARK, os.getpid()))
    try:
        with open(str(tmp), "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(str(tmp), str(path))
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def remove_stale_tmp(folder, name=""):
    """Delete temporary files a killed writer left behind in folder (for files starting with name)."""
    folder = Path(folder)
    if folder.is_dir():
        for leftover in folder.glob(".%s*%s*" % (name, TMP_MARK)):
            leftover.unlink()
