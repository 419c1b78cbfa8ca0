"""Checkpoints: full state, weights-only loadable, verified on load with fallback to models/tmp, atomic
under kill -9 in the middle of a write, retention, best judged at every evaluation."""
import random
import signal
import time

import pytest
import torch

from conftest import FAST, load, same_weights, stop_at, wait_for_line
from src.state import fileformat


def test_checkpoint_holds_the_full_state_and_loads_weights_only(project):
    project.ok(*(FAST + ["--max-steps", "7", "--ckpt-every", "5", "--log-every", "3"]))
    state = load(project.latest("digits-mlp"))  # weights_only=True
    for key in ("model", "optimizer", "scheduler", "scaler", "meter", "progress", "best", "rng", "config",
                "versions", "git_commit", "format"):
        assert key in state, key
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert state["progress"] == {"epoch": 0, "sample_in_epoch": 7 * 32, "step": 7, "eval_pending": False,
                                 "stale_evals": 0, "stale_ref": None, "stale_ref_loss": None}
    assert state["scheduler"]["last_epoch"] == 7
    assert state["optimizer"]["state"], "momentum buffers are saved"
    assert state["config"]["max_steps"] == 7 and state["versions"]["torch"] == torch.__version__
    partial = load(project.tmp_dir("digits-mlp") / "step-5.pt")
    assert float(partial["meter"]["steps"]) == 2  # the unlogged window (steps 4, 5) is saved too
    assert sorted(p.name for p in project.tmp_dir("digits-mlp").iterdir()) == ["step-5.pt", "step-7.pt"]


def test_keep_last_prunes_models_tmp(project):
    project.ok(*(FAST + ["--max-steps", "30", "--ckpt-every", "4", "--keep-last", "2"]))
    assert sorted(p.name for p in project.tmp_dir("digits-mlp").iterdir()) == ["step-28.pt", "step-30.pt"]


def test_best_is_judged_at_every_evaluation_not_only_on_save_steps(project):
    res = project.ok(*(FAST + ["--max-steps", "60", "--eval-every", "7", "--ckpt-every", "25",
                               "--monitor", "val/loss:min"]))
    best = load(project.best("digits-mlp"))
    new_best = [int(line.split(" at step ")[1].split()[0]) for line in res.stderr.splitlines()
                if line.startswith("new best")]
    assert len(new_best) >= 2 and all(step % 7 == 0 or step == 60 for step in new_best), new_best
    assert any(step % 25 for step in new_best[:-1]), "best saved only on checkpoint steps"
    assert best["best"]["step"] == best["progress"]["step"] == new_best[-1]
    losses = [float(line.split("val/loss ")[1].split(",")[0]) for line in res.stderr.splitlines()
              if line.startswith("eval step")]
    assert best["best"]["value"] == pytest.approx(min(losses), abs=1e-4)


def _stop_mid_run(project, at=40):
    args = FAST + ["--epochs", "2", "--ckpt-every", "10", "--run-name", "c"]
    code, _, _ = stop_at(project.start(*args), signal.SIGTERM, "step ", at)
    assert code == 0
    return args


@pytest.mark.parametrize("damage", ["truncate", "flip-bytes"])
def test_corrupt_latest_falls_back_to_newest_valid_tmp(project, damage):
    args = _stop_mid_run(project)
    latest = project.latest("c")
    stopped = load(latest)["progress"]["step"]
    blob = bytearray(latest.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:  # flip bytes inside the tensor data: torch.load alone would not notice
        for i in range(len(blob) // 2, len(blob) // 2 + 16):
            blob[i] ^= 0xFF
    latest.write_bytes(bytes(blob))
    res = project.ok("--resume", "--run-name", "c")
    assert "WARNING: %s is unreadable" % latest in res.stderr
    assert "resuming from %s" % (project.tmp_dir("c") / ("step-%d.pt" % stopped)) in res.stderr
    assert load(latest)["progress"]["step"] == 90
    # and it matches a run that was never damaged
    project.ok(*(args[:-1] + ["clean"]))
    assert same_weights(load(latest)["model"], load(project.latest("clean"))["model"])


def test_no_valid_checkpoint_at_all_is_an_error_that_deletes_nothing(project):
    _stop_mid_run(project, at=15)
    files = [project.latest("c")] + list(project.tmp_dir("c").iterdir())
    for path in files:
        path.write_bytes(b"garbage")
    res = project.run("--resume", "--run-name", "c")
    assert res.returncode == 2 and "no readable checkpoint" in res.stderr
    assert all(p.read_bytes() == b"garbage" for p in files)


def _write_in_progress(folders):
    return [p for folder in folders if folder.is_dir() for p in folder.iterdir() if ".tmp-" in p.name]


def test_kill_9_during_checkpoint_writes_never_leaves_an_unreadable_checkpoint(project):
    # ~11M parameters: each save (model + momentum, ~90 MB) takes long enough to be hit by a kill.
    args = ["--dataset", "synthetic", "--synthetic-size", "256", "--synthetic-shape", "3,32,32", "--model", "mlp",
            "--width", "2048", "--depth", "2", "--batch-size", "64", "--ckpt-every", "1", "--keep-last", "2",
            "--deterministic", "--progress", "plain", "--run-name", "big", "--resume", "auto"]
    latest = project.latest("big")
    folders = (latest.parent, project.tmp_dir("big"))
    hit_a_write = 0
    rng = random.Random(0)
    for attempt in range(5):
        proc = project.start(*args)
        wait_for_line(proc, lambda line: line.startswith("saved checkpoint step"))
        if attempt < 3:  # the moment a temporary checkpoint file appears: mid-write for sure
            deadline = time.time() + 60
            while not _write_in_progress(folders) and time.time() < deadline:
                time.sleep(0.001)
        else:  # anywhere
            time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        hit_a_write += bool(_write_in_progress(folders))
        assert fileformat.load(latest)["progress"]["step"] >= 1  # readable and matching its digest
    assert hit_a_write >= 2, "kills never landed during a write"
    res = project.ok(*(args + ["--max-steps", str(load(latest)["progress"]["step"] + 1)]))
    assert "resuming from %s" % latest in res.stderr
    assert not _write_in_progress(folders), "the leftover temporary files were not cleaned up"


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(project):
    res = project.run(*(FAST + ["--lr", "1e6", "--ckpt-every", "1", "--log-every", "1"]))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("train.py: error: non-finite loss, gradient or weights")
    state = fileformat.load(project.latest("digits-mlp"))
    assert state["progress"]["step"] >= 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert "last good checkpoint is kept" in res.stderr
