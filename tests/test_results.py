"""Results on a researcher's own data: the recipe the data chooses (data/recipe.py), tables that cannot blow up
(the quantile transform, clipping), stratified splits, the metrics a researcher reports (checked against
scikit-learn), class weights, the "learned nothing" line, seed intervals inside a metric's range, the id column
of a table's predictions; and exact resume with the data's defaults."""
import csv
import json
import math
import re
import signal
from types import SimpleNamespace

import pytest
import torch

from conftest import Project, finish_run, load, same_weights, write_images

PLAIN = ["--progress", "plain", "--threads", "1"]


def _table(path, rows, header):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _cfg(**values):
    base = dict(epochs=None, batch_size=None, optimizer="auto", lr=None, weight_decay=None, warmup_steps=None,
                grad_clip=None, model="cnn", depth=None)
    base.update(values)
    return SimpleNamespace(**base)


def test_the_recipe_gives_a_small_set_as_many_steps_as_a_large_one_and_what_the_user_gives_wins():
    from src.data import recipe
    from src.data.loading import steps_per_epoch

    def fit(cfg, n, shape):
        return recipe.fit(cfg, n, shape, lambda b: steps_per_epoch(n, b))
    small = fit(_cfg(), 261, (3, 32, 32))
    assert small["batch_size"] == 32 and small["optimizer"] == "adamw" and small["depth"] == 3
    assert small["epochs"] * steps_per_epoch(261, 32) >= 1000 and small["grad_clip"] == 1.0
    assert small["warmup_steps"] == round(0.05 * small["epochs"] * steps_per_epoch(261, 32))
    large = fit(_cfg(), 60000, (1, 28, 28))
    assert large["epochs"] == 15 and large["batch_size"] == 64 and large["depth"] == 4
    assert fit(_cfg(), 1000, (1, 8, 8))["depth"] == 2 and fit(_cfg(), 1000, (1, 8, 8))["augment"] == "none"
    assert small["augment"] == "crop:2" and fit(_cfg(), 500, (3, 64, 64))["augment"] == "crop:4"
    rows = fit(_cfg(model="mlp"), 133, (13,))
    assert rows["batch_size"] == 16 and rows["epochs"] * steps_per_epoch(133, 16) >= 1500 and "depth" not in rows
    assert fit(_cfg(model="mlp"), 40000, (10,))["batch_size"] == 256
    given = fit(_cfg(batch_size=8, epochs=3), 261, (3, 32, 32))
    assert given["batch_size"] == 8 and given["epochs"] == 3


def test_a_folder_run_prints_its_recipe_saves_it_and_the_shipped_datasets_keep_theirs(tmp_path):
    project = Project(tmp_path)
    write_images(project.root / "data" / "pets", 12)
    res = project.ok("--dataset", "folder:data/pets", "--max-steps", "2", "--lr", "0.003", *PLAIN)
    line = next(x for x in res.stderr.splitlines() if "the data's defaults" in x)
    # 36 images: 7 test (2.4 a class), 3 val, 26 train; one step an epoch, at most 300 epochs; the user's --lr stays
    assert line.startswith("3 classes, 26 train images at 12x12: cnn depth 2, AdamW, weight decay 0.05, batch 26, "
                           "300 epochs, warmup 15 steps, gradients clipped at norm 1"), line
    config = load(project.latest("pets-cnn"))["config"]
    assert (config["optimizer"], config["lr"], config["batch_size"], config["grad_clip"], config["depth"],
            config["epochs"]) == ("adamw", 0.003, 26, 1.0, 2, 300)
    builtin = project.ok("--dataset", "synthetic", "--synthetic-size", "40", "--max-steps", "1", *PLAIN)
    assert "the data's defaults" not in builtin.stderr
    config = load(project.latest("synthetic-cnn"))["config"]
    assert (config["optimizer"], config["lr"], config["batch_size"], config["epochs"], config["depth"]) == \
        ("sgd", 0.05, 64, 15, 0)


def _pets_args(project, cache):
    return ["--dataset", "folder:%s" % (project.root / "data" / "pets"), "--image-size", "16", "--deterministic",
            "--max-steps", "12", "--ckpt-every", "3", "--log-every", "2", "--eval-every", "4", "--run-name", "exact",
            "--image-cache", cache] + (["--num-workers", "2"] if cache == "off" else []) + PLAIN


@pytest.mark.parametrize("cache,sig", [("on", signal.SIGKILL), ("off", signal.SIGTERM)])
def test_the_data_s_recipe_resumes_exactly_after_kill_and_stop_cached_and_streaming(tmp_path, cache, sig):
    """AdamW, warmup, clipping and the batch size the data chose: the same weights with a kill -9 (or a stop) and
    a resume half way as in one go."""
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    once, twice = Project(tmp_path / "once"), Project(tmp_path / "twice")
    for project in (once, twice):
        write_images(project.root / "data" / "pets", 20)
    a = finish_run(once, _pets_args(once, cache), 12)
    prefix = "saved checkpoint step " if sig == signal.SIGKILL else "step "
    b = finish_run(twice, _pets_args(twice, cache), 12, stop=(sig, prefix, 6))
    assert same_weights(a, b)
    config = load(twice.latest("exact"))["config"]
    assert (config["optimizer"], config["augment"]) == ("adamw", "crop:1")


def test_a_table_with_outliers_and_heavy_tails_trains_on_its_defaults(tmp_path):
    """Values a million times too large in a feature (data-entry errors) and a heavy tail: with standardization
    alone and SGD 0.05 such a table stopped with a non-finite loss; the quantile transform and clipping train it."""
    g = torch.Generator().manual_seed(0)
    n = 3000
    x1 = torch.randn(n, generator=g)
    x2 = torch.exp(2 * torch.randn(n, generator=g))  # log-normal: 1e-3 .. 1e3
    y = 2 * x1 + torch.log(x2) + 0.1 * torch.randn(n, generator=g)
    wild = x2.clone()
    wild[::97] *= 1e6
    rows = [["%.6g" % a, "%.6g" % b, "%.6g" % t] for a, b, t in zip(x1.tolist(), wild.tolist(), y.tolist())]
    project = Project(tmp_path)
    _table(project.root / "data" / "wild.csv", rows, ["a", "b", "target"])
    res = project.ok("--dataset", "csv:data/wild.csv", "--epochs", "8", *PLAIN)
    assert "gradients clipped at norm 1" in res.stderr
    r2 = json.loads((project.root / "logs" / "wild-mlp" / "metrics.json").read_text())["test"]["test/r2"]
    assert r2 > 0.9, r2


def test_the_quantile_transform_keeps_an_outlier_within_three_and_the_order_of_every_value():
    from src.data.table import Encoder
    values = [str(v) for v in range(1, 200)] + ["1e30"]
    enc = Encoder.fit(["x", "y"], [[v, "0"] for v in values], ["y"])
    x = enc.encode(["x", "y"], [[v, "0"] for v in values + ["-5", "5e30"]], "t").view(-1).tolist()
    assert max(abs(v) for v in x) < 3.2 and x[:-2] == sorted(x[:-2]) and x[-2] == min(x) and x[-1] == max(x)
    old = Encoder([dict(c, knots=None) for c in enc.columns])  # an older run's encoding: numbers as they are
    for c in old.columns:
        del c["knots"]
    assert old.encode(["x", "y"], [["1e30", "0"]], "t").item() == pytest.approx(1e30)


def test_splits_hold_each_class_in_proportion_and_a_new_file_moves_at_most_one_other_a_split(tmp_path):
    from src import data
    from src.app import flags
    root = write_images(tmp_path / "toys", 40, classes=("cat", "dog"))
    write_images(tmp_path / "toys", 12, classes=("fox",), seed=3)
    write_images(tmp_path / "toys", 2, classes=("owl",), seed=4)

    def split(*extra):
        cfg, _ = flags.parse(["--dataset", "folder:%s" % root, "--image-size", "10", "--image-cache", "off"]
                             + list(extra))
        s = data.build(cfg)
        return {name: [(int(y), f.relative_to(root).as_posix()) for f, y in zip(getattr(s, name).files,
                                                                               getattr(s, name).y)]
                for name in ("train", "val", "test")}
    before = split()
    counts = {name: [sum(1 for y, _ in v if y == k) for k in range(4)] for name, v in before.items()}
    sizes = [40, 40, 12, 2]  # cat dog fox owl
    assert sum(counts["test"]) == round(94 * 0.2) and counts["test"][3] == 0, counts  # owl keeps its two
    for k, size in enumerate(sizes):
        assert abs(counts["test"][k] - size * 0.2) < 1, counts  # each class in proportion
        assert abs(counts["val"][k] - (size - counts["test"][k]) * 0.1) < 1, counts
    write_images(tmp_path / "more", 1, classes=("fox",), seed=9)
    (tmp_path / "more" / "fox" / "000.png").rename(root / "fox" / "new.png")
    after = split()
    moved = [f for name in before for _, f in before[name] if (0, f) not in after[name] and (1, f) not in
             after[name] and (2, f) not in after[name] and (3, f) not in after[name]]
    assert len(moved) <= 2, moved  # at most one into or out of each held-out split (test 2 -> 3 of 13 here)


def test_a_class_too_small_for_a_split_is_said(tmp_path):
    project = Project(tmp_path)
    write_images(project.root / "data" / "zoo", 20, classes=("cat", "dog"))
    write_images(project.root / "data" / "zoo", 2, classes=("owl",), seed=4)
    res = project.ok("--dataset", "folder:data/zoo", "--max-steps", "1", *PLAIN)
    assert "too few samples of class owl to hold any out for test at --test-split 0.2" in res.stderr
    counts = re.search(r"classes \(train/val/test samples\): cat (\d+)/(\d+)/4, dog (\d+)/(\d+)/4, owl 2/0/0",
                       res.stderr)
    assert counts, res.stderr[-2000:]
    val = int(counts.group(2)) + int(counts.group(4))  # 3 of 32: 2 and 1
    assert val == 3 and "note: validation holds 3 samples (one is 33.3 % of its score)" in res.stderr


def test_classification_metrics_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (requirements-dev.txt) checks the metrics")
    from src.tasks.classification import Classification
    g = torch.Generator().manual_seed(1)
    for k in (2, 4):
        y = torch.randint(0, k, (300,), generator=g)
        logits = torch.randn(300, k, generator=g) + 1.5 * torch.nn.functional.one_hot(y, k) * torch.rand(300, 1,
                                                                                                      generator=g)
        splits = SimpleNamespace(num_classes=k, classes=["c%d" % i for i in range(k)], train=None, val=None)
        task = Classification(SimpleNamespace(label_smoothing=0.0, class_weights="none", monitor="val/acc:max"),
                              splits)
        sums = {}
        for part in range(3):  # summed over batches, as an evaluation does
            for key, v in task.eval_sums(logits[part::3], y[part::3]).items():
                sums[key] = sums.get(key, 0) + v.double()
        got = task.eval_values(sums)
        pred = logits.argmax(1).numpy()
        assert got["acc"] == pytest.approx(metrics.accuracy_score(y, pred))
        assert got["balanced_acc"] == pytest.approx(metrics.balanced_accuracy_score(y, pred))
        assert got["f1"] == pytest.approx(metrics.f1_score(y, pred, average="macro"))
        assert got["precision/c1"] == pytest.approx(metrics.precision_score(y, pred, average=None)[1])
        assert got["recall/c1"] == pytest.approx(metrics.recall_score(y, pred, average=None)[1])
        assert got["f1/c0"] == pytest.approx(metrics.f1_score(y, pred, average=None)[0])
        if k == 2:
            assert got["auc"] == pytest.approx(metrics.roc_auc_score(y, (logits[:, 1] - logits[:, 0]).numpy()),
                                               abs=2e-3)
        else:
            assert "auc" not in got


def test_balanced_class_weights_weigh_each_class_by_its_rarity():
    from src.data import ArrayDataset
    from src.tasks.classification import Classification
    y = torch.tensor([0] * 30 + [1] * 10)
    splits = SimpleNamespace(num_classes=2, classes=None, train=ArrayDataset(torch.zeros(40, 1), y), val=None)
    task = Classification(SimpleNamespace(label_smoothing=0.0, class_weights="balanced", monitor="val/acc:max"),
                          splits)
    assert task.weight.tolist() == pytest.approx([40 / 60.0, 40 / 20.0])
    logits = torch.randn(40, 2)
    assert task.loss(logits, y).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y, weight=task.weight).item())


def test_a_run_that_learned_nothing_says_so_with_what_to_try(tmp_path):
    project = Project(tmp_path)
    g = torch.Generator().manual_seed(0)
    rows = [["%.4f" % v, "yes" if i % 4 else "no"] for i, v in enumerate(torch.randn(200, generator=g).tolist())]
    _table(project.root / "data" / "noise.csv", rows, ["x", "answer"])
    res = project.ok("--dataset", "csv:data/noise.csv", "--epochs", "2", "--lr", "1e-7", *PLAIN)
    line = next(x for x in res.stderr.splitlines() if "WARNING: at the best checkpoint" in x)
    assert "is no better than always answering the most frequent class (yes, " in line and "--epochs" in line
    values = [["%.4f" % v, "%.4f" % w] for v, w in torch.randn(200, 2, generator=g).tolist()]
    _table(project.root / "data" / "flat.csv", values, ["x", "y"])
    res = project.ok("--dataset", "csv:data/flat.csv", "--epochs", "2", *PLAIN)
    assert "no better than always predicting the mean target" in res.stderr


def test_monitor_auc_needs_two_classes(tmp_path):
    project = Project(tmp_path)
    write_images(project.root / "data" / "pets", 6)
    res = project.run("--dataset", "folder:data/pets", "--monitor", "val/auc:max", "--max-steps", "1", *PLAIN)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].endswith("--monitor val/auc needs two classes (this data has 3); "
                                                        "use val/f1 or val/balanced_acc")
    assert not (project.root / "models" / "latest" / "pets-cnn.pt").exists()


def test_seed_intervals_stay_inside_the_range_of_their_metric():
    from src.app.sweep_results import stats
    acc = stats([0.90, 0.95, 1.0], "test/acc")
    assert 0 <= acc["low"] < acc["mean"] < acc["high"] <= 1
    assert acc["mean"] - acc["ci95"] > 0 or acc["mean"] + acc["ci95"] > 1  # the plain t interval would leave it
    r2 = stats([0.3, 0.5], "test/r2")
    assert r2["high"] <= 1 and r2["low"] < 0.3
    loss = stats([0.1, 0.5], "test/loss")
    assert loss["low"] > 0
    plain = stats([1.0, 2.0, 3.0], "test/other")
    assert plain["low"] == pytest.approx(2 - plain["ci95"]) and plain["high"] == pytest.approx(2 + plain["ci95"])
    assert stats([0.5], "test/acc")["low"] is None and math.isfinite(stats([1.0, 1.0], "test/acc")["high"])


def test_a_table_s_id_column_goes_with_its_predictions_and_unseen_categories_are_counted(tmp_path):
    project = Project(tmp_path)
    rows = [["r%03d" % i, "%d" % (i % 7), ["red", "blue"][i % 2], "%d" % (i % 7 > 3)] for i in range(120)]
    _table(project.root / "data" / "parts.csv", rows, ["part_id", "size", "colour", "broken"])
    res = project.ok("--dataset", "csv:data/parts.csv", "--epochs", "1", *PLAIN)
    assert "column part_id: the rows' identifier (--id-column): left out of the features" in res.stderr
    _table(project.root / "new.csv", [["x1", "3", "green", ""], ["x2", "5", "red", ""]],
           ["part_id", "size", "colour", "broken"])
    res = project.ok("--run-name", "parts-mlp", "--predict", "new.csv", *PLAIN)
    assert "1 row holds a value of column colour that the train rows never had (such as 'green')" in res.stderr
    out = (project.root / "logs" / "parts-mlp" / "predictions-new.csv").read_text().splitlines()
    assert out[0].startswith("input,part_id,prediction,") and out[1].startswith("2,x1,")
    bad = project.run("--dataset", "csv:data/parts.csv", "--id-column", "nope", "--run-name", "b", *PLAIN)
    assert bad.returncode == 2 and "--id-column nope: " in bad.stderr and "(or none)" in bad.stderr
