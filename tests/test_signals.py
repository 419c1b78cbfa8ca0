"""Signals: SIGTERM/SIGINT finish the step, save latest, flush TensorBoard and exit 0 well within the 10 s
grace period of `docker stop`; a second Ctrl-C aborts at once; one trainer per run."""
import http.server
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST, children, handler_installed, load, scalars, stop_at, wait_for_line, write_images

SLOW = FAST + ["--epochs", "50", "--log-every", "1", "--ckpt-every", "1000"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_flushes_and_exits_0_quickly(project, sig):
    code, out, seconds = stop_at(project.start(*SLOW), sig, "step ", 25)
    assert code == 0, out
    assert seconds < 5, "took %.1f s to stop" % seconds
    assert "received: finishing this step" in out and "saved checkpoint step" in out
    step = load(project.latest("digits-mlp"))["progress"]["step"]
    assert 25 <= step < 2250
    logged = [s for s, _ in scalars(project.run_dir("digits-mlp"))["train/loss"]]
    assert logged[-1] == step, "TensorBoard was not flushed up to the stop step"
    assert "continue with: python train.py --resume" in out


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU])
def test_every_stop_like_signal_saves_and_exits_0_outside_slurm_too(project, sig):
    """Cluster tools, `timeout -s USR1` and other schedulers (a CPU-time limit: SIGXCPU) stop a plain run: it saves,
    exits 0 and resumes; used to die by the signal's default action (no checkpoint, exit 138/140)."""
    project.env.pop("SLURM_JOB_ID", None)
    code, out, _ = stop_at(project.start(*SLOW), sig, "step ", 10)
    name = signal.Signals(sig).name
    assert code == 0 and "%s received: finishing this step" % name in out and "saved checkpoint step" in out, out
    assert "requeue" not in out, out
    step = load(project.latest("digits-mlp"))["progress"]["step"]
    assert step >= 10
    code, out, _ = stop_at(project.start(*(SLOW + ["--resume"])), signal.SIGTERM, "step ", step + 2)
    assert code == 0 and "resuming from" in out and "already being trained" not in out, out


# A test plugin: the MLP, which touches $MARK and sleeps 0.2 s before each forward pass in eval mode (so that a
# --predict or --evaluate is under way when the test sees the file)
SLOW_EVAL_MODEL = '''"""The MLP, slow in eval mode once $MARK is set."""
import os
import time

from . import register
from .mlp import build as mlp


@register("sloweval")
def build(input_shape, num_classes, cfg):
    net = mlp(input_shape, num_classes, cfg)

    def hold(module, inputs):
        mark = os.environ.get("MARK")
        if mark and not module.training:
            open(mark, "a").close()
            time.sleep(0.2)
    net.register_forward_pre_hook(hold)
    return net
'''


@pytest.mark.parametrize("command,sig", [("--predict", signal.SIGUSR1), ("--predict", signal.SIGTERM),
                                         ("--evaluate", signal.SIGUSR2), ("--evaluate", signal.SIGHUP)])
def test_a_stop_during_predict_or_evaluate_ends_it_at_once_with_nothing_written(project, command, sig):
    """--predict and --evaluate have nothing to save: a stop ends them within a second, writes no partial file and
    says so in one line (exit 128 + the signal); the same command afterwards works. They used to say "saving, then
    exiting" and go on (SIGTERM), or die without a word (SIGUSR1)."""
    (project.root / "src" / "models" / "sloweval.py").write_text(SLOW_EVAL_MODEL)
    write_images(project.root / "data" / "pets", 12)
    project.ok("--dataset", "folder:data/pets", "--model", "sloweval", "--width", "16", "--image-size", "8",
               "--batch-size", "4", "--max-steps", "2", "--progress", "plain", "--run-name", "pets")
    before = _written(project)
    args = (["--predict", "data/pets"] if command == "--predict" else ["--evaluate"]) + [
        "--run-name", "pets", "--batch-size", "1"]
    mark = project.root / "mark"
    project.env["MARK"] = str(mark)
    proc = project.start(*args)
    deadline = time.time() + 120
    while not mark.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    sent = time.time()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig and time.time() - sent < 5, out
    assert "%s stopped by %s; nothing was written (run the same command again)" % (command, name) in out, out
    assert "saving" not in out and "Traceback" not in out, out
    assert _written(project) == before
    project.env.pop("MARK")
    project.ok(*args)
    made = set(_written(project)) - set(before)
    assert made == ({"logs/pets/predictions-pets.csv", "logs/pets/predictions.json"} if command == "--predict" else
                    {"logs/pets/evaluate-test.json"}), made


def test_second_ctrl_c_aborts_at_once(project):
    # slow steps (~50M parameters) so that the second Ctrl-C lands while the first is still being honoured
    proc = project.start("--dataset", "synthetic", "--synthetic-size", "128", "--synthetic-shape", "3,64,64",
                         "--model", "mlp", "--width", "4096", "--batch-size", "64", "--progress", "plain",
                         "--log-every", "1", "--ckpt-every", "1000")
    wait_for_line(proc, lambda line: line.startswith("step 1/"))
    proc.send_signal(signal.SIGINT)
    # two signals that arrive while the main thread is inside one long torch op are merged into one by the OS and
    # Python; the second Ctrl-C counts only once the first has been seen, so wait for its message
    wait_for_line(proc, lambda line: "SIGINT received" in line)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert time.time() - sent < 3
    assert "train.py: aborted" in out


def test_second_trainer_on_a_running_run_refuses_and_a_dead_ones_lock_does_not_block(project):
    first = project.start(*SLOW)
    wait_for_line(first, lambda line: line.startswith("step 5/"))
    res = project.run(*SLOW)
    assert res.returncode == 1
    assert "already being trained (pid %d" % first.pid in res.stderr
    wait_for_line(first, lambda line: line.startswith("step 30/"))
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (project.run_dir("digits-mlp") / "run.lock").exists()
    code, out, _ = stop_at(project.start(*(SLOW + ["--resume", "auto"])), signal.SIGTERM, "step ", 3)
    assert code == 0 and "fresh start" in out


def test_sighup_saves_like_sigterm(project):
    code, out, _ = stop_at(project.start(*SLOW), signal.SIGHUP, "step ", 10)
    assert code == 0 and "SIGHUP received" in out and "saved checkpoint step" in out, out
    assert load(project.latest("digits-mlp"))["progress"]["step"] >= 10


def test_stop_of_the_whole_process_group_with_dataloader_workers_saves(project):
    """docker stop (tini -g) and kill -TERM -- -PGID signal the workers too: they ignore it, the trainer saves."""
    proc = project.start(*(SLOW + ["--num-workers", "2"]))
    wait_for_line(proc, lambda line: line.startswith("step 20/"))
    os.killpg(proc.pid, signal.SIGTERM)  # the test started it in its own session: pgid == pid
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "killed by signal" not in out and "saved checkpoint step" in out, out
    assert load(project.latest("digits-mlp"))["progress"]["step"] >= 20


def _written(project):
    """Every file a run made in logs/ and models/ (the checkout's empty folders are not counted)."""
    return sorted(str(p.relative_to(project.root)) for p in list(project.root.glob("logs/**/*"))
                  + list(project.root.glob("models/**/*")) if p.is_file())


def test_a_sigterm_before_the_handler_exists_writes_nothing_and_the_next_start_works(project):
    """A signal sent as the process starts may come before the interpreter runs a line of train.py: then it dies
    of it (as any program would), having written nothing; a later start, or --resume, works."""
    for _ in range(3):
        proc = project.start(*SLOW)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGTERM), out
        if proc.returncode == 0:
            assert "stopped by SIGTERM before training started" in out, out
        assert _written(project) == []
    code, out, _ = stop_at(project.start(*(SLOW + ["--resume", "auto"])), signal.SIGTERM, "step ", 3)
    assert code == 0 and "fresh start" in out and "saved checkpoint step" in out, out


@pytest.mark.parametrize("delay", [0, 0.05, 0.3, 0.8, 1.5])
def test_sigterm_at_any_moment_once_the_handler_is_installed_exits_0(project, delay):
    proc = project.start(*SLOW)
    assert handler_installed(proc), proc.communicate()[0]
    time.sleep(delay)  # aims the signal at a moment of start-up; the assertions hold at any moment
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    if "saved checkpoint step" not in out:
        assert "stopped by SIGTERM before training started" in out, out
        assert _written(project) == [], "a stop before training wrote files"
    if any(line.startswith("step ") for line in out.splitlines()):
        assert "saved checkpoint step" in out, "a step was done but no stop checkpoint saved:\n" + out


WORKERS = FAST + ["--epochs", "2", "--num-workers", "2", "--eval-every", "10", "--log-every", "10"]


def _group_stop(proc, sig=signal.SIGTERM):
    os.killpg(proc.pid, sig)  # the test started it in its own session: pgid == pid, as docker stop (tini -g)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


@pytest.mark.parametrize("after,offset", [("first worker", 0), ("fresh start", 0.02), ("fresh start", 0.1),
                                          ("step 10/", 0), ("step 10/", 0.02), ("step 10/", 0.05),
                                          ("step 10/", 0.1), ("step 10/", 0.3)])
def test_docker_stop_while_dataloader_workers_start_saves_and_exits_0(project, after, offset):
    """Workers start with stop signals blocked and ignore them from their first instruction (the training
    loader's workers at the start, the validation loader's at step 10)."""
    proc = project.start(*WORKERS)
    if after == "first worker":  # the moment a worker is forked
        deadline = time.time() + 120
        while not children(proc.pid) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.001)
    else:
        wait_for_line(proc, lambda line: after in line)
        time.sleep(offset)
    code, out = _group_stop(proc)
    assert code == 0, out
    assert "killed by signal" not in out and "Traceback" not in out, out
    assert "saved checkpoint step" in out or "stopped by SIGTERM before training started" in out, out


@pytest.mark.parametrize("sig,offset", [(signal.SIGTERM, 0), (signal.SIGTERM, 0.01), (signal.SIGTERM, 0.05),
                                        (signal.SIGTERM, 0.2), (signal.SIGHUP, 0), (signal.SIGINT, 0.01)])
def test_a_stop_during_shutdown_changes_nothing(project, sig, offset):
    """After `done:` the work is saved: a stop while workers are joined and files closed keeps exit 0."""
    proc = project.start(*(FAST + ["--epochs", "1", "--num-workers", "2"]))
    wait_for_line(proc, lambda line: line.startswith("done"))
    time.sleep(offset)
    code, out = _group_stop(proc, sig)
    assert code == 0, out
    assert "Traceback" not in out, out
    assert (project.run_dir("digits-mlp") / "metrics.json").is_file()


@pytest.mark.parametrize("which,step", [(0, 8), (1, 9), (1, 44), (0, 45)])
def test_a_dataloader_worker_killed_at_any_moment_is_one_line_and_a_whole_step(project, which, step):
    """torch reports a worker's death from a SIGCHLD handler, wherever the main thread is (inside a logging call,
    which swallowed it; halfway through receiving a batch, which left a broken connection): the loop now raises
    it between two steps. Step 45 ends the first epoch (persistent workers are woken for the next). The training
    loader's two workers are taken at step 3, when no other loader has any (the validation loader's start at the
    end of the epoch, and under load they may already be there when step 44 is read)."""
    proc = project.start(*(SLOW + ["--num-workers", "2"]))
    wait_for_line(proc, lambda line: line.startswith("step 3/"))
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    wait_for_line(proc, lambda line: line.startswith("step %d/" % step))
    os.kill(workers[which], signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    errors = [line for line in out.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and "saved step" in errors[0], out
    assert "Traceback" not in out and "Logging error" not in out, out
    assert load(project.latest("digits-mlp"))["progress"]["step"] >= 8


BUGGY = '''import os
from . import ArrayDataset, register
from .digits import build as digits


class Buggy(ArrayDataset):
    def __getitem__(self, index):
        if os.path.exists(os.environ["BUG_FLAG"]):
            return 1 // 0  # a bug in the researcher's own dataset, met in a loader worker
        return super(Buggy, self).__getitem__(index)


@register("buggy")
def build(cfg):
    s = digits(cfg)
    return s._replace(train=Buggy(s.train.x, s.train.y, s.train.scale, s.train.mean, s.train.std))
'''


def test_a_bug_in_your_dataset_shows_its_traceback_keeps_the_checkpoint_and_does_not_hang(project):
    """An error of the researcher's own code is not ours to word: its traceback, exit 1, the last checkpoint kept;
    the loader workers (which ignore stop signals) are killed on the way out, not waited for forever."""
    (project.root / "src" / "data" / "buggy.py").write_text(BUGGY)
    flag = project.root / "bug.flag"
    project.env["BUG_FLAG"] = str(flag)
    proc = project.start(*(FAST + ["--dataset", "buggy", "--epochs", "50", "--log-every", "1", "--ckpt-every", "4",
                                   "--num-workers", "2"]))
    wait_for_line(proc, lambda line: line.startswith("saved checkpoint step 8 "))
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    flag.write_text("now")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "ZeroDivisionError" in out and "Traceback" in out and "buggy.py" in out, out
    assert load(project.latest("buggy-mlp"))["progress"]["step"] >= 8
    assert not [pid for pid in workers if _alive(pid)], "a loader worker outlived its trainer"


def _alive(pid):
    try:
        return "\tZ" not in Path("/proc/%d/status" % pid).read_text()  # a zombie is dead, just not yet reaped
    except FileNotFoundError:
        return False


def test_a_dataloader_worker_that_dies_saves_the_last_whole_step_says_so_and_does_not_hang(project):
    proc = project.start(*(SLOW + ["--num-workers", "2"]))
    wait_for_line(proc, lambda line: line.startswith("step 20/"))
    workers = children(proc.pid)
    assert workers, "no DataLoader worker found"
    os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    errors = [line for line in out.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and "DataLoader worker" in errors[0] and "--resume" in errors[0], out
    assert "Traceback" not in out, out
    assert "saved step" in errors[0] or "is kept" in errors[0], errors[0]
    step = load(project.latest("digits-mlp"))["progress"]["step"]
    assert step >= 20
    code, out, _ = stop_at(project.start(*(SLOW + ["--resume"])), signal.SIGTERM, "step ", step + 2)
    assert code == 0 and "resuming from" in out, out


def test_a_burst_of_sigterms_saves_once_and_exits_0(project):
    proc = project.start(*SLOW)
    wait_for_line(proc, lambda line: line.startswith("step 5/"))
    for _ in range(5):
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert out.count("SIGTERM received") == 1 and "stopped at step" in out, out


class _Endless(http.server.BaseHTTPRequestHandler):
    """Serves any file as an endless stream: slowly (a stalled mirror) or as fast as it can (a wrong file)."""

    slow = True

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\0" * (1024 if self.slow else 1 << 20))
                if self.slow:
                    time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def endless():
    servers = []

    def serve(slow):
        handler = type("Handler", (_Endless,), {"slow": slow})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return "http://127.0.0.1:%d" % server.server_address[1]

    yield serve
    for server in servers:
        server.shutdown()


def _parts(project):
    folder = project.root / "data" / "mnist"
    return sorted(p.name for p in folder.glob(".*.part-*")) if folder.is_dir() else []


@pytest.mark.parametrize("extra", [[], ["--prepare-data"]])
def test_sigterm_during_a_download_stops_at_once_and_removes_the_partial_file(project, endless, extra):
    proc = project.start("--dataset", "mnist", "--data-mirror", endless(slow=True), "--progress", "plain", *extra)
    deadline = time.time() + 60
    while not _parts(project) and time.time() < deadline:
        time.sleep(0.05)
    assert _parts(project), "the download never started"
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert time.time() - sent < 3, "took %.1f s to stop" % (time.time() - sent)
    assert proc.returncode == 0 and "stopped by SIGTERM before training started" in out, out
    assert _parts(project) == []


def test_an_endless_download_stops_at_the_files_size_and_kill_9_leftovers_are_removed(project, endless):
    url = endless(slow=False)
    res = project.run("--dataset", "mnist", "--data-mirror", url, "--prepare-data", "--progress", "plain")
    assert res.returncode == 1 and "sends more than the 1648877 bytes expected" in res.stderr, res.stderr
    assert _parts(project) == []
    proc = project.start("--dataset", "mnist", "--data-mirror", endless(slow=True), "--prepare-data")
    while not _parts(project):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert _parts(project), "kill -9 leaves its partial file"
    res = project.run("--dataset", "mnist", "--no-download", "--prepare-data")
    assert res.returncode == 1 and "missing" in res.stderr
    assert _parts(project) == [], "the dead process's partial file was not removed"
