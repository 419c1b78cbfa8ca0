"""A researcher's own table without code: --dataset csv:PATH (numbers, categories, missing values, the task read
from the target, image paths), the multilabel task (0/1 columns or one joined column; F1 and mAP summed on the
device), and exact resume of table and multilabel runs."""
import gzip
import math
import signal
from types import SimpleNamespace

import pytest
import torch

from conftest import Project, bash_block, finish_run, load, same_weights, split_counts, write_images
from src.data import table
from src.tasks.multilabel import AP_BINS, MultiLabel

TABLE = ["--batch-size", "32", "--deterministic", "--progress", "plain"]


def _people(path, n=300, seed=0):
    """A table of numbers, a category with gaps, a number with gaps and a text target that depends on them."""
    g = torch.Generator().manual_seed(seed)
    age = torch.randint(18, 80, (n,), generator=g)
    income = torch.randn(n, generator=g) * 10 + 50
    city = torch.randint(0, 3, (n,), generator=g)
    lines = ["id,age,city,income,score,label"]
    for i in range(n):
        name = ("Paris", "Rome", "Oslo")[int(city[i])] if i % 17 else ""
        score = "" if i % 9 == 0 else "%.2f" % (i % 7 / 7.0)
        label = "high" if float(income[i]) + (8 if name == "Oslo" else 0) > 53 else "low"
        lines.append("p%04d,%d,%s,%.1f,%s,%s" % (i, int(age[i]), name, float(income[i]), score, label))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _tags(path, n=400, joined=False, seed=1):
    """Two features and three labels: 0/1 columns a, b, c, or one column of the labels joined by '|'."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g)
    lines = ["x1,x2," + ("tags" if joined else "a,b,c")]
    for x1, x2 in x.tolist():
        on = [x1 > 0.5, x2 > 0.5, x1 + x2 > 1]
        labels = ("|".join(n for n, o in zip("abc", on) if o) if joined else ",".join(str(int(o)) for o in on))
        lines.append("%.3f,%.3f,%s" % (x1, x2, labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    project = Project(tmp_path_factory.mktemp("tables"))
    _people(project.root / "data" / "people.csv")
    _tags(project.root / "data" / "tags.csv")
    _tags(project.root / "data" / "movies.csv", joined=True)
    return project


def test_a_table_of_numbers_categories_and_gaps_trains_and_keeps_its_encoding(tables):
    res = tables.ok(*(TABLE + ["--dataset", "csv:data/people.csv", "--epochs", "8"]))
    assert "age: number, city: category, income: number, score: number), target label (classification)" \
        in res.stderr
    assert "run people-mlp" in res.stderr  # the default run name: the file's, without .csv
    train = split_counts(res.stderr, 300)[0]
    assert train > 200 and "column id: the rows' identifier (--id-column): left out of the features" in res.stderr
    state = load(tables.best("people-mlp"))
    spec = state["model_spec"]
    assert spec["classes"] == ["high", "low"] and spec["input_shape"] == [8]  # age, city x4, income, score + gap
    columns = {c["name"]: c for c in spec["encoding"]["columns"]}
    assert columns["city"]["values"] == ["", "Oslo", "Paris", "Rome"]  # a missing city is a category of its own
    assert columns["score"]["gap"] and not columns["income"]["gap"]
    assert state["last_eval"]["val/acc"] > 0.75


def test_the_task_comes_from_the_target_and_task_overrides_it(tables):
    cfg = lambda target, **kw: SimpleNamespace(dataset="csv:" + str(tables.root / "data" / "people.csv"),  # noqa
                                               target=target, **kw)
    assert table.infer_task(cfg("label")) == "classification"  # text
    assert table.infer_task(cfg("income")) == "regression"  # fractions
    assert table.infer_task(cfg("age")) == "regression"  # 62 distinct whole numbers: more than a few classes
    tags = SimpleNamespace(dataset="csv:" + str(tables.root / "data" / "tags.csv"), target="a,b,c")
    assert table.infer_task(tags) == "multilabel"
    assert table.infer_task(SimpleNamespace(dataset=tags.dataset, target="c")) == "classification"  # 0/1
    res = tables.ok(*(TABLE + ["--dataset", "csv:data/people.csv", "--target", "age", "--task", "classification",
                               "--max-steps", "2", "--run-name", "ages"]))
    assert "target age (classification)" in res.stderr
    assert len(load(tables.latest("ages"))["model_spec"]["classes"]) > 40


def test_a_folder_with_train_and_test_csv_gives_the_splits(tmp_path):
    project = Project(tmp_path)
    _people(project.root / "shop" / "train.csv", 200, seed=3)
    _people(project.root / "shop" / "test.csv", 50, seed=4)
    res = project.ok(*(TABLE + ["--dataset", "csv:shop", "--max-steps", "2"]))
    assert split_counts(res.stderr, 250, test=None)[2] == 50  # test.csv's rows; val held out from train.csv's


def test_a_csv_of_image_paths_is_an_image_dataset(tmp_path):
    project = Project(tmp_path)
    folder = write_images(project.root / "data" / "snaps", 12, classes=("a", "b"))
    rows = ["file,kind"] + ["%s,%s" % (p.relative_to(folder).as_posix(), p.relative_to(folder).parts[0])
                            for p in sorted(folder.rglob("*.*"))]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    res = project.ok(*(TABLE + ["--dataset", "csv:data/snaps/labels.csv", "--image-size", "8", "--width", "8",
                                "--max-steps", "2"]))
    assert "model cnn:" in res.stderr and "(classification): " in res.stderr
    split_counts(res.stderr, 24)
    spec = load(project.latest("labels-cnn"))["model_spec"]
    assert spec["classes"] == ["a", "b"] and spec["input_shape"] == [3, 8, 8]


@pytest.mark.parametrize("name,extra", [("tags", ["--target", "a,b,c"]), ("movies", ["--task", "multilabel"])])
def test_multilabel_from_0_1_columns_or_one_joined_column(tables, name, extra):
    res = tables.ok(*(TABLE + ["--dataset", "csv:data/%s.csv" % name, "--epochs", "12", "--run-name", name]
                      + extra))
    assert "(multilabel)" in res.stderr
    state = load(tables.best(name))
    assert state["model_spec"]["classes"] == ["a", "b", "c"]
    assert state["config"]["monitor"] == "val/map:max"  # the task's own default
    assert state["last_eval"]["val/map"] > 0.9 and state["last_eval"]["val/f1"] > 0.8, state["last_eval"]
    assert set(k for k in state["last_eval"] if k.startswith("val/f1/")) == {"val/f1/a", "val/f1/b", "val/f1/c"}


def _average_precision(scores, truth):
    """scikit-learn's average_precision_score, written out: the precision at each positive, ranked by score."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if truth[i]:
            hits += 1
            total += hits / float(rank)
    return total / max(hits, 1)


def test_the_f1_and_map_summed_in_batches_equal_the_textbook_values():
    g = torch.Generator().manual_seed(0)
    n, k = 300, 4
    # a label's scores are distinct, one bin each (the binned curve is then exact); the truth follows them loosely
    cells = torch.stack([torch.randperm(AP_BINS, generator=g)[:n] for _ in range(k)], 1).double()
    scores = (cells + 0.5) / AP_BINS
    truth = (torch.rand(n, k, generator=g).double() < scores * 0.8).float()
    logits = torch.log(scores / (1 - scores)).float()
    task = MultiLabel(SimpleNamespace(), SimpleNamespace(num_classes=k, classes=["w", "x", "y", "z"]))
    sums = {}
    for start in range(0, n, 64):  # summed batch by batch, as evaluation does
        for key, value in task.eval_sums(logits[start:start + 64], truth[start:start + 64]).items():
            sums[key] = sums[key] + value if key in sums else value
    values = task.eval_values(sums)
    f1s, aps = [], []
    for j in range(k):
        pred, real = scores[:, j] > 0.5, truth[:, j] > 0.5
        tp, fp, fn = int((pred & real).sum()), int((pred & ~real).sum()), int((~pred & real).sum())
        f1s.append(2.0 * tp / (2 * tp + fp + fn))
        aps.append(_average_precision(scores[:, j].tolist(), real.tolist()))
        assert values["f1/" + "wxyz"[j]] == pytest.approx(f1s[-1])
    assert values["f1"] == pytest.approx(sum(f1s) / k)
    assert values["map"] == pytest.approx(sum(aps) / k, rel=1e-9)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, truth)
    assert values["loss"] == pytest.approx(float(bce), rel=1e-5)
    assert not math.isnan(values["map"])



@pytest.mark.parametrize("data,extra", [("people", []), ("movies", ["--task", "multilabel"])])
@pytest.mark.parametrize("stop", [(signal.SIGTERM, "step ", 12), (signal.SIGKILL, "saved checkpoint step ", 20)])
def test_table_and_multilabel_runs_resume_exactly(tmp_path, data, extra, stop):
    made = {"people": _people, "movies": lambda p: _tags(p, joined=True)}[data]
    args = TABLE + ["--dataset", "csv:%s" % made(tmp_path / ("%s.csv" % data)), "--max-steps", "30", "--log-every",
                    "2", "--ckpt-every", "5", "--eval-every", "10", "--dropout", "0.1", "--run-name", "exact"] + extra
    for name in ("whole", "stopped"):
        (tmp_path / name).mkdir()
    whole = finish_run(Project(tmp_path / "whole"), args, 30)
    assert same_weights(finish_run(Project(tmp_path / "stopped"), args, 30, stop), whole)


def test_the_shipped_diabetes_table_as_a_csv_learns_what_the_built_in_dataset_does(tmp_path):
    """A real table (the diabetes data shipped in src/data/assets) read as a plain CSV: the task is inferred
    (regression: 214 distinct whole numbers) and the fit is as good as the built-in loader's."""
    project = Project(tmp_path)
    raw = gzip.decompress((project.root / "src" / "data" / "assets" / "diabetes.csv.gz").read_bytes())
    (project.root / "data").mkdir(exist_ok=True)
    (project.root / "data" / "diabetes.csv").write_bytes(raw)
    res = project.ok(*(TABLE + ["--dataset", "csv:data/diabetes.csv", "--epochs", "40", "--val-split", "0.2"]))
    assert "target progression (regression)" in res.stderr
    r2 = load(project.best("diabetes-mlp"))["last_eval"]["val/r2"]
    assert r2 > 0.3, "a linear fit of this data explains about half the variance; val/r2 %.2f" % r2


def test_the_readme_table_commands_work_as_written(tmp_path):
    """README "Your table, no code": its block, typed as written (python: this interpreter), on a house-price table
    with a category and gaps, and a table of films whose genres are joined by '|'."""
    from test_readme import readme_block
    (tmp_path / "clone").mkdir()
    project = Project(tmp_path / "clone")
    g = torch.Generator().manual_seed(5)
    rows = ["rooms,area,town,price"]
    for i in range(240):
        rooms, town = int(torch.randint(1, 6, (1,), generator=g)), i % 3
        area = 30 + 100 * float(torch.rand(1, generator=g))
        price = 1000 * area + 20000 * rooms + 30000 * town + 5000 * float(torch.randn(1, generator=g))
        rows.append("%d,%s,%s,%.2f" % (rooms, "%.1f" % area if i % 11 else "", "abc"[town], price))
    (project.root / "data").mkdir(exist_ok=True)
    (project.root / "data" / "houses.csv").write_text("\n".join(rows) + "\n")
    _tags(project.root / "data" / "movies.csv", joined=True)
    (project.root / "data" / "movies.csv").write_text(
        (project.root / "data" / "movies.csv").read_text().replace("x1,x2,tags", "x1,x2,genres"))
    res = bash_block(project, tmp_path, readme_block("### Your table, no code"))
    assert "run houses-mlp" in res.stdout and "target price (regression)" in res.stdout, res.stdout[-3000:]
    assert '"test/r2"' in res.stdout and "run movies-mlp" in res.stdout and "(multilabel)" in res.stdout
    spec = load(project.best("houses-mlp"))["model_spec"]
    assert [c["kind"] for c in spec["encoding"]["columns"]] == ["number", "number", "category"]
    # README "Predictions on new files", after it: new houses without a price, the films again
    (project.root / "data" / "houses-new.csv").write_text("town,rooms,area\nb,3,70.5\nc,5,\n")
    res = bash_block(project, tmp_path, readme_block("### Predictions on new files"))
    houses = (project.root / "logs" / "houses-mlp" / "predictions-houses-new.csv").read_text().splitlines()
    assert houses[0] == "input,price" and len(houses) == 3 and float(houses[2].split(",")[1]) > 0
    films = (project.root / "logs" / "movies-mlp" / "predictions-movies.csv").read_text().splitlines()
    assert films[0] == "input,labels,p(a),p(b),p(c)" and len(films) == 401


def test_quoted_fields_semicolons_and_a_byte_order_mark_are_read_as_a_spreadsheet_writes_them(tmp_path):
    path = tmp_path / "sheet.csv"
    path.write_bytes('\ufeffcity;note;y\n"Paris; FR";"two\nlines";1\nOslo;;0\n'.encode("utf-8"))
    header, rows = table.read(path)
    assert header == ["city", "note", "y"]
    assert rows == [["Paris; FR", "two\nlines", "1"], ["Oslo", "", "0"]]


def test_a_semicolon_table_with_decimal_commas_and_a_long_text_cell_reads_as_numbers(tmp_path):
    """Spreadsheets in much of the world save ';'-separated files with decimal commas: those columns are numbers
    (they were all dropped as identifiers, leaving 0 features); a cell of 200,000 characters is a value like any
    other (it was a _csv.Error traceback)."""
    project = Project(tmp_path)
    rows = ["height;weight;note;kind"] + ["%d,%d;%d,5;%s;%s" % (150 + i, i % 10, 60 + i, "n" * 200000 if i == 4 else
                                                              "ok", "ab"[i % 2]) for i in range(60)]
    (project.root / "eu.csv").write_text("\n".join(rows) + "\n")
    res = project.ok("--dataset", "csv:eu.csv", "--max-steps", "2", "--progress", "plain")
    assert "height: number, weight: number, note: category), target kind (classification)" in res.stderr, res.stderr
    columns = {c["name"]: c for c in load(project.best("eu-mlp"))["model_spec"]["encoding"]["columns"]}
    assert columns["height"]["kind"] == "number" and 150 < columns["height"]["fill"] < 210


def test_a_table_of_20000_columns_trains(tmp_path):
    """20,000 columns took 105 s before the first step (a column lookup per cell was linear in the columns); the
    table trains and keeps every column (the step's own time is the model's)."""
    project = Project(tmp_path)
    names = ["c%d" % i for i in range(20000)] + ["y"]
    rows = [",".join(names)] + [",".join(str((i * 7 + j) % 10) for j in range(20000)) + ",%d" % (i % 2)
                                for i in range(30)]
    (project.root / "wide.csv").write_text("\n".join(rows) + "\n")
    project.ok("--dataset", "csv:wide.csv", "--max-steps", "1", "--progress", "plain", timeout=120)
    assert load(project.best("wide-mlp"))["model_spec"]["input_shape"] == [20000]
