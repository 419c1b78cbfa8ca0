"""What data a run was trained on, and which samples are held out, so that neither moves without a word.

Fingerprints (`files`, `of_bytes`): a digest of the data a dataset read, with counts to say what changed. A
folder's is over every image's path (relative to the dataset's folder), size and content (the bytes hashed while
the set is at most CONTENT_LIMIT bytes; beyond that the modification time stands in for the content, said in
the fingerprint); a table's over its files' bytes. The checkpoint and the record keep it: a resume on other data
is refused (app/run.py), --reproduce says what differs, and the folder's decoded-image cache is keyed by it.

Held-out samples (`carve`): each sample goes to test (or val) by a hash of its key (an image's relative path, a
table row's text), not by its position in a list, so files added or removed later move no other sample between
splits."""
import hashlib
import math
import os

import torch

from ..runtime.errors import TrainingError

CONTENT_LIMIT = 1 << 30  # bytes of data hashed at each start (about a second or two a GiB on one core)


def unit(salt, key):
    """A number in [0, 1) from salt and key, the same on every machine and Python."""
    h = hashlib.blake2b(("%s\0%s" % (salt, key)).encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(h, "big") / float(1 << 64)


def carve(keys, fraction, salt, flag="--val-split"):
    """(kept, held): sorted index tensors of the samples with these keys; a sample is held out when unit(salt,
    key) < fraction. When none falls below it although the share asks for one or more, the sample of the smallest
    hash is held out (a tiny set), so each side keeps at least one sample or the share is refused in one line."""
    n = len(keys)
    scores = [unit(salt, k) for k in keys]
    held = [i for i, s in enumerate(scores) if s < fraction]
    if not held and n and n * fraction >= 0.5:
        held = [min(range(n), key=scores.__getitem__)]
    if not 1 <= len(held) < n:
        raise TrainingError("%s %g leaves %d of %d samples held out; pick a share that leaves at least one on each "
                            "side" % (flag, fraction, len(held), n))
    chosen = set(held)
    kept = [i for i in range(n) if i not in chosen]
    return torch.tensor(kept, dtype=torch.long), torch.tensor(held, dtype=torch.long)


def carve_by_class(keys, labels, fraction, salt, *, flag="--val-split", names=None):
    """(kept, held, small) like carve, stratified: round(n x fraction) samples held out, shared among the classes
    in proportion to their counts (the largest remainders get the rest; each class keeps one sample), within each
    class those of the smallest unit(salt, key). A file added to or removed from a class moves at most one other
    file of that class across this line (its share's rounding): one into or out of test, one into or out of val.
    small: the names of classes too small to give this split one sample."""
    by_class = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    n = len(keys)
    order = sorted(by_class, key=str)
    exact = {c: len(by_class[c]) * fraction for c in order}
    quota = {c: min(len(by_class[c]) - 1, int(math.floor(exact[c]))) for c in order}
    extra = max(0, int(math.floor(n * fraction + 0.5)) - sum(quota.values()))
    # the rest of the share to the largest remainders (then the larger classes, then a hash of the class's name)
    for c in sorted(order, key=lambda c: (quota[c] - exact[c], -len(by_class[c]), unit(salt, str(c)))):
        if extra and quota[c] < len(by_class[c]) - 1:
            quota[c] += 1
            extra -= 1
    held = []
    for c in order:
        held += sorted(by_class[c], key=lambda i: unit(salt, keys[i]))[:quota[c]]
    small = [str(names[c] if names is not None else c) for c in order if quota[c] < 1]
    if not 1 <= len(held) < n:
        raise TrainingError("%s %g leaves %d of %d samples held out; pick a share that leaves at least one on each "
                            "side" % (flag, fraction, len(held), n))
    chosen = set(held)
    kept = [i for i in range(n) if i not in chosen]
    return torch.tensor(kept, dtype=torch.long), torch.tensor(sorted(held), dtype=torch.long), small


def files(paths, base):
    """The fingerprint of image files (paths under base, the dataset's folder): digest, files, bytes and whether
    the contents were hashed (else: modification times)."""
    infos = [(p, os.stat(str(p))) for p in paths]
    total = sum(info.st_size for _, info in infos)
    content = total <= CONTENT_LIMIT
    digest = hashlib.blake2b(digest_size=16)
    for path, info in sorted(infos, key=lambda pi: relative(pi[0], base)):
        digest.update(("%s\0%d\0" % (relative(path, base), info.st_size)).encode("utf-8", "surrogateescape"))
        if content:
            with open(str(path), "rb") as f:
                digest.update(hashlib.blake2b(f.read(), digest_size=16).digest())
        else:
            digest.update(b"%d" % info.st_mtime_ns)
        digest.update(b"\n")
    return {"digest": digest.hexdigest(), "files": len(infos), "bytes": total,
            "by": "content" if content else "modification time"}


def of_bytes(named_paths):
    """The fingerprint of data files read whole ({name: path}, a table's train.csv, val.csv...): their bytes."""
    digest = hashlib.blake2b(digest_size=16)
    total = 0
    for name, path in sorted(named_paths.items()):
        h = hashlib.blake2b(digest_size=16)
        with open(str(path), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                total += len(block)
        digest.update(("%s\0" % name).encode() + h.digest())
    return {"digest": digest.hexdigest(), "files": len(named_paths), "bytes": total, "by": "content"}


def combined(first, second):
    """One fingerprint of two parts of the data (a CSV of image paths and the images)."""
    digest = hashlib.blake2b((first["digest"] + second["digest"]).encode(), digest_size=16).hexdigest()
    return {"digest": digest, "files": first["files"] + second["files"], "bytes": first["bytes"] + second["bytes"],
            "by": second["by"]}


def with_splits(fingerprint, splits):
    """The fingerprint with the sample count of each split (they say how the data was divided)."""
    if fingerprint is None:
        return None
    return dict(fingerprint, splits={name: len(getattr(splits, name)) for name in ("train", "val", "test")})


def same(old, new):
    """Whether two fingerprints are of the same data (None: a dataset without one, or an older checkpoint)."""
    return old is None or new is None or (old.get("digest"), old.get("splits")) == (new.get("digest"),
                                                                                   new.get("splits"))


def describe_change(old, new):
    """What differs between two fingerprints, in words."""
    parts = []
    if old.get("files") != new.get("files"):
        parts.append("%s files, now %s" % (old.get("files"), new.get("files")))
    if old.get("bytes") != new.get("bytes"):
        parts.append("%s bytes, now %s" % (old.get("bytes"), new.get("bytes")))
    if not parts and old.get("digest") != new.get("digest"):
        parts.append("the same number of files and bytes, other contents (by %s)" % new.get("by", "content"))
    if old.get("splits") != new.get("splits"):
        parts.append("train/val/test %s, now %s" % ("/".join(str((old.get("splits") or {}).get(k, "?")) for k in
                                                             ("train", "val", "test")),
                                                    "/".join(str((new.get("splits") or {}).get(k, "?")) for k in
                                                             ("train", "val", "test"))))
    return "; ".join(parts) or "the same"


def relative(path, base):
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)
