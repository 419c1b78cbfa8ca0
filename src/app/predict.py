"""--predict INPUT: a run's best model on new files, written to logs/<run>/predictions-<INPUT's name>.csv.

INPUT is an image, a folder of images (all of them, subfolders too, in sorted order), or a CSV file: rows of a
table for a model trained on csv:PATH (the columns it was trained on, by name; others are ignored), or rows with
a column of image files (paths relative to the CSV) for an image model. The inputs are read exactly as training
read them (the same decoding, resizing and centre cut; the table encoding kept in the checkpoint) and go through
`models.from_checkpoint`'s model, so Python code that calls it on the same raw inputs gets the same numbers.

The file is written whole or not at all; an input whose name is taken by another input's predictions gets
predictions-<name>-2.csv (logs/<run>/predictions.json says which input each file holds). Cells that a
spreadsheet would run as a formula are written as text (safe_cell).

One row per input: the input (its path, or the row's line number in the CSV, then the table's id column where
the model was trained with one: --id-column), then for classification the class
and every class's probability; for regression the value(s) in the target's units; for multilabel the labels
whose probability is above 0.5 (joined by --label-sep) and every label's probability."""
import csv
import json
import logging
from pathlib import Path

import torch

from .. import models
from ..data import folder, table
from ..files import atomic
from ..files.paths import RunPaths, check_folder
from ..runtime.errors import UsageError
from ..runtime.text import printable
from ..state.resume import load_or_usage_error

log = logging.getLogger("train")


def run(cfg):
    path = RunPaths(cfg).best
    if not path.is_file():
        raise UsageError("run '%s' has no best checkpoint (%s); train it first, or name a trained run with "
                         "--run-name" % (cfg.run_name, path))
    state = load_or_usage_error(path, "--predict", full=False)  # a truncated or forged file: one line
    spec, config = state.get("model_spec") or {}, state.get("config") or {}
    source = Path(cfg.predict).expanduser()
    names, batches, ids = _inputs(source, spec, config, cfg.batch_size)
    model = models.from_state(state, path)
    check_folder(cfg.logs_dir, "--logs-dir")
    run_dir = RunPaths(cfg).run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    target = _target(run_dir, source)
    count = 0
    with atomic.writing(target) as out:  # whole or not at all; memory: one batch of inputs at a time
        writer = csv.writer(out, lineterminator="\n")
        with torch.no_grad():
            for x in batches:
                header, rows = _rows(spec, config, names[count:count + len(x)], model(x).float())
                if ids is not None:  # the table's id column beside the line number
                    header = header[:1] + [ids[0]] + header[1:]
                    rows = [row[:1] + [i] + row[1:] for row, i in zip(rows, ids[1][count:count + len(x)])]
                if count == 0:
                    writer.writerow([safe_cell(c) for c in header])
                writer.writerows([safe_cell(c) for c in row] for row in rows)
                count += len(rows)
    _remember(run_dir, target, source)
    log.info("predictions of %s for %d inputs from %s -> %s", path, count, printable(source), target)
    return 0


def safe_cell(value):
    """A CSV cell a spreadsheet shows as text: one that starts with = + - @ or a tab or carriage return (a class
    or file name such as =HYPERLINK(...)) gets a leading ' (OWASP's advice on CSV injection); numbers stay as
    they are."""
    text = str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


INDEX = "predictions.json"  # which input each predictions-<name>.csv of a run holds


def _target(run_dir, source):
    """logs/<run>/predictions-<INPUT's name>.csv, or -2, -3... when that name holds another input's predictions
    (a/0.png, then b/0.png): an output never silently replaces another input's."""
    taken = _index(run_dir)
    stem = source.stem or "input"
    where = str(source.resolve())
    n = 1
    while True:
        name = "predictions-%s%s.csv" % (stem, "" if n == 1 else "-%d" % n)
        if not (run_dir / name).exists() or taken.get(name) == where:
            if n > 1:
                log.info("%s holds the predictions of %s: these go to %s", "predictions-%s.csv" % stem,
                         printable(taken.get("predictions-%s.csv" % stem, "another input")), name)
            return run_dir / name
        n += 1


def _index(run_dir):
    try:
        index = json.loads((run_dir / INDEX).read_text())
        return index if isinstance(index, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(run_dir, target, source):
    index = _index(run_dir)
    index[target.name] = str(source.resolve())
    atomic.write_text(run_dir / INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n")


def _batches(x, size):
    """x (a tensor or a list) in pieces of size."""
    for i in range(0, len(x), size):
        yield x[i:i + size]


def _inputs(source, spec, config, batch_size):
    """(names, batches of raw inputs) of INPUT, as the checkpoint's model takes them; image files are decoded a
    batch at a time, resized as the run's config says."""
    if not source.exists():
        raise UsageError("--predict %s: no such file or folder; give an image, a folder of images or a CSV file"
                         % source)
    encoding = spec.get("encoding")
    if encoding is not None:
        if source.suffix.lower() != ".csv" or not source.is_file():
            raise UsageError("--predict %s: this model reads table rows; give a CSV file with its columns (%s)"
                             % (source, ", ".join(c["name"] for c in encoding["columns"])))
        header, rows = table.read(source)
        encoder = table.Encoder(encoding["columns"], encoding.get("id"))
        x = encoder.encode(header, rows, str(source))
        encoder.say_unseen(printable(source))
        ids = encoder.ids(header, rows)
        return ([str(n) for n in range(2, len(rows) + 2)], _batches(x, batch_size),
                (encoder.id_column, ids) if ids is not None else None)
    shape = spec.get("input_shape") or []
    transform = spec.get("input_transform") or {}
    if len(shape) != 3 or abs(float(transform.get("scale", 0)) - 1 / 255.0) > 1e-9:
        raise UsageError("--predict reads images and tables: the run was trained on data of another kind (inputs "
                         "%s); call models.from_checkpoint on your inputs in Python instead" % (shape,))
    if source.is_dir():
        files = folder.image_files(source)
        names = [f.relative_to(source).as_posix() for f in files]
    elif source.suffix.lower() == ".csv":
        header, rows = table.read(source)
        column = table.image_column(header, rows, [])
        if column is None:
            raise UsageError("--predict %s: no column of image files (.png, .jpg); give one, paths relative to the "
                             "CSV" % source)
        names = [row[column] for row in rows]
        files = [source.parent / n for n in names]
    else:
        files, names = [source], [source.name]
    if not files:
        raise UsageError("--predict %s: no PNG or JPEG images in it; give a folder that holds some" % source)
    decode = folder.Decoder.of(config, shape[1], shape[0])
    return names, (torch.stack([decode(f) for f in chunk]) for chunk in _batches(files, batch_size)), None


def _rows(spec, config, names, out):
    task, classes = config.get("task"), spec.get("classes")
    if task == "classification":
        prob = torch.softmax(out, 1)
        classes = classes or [str(k) for k in range(out.shape[1])]
        header = ["input", "prediction"] + ["p(%s)" % c for c in classes]
        return header, [[n, classes[int(p.argmax())]] + ["%.6g" % v for v in p.tolist()] for n, p in zip(names, prob)]
    if task == "multilabel":
        prob = torch.sigmoid(out)
        classes = classes or [str(k) for k in range(out.shape[1])]
        sep = config.get("label_sep") or "|"
        header = ["input", "labels"] + ["p(%s)" % c for c in classes]
        return header, [[n, sep.join(c for c, v in zip(classes, p) if v > 0.5)] + ["%.6g" % v for v in p]
                        for n, p in zip(names, prob.tolist())]
    out = out.reshape(len(names), -1)
    targets = (spec.get("encoding") or {}).get("target") or ["prediction"] * out.shape[1]
    if len(targets) != out.shape[1]:
        targets = ["prediction %d" % k for k in range(out.shape[1])]
    return ["input"] + list(targets), [[n] + ["%.8g" % v for v in row] for n, row in zip(names, out.tolist())]
