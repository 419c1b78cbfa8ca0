"""The command line and config file: grouped --help, YAML merge, a run's checkpoints protected (bad flags and
config files: tests/test_bad_input.py)."""
import hashlib

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
    from src.app import sweep_spec
    for path in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):  # sweep specs, each trial's flags checked
        assert sweep_spec.total(sweep_spec.read(str(path), {})) > 1, path
    cfg, _ = flags.parse(["--config", str(REPO / "configs" / "default.yaml")])
    defaults, _ = flags.parse([])
    cfg.config = None
    assert vars(cfg) == vars(defaults), "configs/default.yaml drifted from the defaults"
