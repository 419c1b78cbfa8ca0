"""A saved model predicts what the evaluation measured: `from_checkpoint(path)(raw inputs)` on the test split
gives the test metrics of metrics.json, for every built-in dataset (the downloaded ones: tests/test_data.py)."""
import json

import pytest
import torch

from conftest import load
from src import data
from src.app import flags
from src.models import from_checkpoint

CASES = {
    "digits": ["--model", "mlp"],
    "diabetes": [],
    "shapes": ["--synthetic-size", "200"],
    "synthetic": ["--synthetic-size", "300", "--synthetic-shape", "3,12,12", "--model", "cnn", "--width", "8"],
}


def check_predictions(project, run):
    """The best checkpoint's model on the raw test split reproduces metrics.json's test metrics."""
    state = load(project.best(run))
    cfg = flags.typed(dict(state["config"], data_dir=str(project.root / "data")))
    test = data.build(cfg).test
    report = json.loads((project.run_dir(run) / "metrics.json").read_text())["test"]
    with torch.no_grad():
        pred = from_checkpoint(project.best(run))(test.x)
    if cfg.task == "regression":
        rmse = float(((pred.view(-1) - test.y) ** 2).mean().sqrt())
        assert rmse == pytest.approx(report["test/rmse"], rel=1e-5)
    elif cfg.task == "segmentation":
        right = int((pred.argmax(1) == test.y).sum())
        assert right == round(report["test/acc"] * test.y.numel())
    else:
        right = int((pred.argmax(1) == test.y).sum())
        assert right == round(report["test/acc"] * len(test.y))
    return report


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_a_saved_model_on_raw_inputs_predicts_what_the_evaluation_measured(project, dataset):
    project.ok("--dataset", dataset, "--max-steps", "12", "--eval-every", "6", "--progress", "plain",
               "--run-name", "p", *CASES[dataset])
    report = check_predictions(project, "p")
    res = project.ok("--evaluate", "--run-name", "p")
    assert json.loads(res.stdout)["test"] == report
