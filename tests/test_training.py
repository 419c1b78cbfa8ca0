"""The default run from a fresh copy, several runs side by side, the program log and progress output,
torch.compile, and the folders train.py makes (a dangling logs symlink included)."""
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
import torch

from conftest import FAST, REPO, load

STATED_ACCURACY = 0.98  # README: the default run reaches at least this validation and test accuracy


def test_default_run_from_a_fresh_copy_trains_to_the_stated_accuracy(project):
    res = project.ok()  # python train.py, nothing else
    run = "digits-cnn"
    best = load(project.best(run))
    assert best["best"]["metric"] == "val/acc" and best["best"]["value"] >= STATED_ACCURACY, best["best"]
    report = json.loads((project.run_dir(run) / "metrics.json").read_text())
    assert report["test"]["test/acc"] >= STATED_ACCURACY, report
    latest = load(project.latest(run))
    assert latest["progress"]["epoch"] == 15 and latest["progress"]["step"] == 345
    assert sorted(p.name for p in project.tmp_dir(run).iterdir()) == ["step-200.pt", "step-300.pt", "step-345.pt"]
    log = (project.run_dir(run) / "train.log").read_text()
    assert "run digits-cnn: fresh start" in log and "done: 345 steps" in log and "eval step 345" in log
    assert (project.run_dir(run) / "config.yaml").read_text().startswith(
        "accum_steps: 1\nallow_data_change: false\namp: 'off'")
    # not a terminal: plain periodic lines, no progress bar
    assert "step 10/345 | epoch 1/15 | loss" in res.stderr and "\r" not in res.stderr
    for folder in ("data", "logs", "models/best", "models/latest", "models/tmp"):
        assert (project.root / folder).is_dir(), folder


def test_runs_side_by_side_do_not_clobber_each_other(project):
    project.ok(*(FAST + ["--max-steps", "4", "--run-name", "a"]))
    project.ok(*(FAST + ["--max-steps", "6", "--run-name", "b", "--lr", "0.01"]))
    a, b = load(project.latest("a")), load(project.latest("b"))
    assert (a["progress"]["step"], b["progress"]["step"]) == (4, 6)
    assert a["config"]["lr"] == 0.05 and b["config"]["lr"] == 0.01
    for run in ("a", "b"):
        assert project.best(run).exists() and (project.run_dir(run) / "train.log").exists()
        assert list(project.run_dir(run).glob("events.out.tfevents.*"))


def test_progress_bar_on_a_terminal(project):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    args = ["--model", "mlp", "--width", "64", "--batch-size", "32", "--max-steps", "30"]  # --progress auto
    proc = subprocess.Popen(project.cmd(args), cwd=str(project.root), env=project.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0
    text = out.decode("utf-8", "replace")
    assert "30/30" in text and "step/s" in text and "\r" in text
    assert "step 10/30 | epoch" not in text  # the bar replaces the periodic lines on a terminal...
    assert "step 10/30 | epoch" in (project.run_dir("digits-mlp") / "train.log").read_text()  # ...not in the log


def test_dangling_logs_symlink_is_repaired(project, tmp_path):
    target = tmp_path / "gone" / "logs"
    os.symlink(str(target), str(project.root / "logs"))
    project.ok(*(FAST + ["--max-steps", "2"]))
    assert (target / "digits-mlp" / "train.log").exists()


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2.0")
def test_compiled_model_checkpoints_have_plain_keys(project):
    project.ok(*(FAST + ["--compile", "--max-steps", "2", "--eval-every", "2"]))
    keys = list(load(project.latest("digits-mlp"))["model"])
    assert keys and not [k for k in keys if k.startswith(("_orig_mod.", "module."))], keys
    # and the plain model loads them
    project.ok(*(FAST + ["--init-from", str(project.latest("digits-mlp")), "--run-name", "plain",
                         "--max-steps", "1"]))


def _readme_snippet(first_line):
    text = (REPO / "README.md").read_text()
    for block in text.split("```python\n")[1:]:
        code = block.split("```")[0]
        if code.startswith(first_line):
            return code
    raise AssertionError("README has no snippet starting with " + first_line)


def test_readme_own_task_example_works_as_written(project):
    """README "Your own model, data and task": the three files and the commands, in the order a user does them."""
    for path in ("src/data/mytable.py", "src/models/widemlp.py", "src/tasks/relative.py"):
        (project.root / path).write_text(_readme_snippet("# " + path))
    from src.data import diabetes  # a real table: the embedded diabetes data as the user's CSV
    x, y = diabetes.load_arrays()
    rows = ["age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,target"] + [
        ",".join("%g" % v for v in list(xi.tolist()) + [float(yi)]) for xi, yi in zip(x, y)]
    (project.root / "data").mkdir(exist_ok=True)
    (project.root / "data" / "mytable.csv").write_text("\n".join(rows) + "\n")
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Your own code: one file each"):text.index("## What a run gives you")]
    commands = section.split("```bash\n")[1].split("```")[0].strip().splitlines()
    outputs = []
    for command in commands:
        assert command.startswith("python train.py ")
        outputs.append(project.ok(*command.split()[2:], "--progress", "plain"))
    # the data's recipe: batch 16 for 319 rows, so 20 steps an epoch
    assert "test/mape" in outputs[0].stderr and "done: 800 steps, 40 epochs" in outputs[0].stderr
    report = json.loads((project.run_dir("mytable-widemlp") / "metrics.json").read_text())
    assert json.loads(outputs[1].stdout)["test"] == report["test"]
    use = "from src.models" + section.split("```python\nfrom src.models")[1].split("```")[0]
    # the model on the test split's raw rows, as the CSV has them: the RMSE the evaluation measured
    check = use + ("from types import SimpleNamespace\nfrom src import data\n"
                   "test = data.build(SimpleNamespace(dataset='mytable', data_dir='data', val_split=0.1, "
                   "task='relative')).test\n"
                   "with torch.no_grad():\n    pred = model(test.x).view(-1)\n"
                   "print(model.training, float(((pred - test.y) ** 2).mean().sqrt()))\n")
    res = subprocess.run([sys.executable, "-c", "import torch\n" + check], cwd=str(project.root),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert res.returncode == 0, res.stdout
    training, rmse = res.stdout.strip().splitlines()[-1].split()
    assert training == "False" and float(rmse) == pytest.approx(report["test"]["test/rmse"], rel=1e-5), res.stdout
