"""Signals: SIGTERM/SIGINT finish the step, save latest, flush TensorBoard and exit 0 well within the 10 s
grace period of `docker stop`; a second Ctrl-C aborts at once; one trainer per run."""
import http.server
import os
import signal
import threading
import time

import pytest

from conftest import FAST, load, scalars, stop_at, wait_for_line

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


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8, 1.5])
def test_sigterm_at_any_moment_of_start_up_exits_cleanly(project, delay):
    proc = project.start(*SLOW)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped by SIGTERM before training started" in out or "saved checkpoint step" in out, out


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
