"""Fetch dataset files into data/ with MD5 verification and atomic writes (no half file is ever visible)."""
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from ..atomic import fsync_dir
from ..errors import TrainingError, UsageError
from ..paths import ensure_dir


def md5_of(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(str(path), "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _overrides(cfg):
    if not cfg.data_checksums:
        return {}
    try:
        with open(cfg.data_checksums) as f:
            table = yaml.safe_load(f)  # JSON is YAML too
    except (OSError, yaml.YAMLError) as err:
        raise UsageError("--data-checksums %s: cannot read: %s" % (cfg.data_checksums, err))
    if not isinstance(table, dict):
        raise UsageError("--data-checksums %s: expected a mapping '<dataset>/<file>': md5" % cfg.data_checksums)
    return {str(k): str(v) for k, v in table.items()}


def fetch_all(cfg, dataset, base_url, files):
    """Make sure data_dir/<dataset>/<file> exists with the right MD5 for each (file, md5, size); return the folder.

    A download stops at `size` bytes (twice that for a mirror file whose checksum --data-checksums overrides:
    it may be packed differently), so an endless or wrong response cannot fill the disk."""
    folder = ensure_dir(Path(cfg.data_dir) / dataset)
    overrides = _overrides(cfg)
    for name, md5, size in files:
        key = "%s/%s" % (dataset, name)
        limit = 2 * size if key in overrides else size
        md5 = overrides.get(key, md5)
        dest = folder / name
        remove_stale_parts(dest)
        if dest.exists():
            if md5_of(dest) == md5:
                continue
            raise TrainingError("%s has the wrong checksum (expected md5 %s); delete it to download it again"
                                % (dest, md5))
        if not cfg.download:
            raise TrainingError("missing %s (run without --no-download, or place the file there)" % dest)
        base = cfg.data_mirror.rstrip("/") + "/" + dataset if cfg.data_mirror else base_url.rstrip("/")
        fetch(base + "/" + name, dest, md5, limit)
    return folder


def _part_name(dest, pid):
    return ".%s.part-%d" % (dest.name, pid)


def remove_stale_parts(dest):
    """Delete partial downloads of dest left by processes that no longer run (a kill -9 mid-download)."""
    prefix = _part_name(dest, 0)[:-1]
    for leftover in dest.parent.glob(prefix + "*"):
        pid = leftover.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            leftover.unlink()
        except OSError:  # alive, as another user
            pass


def fetch(url, dest, md5, limit):
    """Download url to dest through a temporary file in the same folder; keep it only if the MD5 matches. At most
    `limit` bytes are read. A stop signal raises out of the read (signals.Stopped) and the partial file goes."""
    dest = Path(dest)
    part = dest.with_name(_part_name(dest, os.getpid()))
    h = hashlib.md5()
    got = 0
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(str(part), "wb") as out:
                announced = resp.headers.get("Content-Length")
                if announced and announced.isdigit() and int(announced) > limit:
                    raise _TooLarge(int(announced))
                for block in iter(lambda: resp.read(1 << 20), b""):
                    got += len(block)
                    if got > limit:
                        raise _TooLarge(got)
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
        except _TooLarge as big:
            raise TrainingError("%s sends more than the %d bytes expected (%d so far); it is not this dataset's file: "
                                "check --data-mirror, or place the file at %s" % (url, limit, big.size, dest))
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise TrainingError("could not download %s: %s (use --data-mirror URL, or place the file at %s)"
                                % (url, reason, dest))
        if h.hexdigest() != md5:
            raise TrainingError("checksum mismatch for %s: expected md5 %s, got %s; nothing was saved"
                                % (url, md5, h.hexdigest()))
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
