"""Data parallel training on CPU with 2 processes (gloo), started the way run.sh --nproc starts it: the run
completes, its losses match one process with the same global batch, only rank 0 writes files, and a run
stopped by a signal resumes exactly (on 2 processes, or on 1)."""
import os
import signal

import pytest
import torch

from conftest import FAST, load, same_weights, scalars, summary_steps, wait_for_line

# 2 epochs of 45 steps at global batch 32; 1437 samples leave a last batch of 29, split 14 + 15
ARGS = FAST + ["--epochs", "2", "--log-every", "5", "--eval-every", "15", "--ckpt-every", "20", "--run-name", "ddp"]
COMPARED = ("train/loss", "train/acc", "train/lr", "train/grad_norm", "val/loss", "val/acc")
# Two processes add the same gradients in another order than one: float32 rounding, nothing more.
RTOL = 1e-4

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")


def ok(res):
    assert res.returncode == 0, "launch failed (%d):\n%s\n%s" % (res.returncode, res.stdout[-3000:],
                                                                  res.stderr[-3000:])
    return res


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from conftest import Project
    project = Project(tmp_path_factory.mktemp("ddp"))
    res = ok(project.launch(2, *ARGS))
    return project, res


def test_two_processes_match_one_with_the_same_global_batch(ddp_run, project):
    ddp, res = ddp_run
    assert "x 2 processes (global batch 32)" in res.stderr
    ok(project.launch(1, *ARGS))
    one, two = scalars(project.run_dir("ddp")), scalars(ddp.run_dir("ddp"))
    for tag in COMPARED:
        assert [s for s, _ in two[tag]] == [s for s, _ in one[tag]], tag
        for (step, a), (_, b) in zip(one[tag], two[tag]):
            assert b == pytest.approx(a, rel=RTOL, abs=1e-6), "%s at step %d: %r vs %r" % (tag, step, a, b)
    w1, w2 = load(project.latest("ddp"))["model"], load(ddp.latest("ddp"))["model"]
    for key in w1:
        assert torch.allclose(w1[key], w2[key], rtol=1e-3, atol=1e-5), key
    assert load(ddp.latest("ddp"))["progress"]["step"] == 90


def test_only_rank_0_writes(ddp_run):
    project, res = ddp_run
    run_dir = project.run_dir("ddp")
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1, "a second process wrote TensorBoard events"
    log = (run_dir / "train.log").read_text()
    for line in ("step 45/90 ", "saved checkpoint step 20 ", "saved checkpoint step 90 ", "eval step 30:"):
        assert log.count(line) == 1, "%r logged %d times" % (line, log.count(line))
    assert "step 45/90" in res.stderr and res.stderr.count("step 45/90 ") == 1
    assert sorted(p.name for p in project.tmp_dir("ddp").iterdir()) == ["step-60.pt", "step-80.pt", "step-90.pt"]
    state = load(project.latest("ddp"))
    assert len(state["rng_ranks"]) == 2, "the checkpoint lacks the random state of every rank"
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])


@pytest.mark.parametrize("resume_nproc", [2, 1])
def test_stopped_ddp_run_resumes(ddp_run, project, resume_nproc):
    baseline, _ = ddp_run
    proc = project.start_launch(2, *ARGS)
    wait_for_line(proc, lambda line: line.startswith("step 25/"))
    os.killpg(proc.pid, signal.SIGTERM)  # what docker stop (tini -g), kill and Ctrl-C in a terminal reach
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out  # the launcher passed the stop on to the workers, which saved and exited 0
    assert "saved checkpoint step" in out and "(stop signal)" in out, out
    assert "continue with: python -m src.launch 2 --resume --run-name ddp" in out
    stopped = load(project.latest("ddp"))["progress"]["step"]
    assert 25 <= stopped < 90
    res = ok(project.launch(resume_nproc, *(ARGS + ["--resume"])))
    assert "at step %d" % stopped in res.stderr
    got, want = load(project.latest("ddp")), load(baseline.latest("ddp"))
    assert got["progress"]["step"] == 90
    for tag in COMPARED:
        steps = summary_steps(project.run_dir("ddp"), tag)
        assert steps == sorted(set(steps)), "%s: duplicate or out-of-order steps %s" % (tag, steps)
    if resume_nproc == 2:  # same processes, same order of additions: bit-identical
        assert same_weights(got["model"], want["model"]), "resumed DDP run differs from the uninterrupted one"
        assert scalars(project.run_dir("ddp")) == scalars(baseline.run_dir("ddp"))
    else:  # one process continues the same data order; only float rounding differs
        for key in want["model"]:
            assert torch.allclose(got["model"][key], want["model"][key], rtol=1e-3, atol=1e-5), key


def test_global_batch_smaller_than_the_processes_is_one_clear_error(project):
    res = project.launch(2, *(FAST + ["--batch-size", "1", "--max-steps", "2"]))
    assert res.returncode != 0
    errors = [line for line in (res.stdout + res.stderr).splitlines() if "train.py: error:" in line]
    assert len(errors) == 1 and "--batch-size 1 is the global batch" in errors[0], res.stderr[-2000:]
    assert not project.latest("digits-mlp").exists()


@pytest.mark.parametrize("val_split", ["0.0007", "0.0013"])  # 1 and 2 validation samples for 2 processes
def test_a_split_smaller_than_the_processes_evaluates_on_every_rank(project, val_split):
    """A rank with no samples of a split adds nothing to its sums: the metrics are those of the samples there."""
    res = ok(project.launch(2, *(FAST + ["--max-steps", "4", "--eval-every", "2", "--val-split", val_split])))
    assert "Traceback" not in res.stderr
    one = project.ok(*(FAST + ["--max-steps", "4", "--eval-every", "2", "--val-split", val_split,
                                "--run-name", "one"]))
    assert "Traceback" not in one.stderr
    two, single = scalars(project.run_dir("digits-mlp")), scalars(project.run_dir("one"))
    assert [s for s, _ in two["val/loss"]] == [2, 4]
    for (_, a), (_, b) in zip(two["val/loss"], single["val/loss"]):
        assert a == pytest.approx(b, rel=RTOL)
