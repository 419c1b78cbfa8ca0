"""The task seam on the real train.py: regression on the embedded diabetes data and segmentation on synthetic
shapes resume bit-identically after SIGTERM and kill -9 and run under 2 processes; the test split is read
only by the final evaluation; --evaluate reproduces metrics.json exactly; a checkpoint rebuilds its model in
two lines; batches and outputs of other shapes (dicts, tuples) work."""
import json
import signal

import pytest
import torch

from conftest import FAST, Project, load, same_weights, scalars, stop_at

REGRESSION = ["--dataset", "diabetes", "--batch-size", "32", "--epochs", "6", "--dropout", "0.1", "--log-every", "4",
              "--ckpt-every", "10", "--deterministic", "--progress", "plain", "--run-name", "reg"]
SEGMENTATION = ["--dataset", "shapes", "--width", "8", "--depth", "2", "--batch-size", "64", "--max-steps", "40",
                "--log-every", "5", "--eval-every", "10", "--ckpt-every", "10", "--deterministic", "--progress",
                "plain", "--run-name", "seg"]
CASES = {"regression": (REGRESSION, ("train/loss", "train/mae", "val/loss", "val/mae", "val/rmse", "val/r2")),
         "segmentation": (SEGMENTATION, ("train/loss", "train/acc", "val/loss", "val/acc", "val/miou"))}


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    done = {}
    for task, (args, _) in CASES.items():
        project = Project(tmp_path_factory.mktemp(task))
        project.ok(*args)
        run = args[args.index("--run-name") + 1]
        done[task] = (project, load(project.latest(run)), scalars(project.run_dir(run)))
    return done


@pytest.mark.parametrize("task,sig,prefix,at", [
    ("regression", signal.SIGTERM, "step ", 12),
    ("regression", signal.SIGKILL, "saved checkpoint step ", 30),
    ("segmentation", signal.SIGTERM, "step ", 15),
    ("segmentation", signal.SIGKILL, "saved checkpoint step ", 20),
])
def test_other_tasks_resume_bit_identically(project, baselines, task, sig, prefix, at):
    args, compared = CASES[task]
    run = args[args.index("--run-name") + 1]
    code, _, _ = stop_at(project.start(*args), sig, prefix, at)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    project.ok("--resume", "--run-name", run)
    _, want, want_scalars = baselines[task]
    got = load(project.latest(run))
    assert got["progress"]["step"] == want["progress"]["step"]
    assert same_weights(got["model"], want["model"]), "weights differ from the uninterrupted run"
    got_scalars = scalars(project.run_dir(run))
    for tag in compared:
        assert got_scalars[tag] == want_scalars[tag], tag
    report = json.loads((project.run_dir(run) / "metrics.json").read_text())
    want_report = json.loads((baselines[task][0].run_dir(run) / "metrics.json").read_text())
    assert report["test"] == want_report["test"] and report["best"]["step"] == want_report["best"]["step"]


def test_regression_metrics_and_the_evaluate_command_reproduce_metrics_json(baselines):
    project, state, _ = baselines["regression"]
    report = json.loads((project.run_dir("reg") / "metrics.json").read_text())
    assert set(report["test"]) == {"test/loss", "test/mae", "test/rmse", "test/r2"}
    assert report["best"]["path"] == str(project.best("reg")) and report["task"] == "regression"
    assert 0 < report["test"]["test/rmse"] < 100 and report["test"]["test/r2"] > 0.2, report
    res = project.ok("--evaluate", "--run-name", "reg")
    printed = json.loads(res.stdout)
    assert printed["test"] == report["test"], "--evaluate differs from the end of training"
    assert json.loads((project.run_dir("reg") / "evaluate-test.json").read_text()) == printed
    res = project.ok("--evaluate", str(project.best("reg")), "--split", "val")
    assert json.loads(res.stdout)["val"] == report["best"]["val"]


def test_evaluate_under_two_processes_gives_the_same_metrics(baselines):
    project, _, _ = baselines["regression"]
    report = json.loads((project.run_dir("reg") / "metrics.json").read_text())
    res = project.launch(2, "--evaluate", "--run-name", "reg")
    assert res.returncode == 0, res.stderr[-3000:]
    printed = json.loads(res.stdout)
    for key, value in report["test"].items():  # each process sums its shard in float32: rounding differs
        assert printed["test"][key] == pytest.approx(value, rel=1e-5), key


def test_a_checkpoint_rebuilds_its_model_in_two_lines(baselines):
    project, _, _ = baselines["regression"]
    from src.data import diabetes
    from src.models import from_checkpoint
    model = from_checkpoint(project.best("reg"))
    split = diabetes.build(None).test
    with torch.no_grad():
        pred = model(split.x).view(-1)  # raw table columns: the model applies the stored standardization
    rmse = float(((pred - split.y) ** 2).mean().sqrt())
    report = json.loads((project.run_dir("reg") / "metrics.json").read_text())
    assert rmse == pytest.approx(report["test"]["test/rmse"], rel=1e-5)


def test_tasks_run_under_two_processes(project):
    for args in (REGRESSION, SEGMENTATION):
        run = args[args.index("--run-name") + 1]
        res = project.launch(2, *(args + ["--max-steps", "12"]))
        assert res.returncode == 0, res.stderr[-3000:]
        assert "x 2 processes" in res.stderr
        assert set(json.loads((project.run_dir(run) / "metrics.json").read_text())["test"])


COUNTED = '''import os
import torch
from . import ArrayDataset, Splits, register
from .digits import build as digits


class Counted(ArrayDataset):
    def __getitem__(self, index):
        with open(os.environ["READS_LOG"], "a") as f:
            f.write("%d\\n" % len(torch.as_tensor(index).view(-1)))
        return super(Counted, self).__getitem__(index)


@register("counted")
def build(cfg):
    s = digits(cfg)
    return s._replace(test=Counted(s.test.x, s.test.y, s.test.scale, s.test.mean, s.test.std))
'''


def test_the_test_split_is_read_only_by_the_final_evaluation(project):
    (project.root / "src" / "data" / "counted.py").write_text(COUNTED)
    reads = project.root / "reads.log"
    project.env["READS_LOG"] = str(reads)
    args = FAST + ["--dataset", "counted", "--epochs", "3", "--eval-every", "10", "--log-every", "1"]
    code, out, _ = stop_at(project.start(*args), signal.SIGTERM, "step ", 100)
    assert code == 0 and "eval step" in out
    assert not reads.exists(), "the test split was read during training"
    res = project.ok("--resume", "--run-name", "counted-mlp")
    assert sum(int(n) for n in reads.read_text().split()) == 224, "the final evaluation reads every test sample once"
    assert "test of the best checkpoint" in res.stderr


TUPLE_MODEL = '''import torch.nn as nn
from . import register


class WithEmbedding(nn.Module):
    def __init__(self, n, k):
        super().__init__()
        self.body, self.head = nn.Sequential(nn.Flatten(), nn.Linear(n, 32), nn.ReLU()), nn.Linear(32, k)

    def forward(self, x):
        emb = self.body(x)
        return self.head(emb), emb


@register("pair")
def build(input_shape, num_classes, cfg):
    return WithEmbedding(input_shape[0] * input_shape[1] * input_shape[2], num_classes)
'''

DICT_DATA = '''from . import register
from .digits import build as digits


class Dicts(object):
    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        x, y = self.inner[[i]]
        return {"input": x[0], "target": y[0]}


@register("dicts")
def build(cfg):
    s = digits(cfg)
    return s._replace(train=Dicts(s.train), test=Dicts(s.test))
'''


def test_a_model_returning_a_tuple_and_a_dataset_of_dicts_train(project):
    (project.root / "src" / "models" / "pair.py").write_text(TUPLE_MODEL)
    (project.root / "src" / "data" / "dicts.py").write_text(DICT_DATA)
    res = project.ok("--dataset", "dicts", "--model", "pair", "--max-steps", "30", "--progress", "plain")
    assert "test of the best checkpoint" in res.stderr
    report = json.loads((project.run_dir("dicts-pair") / "metrics.json").read_text())
    assert report["test"]["test/acc"] > 0.3


def test_monitor_names_the_tasks_metrics_and_val_split_is_fixed_for_a_run(project):
    res = project.run("--dataset", "diabetes", "--monitor", "val/acc:max")
    assert res.returncode == 2 and "one of val/loss, val/mae, val/rmse, val/r2" in res.stderr
    project.ok(*(FAST + ["--max-steps", "3", "--val-split", "0.2"]))
    res = project.run(*(FAST + ["--resume", "--max-steps", "6", "--val-split", "0.3"]))
    assert res.returncode == 2 and "--val-split cannot change on resume" in res.stderr
    res = project.run(*(FAST + ["--loss", "l1"]))
    assert res.returncode == 2 and "--loss l1 applies to --task regression" in res.stderr
