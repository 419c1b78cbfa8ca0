"""The command line and config file: grouped --help, YAML merge, and bad input (one clear line, exit 2,
nothing saved before is touched)."""
import hashlib

import pytest

from conftest import FAST, REPO, load

STABLE_FLAGS = ["--config", "--run-name", "--dataset", "--data-dir", "--model", "--epochs", "--max-steps",
                "--batch-size", "--lr", "--optimizer", "--momentum", "--weight-decay", "--scheduler",
                "--warmup-steps", "--grad-clip", "--seed", "--deterministic", "--device", "--num-workers",
                "--eval-every", "--ckpt-every", "--keep-last", "--monitor", "--resume", "--init-from"]


def test_help_lists_every_stable_flag_in_groups(project):
    out = project.ok("--help").stdout
    for flag in STABLE_FLAGS:
        assert flag in out, flag
    for group in ("experiment:", "data:", "model:", "optimization:", "runtime:", "logging and checkpoints:"):
        assert group in out


@pytest.mark.parametrize("args,message", [
    (["--dataset", "nope"], "argument --dataset: invalid choice: 'nope'"),
    (["--model", "nope"], "argument --model: invalid choice: 'nope'"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--epochs", "-2"], "--epochs must be >= 1"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--monitor", "val/f1:max"], "--monitor 'val/f1:max'"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--run-name", "../x"], "--run-name '../x'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--resume"], "nothing to resume: run 'digits-mlp' has no checkpoint"),
    (["--resume", "missing.pt"], "--resume missing.pt: no such checkpoint file"),
    (["--init-from", "missing.pt"], "--init-from missing.pt: no such checkpoint file"),
    (["--model", "resnet", "--depth", "7"], "a CIFAR ResNet has 6n+2 layers"),
])
def test_bad_input_is_one_line_and_exit_2(project, args, message):
    res = project.run(*(FAST + args))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("train.py: error:") and message in lines[0], lines[0]
    assert not project.latest("digits-mlp").exists()


@pytest.mark.parametrize("text,message", [
    ("lr: 0.1\nbogus: 3\n", "unknown key 'bogus'"),
    ("batch_size: 3.5\n", "3.5 is not a valid value for batch_size (expected an integer)"),
    ("lr: fast\n", "'fast' is not a valid value for lr (expected a number)"),
    ("deterministic: 1\n", "expected true or false"),
    ("optimizer: lbfgs\n", "choose from sgd, adam, adamw"),
    ("lr: [0.1\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("epochs: 0\n", "--epochs must be >= 1"),
])
def test_bad_config_file_is_one_line_and_exit_2(project, text, message):
    (project.root / "bad.yaml").write_text(text)
    res = project.run("--config", "bad.yaml")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_config_file_sets_values_and_the_command_line_wins(project):
    (project.root / "exp.yaml").write_text("model: mlp\nbatch-size: 16\nlr: 0.02\nmax_steps: 4\nrun_name: fromfile\n")
    project.ok("--config", "exp.yaml", "--lr", "0.03", "--progress", "plain")
    state = load(project.latest("fromfile"))
    assert state["config"]["batch_size"] == 16 and state["config"]["lr"] == 0.03
    assert state["config"]["model"] == "mlp" and state["progress"]["step"] == 4
    saved = (project.run_dir("fromfile") / "config.yaml").read_text()
    assert "batch_size: 16" in saved and "lr: 0.03" in saved


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fresh_start_on_an_existing_run_refuses_and_keeps_it(project):
    project.ok(*(FAST + ["--max-steps", "3"]))
    before = _digest(project.latest("digits-mlp"))
    res = project.run(*(FAST + ["--max-steps", "5"]))
    assert res.returncode == 2 and "already has checkpoints" in res.stderr and "--resume" in res.stderr
    assert _digest(project.latest("digits-mlp")) == before


def test_checkpoint_of_another_shape_is_refused_and_nothing_is_overwritten(project):
    project.ok(*(FAST + ["--max-steps", "3"]))
    latest = project.latest("digits-mlp")
    before = _digest(latest)
    res = project.run(*(FAST + ["--resume", "--width", "32", "--max-steps", "6"]))
    assert res.returncode == 2
    assert "does not fit model 'mlp'" in res.stderr and "[64, 64]" in res.stderr
    assert _digest(latest) == before
    res = project.run("--model", "cnn", "--init-from", str(latest), "--run-name", "other", "--progress", "plain")
    assert res.returncode == 2 and "does not fit model 'cnn'" in res.stderr
    assert not project.latest("other").exists()


def test_init_from_takes_weights_only(project):
    project.ok(*(FAST + ["--max-steps", "20"]))
    src = load(project.latest("digits-mlp"))
    res = project.ok(*(FAST + ["--init-from", str(project.latest("digits-mlp")), "--run-name", "ft",
                               "--max-steps", "1", "--lr", "1e-12", "--weight-decay", "0", "--momentum", "0"]))
    assert "run ft: fresh start from the weights of" in res.stderr
    ft = load(project.latest("ft"))
    assert ft["progress"]["step"] == 1
    for key, value in src["model"].items():
        assert (ft["model"][key] - value).abs().max() < 1e-6, key


def test_example_configs_are_valid():
    from src.app import flags
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg, user = flags.parse(["--config", str(path)])
        assert "dataset" in user, path
    cfg, _ = flags.parse(["--config", str(REPO / "configs" / "default.yaml")])
    defaults, _ = flags.parse([])
    cfg.config = None
    assert vars(cfg) == vars(defaults), "configs/default.yaml drifted from the defaults"
