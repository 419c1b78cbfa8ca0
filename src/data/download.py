"""Fetch dataset files into data/ with MD5 verification and atomic writes (no half file is ever visible)."""
import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from ..files.atomic import fsync_dir
from ..files.lock import alive
from ..runtime.errors import TrainingError, UsageError
from ..runtime.text import redact
from ..files.paths import ensure_dir, read_bounded


def md5_of(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(str(path), "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _overrides(cfg):
    if not cfg.data_checksums:
        return {}
    blob = read_bounded(cfg.data_checksums, "--data-checksums", 1 << 20)
    try:
        table = yaml.safe_load(blob.decode("utf-8"))  # JSON is YAML too
    except UnicodeDecodeError:
        raise UsageError("--data-checksums %s: not UTF-8 text; save it as UTF-8" % cfg.data_checksums)
    except (yaml.YAMLError, RecursionError) as err:
        raise UsageError("--data-checksums %s: cannot read: %s" % (cfg.data_checksums, str(err).splitlines()[0]))
    if not isinstance(table, dict):
        raise UsageError("--data-checksums %s: expected a mapping '<dataset>/<file>': md5" % cfg.data_checksums)
    return {str(k): str(v) for k, v in table.items()}


def fetch_all(cfg, dataset, base_url, files):
    """Make sure data_dir/<dataset>/<file> exists with the right MD5 for each (file, md5, size); return the folder.
    md5 may be a tuple: the sums of the official file and of known faithful copies (a distribution's package).

    A download stops at `size` bytes (twice that for a mirror file whose checksum --data-checksums overrides:
    it may be packed differently), so an endless or wrong response cannot fill the disk."""
    overrides = _overrides(cfg)
    folder = Path(cfg.data_dir) / dataset
    made = not folder.exists()
    ensure_dir(folder)
    try:
        _fetch_files(cfg, dataset, base_url, files, folder=folder, overrides=overrides)
    except BaseException:
        if made and not any(folder.iterdir()):  # a failed first download leaves no empty data/<dataset>/
            folder.rmdir()
        raise
    return folder


def _fetch_files(cfg, dataset, base_url, files, *, folder, overrides):
    for name, md5, size in files:
        key = "%s/%s" % (dataset, name)
        limit = 2 * size if key in overrides else size
        md5 = overrides.get(key, md5)
        dest = folder / name
        remove_stale_parts(dest)
        if dest.exists():
            if md5_of(dest) in _sums(md5):
                continue
            raise TrainingError("%s has the wrong checksum (expected md5 %s); delete it to download it again"
                                % (dest, " or ".join(_sums(md5))))
        if not cfg.download:
            raise TrainingError("missing %s (run without --no-download, or place the file there)" % dest)
        base = cfg.data_mirror.rstrip("/") + "/" + dataset if cfg.data_mirror else base_url.rstrip("/")
        fetch(base + "/" + name, dest, md5, limit, timeout=cfg.download_timeout, deadline=cfg.download_deadline)


def _sums(md5):
    return (md5,) if isinstance(md5, str) else tuple(md5)


def _part_name(dest, pid):
    return ".%s.part-%d" % (dest.name, pid)


def remove_stale_parts(dest):
    """Delete partial downloads of dest left by processes that no longer run (a kill -9 mid-download)."""
    prefix = _part_name(dest, 0)[:-1]
    for leftover in dest.parent.glob(prefix + "*"):
        pid = leftover.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(pid):
            leftover.unlink()


def fetch(url, dest, md5, limit, *, timeout=60.0, deadline=3600.0):
    """Download url to dest through a temporary file in the same folder; keep it only if the MD5 matches. At most
    `limit` bytes are read; it fails when no byte came for `timeout` seconds or the whole took over `deadline`. A
    stop signal raises out of the read (signals.Stopped) and the partial file goes."""
    dest = Path(dest)
    part = dest.with_name(_part_name(dest, os.getpid()))
    h = hashlib.md5()
    got = 0
    end = time.monotonic() + deadline
    limits = "--download-timeout %g s without data, --download-deadline %g s in all" % (timeout, deadline)
    try:
        try:
            with urllib.request.urlopen(url, timeout=min(timeout, deadline)) as resp, open(str(part), "wb") as out:
                announced = resp.headers.get("Content-Length")
                if announced and announced.isdigit() and int(announced) > limit:
                    raise _TooLarge(int(announced))
                read = getattr(resp, "read1", resp.read)  # what has come, not a whole megabyte: the deadline counts
                while True:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise socket.timeout()
                    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
                    if sock is not None:  # the last read may wait only until the deadline
                        sock.settimeout(min(timeout, left))
                    block = read(1 << 20)
                    if not block:
                        break
                    got += len(block)
                    if got > limit:
                        raise _TooLarge(got)
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
        except _TooLarge as big:
            raise TrainingError("%s sends more than the %d bytes expected (%d so far); it is not this dataset's file: "
                                "check --data-mirror, or place the file at %s" % (redact(url), limit, big.size,
                                                                                  dest))
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            if isinstance(reason, socket.timeout) or isinstance(err, socket.timeout):
                reason = "%s after %d bytes (limits: %s)" % (
                    "the deadline passed" if time.monotonic() >= end - 0.1 else "timed out: no data came",
                    got, limits)
            elif isinstance(err, http.client.HTTPException):
                reason = "not a valid HTTP response (%s: %s)" % (type(err).__name__, str(err).strip()[:100])
            raise TrainingError("could not download %s: %s (use --data-mirror URL, or place the file at %s)"
                                % (redact(url), str(reason).splitlines()[0][:300] if str(reason) else
                                   type(err).__name__, dest))
        if h.hexdigest() not in _sums(md5):
            raise TrainingError("checksum mismatch for %s: expected md5 %s, got %s; nothing was saved"
                                % (redact(url), " or ".join(_sums(md5)), h.hexdigest()))
        os.replace(str(part), str(dest))
        fsync_dir(dest.parent)
    finally:
        if part.exists():
            part.unlink()
    return dest


class _TooLarge(Exception):
    def __init__(self, size):
        super(_TooLarge, self).__init__(size)
        self.size = size
