"""Exact resume: a run stopped anywhere (SIGTERM, SIGINT, kill -9 after a checkpoint) and continued with
--resume ends with bit-identical weights and the same logged scalars as the run done in one go."""
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import FAST, Project, assert_same_scalars, load, same_weights, scalars, stop_at

# 3 epochs of 45 steps; dropout makes the result depend on the restored torch RNG state too.
ARGS = FAST + ["--epochs", "3", "--dropout", "0.2", "--log-every", "4", "--eval-every", "7", "--ckpt-every", "10",
               "--run-name", "exact"]
COMPARED = ("train/loss", "train/acc", "train/lr", "train/grad_norm", "val/loss", "val/acc")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    project = Project(tmp_path_factory.mktemp("baseline"))
    project.ok(*ARGS)
    return load(project.latest("exact")), scalars(project.run_dir("exact"))


def assert_same_as_baseline(project, baseline):
    want_state, want_scalars = baseline
    got = load(project.latest("exact"))
    assert got["progress"]["step"] == want_state["progress"]["step"] == 135
    assert same_weights(got["model"], want_state["model"]), "weights differ from the uninterrupted run"
    assert_same_scalars(project.run_dir("exact"), want_scalars, COMPARED)


@pytest.mark.parametrize("sig,prefix,at", [
    (signal.SIGTERM, "step ", 8),                      # early, mid-epoch
    (signal.SIGINT, "step ", 60),                      # Ctrl-C in the second epoch
    (signal.SIGKILL, "saved checkpoint step ", 30),    # kill -9 right after a checkpoint
    (signal.SIGKILL, "saved checkpoint step ", 100),   # kill -9 in the third epoch
])
def test_stop_anywhere_then_resume_is_bit_identical(project, baseline, sig, prefix, at):
    code, _, _ = stop_at(project.start(*ARGS), sig, prefix, at)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    stopped = load(project.latest("exact"))["progress"]
    assert 0 < stopped["step"] < 135
    res = project.ok("--resume", "--run-name", "exact")
    assert "resuming from" in res.stderr and "at step %d" % stopped["step"] in res.stderr
    assert_same_as_baseline(project, baseline)


def test_signal_mid_epoch_records_the_position_inside_the_epoch(project, baseline):
    code, _, _ = stop_at(project.start(*ARGS), signal.SIGTERM, "step ", 52)
    assert code == 0
    progress = load(project.latest("exact"))["progress"]
    assert progress["epoch"] == 1 and 0 < progress["sample_in_epoch"] < 1438, progress
    project.ok("--resume", "--run-name", "exact")
    assert_same_as_baseline(project, baseline)


def test_twice_interrupted_run_matches_too(project, baseline):
    stop_at(project.start(*ARGS), signal.SIGTERM, "step ", 20)
    stop_at(project.start("--resume", "--run-name", "exact"), signal.SIGKILL, "saved checkpoint step ", 70)
    project.ok("--resume", "--run-name", "exact")
    assert_same_as_baseline(project, baseline)


def test_changed_hyperparameters_on_resume_are_applied_and_logged(project):
    project.ok(*(ARGS + ["--max-steps", "40", "--scheduler", "constant"]))
    res = project.ok("--resume", "--run-name", "exact", "--lr", "0.01", "--max-steps", "60")
    assert "config change on resume: lr 0.05 -> 0.01" in res.stderr
    assert "config change on resume: max_steps 40 -> 60" in res.stderr
    lrs = dict(scalars(project.run_dir("exact"))["train/lr"])
    assert lrs[40] == pytest.approx(0.05) and lrs[44] == pytest.approx(0.01) and lrs[60] == pytest.approx(0.01)
    state = load(project.latest("exact"))
    assert state["progress"]["step"] == 60 and state["config"]["lr"] == 0.01
    assert "lr: 0.01" in (project.run_dir("exact") / "config.yaml").read_text()


def test_resume_auto_starts_fresh_then_continues(project):
    project.ok(*(FAST + ["--max-steps", "5", "--resume", "auto", "--run-name", "auto"]))
    assert load(project.latest("auto"))["progress"]["step"] == 5
    res = project.ok(*(FAST + ["--max-steps", "9", "--resume", "auto", "--run-name", "auto"]))
    assert "at step 5" in res.stderr
    assert load(project.latest("auto"))["progress"]["step"] == 9


def test_resume_from_an_explicit_path_takes_its_run_name(project):
    project.ok(*(FAST + ["--max-steps", "6", "--ckpt-every", "3", "--run-name", "p"]))
    res = project.ok("--resume", str(project.tmp_dir("p") / "step-3.pt"), "--max-steps", "8")
    assert "run p: resuming from" in res.stderr and "at step 3" in res.stderr
    assert load(project.latest("p"))["progress"]["step"] == 8


def test_dataloader_workers_give_the_same_run_and_resume_exactly(project, baseline):
    # the same batches through 2 persistent worker processes (one loader for the run, reset at each epoch
    # and after a stop mid-epoch) train bit-identically to the in-process reading of the baseline
    args = ARGS + ["--num-workers", "2"]
    code, _, _ = stop_at(project.start(*args), signal.SIGTERM, "step ", 52)
    assert code == 0
    project.ok("--resume", "--run-name", "exact")
    assert_same_as_baseline(project, baseline)


FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_FLAGS = ["--model", "mlp", "--width", "16", "--batch-size", "32", "--deterministic", "--progress", "plain",
             "--max-steps", "8", "--ckpt-every", "4", "--eval-every", "4", "--log-every", "2", "--ema", "0.9",
             "--seed", "3", "--run-name", "old", "--threads", "1"]


def _same(a, b, where="checkpoint", close=False):
    """Every tensor bit-identical and every other value equal, key by key (names the first difference); close:
    floating-point tensors and numbers equal to float32 rounding (another CPU's kernels round otherwise)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), "%s: keys %s vs %s" % (where, sorted(a), sorted(b))
        for key in a:
            _same(a[key], b[key], "%s/%s" % (where, key), close)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, "%s[%d]" % (where, i), close)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        if close and a.is_floating_point():
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), where
        else:
            assert torch.equal(a, b), where
    elif close and isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7), "%s: %r vs %r" % (where, a, b)
    else:
        assert a == b, "%s: %r vs %r" % (where, a, b)


def test_a_checkpoint_of_the_previous_main_resumes_bit_identically(project, tmp_path):
    """A stop checkpoint written by main before the renovation of src/ (tests/fixtures/README.md) resumes on
    today's code to the very state the old code reaches on this machine: weights, optimizer, EMA, meter, progress,
    best, RNG. The old code itself (tests/fixtures/old-main-c5801a6.tar.gz) resumes the same checkpoint here,
    since bit-identical numbers hold on one CPU: the CPU that wrote old-main-step8.pt may have other kernels
    (AVX-512 or not), so that file is met to float32 rounding (and exactly in every count and random state), where
    this torch is the one that wrote it; the old code and today's agree bit for bit on any torch."""
    wrote = load(FIXTURES / "old-main-step8.pt")["versions"]["torch"]
    same_torch = wrote.split("+")[0] == torch.__version__.split("+")[0]
    old_code = tmp_path / "old-main"
    old_code.mkdir()
    with tarfile.open(str(FIXTURES / "old-main-c5801a6.tar.gz")) as tar:
        tar.extractall(str(old_code))
    for root in (old_code, project.root):
        (root / "models" / "latest").mkdir(parents=True)
        shutil.copy(str(FIXTURES / "old-main-step4.pt"), str(root / "models" / "latest" / "old.pt"))
    subprocess.run([sys.executable, "train.py"] + OLD_FLAGS + ["--resume"], cwd=str(old_code), check=True,
                   capture_output=True, timeout=300, env=project.env)
    res = project.ok(*OLD_FLAGS, "--resume")
    assert "resuming from" in res.stdout + res.stderr and "at step 4" in res.stdout + res.stderr
    got, here = load(project.latest("old")), load(old_code / "models" / "latest" / "old.pt")
    want = load(FIXTURES / "old-main-step8.pt")
    # where and with which code it ran, whose run it is, the data's fingerprint: not training state; the metrics
    # added since (val/f1...) are more of the last evaluation, not other values of the old ones
    skip = {"config", "versions", "git_commit", "digest", "record", "owner", "data"}
    got["last_eval"] = {k: v for k, v in got["last_eval"].items() if k in want["last_eval"]}
    _same({k: v for k, v in got.items() if k not in skip}, {k: v for k, v in here.items() if k not in skip})
    if same_torch:  # another torch rounds otherwise: the old code's run on it (above) is the reference there
        _same({k: v for k, v in got.items() if k not in skip}, {k: v for k, v in want.items() if k not in skip},
              close=True)
    assert {k: v for k, v in got["config"].items() if k in want["config"] and not k.endswith("_dir")} == \
        {k: v for k, v in want["config"].items() if not k.endswith("_dir")}
    from src.app import flags  # flags added since: their defaults, or what the old run did without them
    added = {k: v for k, v in got["config"].items() if k not in want["config"]}
    assert added == dict({k: v for k, v in flags.plain(flags.parse([])[0]).items() if k in added}, **flags.LEGACY)


PORTABLE_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}


@pytest.mark.skipif(not shutil.which("qemu-x86_64") or os.uname().machine != "x86_64",
                    reason="needs Debian's qemu-user on x86_64 (.ci/run installs it)")
def test_a_run_requeued_onto_another_cpu_generation_goes_on_exactly_with_pinned_kernels(project):
    """README Reliability: bit-identical across CPU generations with ATen, MKL and oneDNN pinned (PORTABLE_CPU).
    A run stopped on this machine is resumed on an emulated Haswell (AVX2, no AVX-512, another vendor: qemu-user)
    and ends bit-identical to an uninterrupted run here; without the pins the two CPUs' weights differ already
    after a few steps."""
    args = ["--model", "cnn", "--width", "8", "--batch-size", "32", "--deterministic", "--progress", "plain",
            "--max-steps", "6", "--threads", "1", "--no-tensorboard", "--eval-every", "100"]
    haswell = ["qemu-x86_64", "-cpu", "Haswell"]

    def run(name, extra=(), prefix=(), pinned=True):
        env = {k: v for k, v in project.env.items() if k not in PORTABLE_CPU}
        env.update(PORTABLE_CPU if pinned else {}, OMP_NUM_THREADS="1")
        res = subprocess.run(list(prefix) + project.cmd(args + ["--run-name", name] + list(extra)),
                             cwd=str(project.root), env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        return load(project.latest(name))["model"]

    here = run("here")
    run("moved", ["--stop-after-step", "3"])
    assert load(project.latest("moved"))["progress"]["step"] == 3
    assert same_weights(run("moved", ["--resume"], haswell), here)
    assert not same_weights(run("here-plain", pinned=False), run("there-plain", prefix=haswell, pinned=False))
