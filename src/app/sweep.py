"""--sweep SPEC.yaml and --seeds S1,S2,...: many runs, each an ordinary train.py run named <sweep>-<trial>,
and the little state that ties them together.

    logs/<sweep>/sweep.json       the spec and every trial: flags, state, attempts, results (atomic, under sweep.lock)
    logs/<sweep>/trial-N.yaml     trial N's flags (train.py --config logs/<sweep>/trial-N.yaml --run-name <sweep>-N)
    logs/<sweep>/trial-N.log      its output; the run itself lives in logs/<sweep>-N/ and models/*/<sweep>-N.pt
    logs/<sweep>/results.csv      one row per trial; summary.json: the best trial, mean/std/95 % interval per point
    logs/<sweep>/<sweep>-N/       TensorBoard: trial N's flags and final metrics (HParams view of the sweep)

A trial runs as `train.py --config trial-N.yaml --run-name <sweep>-N --resume auto` in a child process, which
holds logs/<sweep>/.trial-N.lock (inherited) while it lives: a trial marked running whose lock is free was
interrupted (its driver was killed, the machine rebooted), and the next claim resumes it from its own checkpoint,
exactly. The same command again therefore continues a sweep: finished trials are kept, stopped or interrupted
ones resume, trial numbers never restart, failed ones are reported (--retry-failed runs them again). Any number
of processes (--parallel N threads here, other terminals, the tasks of a Slurm array) share one sweep: a trial
goes to whoever claims it first under the lock.

A stop signal (Ctrl-C, docker stop, Slurm's warning) is passed on to the running trials, which save and stop;
the driver then exits, and under Slurm requeues its job once (the trials do not requeue it themselves)."""
import ctypes
import errno
import fcntl
import functools
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from . import flags, sweep_results, sweep_spec
from ..files import atomic, console
from ..files.lock import alive
from ..files.paths import ROOT, RunPaths, check_folder, check_private, ensure_dir
from ..runtime import slurm
from ..runtime.errors import TrainingError, UsageError

log = logging.getLogger("train")
VERSION = 1
RESUMABLE = ("stopped", "interrupted")


class Sweep(object):
    """The sweep's folder and state file; every change of the state happens in `locked()`."""

    def __init__(self, cfg, spec):
        self.spec, self.name = spec, spec["name"]
        self.dir = Path(cfg.logs_dir) / self.name
        self.state_file = self.dir / "sweep.json"
        self.lock_file = self.dir / "sweep.lock"
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.id = ""  # its state's id (open_sweep): each trial's checkpoints carry it, so no other run is taken over
        self.guard = threading.Lock()  # threads of this process; the flock keeps other processes out

    def run_name(self, n):
        return "%s-%d" % (self.name, n)

    def trial_lock(self, n):
        return self.dir / (".trial-%d.lock" % n)

    def locked(self):
        return _StateLock(self)

    def load(self):
        try:
            state = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise UsageError("%s: unreadable (%s); it holds the sweep's trials: restore it, or start the sweep under "
                             "another name" % (self.state_file, err))
        if not isinstance(state, dict) or state.get("version") != VERSION or not isinstance(state.get("trials"), list):
            raise UsageError("%s was not written by this version of train.py; start the sweep under another name"
                             % self.state_file)
        return state

    def save(self, state):
        atomic.write_text(self.state_file, json.dumps(state, indent=1, sort_keys=True) + "\n")
        sweep_results.write_csv(self, state)


class _StateLock(object):
    def __init__(self, sweep):
        self.sweep, self.fd = sweep, None

    def __enter__(self):
        self.sweep.guard.acquire()
        self.fd = os.open(str(self.sweep.lock_file), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.sweep.guard.release()


def _spec_of(cfg, user):
    """The spec of this command: --sweep's file with the run flags given here on top, or --seeds'."""
    given = {k: getattr(cfg, k) for k in user if k in flags.BY_DEST and k not in sweep_spec.NOT_VARIED
             and k != "config"}
    name = cfg.run_name if "run_name" in user else None
    if cfg.sweep and cfg.seeds:
        raise UsageError("--sweep and --seeds together: put seeds: [...] in the sweep spec")
    if cfg.sweep:
        return sweep_spec.read(cfg.sweep, given, name)
    return sweep_spec.of_seeds(name or cfg.run_name + "-seeds", given, cfg.seeds)


def _changes(old, new):
    keys = sorted(set(old) | set(new))
    return ["%s: %s -> %s" % (k, json.dumps(old.get(k))[:80], json.dumps(new.get(k))[:80]) for k in keys
            if old.get(k) != new.get(k) and k != "trials"]


def open_sweep(cfg, user):
    """The sweep of this command, its folder made and its state started or checked against the spec."""
    spec = _spec_of(cfg, user)
    sweep = Sweep(cfg, spec)
    check_folder(sweep.dir, "--logs-dir")
    if sweep.dir.is_dir() and not sweep.state_file.exists() and (
            (sweep.dir / "train.log").exists() or list(sweep.dir.glob("events.out.tfevents.*"))):
        raise UsageError("%s holds a run named %s, not a sweep; name the sweep otherwise (name: in the spec, or "
                         "--run-name)" % (sweep.dir, sweep.name))
    ensure_dir(sweep.dir)
    check_private(sweep.dir, "--logs-dir")
    with sweep.locked():
        state = sweep.load()
        if state is None:
            state = {"version": VERSION, "name": sweep.name, "spec": spec, "trials": [], "id": secrets.token_hex(8),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            sweep.save(state)
            log.info("sweep %s: %d trials (%s), runs %s-0 ... in %s", sweep.name, sweep_spec.total(spec),
                     spec["method"], sweep.name, sweep.dir)
        else:
            moved = _changes(state["spec"], spec)
            if moved:
                raise UsageError("sweep %s was started with another spec (%s); continue it with the spec it had, or "
                                 "give this one another name (name: in the spec, or --run-name)"
                                 % (sweep.name, "; ".join(moved[:3])))
            if spec.get("trials") != state["spec"].get("trials"):
                log.info("sweep %s: trials %s -> %s", sweep.name, state["spec"].get("trials"), spec.get("trials"))
                state["spec"] = spec
                sweep.save(state)
            done = sum(t["state"] == "done" for t in state["trials"])
            log.info("sweep %s: continuing (%d of %d trials done) in %s", sweep.name, done, sweep_spec.total(spec),
                     sweep.dir)
        sweep.id = state.get("id", "")
    return sweep


def _take(sweep, trial):
    """The trial's lock, if free (its fd), else None. A trial whose claimer on this host is dead, but whose lock
    is still held (its child is being killed), is waited for."""
    fd = os.open(str(sweep.trial_lock(trial["trial"])), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        pass
    worker = trial.get("worker") or {}
    if worker.get("host") == sweep.host and not alive(worker.get("pid", 0)):
        fcntl.flock(fd, fcntl.LOCK_EX)  # the dead driver's child is on its way out (parent-death signal)
        return fd
    os.close(fd)
    return None


def _history(state):
    return [(t["flags"], t.get("value") if t["state"] == "done" else None) for t in state["trials"]
            if t["state"] in ("done", "failed")]


def claim(sweep, retry, tried):
    """Under the lock: the next trial this process runs (resumable ones first, then a new one), marked running,
    and its lock's fd; None when none is left for this process. `tried`: trials this process ran already."""
    with sweep.locked():
        state = sweep.load()
        for trial in state["trials"]:
            again = trial["state"] in RESUMABLE + ("running",) or (retry and trial["state"] == "failed")
            if not again or trial["trial"] in tried:
                continue
            fd = _take(sweep, trial)
            if fd is not None:
                return _mark(sweep, state, trial, fd)
        n = len(state["trials"])
        values = sweep_spec.trial(state["spec"], n, _history(state))
        if values is None:
            return None
        trial = {"trial": n, "run": sweep.run_name(n), "flags": values, "state": "pending", "attempts": 0,
                 "seconds": 0.0}
        state["trials"].append(trial)
        atomic.write_text(sweep.dir / ("trial-%d.yaml" % n), yaml.safe_dump(
            dict(sorted(dict(state["spec"]["base"], **values).items())), default_flow_style=False, sort_keys=False))
        fd = _take(sweep, trial)
        return _mark(sweep, state, trial, fd)


def _mark(sweep, state, trial, fd):
    if trial["state"] == "running":
        trial["state"] = "interrupted"  # its claimer died: said so in the log, then resumed
        log.info("trial %d (%s) was interrupted (its process is gone): resuming it from its checkpoint",
                 trial["trial"], trial["run"])
    trial.update(state="running", attempts=trial["attempts"] + 1, worker={"host": sweep.host, "pid": sweep.pid},
                 started=time.time())
    sweep.save(state)
    return dict(trial), fd


def _parent_death_kill(driver):
    """In the child before exec: die with the driver (a kill -9 of the sweep leaves no trial running on), also
    when the driver died between the fork and this call."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != driver:
        os._exit(1)


class Worker(threading.Thread):
    """Runs trials one after another until none is left or a stop came; slot: its GPU (or None)."""

    def __init__(self, driver, slot):
        super(Worker, self).__init__(name="sweep-worker-%d" % slot, daemon=True)
        self.driver, self.slot, self.child, self.error = driver, slot, None, None

    def run(self):
        try:
            while not self.driver.stop.requested:
                got = claim(self.driver.sweep, self.driver.cfg.retry_failed, self.driver.tried)
                if got is None:
                    return
                trial, fd = got
                self.driver.tried.add(trial["trial"])
                try:
                    code, seconds = self.run_trial(trial, fd)
                finally:
                    os.close(fd)
                self.driver.finish(trial, code, seconds)
        except BaseException as err:  # reported by the driver (a bug, a full disk): never a silent thread death
            self.error = err

    def command(self, trial):
        cfg, sweep = self.driver.cfg, self.driver.sweep
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(sweep.dir / ("trial-%d.yaml" % trial["trial"])),
               "--run-name", trial["run"], "--resume", "auto", "--progress", "plain", "--logs-dir", cfg.logs_dir,
               "--models-dir", cfg.models_dir, "--data-dir", cfg.data_dir,
               "--sweep-trial", "%s:%s:%d" % (sweep.name, sweep.id, trial["trial"])]
        if cfg.data_checksums:
            cmd += ["--data-checksums", cfg.data_checksums]
        if cfg.slurm_lead:
            cmd += ["--slurm-lead", str(cfg.slurm_lead)]
        return cmd

    def run_trial(self, trial, fd):
        driver = self.driver
        env = dict(os.environ, PYTHONUNBUFFERED="1", TRAIN_REQUEUE="parent")
        env.pop("STARTED_MARK", None)
        if driver.gpus:
            env["CUDA_VISIBLE_DEVICES"] = driver.gpus[self.slot % len(driver.gpus)]
        elif driver.cfg.parallel > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // driver.cfg.parallel))
        log.info("trial %d (%s): %s%s", trial["trial"], trial["run"], sweep_results.describe_flags(trial["flags"]),
                 " (again, attempt %d)" % trial["attempts"] if trial["attempts"] > 1 else "")
        t0 = time.time()
        with open(str(driver.sweep.dir / ("trial-%d.log" % trial["trial"])), "ab") as out:
            self.child = subprocess.Popen(self.command(trial), stdout=out, stderr=subprocess.STDOUT, env=env,
                                          cwd=str(ROOT), pass_fds=(fd,), start_new_session=True,
                                          preexec_fn=functools.partial(_parent_death_kill, os.getpid()))
            if driver.stop.requested:
                driver.forward(self.child)
            code = self.child.wait()
        return code, time.time() - t0


class Driver(object):
    def __init__(self, cfg, stop, sweep):
        self.cfg, self.stop, self.sweep = cfg, stop, sweep
        self.tried = set()
        self.gpus = _gpus()
        self.workers = []
        self.forwarded = set()

    def forward(self, child):
        """Pass the stop on to a trial once: it saves and stops (the same signal: Slurm's warning stays one)."""
        if child is None or child.pid in self.forwarded or child.poll() is not None:
            return
        self.forwarded.add(child.pid)
        sig = getattr(signal, self.stop.name, signal.SIGTERM) if str(self.stop.name).startswith("SIG") else \
            signal.SIGTERM
        if sig == signal.SIGINT:  # a second SIGINT would abort the trial: one stop is a SIGTERM
            sig = signal.SIGTERM
        try:
            child.send_signal(sig)
        except OSError:
            pass

    def run(self):
        n = self.cfg.parallel
        self.workers = [Worker(self, i) for i in range(n)]
        for w in self.workers:
            w.start()
        while any(w.is_alive() for w in self.workers):
            for w in self.workers:
                w.join(0.2)
                if self.stop.requested:
                    self.forward(w.child)
        errors = [w.error for w in self.workers if w.error is not None]
        if errors:
            raise errors[0]

    def finish(self, trial, code, seconds):
        """Record how a trial ended (done, stopped, failed) with its results, under the lock."""
        outcome = sweep_results.outcome(self.sweep, trial, code, self.stop.requested)
        with self.sweep.locked():
            state = self.sweep.load()
            saved = state["trials"][trial["trial"]]
            saved.update(outcome, seconds=saved.get("seconds", 0.0) + seconds)
            saved.pop("worker", None)
            saved.pop("started", None)
            self.sweep.save(state)
            if saved["state"] == "done":
                sweep_results.write_view(self.sweep, state, saved)
        log.info("trial %d (%s) %s", trial["trial"], trial["run"],
                 sweep_results.describe_outcome(saved, self.sweep.dir))


def _gpus():
    """The GPUs trials are spread over: CUDA_VISIBLE_DEVICES's entries, else every GPU torch sees."""
    import torch
    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def run(cfg, user, stop):
    """The sweep command; its exit code. A file it cannot write (a full disk) is one line: its state file is
    written atomically, so what it held stays, and the same command continues once there is space."""
    if cfg.resume or cfg.evaluate or cfg.predict or cfg.reproduce or cfg.init_from:
        raise UsageError("--sweep/--seeds start and continue trials themselves: drop --resume, --evaluate, "
                         "--predict, --reproduce and --init-from (put init_from in the spec's base)")
    try:
        return _run(cfg, user, stop)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        raise TrainingError("the sweep cannot write %s (%s); its state is kept as it was: free space there (or "
                            "point --logs-dir elsewhere), then run the same command again"
                            % (err.filename or cfg.logs_dir, err.strerror or err))


def _run(cfg, user, stop):
    sweep = open_sweep(cfg, user)
    console.setup(sweep.dir / "sweep.log", False, True)
    mark = RunPaths(cfg).started_mark()
    if mark is not None:  # run.sh waits for it: the sweep runs, its checks passed (its trials write none)
        atomic.write_text(mark, sweep.name + "\n")
    driver = Driver(cfg, stop, sweep)
    driver.run()
    with sweep.locked():
        state = sweep.load()
    left = sweep_results.unfinished(state)
    if stop.requested:
        running = [t["run"] for t in state["trials"] if t["state"] in RESUMABLE + ("running",)]
        log.info("sweep %s stopped by %s%s; continue it with the same command", sweep.name, stop.name,
                 " (trials saved: %s)" % ", ".join(running) if running else "")
        return _after_stop(stop, left)
    halted = [t["run"] for t in state["trials"] if t["state"] in RESUMABLE]
    if halted:  # a signal sent to the trial itself, not to this driver
        log.info("sweep %s: %d trials were stopped by a signal sent to them (%s); continue them with the same "
                 "command", sweep.name, len(halted), ", ".join(halted[:10]))
    others = [run for run in left if run not in halted]
    if others:
        log.info("sweep %s: %d trials are being run by other processes (%s); the last one to finish prints the "
                 "summary (or run this command again later)", sweep.name, len(others), ", ".join(others[:10]))
    if left:
        return 0
    sweep_results.summarize(sweep, state)
    failed = [t for t in state["trials"] if t["state"] == "failed"]
    return 1 if failed else 0


def _after_stop(stop, left):
    """After a stop: Slurm's warning requeues the job once, unless the sweep is complete (the trials leave the
    requeue to this process; without scontrol here, requeue's exit 75 has the job script do it)."""
    job = slurm.job()
    if not (stop.warning and job is not None and left):
        return 0
    return slurm.requeue(job, stop)
