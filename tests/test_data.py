"""Datasets: the embedded digits, synthetic data, and MNIST / Fashion-MNIST / CIFAR-10 downloaded from a
real HTTP server on 127.0.0.1 serving files in their native formats (IDX, python pickles in a tar.gz),
made here, with MD5 verification and atomic writes."""
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import shutil
import socketserver
import struct
import tarfile
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import Project, load
from src.data import cifar10, digits, mnist, synthetic
from src.runtime.errors import TrainingError


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def idx_bytes(array):
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">%dI" % array.ndim, *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def cifar_tar(batches):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, (x, y) in batches.items():
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": [int(v) for v in y],
                                 b"data": x.reshape(len(x), -1), b"filenames": [b"x.png"] * len(y)}, protocol=2)
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """Serve <dataset>/<file> on 127.0.0.1; returns (url, checksums file, the arrays that were served)."""
    root = tmp_path_factory.mktemp("mirror")
    rng = np.random.RandomState(0)
    arrays, sums = {}, {}

    def put(dataset, name, blob):
        (root / dataset).mkdir(exist_ok=True)
        (root / dataset / name).write_bytes(blob)
        sums["%s/%s" % (dataset, name)] = hashlib.md5(blob).hexdigest()

    for dataset in ("mnist", "fashion-mnist"):
        for prefix, n in (("train", 300), ("t10k", 100)):
            x = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
            y = rng.randint(0, 10, size=n).astype(np.uint8)
            arrays[(dataset, prefix)] = (x, y)
            put(dataset, "%s-images-idx3-ubyte.gz" % prefix, idx_bytes(x))
            put(dataset, "%s-labels-idx1-ubyte.gz" % prefix, idx_bytes(y))
    batches = {}
    for name in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]:
        batches[name] = (rng.randint(0, 256, size=(40, 3, 32, 32)).astype(np.uint8), rng.randint(0, 10, size=40))
    arrays["cifar10"] = batches
    put("cifar10", cifar10.FILE, cifar_tar(batches))
    (root / "sums.json").write_text(json.dumps(sums))

    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % server.server_address[1], str(root / "sums.json"), arrays
    server.shutdown()


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "cifar10"])
def test_download_verify_parse_and_train(project, mirror, dataset):
    url, sums, arrays = mirror
    res = project.ok("--dataset", dataset, "--data-mirror", url, "--data-checksums", sums, "--prepare-data")
    assert "dataset %s ready" % dataset in res.stderr
    folder = project.root / "data" / dataset
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    cfg = SimpleNamespace(data_dir=str(project.root / "data"), data_mirror="", data_checksums=sums, download=False)
    if dataset == "cifar10":
        splits = cifar10.build(cfg)
        x, y = arrays["cifar10"]["data_batch_1"]
        assert splits.train.x.shape == (200, 3, 32, 32) and len(splits.test) == 40
    else:
        splits = mnist._build(cfg, dataset)
        x, y = arrays[(dataset, "train")]
        x = x[:, None]
        assert splits.train.x.shape == (300, 1, 28, 28) and len(splits.test) == 100
    assert np.array_equal(splits.train.x[: len(x)].numpy(), x) and np.array_equal(splits.train.y[: len(y)].numpy(), y)
    # training on it uses the files in data/ (no second download: the mirror is not given again)
    project.ok("--dataset", dataset, "--model", "cnn", "--width", "8", "--max-steps", "3", "--data-checksums", sums,
               "--progress", "plain", "--no-download")
    assert load(project.latest("%s-cnn" % dataset))["progress"]["step"] == 3
    from test_predictions import check_predictions  # the saved model takes raw uint8 images
    check_predictions(project, "%s-cnn" % dataset)


def test_checksum_mismatch_saves_nothing(project, mirror):
    url, _, _ = mirror
    res = project.run("--dataset", "mnist", "--data-mirror", url, "--prepare-data")  # the real MD5s
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "checksum mismatch for %s/mnist/" % url in res.stderr
    assert not (project.root / "data" / "mnist").exists(), "the failed first download left data/mnist/"


def test_unreachable_mirror_is_a_clear_error(project):
    res = project.run("--dataset", "cifar10", "--data-mirror", "http://127.0.0.1:9", "--prepare-data")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "could not download http://127.0.0.1:9/cifar10/cifar-10-python.tar.gz" in res.stderr


DEBIAN_DATASETS = "/usr/share/datasets"  # Debian's and Ubuntu's dataset-fashion-mnist package (.ci/run installs it)


def test_fashion_mnist_from_debians_package_by_file_mirror_or_copied_into_data(project, tmp_path):
    """The real Fashion-MNIST files as Debian packages them (re-compressed: other MD5s, accepted as known copies):
    --data-mirror file:///usr/share/datasets fetches them; files copied into data/fashion-mnist/ are used as is."""
    folder = os.path.join(DEBIAN_DATASETS, "fashion-mnist")
    if not os.path.isdir(folder):
        if os.environ.get("CI") == "true":
            raise AssertionError("CI needs Debian's dataset-fashion-mnist package (.ci/run installs it)")
        pytest.skip("no %s (apt install dataset-fashion-mnist)" % folder)
    res = project.ok("--dataset", "fashion-mnist", "--data-mirror", "file://" + DEBIAN_DATASETS, "--prepare-data")
    assert "dataset fashion-mnist ready" in res.stderr
    names = sorted(os.listdir(folder))
    assert [n for n in names if n.endswith(".gz")] == sorted(os.listdir(str(project.root / "data" / "fashion-mnist")))
    cfg = SimpleNamespace(data_dir=str(project.root / "data"), data_mirror="", data_checksums="", download=False)
    splits = mnist._build(cfg, "fashion-mnist")
    assert splits.train.x.shape == (60000, 1, 28, 28) and len(splits.test) == 10000
    assert np.bincount(splits.test.y.numpy()).tolist() == [1000] * 10  # the official test split
    assert abs(splits.train.x.float().mean().item() / 255 - 0.2860) < 1e-4  # the normalisation constants' source

    (tmp_path / "copied").mkdir()
    other = Project(tmp_path / "copied")
    (other.root / "data" / "fashion-mnist").mkdir(parents=True)
    for name in names:
        if name.endswith(".gz"):
            shutil.copy(os.path.join(folder, name), str(other.root / "data" / "fashion-mnist" / name))
    res = other.ok("--dataset", "fashion-mnist", "--width", "4", "--max-steps", "2", "--progress", "plain",
                   "--no-download")
    assert "54000 train / 6000 val / 10000 test samples" in res.stderr
    assert load(other.latest("fashion-mnist-cnn"))["progress"]["step"] == 2


def test_missing_data_without_download_is_a_clear_error(project):
    res = project.run("--dataset", "fashion-mnist", "--no-download", "--progress", "plain")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "missing" in res.stderr and "fashion-mnist/t10k-images-idx3-ubyte.gz" in res.stderr


def test_a_cifar_pickle_that_tries_to_run_code_is_refused(project, tmp_path):
    class Evil(object):
        def __reduce__(self):
            return (print, ("owned",))
    blob = pickle.dumps({b"data": Evil(), b"labels": []})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(TrainingError, match="unexpected object builtins.print"):
        cifar10.read_batches(path, ["test_batch"])


def test_embedded_digits_are_the_real_1797_images():
    x, y = digits.load_arrays()
    assert x.shape == (1797, 1, 8, 8) and int(x.max()) == 16
    assert np.bincount(y.numpy()).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_synthetic_data_has_any_shape_and_size(project):
    cfg = SimpleNamespace(synthetic_shape=(2, 5, 7), synthetic_size=50, synthetic_classes=3)
    splits = synthetic.build(cfg)
    assert splits.input_shape == (2, 5, 7) and len(splits.train) == 50 and splits.num_classes == 3
    x, y = splits.train[[0, 1, 2]]
    assert x.shape == (3, 2, 5, 7) and x.dtype.is_floating_point and int(y.max()) < 3
    res = project.ok("--dataset", "synthetic", "--synthetic-shape", "3,16,16", "--synthetic-size", "64",
                     "--model", "resnet", "--width", "4", "--max-steps", "2", "--progress", "plain")
    assert "synthetic (classification): 58 train / 6 val / 10 test samples" in res.stderr


@pytest.mark.parametrize("damage", ["not-gzip", "labels-out-of-range", "fewer-labels"])
def test_a_mirror_file_with_an_accepted_checksum_but_bad_contents_is_one_line(project, tmp_path, damage):
    root = tmp_path / "badmirror" / "mnist"
    root.mkdir(parents=True)
    rng = np.random.RandomState(1)
    sums = {}
    for prefix, n in (("train", 50), ("t10k", 20)):
        x = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        y = rng.randint(0, 10, size=n).astype(np.uint8)
        labels = idx_bytes(y)
        if prefix == "train" and damage == "not-gzip":
            labels = b"this is not gzip at all"
        elif prefix == "train" and damage == "labels-out-of-range":
            labels = idx_bytes(np.full(n, 200, dtype=np.uint8))
        elif prefix == "train" and damage == "fewer-labels":
            labels = idx_bytes(y[: n - 5])
        for name, blob in (("%s-images-idx3-ubyte.gz" % prefix, idx_bytes(x)),
                           ("%s-labels-idx1-ubyte.gz" % prefix, labels)):
            (root / name).write_bytes(blob)
            sums["mnist/" + name] = hashlib.md5(blob).hexdigest()
    (tmp_path / "sums.json").write_text(json.dumps(sums))
    handler = functools.partial(QuietHandler, directory=str(tmp_path / "badmirror"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        res = project.run("--dataset", "mnist", "--data-mirror", "http://127.0.0.1:%d" % server.server_address[1],
                          "--data-checksums", str(tmp_path / "sums.json"), "--max-steps", "2", "--progress", "plain")
    finally:
        server.shutdown()
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("train.py: error:"), res.stderr[-2000:]
    expected = {"not-gzip": "is not a gzip file", "labels-out-of-range": "outside the classes 0 .. 9",
                "fewer-labels": "differ in length"}[damage]
    assert expected in lines[0], lines[0]
    assert not project.latest("mnist-cnn").exists()


class _Hostile(socketserver.BaseRequestHandler):
    """A mirror that answers wrongly: a broken chunked body, a garbage status line, too many headers, a body that
    trickles in a byte at a time, or headers and then silence. Each answer ends by itself within 30 s."""

    def handle(self):
        self.request.recv(65536)
        mode, send = self.server.mode, self.request.sendall
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 1648877\r\n\r\n"
        try:
            if mode == "chunked":
                send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz-not-a-size\r\nabc\r\n")
            elif mode == "status":
                send(b"HELLO I AM NOT HTTP\r\n\r\n")
            elif mode == "headers":
                send(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: y\r\n" % i for i in range(150)) + b"\r\n")
            elif mode == "trickle":
                send(ok)
                for _ in range(150):  # a byte every 0.2 s: no read ever waits a second
                    send(b"\0")
                    time.sleep(0.2)
            elif mode == "silent":
                send(ok + b"\0" * 100)
                self.server.release.wait(30)
        except OSError:
            pass


@pytest.fixture
def hostile():
    servers = []

    def serve(mode):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Hostile)
        server.daemon_threads, server.mode, server.release = True, mode, threading.Event()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return "http://127.0.0.1:%d" % server.server_address[1]

    yield serve
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode,text", [("chunked", "not a valid HTTP response"),
                                       ("status", "not a valid HTTP response"),
                                       ("headers", "not a valid HTTP response"),
                                       ("trickle", "the deadline passed"),
                                       ("silent", "timed out")])
def test_a_hostile_mirror_is_one_line_within_the_limits_and_leaves_nothing(project, hostile, mode, text):
    started = time.time()
    res = project.run("--dataset", "mnist", "--data-mirror", hostile(mode), "--prepare-data", "--progress", "plain",
                      "--download-timeout", "1", "--download-deadline", "3", timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: could not download") and text in lines[0], lines
    if mode in ("trickle", "silent"):
        assert "--download-timeout 1 s" in lines[0] and "--download-deadline 3 s" in lines[0], lines[0]
    assert time.time() - started < 60  # the limits hold (3 s), whatever the mirror does
    assert not (project.root / "data" / "mnist").exists(), "a failed download left data/mnist/ behind"
