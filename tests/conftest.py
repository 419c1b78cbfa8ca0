"""Shared test helpers: a fresh copy of the project per test, the real train.py run in subprocesses, real
signals, and TensorBoard's own event-file readers."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests may import the project's modules (src.*) for checks

# Small, fast, deterministic runs: the MLP on the embedded digits (45 steps an epoch at batch 32).
FAST = ["--model", "mlp", "--width", "64", "--batch-size", "32", "--deterministic", "--progress", "plain"]

# A test plugin model: the MLP slowed by a sleep (so that a run lives long enough to be stopped at chosen steps)
PACED_MODEL = '''"""A test plugin: the MLP, with a sleep of $PACE seconds before each training forward pass (and, with
$GATE set, a wait until that file exists: the test opens the gate on an event)."""
import os
import time

from . import register
from .mlp import build as mlp


@register("paced")
def build(input_shape, num_classes, cfg):
    net = mlp(input_shape, num_classes, cfg)
    pace = float(os.environ.get("PACE", "0"))
    gate = os.environ.get("GATE")

    def hold(module, inputs):
        while module.training and gate and not os.path.exists(gate):
            time.sleep(0.01)
        if module.training and pace:
            time.sleep(pace)
    net.register_forward_pre_hook(hold)
    return net
'''


class Project(object):
    """A copy of train.py + src/ in a temporary folder, like a fresh clone."""

    def __init__(self, root):
        self.root = Path(root)
        shutil.copy(str(REPO / "train.py"), str(self.root / "train.py"))
        shutil.copytree(str(REPO / "src"), str(self.root / "src"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        self.env.pop("DATA_MIRROR", None)
        self.env.pop("DATA_CHECKSUMS", None)

    def cmd(self, args):
        return [sys.executable, str(self.root / "train.py")] + [str(a) for a in args]

    def run(self, *args, timeout=300, env=None):
        return subprocess.run(self.cmd(args), cwd=str(self.root), env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)

    def ok(self, *args, **kw):
        res = self.run(*args, **kw)
        assert res.returncode == 0, "train.py %s failed (%d):\n%s" % (args, res.returncode, res.stderr[-3000:])
        return res

    def start(self, *args):
        return subprocess.Popen(self.cmd(args), cwd=str(self.root), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, universal_newlines=True, start_new_session=True)

    def launch_cmd(self, nproc, args):
        """train.py on nproc local processes through the project's launcher (torchrun, or launch on torch < 1.10)."""
        return [sys.executable, "-m", "src.launch", str(nproc)] + [str(a) for a in args]

    def launch(self, nproc, *args, timeout=300):
        return subprocess.run(self.launch_cmd(nproc, args), cwd=str(self.root), env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start_launch(self, nproc, *args):
        return subprocess.Popen(self.launch_cmd(nproc, args), cwd=str(self.root), env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                                start_new_session=True)

    def latest(self, run):
        return self.root / "models" / "latest" / (run + ".pt")

    def best(self, run):
        return self.root / "models" / "best" / (run + ".pt")

    def tmp_dir(self, run):
        return self.root / "models" / "tmp" / run

    def run_dir(self, run):
        return self.root / "logs" / run


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path)


def wait_for_line(proc, predicate, timeout=120):
    """Read proc's output until predicate(line) is true; returns (line, all lines read)."""
    seen, deadline = [], time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if predicate(line):
            return line, seen
        if time.time() > deadline:
            break
    proc.kill()
    raise AssertionError("line never came; output:\n" + "".join(seen[-40:]))


def handler_installed(proc, sig=signal.SIGTERM, timeout=120):
    """Wait until train.py (exec'd, not the forked test process) catches sig, as the kernel reports it in
    /proc/PID/status: the moment its own signal handler exists. False if it exited first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open("/proc/%d/cmdline" % proc.pid, "rb") as f:
                started = b"train.py" in f.read()
            with open("/proc/%d/status" % proc.pid) as f:
                caught = [int(line.split()[1], 16) for line in f if line.startswith("SigCgt:")][0]
        except (OSError, IndexError):
            return False
        if proc.poll() is not None:
            return False
        if started and caught & (1 << (sig - 1)):
            return True
        time.sleep(0.002)
    raise AssertionError("train.py never installed its %s handler" % signal.Signals(sig).name)


def children(pid):
    """The pids of a process's children (DataLoader workers of a trainer), from /proc."""
    found = []
    for task in Path("/proc/%d/task" % pid).glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def step_of(line, prefix):
    """N from 'step N/...' or 'saved checkpoint step N', when line starts with prefix."""
    if not line.startswith(prefix):
        return None
    return int(line[len(prefix):].split()[0].split("/")[0])


def stop_at(proc, sig, prefix, at_least):
    """Send sig once a line `prefix N...` with N >= at_least shows; return (exit code, output, seconds to exit)."""
    _, seen = wait_for_line(proc, lambda line: (step_of(line, prefix) or -1) >= at_least)
    sent = time.time()
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    return proc.returncode, "".join(seen) + rest, time.time() - sent


def load(path):
    """A checkpoint read the way train.py reads it: weights-only unpickling where this torch has it."""
    from src.runtime import compat
    return compat.load_file(str(path))


def scalars(run_dir, prefixes=("train/", "val/")):
    """{tag: [(step, value), ...]} as TensorBoard's own EventAccumulator reads the run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"] if tag.startswith(prefixes)}


def raw_events(run_dir):
    """Every event in every event file of a run, read with TensorBoard's event file loader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    events = []
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        events.extend(EventFileLoader(str(path)).Load())
    return events


def summary_steps(run_dir, tag):
    """The steps of every raw summary event carrying tag (duplicates included)."""
    return [e.step for e in raw_events(run_dir) for v in e.summary.value if v.tag == tag]


def assert_same_scalars(run_dir, want, tags, prefixes=("train/", "val/")):
    """Each tag logged as in `want` ({tag: [(step, value)]}, the uninterrupted run), once per step and in order
    (a resume cuts the events it repeats)."""
    got = scalars(run_dir, prefixes)
    for tag in tags:
        assert got[tag] == want[tag], "%s differs from the uninterrupted run" % tag
        steps = summary_steps(run_dir, tag)
        assert steps == sorted(set(steps)), "%s has duplicate or out-of-order steps: %s" % (tag, steps)


def same_weights(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def finish_run(project, args, steps, stop=None, run="exact"):
    """Run `run` to its end at `steps`: in one go, or stopped once (stop: (signal, log prefix, step), a SIGKILL
    or a graceful stop) and resumed; its final weights."""
    if stop is None:
        project.ok(*args)
    else:
        sig, prefix, at = stop
        code, _, _ = stop_at(project.start(*args), sig, prefix, at)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
        assert 0 < load(project.latest(run))["progress"]["step"] < steps
        project.ok("--resume", "--run-name", run)
    state = load(project.latest(run))
    assert state["progress"]["step"] == steps
    return state["model"]


def bash_block(project, tmp_path, block):
    """A README block run by bash in the project, `python` being this interpreter; its completed process."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "python").write_text('#!/bin/sh\nexec "%s" "$@"\n' % sys.executable)
    (shim / "python").chmod(0o755)
    env = dict(project.env, PATH="%s:%s" % (shim, os.environ.get("PATH", "")))
    res = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=str(project.root), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:]
    return res


def write_images(folder, per_class, classes=("cat", "dog", "fox"), size=(12, 12), seed=0):
    """per_class images in folder/<class>/ (real PNG and JPEG files made with Pillow): each class brightens its own
    colour channel; grey, RGB and RGBA alternate, and every fifth image sits in a subfolder of its class."""
    import numpy as np
    from PIL import Image
    rng = np.random.RandomState(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            pixels = rng.randint(0, 90, (size[1], size[0], 3)).astype(np.uint8)
            pixels[:, :, c % 3] += 150
            image = Image.fromarray(pixels, "RGB").convert(("RGB", "L", "RGBA")[i % 3])
            where = Path(folder) / name / ("deeper" if i % 5 == 4 else "")
            where.mkdir(parents=True, exist_ok=True)
            image.save(str(where / ("%03d.%s" % (i, "jpg" if image.mode == "RGB" and i % 2 else "png"))))
    return Path(folder)


def split_counts(text, total, test=0.2, val=0.1):
    """(train, val, test) from a run's 'N train / N val / N test samples' line; checked to add up to total and to
    hold out the shares by chance as a hash of each sample's key does (within 3.5 binomial standard deviations),
    never nothing. val and test: the shares held out (None: that split was given, not held out)."""
    import re
    found = re.search(r"(\d+) train / (\d+) val / (\d+) test samples", text)
    assert found, text[-2000:]
    counts = tuple(int(n) for n in found.groups())
    assert sum(counts) == total, counts
    pool = total
    for count, share in ((counts[2], test), (counts[1], val)):
        if share is not None:
            spread = 3.5 * (pool * share * (1 - share)) ** 0.5
            assert count >= 1 and abs(count - pool * share) <= spread + 1, (counts, share, pool)
            pool -= count
    return counts


__all__ = ["FAST", "split_counts", "Project", "assert_same_scalars", "children", "handler_installed",
           "load", "scalars", "raw_events", "same_weights", "signal",
           "stop_at", "summary_steps", "wait_for_line", "step_of", "write_images", "finish_run"]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (test.sh: -n N --dist loadscope --no-loadscope-reorder): each test file runs whole on one
    worker (its module fixtures made once), and the files that drive this checkout's scripts and containers
    (tests/e2e/test_docker.py, test_native.py: ports, compose projects, purges) share one. They are collected
    first, the longest chains first."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::")[0]
            return "tests/e2e/scripts" if path in ("tests/e2e/test_docker.py", "tests/e2e/test_native.py") else path

    return ByFile(config, log)
