"""A saved model predicts what the evaluation measured: `from_checkpoint(path)(raw inputs)` on the test split
gives the test metrics of metrics.json, for every built-in dataset (the downloaded ones: tests/test_data.py)."""
import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import load, write_images
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


def _predicted(project, run, source):
    """The rows of logs/<run>/predictions-<name>.csv that --predict source wrote."""
    res = project.ok("--predict", source, "--run-name", run)
    path = project.run_dir(run) / ("predictions-%s.csv" % Path(source).stem)
    assert str(path) in res.stderr
    with open(str(path)) as f:
        return list(csv.DictReader(f))


def _evaluated(project, run):
    return json.loads(project.ok("--evaluate", "--run-name", run).stdout)["test"]


def test_predict_on_the_test_folders_files_gives_what_evaluate_measured(project):
    for split, n in (("train", 30), ("val", 6), ("test", 9)):
        write_images(project.root / "data" / "pets" / split, n, seed=n)
    project.ok("--dataset", "folder:%s" % (project.root / "data" / "pets"), "--model", "cnn", "--width", "8",
               "--epochs", "2", "--image-size", "10", "--progress", "plain", "--run-name", "pets")
    rows = _predicted(project, "pets", "data/pets/test")
    assert len(rows) == 27 and list(rows[0])[:2] == ["input", "prediction"]
    right = sum(row["prediction"] == row["input"].split("/")[0] for row in rows)  # <class>/<file>
    assert right == round(_evaluated(project, "pets")["test/acc"] * 27)
    # from_checkpoint on the same raw images (decoded as training did) gives the same probabilities
    state = load(project.best("pets"))
    test = data.build(flags.typed(dict(state["config"], data_dir=str(project.root / "data")))).test
    with torch.no_grad():
        prob = torch.softmax(from_checkpoint(project.best("pets"))(test.x), 1)
    written = torch.tensor([[float(row["p(%s)" % c]) for c in ("cat", "dog", "fox")] for row in rows])
    assert torch.allclose(prob, written, rtol=1e-5, atol=1e-6)
    one = _predicted(project, "pets", "data/pets/test/dog/%s" % rows[10]["input"].split("/", 1)[1])
    assert one[0]["prediction"] == rows[10]["prediction"] and one[0]["p(dog)"] == rows[10]["p(dog)"]


def test_predict_on_a_tables_test_csv_gives_what_evaluate_measured(project):
    g = torch.Generator().manual_seed(3)
    (project.root / "data" / "homes").mkdir(parents=True)
    for split, n in (("train", 200), ("test", 40)):
        x = torch.rand(n, 2, generator=g)
        lines = ["size,kind,price"] + ["%.3f,%s,%.3f" % (a, "ab"[int(b > 0.5)], 3 * a + (1 if b > 0.5 else 0))
                                       for a, b in x.tolist()]
        (project.root / "data" / "homes" / ("%s.csv" % split)).write_text("\n".join(lines) + "\n")
    project.ok("--dataset", "csv:data/homes", "--epochs", "5", "--progress", "plain", "--run-name", "homes")
    rows = _predicted(project, "homes", "data/homes/test.csv")
    truth = [float(line.split(",")[2]) for line in (project.root / "data" / "homes" / "test.csv")
             .read_text().splitlines()[1:]]
    assert list(rows[0]) == ["input", "price"] and [r["input"] for r in rows[:2]] == ["2", "3"]
    rmse = (sum((float(r["price"]) - t) ** 2 for r, t in zip(rows, truth)) / len(truth)) ** 0.5
    assert rmse == pytest.approx(_evaluated(project, "homes")["test/rmse"], rel=1e-5)


def test_predict_refuses_what_the_model_cannot_read_in_one_line(project):
    project.ok("--dataset", "diabetes", "--max-steps", "2", "--progress", "plain", "--run-name", "d")
    for args, text in ((["--predict", "nowhere.png", "--run-name", "d"], "no such file or folder"),
                       (["--predict", "train.py", "--run-name", "d"], "trained on data of another kind"),
                       (["--predict", "train.py", "--run-name", "never"], "run 'never' has no best checkpoint")):
        res = project.run(*args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and text in lines[0], res.stderr


def test_predictions_are_safe_in_a_spreadsheet_never_replace_another_inputs_and_bad_checkpoints_are_one_line(
        project):
    """Class and file names that a spreadsheet would run as formulas (=, +, -, @) are written as text (OWASP);
    --predict a/0.png then b/0.png used to silently replace predictions-0.csv; a truncated best checkpoint gave a
    29-line traceback; the inputs are decoded a batch at a time (the result is the same at any batch size)."""
    classes = ("=HYPERLINK(1)", "+cmd", "@sum")
    write_images(project.root / "data" / "evil", 10, classes=classes)
    project.ok("--dataset", "folder:data/evil", "--model", "cnn", "--width", "8", "--image-size", "10",
               "--max-steps", "4", "--progress", "plain", "--run-name", "evil")
    (project.root / "a").mkdir()
    (project.root / "b").mkdir()
    first = sorted((project.root / "data" / "evil" / "+cmd").glob("*.png"))[0]
    second = sorted((project.root / "data" / "evil" / "@sum").glob("*.png"))[0]
    (project.root / "a" / "0.png").write_bytes(first.read_bytes())
    (project.root / "b" / "-0.png").write_bytes(second.read_bytes())
    (project.root / "b" / "0.png").write_bytes(second.read_bytes())
    project.ok("--predict", "a/0.png", "--run-name", "evil")
    res = project.ok("--predict", "b/0.png", "--run-name", "evil")
    assert "predictions-0.csv holds the predictions of" in res.stderr and "predictions-0-2.csv" in res.stderr
    run_dir = project.run_dir("evil")
    a = list(csv.reader(open(str(run_dir / "predictions-0.csv"))))
    b = list(csv.reader(open(str(run_dir / "predictions-0-2.csv"))))
    assert len(a) == len(b) == 2 and a[1][0] == b[1][0] == "0.png"
    project.ok("--predict", "a/0.png", "--run-name", "evil")  # the same input again: its own file, refreshed
    assert sorted(p.name for p in run_dir.glob("predictions-*.csv")) == ["predictions-0-2.csv", "predictions-0.csv"]

    project.ok("--predict", "data/evil", "--run-name", "evil", "--batch-size", "7")
    rows = list(csv.reader(open(str(run_dir / "predictions-evil.csv"))))
    assert rows[0] == ["input", "prediction", "p(+cmd)", "p(=HYPERLINK(1))", "p(@sum)"]
    assert len(rows) == 31 and {r[1] for r in rows[1:]} <= {"'=HYPERLINK(1)", "'+cmd", "'@sum"}
    assert all(r[0][:1] in "'0123456789" or r[0].startswith("deeper") for r in rows[1:]), rows[:5]
    assert all(not cell.startswith(("=", "+", "@")) for r in rows for cell in r)
    project.ok("--predict", "data/evil", "--run-name", "evil", "--batch-size", "64")
    assert list(csv.reader(open(str(run_dir / "predictions-evil.csv")))) == rows
    project.ok("--predict", "b/-0.png", "--run-name", "evil")
    assert list(csv.reader(open(str(run_dir / "predictions--0.csv"))))[1][0] == "'-0.png"

    before = sorted(p.name for p in run_dir.iterdir())
    best = project.best("evil")
    best.write_bytes(best.read_bytes()[:-200])
    res = project.run("--predict", "a/0.png", "--run-name", "evil")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "unreadable checkpoint" in lines[0], res.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == before
