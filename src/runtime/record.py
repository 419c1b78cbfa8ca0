"""The reproducibility record of a run session: the code (git commit, the diff of uncommitted changes, untracked
files under src/, a digest of train.py + src/), the installed packages, Python/torch/CUDA/driver, CPU and GPU
names, the command line and the Slurm job. Run.build collects it; it lands in logs/<run>/record.json and in every
checkpoint ("record": one entry per session of the run, the first kept), and --reproduce compares it with the
machine it runs on (`differences`).

Collecting is cheap (one `git` call of each kind, package metadata, /proc): about 0.1 s on a checkout."""
import hashlib
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from .text import redact

ROOT = Path(__file__).resolve().parents[2]  # the checkout: src/runtime/record.py
MAX_DIFF = 512 << 10  # bytes of `git diff` kept (a record travels in every checkpoint)
MAX_SESSIONS = 20  # the first session and the newest ones


def git(*args):
    """git's output in the checkout, or None (no git, not a checkout, an error)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT)] + list(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace")


def _digest(paths):
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0")
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
        h.update(b"\0")
    return h.hexdigest()


def source_files():
    """train.py and every Python file under src/: what a run's code is."""
    return [ROOT / "train.py"] + sorted(p for p in (ROOT / "src").rglob("*.py") if "__pycache__" not in p.parts)


def code():
    """The code of this checkout: commit, uncommitted diff, untracked files under src/ (or why there is no git)."""
    out = {"source_sha256": _digest(source_files())}
    commit = git("rev-parse", "HEAD")
    if commit is None:
        out["git"] = "not a git checkout (or git is not installed): only source_sha256 identifies the code"
        return out
    diff = git("diff", "HEAD", "--no-color", "--no-ext-diff") or ""
    untracked = (git("ls-files", "--others", "--exclude-standard", "--", "src", "train.py") or "").split("\n")
    out.update(git="yes", commit=commit.strip(), branch=(git("rev-parse", "--abbrev-ref", "HEAD") or "").strip(),
               dirty=bool(diff) or any(untracked), diff=diff[:MAX_DIFF], diff_bytes=len(diff.encode("utf-8")),
               untracked=[{"path": p, "sha256": _digest([ROOT / p])} for p in untracked if p])
    return out


def packages():
    """name -> version of every installed distribution (importlib.metadata, Python >= 3.8)."""
    from importlib import metadata
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(name.lower().replace("_", "-"), dist.version)
    return dict(sorted(found.items()))


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver():
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
        return first.split("Kernel Module")[1].split()[0] if "Kernel Module" in first else first.strip()
    except (OSError, IndexError):
        return None


def hardware():
    import torch
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": sys.version.split()[0], "torch": str(torch.__version__), "cuda": torch.version.cuda,
            "cudnn": cudnn, "driver": _driver() if gpus else None, "gpus": gpus, "cpu": _cpu_name(),
            "cpus": os.cpu_count(), "os": platform.platform(), "host": socket.gethostname()}


def slurm_ids():
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST")
    found = {k.lower()[6:]: os.environ[k] for k in keys if os.environ.get(k)}
    return found or None


def collect():
    """This session's record."""
    env = {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG",
                                      "ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": [redact(a) for a in [sys.executable] + sys.argv],
            "cwd": os.getcwd(), "code": code(), "hardware": hardware(), "packages": packages(), "env": env,
            "slurm": slurm_ids()}


def sessions(previous, current):
    """A run's sessions: those of its checkpoint (if any) and this one; the first and the newest kept."""
    found = [s for s in (previous or []) if isinstance(s, dict)] + [current]
    return found if len(found) <= MAX_SESSIONS else found[:1] + found[-(MAX_SESSIONS - 1):]


def differences(old, new):
    """What differs between a recorded session and this one, as lines: code first, then environment."""
    lines = []
    oc, nc = old.get("code", {}), new.get("code", {})
    if oc.get("source_sha256") == nc.get("source_sha256"):
        lines.append("code: the same train.py and src/ (sha256 %s)" % str(nc.get("source_sha256"))[:12])
    else:
        lines.append("code: train.py or src/ differ from the run's")
        if oc.get("commit") != nc.get("commit"):
            lines.append("  commit: run %s, here %s" % (oc.get("commit") or "(no git)", nc.get("commit") or "(no git)"))
        if oc.get("diff") != nc.get("diff"):
            lines.append("  uncommitted changes: run %d bytes of diff, here %d" % (oc.get("diff_bytes", 0),
                                                                                    nc.get("diff_bytes", 0)))
        ou = {u["path"]: u["sha256"] for u in oc.get("untracked", [])}
        nu = {u["path"]: u["sha256"] for u in nc.get("untracked", [])}
        for path in sorted(set(ou) | set(nu)):
            if ou.get(path) != nu.get(path):
                lines.append("  untracked %s: %s" % (path, "only in the run" if path not in nu else
                                                     "only here" if path not in ou else "differs"))
    oh, nh = old.get("hardware", {}), new.get("hardware", {})
    for key in ("python", "torch", "cuda", "cudnn", "driver", "gpus", "cpu", "cpus", "host"):
        if oh.get(key) != nh.get(key):
            lines.append("%s: run %s, here %s" % (key, oh.get(key), nh.get(key)))
    op, np_ = old.get("packages", {}), new.get("packages", {})
    moved = ["%s %s -> %s" % (k, op.get(k, "(none)"), np_.get(k, "(none)")) for k in sorted(set(op) | set(np_))
             if op.get(k) != np_.get(k)]
    if moved:
        lines.append("packages: %d differ: %s%s" % (len(moved), "; ".join(moved[:10]),
                                                     " and %d more" % (len(moved) - 10) if len(moved) > 10 else ""))
    else:
        lines.append("packages: the same %d" % len(np_))
    return lines
