"""The non-blocking checkpoint writer on real tensors and files: what is written is the state at the moment
of the save even though training goes on changing it, writes happen one at a time, and a failed write is
raised in the training thread instead of being lost."""
import threading

import pytest
import torch

from conftest import load
from src.state import fileformat
from src.state.writer import CheckpointWriter


def state(weights, step):
    return {"model": {"w": weights}, "progress": {"step": step}}


def test_the_file_holds_the_state_of_the_save_not_later_changes(tmp_path):
    writer = CheckpointWriter(background=True)
    weights = torch.arange(4_000_000, dtype=torch.float32)  # 16 MB: the write takes a while
    expected = weights.clone()
    writer.submit(state(weights, 1), (tmp_path / "latest.pt", tmp_path / "step-1.pt"))
    weights.mul_(-1)  # the next training step changes the weights in place while the write goes on
    writer.wait()
    for name in ("latest.pt", "step-1.pt"):
        got = fileformat.load(tmp_path / name, full=False)  # its digest record matches its bytes
        assert torch.equal(got["model"]["w"], expected), name


def test_one_write_at_a_time_and_each_complete(tmp_path):
    writer = CheckpointWriter(background=True)
    weights = torch.zeros(1_000_000)
    running = []
    original = fileformat.write

    def watched(payload, *paths):
        running.append(threading.current_thread().name)
        assert len([t for t in threading.enumerate() if t.name == "checkpoint-writer"]) <= 1
        original(payload, *paths)

    fileformat.write = watched
    try:
        for step in range(1, 6):
            weights.fill_(step)
            writer.submit(state(weights, step), (tmp_path / "latest.pt", tmp_path / ("step-%d.pt" % step)))
        writer.wait()
    finally:
        fileformat.write = original
    assert running == ["checkpoint-writer"] * 5  # off the training thread, all five
    for step in range(1, 6):
        got = load(tmp_path / ("step-%d.pt" % step))
        assert got["progress"]["step"] == step and float(got["model"]["w"][0]) == step
    assert load(tmp_path / "latest.pt")["progress"]["step"] == 5


def test_a_failed_background_write_is_raised_by_the_next_wait(tmp_path):
    writer = CheckpointWriter(background=True)
    target = tmp_path / "missing-folder" / "latest.pt"  # the folder does not exist: the write fails
    writer.submit(state(torch.ones(3), 1), (target,))
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # reported once
    assert not target.exists()


def test_the_synchronous_mode_writes_before_returning(tmp_path):
    writer = CheckpointWriter(background=False)
    writer.submit(state(torch.ones(3), 7), (tmp_path / "latest.pt",))
    assert load(tmp_path / "latest.pt")["progress"]["step"] == 7
