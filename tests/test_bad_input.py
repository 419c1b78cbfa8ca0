"""Bad input of every kind: one line that names the problem and the next step, exit 2 for usage errors
(1 for a run that cannot go on), and nothing saved before is changed: the test hashes models/ and logs/
before and after each case, and no lock or folder of a run that never started is left behind.

The cases run in one process of the project's own train.py (train.main(argv) per case, its return value the
exit code): no process behaviour differs between them, and a torch import per case cost minutes. A few cases
(PROCESS) also run as real train.py processes: their exit code and stderr are the process's own."""
import copy
import inspect
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import FAST, load, write_images
from src.state import fileformat
from test_reliability import tree_digest

RUN = ["--max-steps", "3", "--run-name", "fresh"]  # a run that must never appear
LEVELS = "abcdefghi"  # a billion laughs: 9 ** 9 references to "x" in one 300-byte value of a known key
ALIAS_BOMB = "lr: [&a [%s], %s]\n" % (", ".join(["x"] * 9), ", ".join(
    "&%s [%s]" % (name, ", ".join(["*" + LEVELS[i]] * 9)) for i, name in enumerate(LEVELS[1:])))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project with one finished run 'digits-mlp' to protect."""
    from conftest import Project
    project = Project(tmp_path_factory.mktemp("bad-input"))
    project.ok(*(FAST + ["--max-steps", "5"]))
    (project.root / "a-file").write_text("not a folder")
    (project.root / "nested.yaml").write_text("lr: " + "[" * 5000 + "]" * 5000 + "\n")
    (project.root / "latin1.yaml").write_bytes(b"run_name: caf\xe9\n")
    (project.root / "bomb.yaml").write_text(ALIAS_BOMB)
    os.mkfifo(str(project.root / "fifo"))  # opening it to read would wait for a writer forever
    (project.root / "sums-latin1.yaml").write_bytes(b"mnist/caf\xe9: 0\n")
    for i, (text, _) in enumerate(BAD_CONFIGS):
        (project.root / ("bad-%d.yaml" % i)).write_text(text)
    _bad_folders(project.root)
    _bad_tables(project.root)
    with open(str(project.root / "huge.pt"), "wb") as f:  # 40 GB, sparse: no disk used
        f.truncate(40 << 30)
    state = load(project.latest("digits-mlp"))
    for name, change in FORGED.items():
        forged = copy.deepcopy(state)
        change(forged)
        buf = io.BytesIO()
        torch.save(forged, buf)
        (project.root / ("forged-%s.pt" % name)).write_bytes(fileformat.sign(buf.getvalue()))
    return project


def _bad_folders(root):
    """Image folders laid out wrongly, one way each (real image files)."""
    write_images(root / "loose-src", 2, classes=("a",))
    (root / "loose").mkdir()
    for path in (root / "loose-src" / "a").iterdir():
        path.rename(root / "loose" / path.name)  # images at the top, no class folders
    write_images(root / "one-class", 2, classes=("a",))
    write_images(root / "empty-class", 2, classes=("a",))
    (root / "empty-class" / "b").mkdir()
    (root / "empty-class" / "b" / "notes.txt").write_text("not an image")
    write_images(root / "broken", 2, classes=("a", "b"))
    (root / "broken" / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n but no image")
    write_images(root / "sizes", 2, classes=("a",), size=(8, 8))
    write_images(root / "sizes", 2, classes=("b",), size=(9, 7))
    write_images(root / "split-classes" / "train", 2, classes=("a", "b"))
    write_images(root / "split-classes" / "test", 2, classes=("a", "c"))
    write_images(root / "loose-beside", 2, classes=("a", "b"))
    (root / "loose-beside" / "a" / "000.png").rename(root / "loose-beside" / "stray.png")
    write_images(root / "bomb", 2, classes=("a", "b"))
    (root / "bomb" / "b" / "huge.png").write_bytes(bomb_png(30000, 30000))


def bomb_png(width, height):
    """The header of a grey PNG of width x height (a decompression bomb: 900 Mpx claimed in a few bytes)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _bad_tables(root):
    """CSV tables that cannot be read as asked, one way each."""
    good = "x,kind,y\n" + "".join("%d,%s,%d\n" % (i, "ab"[i % 2], i % 2) for i in range(20))
    (root / "header-only.csv").write_text("x,y\n")
    (root / "ragged.csv").write_text("x,kind,y\n1,a,0\n2,b\n")
    (root / "no-train").mkdir()
    (root / "no-train" / "test.csv").write_text(good)
    for name, test in (("text-in-numbers", good.replace("\n3,b,1", "\nthree,b,1")),
                       ("other-header", good.replace("x,kind,y", "x,sort,y"))):
        (root / name).mkdir()
        (root / name / "train.csv").write_text(good)
        (root / name / "test.csv").write_text(test)
    (root / "twice.csv").write_text("x,x,y\n1,2,0\n3,4,1\n")
    (root / "words.csv").write_text("x,y\n" + "".join("%d,w%d\n" % (i, i) for i in range(20)))
    (root / "long-cell.csv").write_text("x,note,y\n" + "".join('%d,"%s",%d\n' % (i, "n" * 200000 if i == 3 else
                                                                                   "ok", i % 2) for i in range(20)))
    with open(str(root / "huge.csv"), "wb") as f:  # 2 GB, sparse: no disk used
        f.truncate(2 << 30)
    (root / "empty-test").mkdir()
    (root / "empty-test" / "train.csv").write_text(good)
    (root / "empty-test" / "test.csv").write_text("x,kind,y\n" + "".join("%d,a,\n" % i for i in range(5)))
    (root / "huge-value.csv").write_text(good.replace("\n5,b,1", "\n1e308,b,1"))
    (root / "huge-target.csv").write_text("x,y\n" + "".join("%d,%s\n" % (i, "1e39" if i == 7 else "%d.5" % i)
                                                             for i in range(40)))
    (root / "one-class.csv").write_text("x,y\n" + "".join("%d,same\n" % i for i in range(20)))
    (root / "ids-only.csv").write_text("id,y\n" + "".join("u%d,%d\n" % (i, i % 2) for i in range(80)))
    wide = ["c%d" % i for i in range(20000)] + ["y"]
    (root / "wide.csv").write_text(",".join(wide) + "\n" + "".join(",".join(["1"] * 20000 + [str(i % 2)]) + "\n"
                                                                     for i in range(4)) + ",".join(["c0"] * 2) + "\n")


def _set(path, value):
    def change(state):
        *keys, last = path.split(".")
        for key in keys:
            state = state[key]
        state[last] = value
    return change


# signed (the digest is no secret) but with contents this project never writes
FORGED = {
    "dataset": _set("config.dataset", "no-such-dataset"),
    "model": _set("config.model", "no-such-model"),
    "task": _set("config.task", "no-such-task"),
    "augment": _set("config.augment", "crop:zz"),
    "shape": _set("config.synthetic_shape", "3,x,32"),
    "lr-type": _set("config.lr", "fast"),
    "rng": _set("rng.python", "not a state"),
    "rng-torch": _set("rng.torch", torch.zeros(3, dtype=torch.uint8)),
    "scheduler": _set("scheduler.last_epoch", "x"),
    "meter": _set("meter.steps", -5),
    "best": _set("best.value", "high"),
    "optimizer": _set("optimizer.state", 5),
    "optimizer-lr": _set("optimizer.param_groups", [{"params": [0], "lr": "x"}]),
    "sample": _set("progress.sample_in_epoch", 10 ** 9),
    "sample-huge": _set("progress.step", 10 ** 30),
}
LONG = "x" * 300


BAD_CONFIGS = [
    ("lr: 0.1\nbogus: 3\n", "unknown key 'bogus'"),
    ("batch_size: 3.5\n", "3.5 is not a valid value for batch_size (expected an integer)"),
    ("lr: fast\n", "'fast' is not a valid value for lr (expected a number)"),
    ("deterministic: 1\n", "expected true or false"),
    ("optimizer: lbfgs\n", "choose from auto, sgd, adam, adamw"),
    ("lr: [0.1\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("epochs: 0\n", "--epochs must be >= 1"),
]
CASES = [
    (["--dataset", "nope"], 2, "--dataset 'nope': no such dataset (known: cifar10, csv:PATH, diabetes, digits, "
                               "fashion-mnist, folder:PATH"),
    (["--model", "nope"], 2, "--model 'nope': no such model (known: cnn, fcn, mlp, resnet, timm:NAME)"),
    (["--lr", "0"], 2, "--lr must be > 0"),
    (["--lr", "-1"], 2, "--lr must be > 0"),
    (["--batch-size", "0"], 2, "--batch-size must be >= 1"),
    (["--epochs", "-2"], 2, "--epochs must be >= 1"),
    (["--lr", "abc"], 2, "argument --lr: invalid float value: 'abc'"),
    (["--monitor", "val/map:max"], 2, "--monitor 'val/map:max'"),
    (["--device", "tpu"], 2, "--device 'tpu'"),
    (["--run-name", "../x"], 2, "--run-name '../x'"),
    (["--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    (["--resume"], 2, "nothing to resume: run 'fresh' has no checkpoint"),
    (["--resume", "missing.pt"], 2, "--resume missing.pt: no such checkpoint file"),
    (["--init-from", "missing.pt"], 2, "--init-from missing.pt: no such checkpoint file"),
    (["--model", "resnet", "--depth", "7"], 2, "a CIFAR ResNet has 6n+2 layers"),
    (["--seed", str(2 ** 70)], 2, "--seed must be in 0 .. 2**32-1"),
    (["--lr", "1e308"], 2, "--lr must be a finite number"),
    (["--lr", "inf"], 2, "--lr must be a finite number"),
    (["--weight-decay", "inf"], 2, "--weight-decay must be a finite number"),
    (["--lr", "nan"], 2, "--lr must be a finite number"),
    (["--width", "10000000"], 2, "--width must be in 0 .. 65536"),
    (["--dataset", "synthetic", "--synthetic-size", str(10 ** 12)], 2, "make them smaller"),
    (["--dataset", "synthetic", "--synthetic-shape", "3,100000,100000"], 2, "make them smaller"),
    (["--data-dir", "a-file"], 2, "is not a folder"),
    (["--logs-dir", "a-file"], 2, "is not a folder"),
    (["--models-dir", "a-file"], 2, "is not a folder"),
    (["--data-dir", "/proc/nope"], 2, "--data-dir"),
    (["--run-name", "r" * 300], 2, "use up to 100 letters"),
    (["--run-name", "x\n"], 2, "use up to 100 letters"),
    (["--config", "nested.yaml"], 2, "nested too deeply"),
    (["--config", "latin1.yaml"], 2, "not UTF-8"),
    (["--config", "bomb.yaml"], 2, "is not a valid value for lr"),
    (["--device", "cuda"], 2, "CUDA is not available here"),
    (["--amp", "fp16"], 2, "--amp fp16 needs a CUDA device"),
    (["--init-from", "a-file"], 2, "--init-from a-file: unreadable checkpoint"),
    (["--resume", "a-file"], 2, "--resume a-file: unreadable checkpoint"),
    (["--num-workers", "100000"], 2, "--num-workers must be in"),
    (["--resume", "--run-name", "digits-mlp", "--max-steps", "8", "--lr", "1e308"], 2, "--lr must be a finite number"),
    (["--resume", "--run-name", "digits-mlp", "--max-steps", "8", "--width", "32"], 2, "does not fit model 'mlp'"),
    (["--run-name", "digits-mlp"], 2, "already has checkpoints"),
    (["--accum-steps", "0"], 2, "--accum-steps must be in 1 .. --batch-size"),
    (["--accum-steps", "33"], 2, "--accum-steps must be in 1 .. --batch-size (32)"),
    (["--ema", "1"], 2, "--ema must be a decay in [0, 1)"),
    (["--label-smoothing", "1"], 2, "--label-smoothing must be in [0, 1)"),
    (["--dataset", "diabetes", "--label-smoothing", "0.1"], 2, "--label-smoothing applies to --task classification"),
    (["--early-stop", "-1"], 2, "--early-stop must be >= 0"),
    (["--augment", "crop,spin"], 2, "unknown augmentation 'spin'"),
    (["--augment", "crop:x"], 2, "takes numbers after ':'"),
    (["--augment", "crop:20"], 2, "the padding must be 1 .. the image size"),
    (["--dataset", "diabetes", "--augment", "flip"], 2, "--augment flip works on images"),
    (["--scheduler", "multistep"], 2, "--scheduler multistep needs --lr-milestones"),
    (["--lr-milestones", "50,20"], 2, "expected ascending positive step numbers"),
    (["--dataset", "diabetes", "--model", "cnn"], 2, "--model cnn does not fit dataset diabetes"),
    (["--dataset", "digits", "--model", "fcn"], 2, "models that fit: cnn, mlp, resnet"),
    (["--dataset", "shapes", "--task", "regression", "--model", "fcn"], 2, "pick another --task"),
    (["--logs-dir", LONG], 2, "over the 255 a file system allows"),
    (["--models-dir", "models/" + LONG], 2, "over the 255 a file system allows"),
    (["--data-dir", LONG + "/d"], 2, "over the 255 a file system allows"),
    (["--config", LONG + ".yaml"], 2, "--config"),
    (["--resume", LONG + ".pt"], 2, "--resume"),
    (["--init-from", LONG + ".pt"], 2, "--init-from"),
    (["--config", "fifo"], 2, "not a regular file"),
    (["--dataset", "mnist", "--data-checksums", "fifo"], 2, "not a regular file"),
    (["--dataset", "mnist", "--data-checksums", "sums-latin1.yaml"], 2, "not UTF-8"),
    (["--dataset", "mnist", "--data-mirror", "http://host:abc"], 2, "--data-mirror 'http://host:abc': not a URL"),
    (["--data-mirror", "ftp//nowhere"], 2, "not a URL"),
    (["--resume", "--evaluate"], 2, "--resume and --evaluate do not go together"),
    (["--resume", "huge.pt"], 2, "more than half of this machine's"),
    (["--dataset", "mnist", "--no-download"], 1, "missing"),
    (["--dataset", "folder"], 2, "no such dataset (known: cifar10, csv:PATH, diabetes, digits, fashion-mnist, "
                                 "folder:PATH"),
    (["--dataset", "folder:nowhere"], 2, "folder:nowhere: no such folder"),
    (["--dataset", "folder:loose"], 2, "2 images at the top and no class folders; expected loose/<class>/<image>"),
    (["--dataset", "folder:one-class"], 2, "one class folder (a); a classifier needs two or more classes"),
    (["--dataset", "folder:empty-class"], 2, "class folder b holds no PNG or JPEG images"),
    (["--dataset", "folder:broken", "--image-size", "8"], 2, "cannot read image broken/b/bad.png"),
    (["--dataset", "folder:sizes"], 2, "not all one square size (8x8, 9x7); give --image-size N"),
    (["--dataset", "folder:split-classes"], 2, "test has classes that train lacks (c)"),
    (["--dataset", "folder:loose-beside"], 2, "1 image at the top beside the class folders (stray.png) belong"),
    (["--dataset", "folder:bomb", "--image-size", "8"], 2, "image bomb/b/huge.png is too large to decode safely"),
    (["--dataset", "csv:nowhere.csv"], 2, "--dataset csv:nowhere.csv: no such file; give a CSV file"),
    (["--dataset", "csv:header-only.csv"], 2, "header-only.csv holds only a header line; give a header line, then"),
    (["--dataset", "csv:ragged.csv"], 2, "ragged.csv: row 3 has 2 fields, the header 3; fix that row"),
    (["--dataset", "csv:no-train"], 2, "the folder holds no train.csv; give a CSV file, or a folder with train.csv"),
    (["--dataset", "csv:text-in-numbers"], 2, "'three' in column x is not a number (train's values are)"),
    (["--dataset", "csv:other-header"], 2, "has the columns x, sort, y, train.csv x, kind, y; give every file"),
    (["--dataset", "csv:ragged.csv", "--target", "z"], 2, "ragged.csv: row 3 has 2 fields"),
    (["--dataset", "csv:twice.csv"], 2, "twice.csv: the header names column 'x' more than once; give each column"),
    (["--dataset", "csv:words.csv", "--target", "z"], 2, "--target z: words.csv has no column z; name one of"),
    (["--dataset", "csv:words.csv", "--target", "x,y"], 2, "--target x,y leaves no feature column"),
    (["--dataset", "csv:words.csv", "--task", "regression"], 2, "target value 'w0' is not a number; with --task "),
    (["--dataset", "csv:words.csv", "--task", "segmentation"], 2, "--task segmentation does not apply to a table"),
    (["--dataset", "digits", "--test-split", "1"], 2, "--test-split must be in (0, 1)"),
    (["--dataset", "csv:huge.csv"], 2, "huge.csv is 2147 MB; read as a table it would take about 68.7 GB"),
    (["--dataset", "csv:empty-test"], 2, "test.csv: no row has a value in the target column y; fill them in, or "
                                         "remove test.csv"),
    (["--dataset", "csv:huge-value.csv"], 2, "1e+308 in column x is beyond float32's range (3.4e38)"),
    (["--dataset", "csv:huge-target.csv"], 2, "1e+39 in column y is beyond float32's range"),
    (["--dataset", "csv:one-class.csv"], 2, "the target y holds one class ('same'); a model needs two or more"),
    (["--dataset", "csv:ids-only.csv"], 2, "ids-only.csv: no column is left to learn from (every other column"),
    (["--dataset", "csv:wide.csv"], 2, "wide.csv: row 6 has 2 fields, the header 20001"),
    (["--freeze", "body.*"], 2, "--freeze body.* matches no parameter of the model (its parameters: 1.weight, "),
    (["--lr-groups", "9.*=2"], 2, "--lr-groups 9.* matches no parameter of the model"),
    (["--lr-groups", "7.*=fast"], 2, "expected PATTERN=FACTOR items such as 11.*=10"),
    (["--lr-groups", "7.*=-1"], 2, "expected PATTERN=FACTOR items"),
    (["--unfreeze-at", "5"], 2, "--unfreeze-at needs --freeze PATTERN"),
] + [(["--resume", "forged-%s.pt" % name, "--max-steps", "8"], 2, "forged-%s.pt" % name) for name in FORGED] + [
    (["--config", "bad-%d.yaml" % i], 2, message) for i, (_, message) in enumerate(BAD_CONFIGS)]


# Run in the project by one python process: every case through train.main, with what it changed (hashed by
# test_reliability's tree_digest, whose source the harness carries).
HARNESS = r"""
import hashlib, io, json, logging, os, sys
from pathlib import Path
import train
""" + inspect.getsource(tree_digest) + r"""
out = []
for argv in json.load(sys.stdin):
    before, runs = tree_digest(Path("models"), Path("logs")), sorted(os.listdir("logs"))
    logging.getLogger("train").handlers[:] = []  # as in a fresh process: no console yet
    err, sys.stderr = sys.stderr, io.StringIO()
    try:
        code = train.main(argv)
    finally:
        text, sys.stderr = sys.stderr.getvalue(), err
    out.append({"code": code, "stderr": text, "changed": tree_digest(Path("models"), Path("logs")) != before,
                "runs_left": sorted(os.listdir("logs")) != runs, "mnist": os.path.exists("data/mnist")})
print("RESULTS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def outcomes(trained):
    """{case id: what train.main did with it}, all cases in one process of the project's train.py."""
    argvs = [[str(a) for a in FAST + RUN + args] for args, _, _ in CASES]
    res = subprocess.run([sys.executable, "-c", HARNESS], cwd=str(trained.root), env=trained.env, timeout=600,
                         input=json.dumps(argvs), capture_output=True, text=True)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULTS ")]
    assert res.returncode == 0 and line, res.stdout[-2000:] + res.stderr[-3000:]
    return json.loads(line[0][len("RESULTS "):])  # in the order of CASES


IDS = [" ".join(c[0])[:40] for c in CASES]
PROCESS = ["--lr inf", "--config bomb.yaml", "--resume forged-model.pt --max-steps 8", "--dataset mnist --no-download"]


def _skip_cuda_case(args):
    if "--device" in args and "cuda" in args:
        from src.runtime import compat
        if compat.cuda_available():
            pytest.skip("this machine has CUDA")


def _check(code, stderr, args, want, text):
    lines = stderr.strip().splitlines()
    assert code == want, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("train.py: error:") and text in lines[0], stderr[-3000:]
    assert len(lines[0]) < 600, "an error line of %d characters" % len(lines[0])


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_bad_input_is_one_line_with_a_next_step_and_changes_nothing(outcomes, case):
    args, code, text = CASES[case]
    _skip_cuda_case(args)
    got = outcomes[case]
    _check(got["code"], got["stderr"], args, code, text)
    assert not got["changed"], "models/ or logs/ changed"
    assert not got["runs_left"], "a run folder (lock) was left behind"
    assert not got["mnist"], "a failed data step left data/mnist/ behind"


@pytest.mark.parametrize("args,code,text", [c for c, i in zip(CASES, IDS) if i in PROCESS],
                         ids=[i for i in IDS if i in PROCESS])
def test_bad_input_as_a_process_exits_with_its_code_and_one_line(trained, args, code, text):
    root = trained.root
    before = tree_digest(root / "models", root / "logs")
    res = trained.run(*(FAST + RUN + args), timeout=120)
    _check(res.returncode, res.stderr, args, code, text)
    assert tree_digest(root / "models", root / "logs") == before


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to mount a read-only folder")
def test_a_models_folder_that_cannot_be_written_is_one_line(trained, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)])
    if res.returncode:
        pytest.skip("mount is not allowed here")
    try:
        res = trained.run(*(FAST + RUN + ["--models-dir", str(ro), "--run-name", "ro"]))
        assert res.returncode == 2 and "no permission to write" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        subprocess.run(["umount", str(ro)])
