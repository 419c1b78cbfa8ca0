"""Signals: SIGTERM/SIGINT finish the step, save latest, flush TensorBoard and exit 0 well within the 10 s
grace period of `docker stop`; a second Ctrl-C aborts at once; one trainer per run."""
import signal
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
