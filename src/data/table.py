"""Your own table, no code: `--dataset csv:PATH` reads a CSV file with a header line (comma, semicolon or tab
separated), like HF datasets' `csv`. PATH is one file (test and val carved from it by fixed seeded splits:
--test-split of the rows, then --val-split of the rest) or a folder with train.csv and, if you have them, val.csv
and test.csv.

--target COLUMN[,COLUMN...] names what is predicted (default: the last column); every other column is a feature:
- a column of numbers stays a number; a missing value (empty, NA, NaN, null, ?) becomes the train mean of the
  column, and a column with gaps in train gets a 0/1 "<name> missing" feature beside it;
- any other column is a category, one-hot over the values train has (a missing value is a value of its own;
  one train never saw gets all zeros), unless nearly every row has its own value (more than 50 distinct values
  and than half the train rows: an identifier, left out);
- a column whose values are image files (.png, .jpg, .jpeg; paths relative to the CSV) makes it an image
  dataset: `path,label` rows, read like folder:PATH (--image-size, --image-cache).
A number goes through a quantile transform first (the normal score of its quantile among the train
values of its column, 101 percentiles kept): outliers, heavy tails and huge ranges cannot swamp the others. Every
feature is then standardized by the train split's mean and standard deviation. The encoding (columns,
categories, fill values) is kept in the checkpoint with the model.

The task, unless --task says: several 0/1 target columns -> multilabel (the column names are the labels); one
column of text, or of whole numbers with few distinct values (at most 32, and under half the rows) ->
classification (the values of every split, sorted, are the class names); other numbers -> regression. With
--task multilabel, one text column holds each row's labels joined by --label-sep. Rows with a missing target are
left out."""
import bisect
import collections
import csv
import io
import logging
import math
import re
import statistics
from pathlib import Path

import torch

from . import ArrayDataset, Splits, identity, location, register
from ..runtime.errors import UsageError

MISSING = ("", "na", "n/a", "nan", "null", "none", "?")
SPLITS = ("train", "val", "test")
IMAGES = (".png", ".jpg", ".jpeg")
FEW = 32  # at most this many distinct whole numbers (and under half the rows) make a target classes
MANY = 50  # a text column with more distinct values than this and than half the train rows is left out

log = logging.getLogger("train")
FLOAT32_MAX = 3.4028234663852886e38
MEMORY_FACTOR = 32  # memory a table takes while read, per byte of its file (measured: 29)
MAX_CELL = 1 << 24  # characters in one cell (the csv module's own limit is 131072)
_COMMA_NUMBER = re.compile(r"[+-]?[0-9]*,?[0-9]+([eE][+-]?[0-9]+)?")


def _missing(value):
    return value.strip().lower() in MISSING


def _number(value):
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _in_range(value, column, where):
    """value, if float32 holds it (the model computes in float32); else one line naming the column."""
    if value is not None and abs(value) > FLOAT32_MAX:
        raise UsageError("%s: %r in column %s is beyond float32's range (3.4e38), which the model computes in; "
                         "rescale that column (say, to other units or its logarithm)" % (where, value, column))
    return value


_READ = {}  # path -> (its size and time, what read() gave): the task, the model and the data read it once


def read(path):
    """(header, rows) of a CSV file: rows as lists of stripped strings, each as long as the header."""
    try:
        info = Path(path).stat()
        stamp = (info.st_size, info.st_mtime_ns)
    except OSError:
        stamp = None
    if stamp is not None and _READ.get(str(path), (None,))[0] == stamp:
        return _READ[str(path)][1]
    found = _read(path)
    if stamp is not None:
        _READ.clear()
        _READ[str(path)] = (stamp, found)
    return found


def _check_size(path):
    """A table is read whole, at about MEMORY_FACTOR times its size in memory: one over half of this machine's memory
    is refused before it is read (never a MemoryError halfway)."""
    from ..runtime import compat
    try:
        size = Path(path).stat().st_size
    except OSError:
        return
    available = compat.memory_bytes()
    if size * MEMORY_FACTOR > available // 2:
        raise UsageError("%s is %.0f MB; read as a table it would take about %.1f GB of memory, more than half of "
                         "this machine's %.1f GB; use a machine with more memory, or a part of the rows (or save the "
                         "images or arrays as a folder: folder:PATH streams from files)"
                         % (path, size / 1e6, size * MEMORY_FACTOR / 1e9, available / 1e9))


def _decimal_commas(header, lines, dialect):
    """In a file separated by ';' or tabs, a column whose values are all numbers written with a decimal comma
    (1,5) is read as numbers (1.5): the way spreadsheets in much of the world save CSV."""
    if dialect.delimiter == ",":
        return lines
    rows = lines[1:]
    for i in range(len(header)):
        values = [row[i].strip() for row in rows if not _missing(row[i])]
        if values and any("," in v for v in values) and all(_COMMA_NUMBER.fullmatch(v) for v in values):
            for row in rows:
                row[i] = row[i].replace(",", ".")
    return lines


def _dialect(text):
    """The CSV dialect: the separator the header line uses most (',', ';' or a tab; a header names its columns, so
    it holds no decimal commas), else what csv.Sniffer finds."""
    first = text.split("\n", 1)[0]
    counts = {sep: first.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    if counts[best] and list(counts.values()).count(counts[best]) == 1:
        class Found(csv.excel):
            delimiter = best
        return Found
    try:
        return csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
    except csv.Error:
        return csv.excel


def _read(path):
    _check_size(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError("cannot read %s (%s); give a UTF-8 CSV file with a header line" % (path, err))
    dialect = _dialect(text)
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL))
    try:
        lines = [row for row in csv.reader(io.StringIO(text, newline=""), dialect)
                 if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise UsageError("%s is not a CSV file this can read (%s); save it as a CSV with a header line" % (path, err))
    del text
    if len(lines) < 2:
        raise UsageError("%s holds %s; give a header line, then one row per sample" % (
            path, "only a header line" if lines else "no rows"))
    header = [name.strip() for name in lines[0]]
    counts = collections.Counter(header)
    twice = sorted(name for name, n in counts.items() if n > 1)
    if twice:
        raise UsageError("%s: the header names column %s more than once; give each column its own name"
                         % (path, ", ".join(repr(n) for n in twice)))
    for number, row in enumerate(lines[1:], 2):
        if len(row) != len(header):
            raise UsageError("%s: row %d has %d fields, the header %d; fix that row (a text field holding the "
                             "separator needs quotes)" % (path, number, len(row), len(header)))
    lines = _decimal_commas(header, lines, dialect)
    return header, [[cell.strip() for cell in row] for row in lines[1:]]


def files(root):
    """{split: path} of a --dataset csv:PATH: one file (train), or a folder's train.csv, val.csv, test.csv."""
    root = Path(root).expanduser()
    if root.is_dir():
        found = {name: root / (name + ".csv") for name in SPLITS if (root / (name + ".csv")).is_file()}
        if "train" not in found:
            raise UsageError("--dataset csv:%s: the folder holds no train.csv; give a CSV file, or a folder with "
                             "train.csv (and val.csv, test.csv if you have them)" % root)
        return found
    if not root.is_file():
        raise UsageError("--dataset csv:%s: no such file; give a CSV file with a header line" % root)
    return {"train": root}


def targets(cfg, header):
    """The target column names: --target's, each in the header, or the last column."""
    names = [n.strip() for n in cfg.target.split(",") if n.strip()] if cfg.target else [header[-1]]
    unknown = [n for n in names if n not in header]
    if unknown:
        raise UsageError("--target %s: %s has no column %s; name one of its columns: %s" % (
            cfg.target, location(cfg.dataset), ", ".join(unknown), ", ".join(header)))
    if len(names) == len(header):
        raise UsageError("--target %s leaves no feature column; name the target column(s) only" % cfg.target)
    return names


def _id_column(cfg, header, names):
    """--id-column's column (checked), "" for none, or None: detected from the train rows."""
    wanted = getattr(cfg, "id_column", None)
    if wanted is None:
        return None
    if wanted == "none":
        return ""
    if wanted not in header or wanted in names:
        raise UsageError("--id-column %s: %s has no such feature column; name one of %s (or none)" % (
            wanted, location(cfg.dataset), ", ".join(n for n in header if n not in names)))
    return wanted


def infer_task(cfg):
    """The task a table's target implies (see the module docstring)."""
    header, rows = read(files(location(cfg.dataset))["train"])
    names = targets(cfg, header)
    columns = [[row[header.index(n)] for row in rows if not _missing(row[header.index(n)])] for n in names]
    if len(names) > 1:
        binary = all(v in ("0", "1", "0.0", "1.0") for column in columns for v in column)
        return "multilabel" if binary else "regression"
    values = columns[0]
    numbers = [_number(v) for v in values]
    if any(v is None for v in numbers):
        return "classification"
    whole = all(float(v).is_integer() for v in numbers)
    return "classification" if whole and len(set(numbers)) <= min(FEW, len(values) / 2.0) else "regression"


def infer_model(cfg):
    header, rows = read(files(location(cfg.dataset))["train"])
    return "cnn" if image_column(header, rows, targets(cfg, header)) is not None else "mlp"


def image_column(header, rows, names):
    """The index of the feature column that holds image file names, or None."""
    for i, name in enumerate(header):
        values = [row[i] for row in rows if not _missing(row[i])]
        if name not in names and values and all(v.lower().endswith(IMAGES) for v in values):
            return i
    return None


KNOTS = 101  # quantiles of a number column kept (its percentiles)
_NORMAL = statistics.NormalDist()
TAIL = 1e-3  # the quantile transform's levels stay in [TAIL, 1 - TAIL]: scores within +-3.1


def _robust(numbers):
    """A number column's percentiles (kept in the encoding): a quantile transform is robust to outliers, heavy tails
    and huge ranges, where a mean and standard deviation are not (a value a million times too large makes every
    other value of its column nearly the same)."""
    values = sorted(numbers)
    last = len(values) - 1

    def at(q):
        pos = q * last
        lo = int(math.floor(pos))
        hi = min(last, lo + 1)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)
    return {"knots": [at(k / float(KNOTS - 1)) for k in range(KNOTS)]}


def _squash(x, column):
    """A number through its column's quantile transform: the normal score of its train quantile, by linear
    interpolation between the kept percentiles (values beyond them: the end levels). Within +-3.1."""
    knots = column["knots"]
    last = len(knots) - 1
    lo, hi = bisect.bisect_left(knots, x), bisect.bisect_right(knots, x)
    if lo != hi:  # x is one or several equal knots: the middle of their levels
        level = (lo + hi - 1) / 2.0 / last
    elif lo == 0:
        level = 0.0
    elif lo > last:
        level = 1.0
    else:
        a, b = knots[lo - 1], knots[lo]
        level = (lo - 1 + (x - a) / (b - a)) / last
    return _NORMAL.inv_cdf(min(1 - TAIL, max(TAIL, level)))


ID_NAMES = re.compile(r"(?i)(.*[_ .-])?id|.*[a-z]Id|.*ID")


def _identifier(header, rows, skip):
    """The rows' identifier column, where one is plain to see: named id (or ending in _id, Id, ID) with a value
    of its own in every train row."""
    for i, name in enumerate(header):
        if name not in skip and ID_NAMES.fullmatch(name.strip()) and len(rows) > 1:
            values = [row[i] for row in rows]
            if not any(_missing(v) for v in values) and len(set(values)) == len(values):
                return name
    return None


class Encoder(object):
    """Feature columns -> numbers, fitted on the train rows; `state()` is what the checkpoint keeps."""

    def __init__(self, columns, id_column=None):
        self.columns = columns  # [{"name", "kind": "number", "fill", "gap"} | {"name", "kind": "category", "values"}]
        self.id_column = id_column  # the rows' identifier: left out of the features, carried to predictions
        self.dropped = []  # why columns were left out (identifiers), as lines
        self.unseen = {}  # column -> [rows with a category train never had, the first such value] (last encode)

    @classmethod
    def fit(cls, header, rows, skip, id_column=None):
        columns, dropped = [], []
        if id_column is None:
            id_column = _identifier(header, rows, skip)
        id_column = id_column or None
        for i, name in enumerate(header):
            if name in skip:
                continue
            if name == id_column:
                dropped.append("column %s: the rows' identifier (--id-column): left out of the features, written "
                               "beside each prediction" % name)
                continue
            present = [row[i] for row in rows if not _missing(row[i])]
            numbers = [_number(v) for v in present]
            if present and all(v is not None for v in numbers):
                for v in numbers:
                    _in_range(v, name, "the train rows")
                gap = len(present) < len(rows)
                columns.append(dict({"name": name, "kind": "number", "fill": sum(numbers) / len(numbers),
                                     "gap": gap}, **_robust(numbers)))
            else:
                values = sorted(set(row[i] if not _missing(row[i]) else "" for row in rows))
                if len(values) > max(MANY, len(rows) // 2):
                    dropped.append("column %s: %d distinct texts in %d train rows (an identifier?): left out"
                                   % (name, len(values), len(rows)))
                    continue
                columns.append({"name": name, "kind": "category", "values": values})
        encoder = cls(columns, id_column)
        encoder.dropped = dropped  # said once the table is known to have features left
        return encoder

    def features(self):
        """The names of the encoded features, in order."""
        out = []
        for c in self.columns:
            if c["kind"] == "number":
                out += [c["name"]] + (["%s missing" % c["name"]] if c["gap"] else [])
            else:
                out += ["%s=%s" % (c["name"], v or "(missing)") for v in c["values"]]
        return out

    def encode(self, header, rows, where):
        """float32 (N, features) of rows under header (which must hold every column); where: for messages."""
        position = {name: i for i, name in reversed(list(enumerate(header)))}  # linear in the columns
        lost = [c["name"] for c in self.columns if c["name"] not in position]
        if lost:
            raise UsageError("%s has no column %s; the model was trained with it" % (where, ", ".join(lost)))
        at = [position[c["name"]] for c in self.columns]
        out = []
        self.unseen = {}
        for row in rows:
            vec = []
            for c, i in zip(self.columns, at):
                value = row[i]
                if c["kind"] == "number":
                    number = None if _missing(value) else _in_range(_number(value), c["name"], where)
                    if number is None and not _missing(value):
                        raise UsageError("%s: %r in column %s is not a number (train's values are); fix that "
                                         "value or leave it empty" % (where, value, c["name"]))
                    number = c["fill"] if number is None else number
                    vec.append(_squash(number, c) if "knots" in c else number)  # none: an older run's
                    if c["gap"]:
                        vec.append(1.0 if number is None else 0.0)
                else:
                    key = "" if _missing(value) else value
                    row_vec = [1.0 if key == v else 0.0 for v in c["values"]]
                    if not any(row_vec):
                        seen = self.unseen.setdefault(c["name"], [0, key])
                        seen[0] += 1
                    vec += row_vec
            out.append(vec)
        return torch.tensor(out, dtype=torch.float32).view(len(rows), -1)

    def say_unseen(self, where):
        """One line per column whose last encoded rows held categories train never had (encoded as none of them)."""
        for name, (count, first) in sorted(self.unseen.items()):
            log.info("%s: %d %s a value of column %s that the train rows never had (such as %r): encoded as none of "
                     "its categories", where, count, "rows hold" if count > 1 else "row holds", name, first[:40])

    def ids(self, header, rows):
        """The identifier of each row (None without an id column, or when these rows lack it)."""
        if self.id_column is None or self.id_column not in header:
            return None
        i = header.index(self.id_column)
        return [row[i] for row in rows]

    def state(self):
        return {"columns": [dict(c) for c in self.columns], "id": self.id_column}


class Target(object):
    """Target column(s) -> a tensor for the task: class indices, 0/1 rows (multilabel) or numbers."""

    def __init__(self, task, names, classes, sep):
        self.task, self.names, self.classes, self.sep = task, names, classes, sep

    @classmethod
    def fit(cls, task, header, rows, names, sep):
        if task not in ("classification", "regression", "multilabel"):
            raise UsageError("--task %s does not apply to a table; use classification, regression or multilabel"
                             % task)
        if task == "multilabel" and len(names) == 1:
            i = header.index(names[0])
            labels = sorted({part.strip() for row in rows for part in row[i].split(sep) if part.strip()})
            return cls(task, names, labels, sep)
        if task == "multilabel":
            return cls(task, names, list(names), sep)
        if task == "classification":
            values = {row[header.index(names[0])] for row in rows}
            numbers = {v: _number(v) for v in values}
            key = (lambda v: numbers[v]) if all(n is not None for n in numbers.values()) else None
            return cls(task, names, sorted(values, key=key), sep)
        return cls(task, names, None, sep)

    def encode(self, header, rows, where):
        cols = [header.index(n) for n in self.names]
        if self.task == "classification":
            index = {v: k for k, v in enumerate(self.classes)}
            unknown = sorted({row[cols[0]] for row in rows} - set(index))
            if unknown:
                raise UsageError("%s: target %s holds %s, which the model was not trained on; predictions can only "
                                 "name the classes it knows (%s)" % (where, self.names[0], ", ".join(
                                     repr(u) for u in unknown[:5]), ", ".join(self.classes[:10])))
            return torch.tensor([index[row[cols[0]]] for row in rows], dtype=torch.long)
        if self.task == "multilabel" and len(cols) == 1:
            index = {v: k for k, v in enumerate(self.classes)}
            y = torch.zeros(len(rows), len(self.classes))
            for r, row in enumerate(rows):
                for part in row[cols[0]].split(self.sep):
                    if part.strip() in index:
                        y[r, index[part.strip()]] = 1.0
            return y
        y = []
        for row in rows:
            values = [_in_range(_number(row[c]), self.names[k], where) for k, c in enumerate(cols)]
            bad = [row[c] for c, v in zip(cols, values) if v is None]
            if bad:
                raise UsageError("%s: target value %r is not a number; with --task %s every target is one (or "
                                 "leave it empty: the row is left out)" % (where, bad[0], self.task))
            y.append(values)
        y = torch.tensor(y, dtype=torch.float32)
        return y if self.task == "multilabel" or len(cols) > 1 else y.view(-1)

    def outputs(self):
        return len(self.classes) if self.classes is not None else len(self.names)


def _split_rows(cfg, parts, target):
    """{split: rows}: the given files' rows, the missing splits carved from train's (test first, then val; a
    classification's in proportion to each class, by the target column's index `target`)."""
    from .folder import carve_split
    rows = dict(parts)
    train = rows["train"]
    for which, fraction in (("test", cfg.test_split), ("val", cfg.val_split)):
        if which in rows:
            continue
        labels = [row[target] for row in train] if cfg.task == "classification" else None
        keep, held = carve_split(cfg, _row_keys(train), fraction, which, labels=labels)
        rows[which] = [train[i] for i in held.tolist()]
        train = [train[i] for i in keep.tolist()]
    rows["train"] = train
    return rows


def _row_keys(rows):
    """Each row's key for the split (--split-by path): its text, and which of the identical rows it is; rows added
    or removed move no other row between splits."""
    seen, keys = {}, []
    for row in rows:
        text = "\x1f".join(row)
        seen[text] = seen.get(text, 0) + 1
        keys.append("%s\x1e%d" % (text, seen[text]))
    return keys


@register("csv", task=infer_task, model=infer_model, path=True)
def build(cfg):
    paths = files(location(cfg.dataset))
    read_in = {name: read(path) for name, path in paths.items()}
    header = read_in["train"][0]
    for name, (other, _) in read_in.items():
        if other != header:
            raise UsageError("%s has the columns %s, train.csv %s; give every file the same header line"
                             % (paths[name], ", ".join(other), ", ".join(header)))
    names = targets(cfg, header)
    cols = [header.index(n) for n in names]
    parts = {}
    for name, (_, rows) in read_in.items():
        kept = [row for row in rows if not any(_missing(row[c]) for c in cols)]
        if not kept:
            raise UsageError("%s: no row has a value in the target column%s %s; fill them in%s" % (
                paths[name], "s" if len(names) > 1 else "", ", ".join(names),
                "" if name == "train" else ", or remove %s (then a share of train's rows is held out)"
                % paths[name].name))
        if len(kept) < len(rows):
            log.info("%s: %d rows without a target value left out", paths[name], len(rows) - len(kept))
        parts[name] = kept
    rows = _split_rows(cfg, parts, cols[0])
    # the classes (or labels) of every split: one that train happens to lack is still a class the model has
    target = Target.fit(cfg.task, header, [row for name in SPLITS for row in rows[name]], names, cfg.label_sep)
    if target.classes is not None and len(target.classes) < 2:
        raise UsageError("--dataset %s: the target %s holds one %s (%r); a model needs two or more to tell apart: "
                         "name another --target, or use --task regression for numbers" % (
                             cfg.dataset, ", ".join(names), "label" if cfg.task == "multilabel" else "class",
                             target.classes[0] if target.classes else ""))
    where = {name: "%s (%s)" % (paths.get(name, paths["train"]), name) for name in SPLITS}
    ys = {name: target.encode(header, rows[name], where[name]) for name in SPLITS}
    image = image_column(header, rows["train"], names)
    if image is not None:
        from .folder import image_splits
        base = paths["train"].parent
        found = {name: ([base / row[image] for row in rows[name]], ys[name]) for name in SPLITS}
        splits = image_splits(cfg, found, target.classes, paths["train"], outputs=target.outputs())
        return splits._replace(source=identity.combined(identity.of_bytes(paths), splits.source))
    encoder = Encoder.fit(header, rows["train"], names, _id_column(cfg, header, names))
    if not encoder.features():
        raise UsageError("%s: no column is left to learn from (%s); a table needs feature columns of numbers or "
                         "categories beside the target: check the separator (a ';' file with decimal commas is "
                         "read as numbers) and --target" % (paths["train"], "every other column was left out as "
                                                             "an identifier" if len(header) > len(names) else
                                                             "only the target"))
    for line in encoder.dropped:
        log.info("%s", line)
    xs = {}
    for name in SPLITS:
        xs[name] = encoder.encode(header, rows[name], where[name])
        encoder.say_unseen(where[name])
    mean, std = xs["train"].mean(0), xs["train"].std(0) if len(xs["train"]) > 1 else torch.ones(xs["train"].shape[1])
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant feature is only centred
    parts = {name: ArrayDataset(xs[name], ys[name], mean=mean, std=std) for name in SPLITS}
    log.info("table %s: %d features from %d columns (%s), target %s (%s)", paths["train"], len(encoder.features()),
             len(encoder.columns), ", ".join("%s: %s" % (c["name"], c["kind"]) for c in encoder.columns[:8])
             + (" ..." if len(encoder.columns) > 8 else ""), ", ".join(names), cfg.task)
    return Splits(train=parts["train"], val=parts["val"], test=parts["test"], input_shape=(len(encoder.features()),),
                  num_classes=target.outputs(), classes=target.classes, encoding=dict(encoder.state(), target=names),
                  source=identity.of_bytes(paths))
