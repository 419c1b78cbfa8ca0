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
    """Make sure data_dir/<dataset>/<file> exists with the right MD5 for each (file, md5); return the folder."""
    folder = ensure_dir(Path(cfg.data_dir) / dataset)
    overrides = _overrides(cfg)
    for name, md5 in files:
        md5 = overrides.get("%s/%s" % (dataset, name), md5)
        dest = folder / name
        if dest.exists():
            if md5_of(dest) == md5:
                continue
            raise TrainingError("%s has the wrong checksum (expected md5 %s); delete it to download it again"
                                % (dest, md5))
        if not cfg.download:
            raise TrainingError("missing %s (run without --no-download, or place the file there)" % dest)
        base = cfg.data_mirror.rstrip("/") + "/" + dataset if cfg.data_mirror else base_url.rstrip("/")
        fetch(base + "/" + name, dest, md5)
    return folder


def fetch(url, dest, md5):
    """Download url to dest through a temporary file in the same folder; keep it only if the MD5 matches."""
    dest = Path(dest)
    part = dest.with_name(".%s.part-%d" % (dest.name, os.getpid()))
    h = hashlib.md5()
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(str(part), "wb") as out:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
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
