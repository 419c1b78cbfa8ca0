"""./run.sh --native on a machine without Docker (an HPC login node): a conda env named after the project,
or a .venv when conda is absent; training and TensorBoard in the background; purge.sh cleans up."""
import os
import time

import pytest

from checkout import fresh_checkout, gone


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    co = fresh_checkout(tmp_path_factory, "tplnative", drop_env=("BASE_IMAGE", "ENV_MANAGER", "REQUIREMENTS"))
    yield co
    co.sh("./purge.sh", "--yes", check=False)


def test_native_run_trains_in_the_background_with_tensorboard(native):
    res = native.sh("./run.sh", "--native", "--run-name", "nat", "--epochs", "2", "--log-every", "5")
    assert "TensorBoard:  http://127.0.0.1:%d" % native.tb_port in res.stdout
    env_python = native.root / ".venv" / "bin" / "python"
    assert env_python.exists() or "conda" in res.stdout
    pid = int((native.root / "logs" / ".train-native.pid").read_text().split()[0])
    refused = native.sh("./run.sh", "--native", "--run-name", "nat", check=False)
    if refused.returncode == 1:  # still training: a second one is refused
        assert "training is already running (pid %d)" % pid in refused.stdout
    native.wait_for_text(native.root / "logs" / "train-native.out", "done: 46 steps")
    deadline = time.time() + 600
    while not gone(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert native.tb_steps("nat", "val/acc", 46) == [23, 46]
    assert "done: 46 steps" in (native.root / "logs" / "train-native.out").read_text()
    assert os.readlink(str(native.root / "logs")) == "/tmp/%s/logs" % native.project


def test_native_run_on_a_finished_run_reports_why_nothing_trains(native):
    res = native.sh("./run.sh", "--native", "--run-name", "nat", "--epochs", "2")
    assert "training in the background" not in res.stdout, res.stdout[-3000:]
    assert "the trainer has already finished" in res.stdout and "its --epochs 2 are done" in res.stdout
    assert "stop it: kill" in res.stdout  # how to stop the native TensorBoard


def test_a_second_native_run_reuses_this_checkouts_tensorboard(native):
    tb_file = native.root / "logs" / ".tensorboard-native.pid"
    tb_pid = int(tb_file.read_text().split()[0])
    res = native.sh("./run.sh", "--native", "--run-name", "nat2", "--epochs", "1", "--log-every", "5")
    assert "TensorBoard:  http://127.0.0.1:%d" % native.tb_port in res.stdout, res.stdout[-3000:]
    assert "is taken by another program" not in res.stdout
    assert int(tb_file.read_text().split()[0]) == tb_pid and not gone(tb_pid)  # the same server, not a second
    native.wait_for_text(native.root / "logs" / "train-native.out", "done: 23 steps")
    assert native.tb_steps("nat2", "val/acc", 23) == [23]  # and it serves the new run


def test_purge_stops_the_native_tensorboard_and_removes_the_env(native):
    tb_pid = int((native.root / "logs" / ".tensorboard-native.pid").read_text().split()[0])
    native.sh("./purge.sh", "--yes")  # it waits for the processes it stops to exit
    deadline = time.time() + 60
    while not gone(tb_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert gone(tb_pid), "purge left the native TensorBoard running"
    assert not (native.root / ".venv").exists()
    assert not os.path.exists("/tmp/%s" % native.project)
    assert (native.root / "models" / "best" / "nat.pt").exists()

