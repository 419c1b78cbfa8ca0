"""Where a project and each run keep their files; folders (and dangling symlink targets) made on demand.

    data/                      datasets
    logs/<run>/                TensorBoard events, train.log, config.yaml, run.lock
    models/latest/<run>.pt     newest checkpoint of a run (what --resume continues); .<run>.lock beside it
    models/best/<run>.pt       best checkpoint by --monitor
    models/tmp/<run>/step-N.pt the last --keep-last periodic checkpoints

logs/ and models/tmp are links into /tmp/<project> (setup.sh). A folder in a world-writable sticky folder
such as /tmp is trusted only when it is the user's own and no one else can write to it (`check`): otherwise
another local user could plant a checkpoint there that --resume would load.
"""
import os
import re
import stat
from pathlib import Path

from ..runtime.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]  # the checkout: src/files/paths.py
MARKER = ".checkout"  # in /tmp/<project>: the checkout that made it (setup.sh and purge.sh read it)


def _shared_parent(path):
    """The first folder above `path` that anyone may create entries in (sticky and world-writable, like /tmp),
    and the entry of `path` directly below it; (None, None) when there is none."""
    path = Path(path)
    for child, parent in zip((path,) + tuple(path.parents), path.parents):
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        if mode & stat.S_ISVTX and mode & stat.S_IWOTH:
            return parent, child
    return None, None


def checkout():
    """The checkout a /tmp/<project> marker must name: this one (in a container: the host's, from compose)."""
    return os.environ.get("CHECKOUT") or str(ROOT)


def _problem(top, folder):
    """Why an entry of a shared folder (or what lies below it, down to folder) is not this user's alone, or
    None. A marker naming another checkout means another checkout made it."""
    try:
        info = top.lstat()
    except OSError:
        return None
    if info.st_uid != os.getuid():
        return "belongs to another user (uid %d)" % info.st_uid
    if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "can be written by other users (mode %o)" % stat.S_IMODE(info.st_mode)
    try:
        marker = (top / MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        marker = None
    if marker is not None and marker != checkout():
        return "was made by another checkout (%s)" % marker[:200]
    for path in _below(top, folder):  # a file planted while it was open to others stays after a chmod
        owner = path.lstat().st_uid
        if owner != os.getuid():
            return "holds %s, which belongs to another user (uid %d)" % (path, owner)
    return None


def _below(top, folder):
    """top's entries on the way to folder, and folder's own entries (its checkpoints, events), that exist."""
    folder = Path(folder)
    found = []
    for part in [folder] + [p for p in folder.parents if top in p.parents]:
        if os.path.lexists(str(part)):
            found.append(part)
    if folder.is_dir():
        found += sorted(folder.iterdir())[:10000]
    return found


def check_private(folder, what):
    """UsageError unless the parts of `folder` (as written, and with links resolved) that lie in a shared folder
    like /tmp belong to this user and this checkout alone, with nothing of another user's inside."""
    for path in (os.path.abspath(str(folder)), os.path.realpath(str(folder))):
        _, top = _shared_parent(path)
        problem = _problem(top, path) if top is not None else None
        if problem:
            raise UsageError("%s %s %s: another user could plant checkpoints there, so it is not used. Set "
                             "PROJECT=another-name and run ./setup.sh (a fresh folder; or point %s elsewhere)"
                             % (what, top, problem, what))


def _make_private_top(target):
    """Make target; a folder it needs directly in a shared folder (/tmp) is made mode 700 with a marker that
    names this checkout (a dangling logs link after a reboot emptied /tmp)."""
    shared, top = _shared_parent(os.path.abspath(str(target)))
    if shared is not None and not top.exists():
        top.mkdir(mode=0o700)
        (top / MARKER).write_text(checkout() + "\n")
    target.mkdir(parents=True, exist_ok=True)


def ensure_dir(path):
    """Make a folder; a dangling symlink (say /tmp emptied by a reboot) gets its target made again."""
    path = Path(path)
    for part in reversed((path,) + tuple(path.parents)):
        if part.is_symlink() and not part.exists():
            target = Path(os.readlink(str(part)))
            _make_private_top(target if target.is_absolute() else part.parent / target)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_folder(path, what):
    """UsageError unless path is a folder this process can write in, or one it can make (creates nothing)."""
    path = Path(path)
    too_long = [part for part in path.parts if len(os.fsencode(part)) > 255]
    if too_long:
        raise UsageError("%s %s...: a folder name of %d bytes, over the 255 a file system allows; use a shorter name"
                         % (what, str(path)[:60], len(os.fsencode(too_long[0]))))
    probe = path
    while not (probe.exists() or probe.is_symlink()):
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.is_symlink() and not probe.exists():
        return  # a dangling link: ensure_dir makes its target
    if not probe.is_dir():
        raise UsageError("%s %s: %s is not a folder; point %s to a folder" % (what, path, probe, what))
    if not os.access(str(probe), os.W_OK | os.X_OK):
        raise UsageError("%s %s: no permission to write in %s (it may belong to another user); fix its permissions "
                         "or point %s to a folder of yours" % (what, path, probe, what))


def read_bounded(path, what, limit):
    """The bytes of a regular file of at most `limit` bytes; UsageError for anything else (a FIFO or device would
    block or never end, a name too long, a folder)."""
    try:
        info = os.stat(str(path))
        if not stat.S_ISREG(info.st_mode):
            raise UsageError("%s %s: not a regular file; give a file" % (what, path))
        if info.st_size > limit:
            raise UsageError("%s %s: larger than %d KiB; give the right file" % (what, path, limit >> 10))
        with open(str(path), "rb") as f:
            return f.read(limit + 1)[:limit]
    except OSError as err:
        raise UsageError("%s %s: cannot read it (%s); check the path" % (what, str(path)[:200], err.strerror or err))


class RunPaths:
    """The files of one named run: the one spelling of the layout in Python (docker/lib.sh has the shell's).

        <logs>/<run>/            train.log, config.yaml, metrics.json, record.json, evaluate-<split>.json, run.lock,
                                 TensorBoard
        <models>/latest/<run>.pt the newest checkpoint (and .<run>.lock)
        <models>/best/<run>.pt   the best by --monitor
        <models>/tmp/<run>/      step-N.pt, the last --keep-last periodic checkpoints
    """

    def __init__(self, cfg):
        self.name = cfg.run_name
        self.logs_dir = Path(cfg.logs_dir)
        self.models_dir = Path(cfg.models_dir)
        self.run_dir = self.logs_dir / self.name
        self.latest = self.models_dir / "latest" / (self.name + ".pt")
        self.best = self.models_dir / "best" / (self.name + ".pt")
        self.tmp_dir = self.models_dir / "tmp" / self.name
        self.log_file = self.run_dir / "train.log"
        self.config_file = self.run_dir / "config.yaml"
        self.metrics_file = self.run_dir / "metrics.json"
        self.record_file = self.run_dir / "record.json"
        self.code_diff = self.run_dir / "code.diff"  # the uncommitted changes of the session that wrote it
        self.lock_file = self.run_dir / "run.lock"
        self.models_lock_file = self.latest.parent / (".%s.lock" % self.name)
        self.data_dir = Path(cfg.data_dir)

    def folders(self):
        """(folder, the flag that names it) for every folder a run writes in."""
        return ((self.data_dir, "--data-dir"), (self.run_dir, "--logs-dir"), (self.latest.parent, "--models-dir"),
                (self.best.parent, "--models-dir"), (self.tmp_dir, "--models-dir"))

    def check(self):
        """Every folder usable and private where it must be; raises UsageError, writes nothing."""
        for folder, flag in self.folders():
            check_folder(folder, flag)
            check_private(folder, flag)

    def make(self):
        for folder, flag in self.folders():
            try:
                ensure_dir(folder)
            except OSError as err:
                raise UsageError("%s: cannot make %s (%s); point %s to a folder you can write in"
                                 % (flag, folder, err.strerror or err, flag))

    def evaluate_file(self, split):
        return self.run_dir / ("evaluate-%s.json" % split)

    def temporary_files(self):
        """(folder, file name or None: any) where a killed write may have left a temporary file."""
        return ((self.latest.parent, self.latest.name), (self.best.parent, self.best.name), (self.tmp_dir, None))

    def started_mark(self):
        """logs/.started-<STARTED_MARK> of the checkout (whatever --logs-dir says: run.sh looks there), written once
        a trainer started by run.sh has begun; docker/lib.sh's started_file spells it for the shell."""
        mark = os.environ.get("STARTED_MARK", "")
        return ROOT / "logs" / (".started-" + mark) if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", mark) else None

    def tmp_checkpoint(self, step):
        return self.tmp_dir / ("step-%d.pt" % step)
