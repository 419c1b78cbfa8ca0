"""TensorBoard's pictures (src/tasks/_draw.py): a confusion matrix with class names, axes and counts, misclassified
examples with their labels, predicted vs true with axes and the identity line, segmentation overlays; drawn
in-process, then logged by real runs and shown by a real TensorBoard server in headless Chromium (the screenshot
is kept in test-artifacts/tensorboard-pictures.png)."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from conftest import FAST, REPO
from src.tasks import _draw

ARTIFACTS = REPO / "test-artifacts"
GREEN, RED = (0, 140, 60), (200, 30, 30)


def pixels(chw):
    return (chw.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def count(img, colour, tol=12):
    return int((np.abs(img.astype(int) - np.array(colour)).max(2) <= tol).sum())


def test_confusion_matrix_has_names_counts_and_shades_by_row_share():
    matrix = torch.tensor([[50, 0, 0], [5, 40, 5], [0, 0, 0]])
    a = pixels(_draw.confusion(matrix, ["cat", "dog", "fox"]))
    b = pixels(_draw.confusion(matrix, ["cow", "pig", "elk"]))
    assert a.shape[0] == a.shape[1] > 100
    assert a.shape != b.shape or (a != b).any()  # the names are drawn
    assert count(a, GREEN) > 0  # a full row share on the diagonal: the full colour
    assert count(a, _draw._mix(RED, 0.1)) > 0  # 5 of 50 off the diagonal: a tenth of the colour
    empty = pixels(_draw.confusion(torch.zeros(3, 3, dtype=torch.long), ["cat", "dog", "fox"]))
    assert count(empty, GREEN) == 0  # the shades come from the matrix
    many = _draw.confusion(torch.eye(100, dtype=torch.long), [str(i) for i in range(100)])
    assert many.shape[1] < 1000  # 100 classes still fit one picture


def test_any_number_of_classes_gives_bounded_sums_and_pictures():
    """10,000 classes made the evaluation sum a 10,000 x 10,000 confusion matrix and the picture need 19 GB (the
    OOM killer ended every attempt): above 1,024 classes only right/all are summed, and the picture shows the 40
    classes with the most samples."""
    from types import SimpleNamespace
    from src.tasks.classification import Classification
    big = _draw.confusion(torch.randint(0, 5, (3000, 3000)), [str(i) for i in range(3000)])
    assert big.shape[1] < 2000 and big.shape[2] < 2000
    counts = torch.zeros(200, 200, dtype=torch.long)
    counts[7, 7], counts[150, 3] = 90, 80  # the two classes with samples are among those drawn
    assert pixels(_draw.confusion(counts, [str(i) for i in range(200)])).shape[0] < 1000
    task = Classification(SimpleNamespace(label_smoothing=0.0), SimpleNamespace(num_classes=10000, classes=None))
    pred, target = torch.randn(64, 10000), torch.randint(0, 10000, (64,))
    pred[:16, 0], target[:16] = 100.0, 0
    sums = task.eval_sums(pred, target)
    assert "confusion" not in sums and sum(v.numel() for v in sums.values()) == 3
    values = task.eval_values(sums)
    assert values["acc"] == pytest.approx(float((pred.argmax(1) == target).float().mean()))
    assert task.pictures(sums, None) == {}
    small = Classification(SimpleNamespace(label_smoothing=0.0), SimpleNamespace(num_classes=3, classes=None))
    assert "confusion_matrix" in small.pictures(small.eval_sums(pred[:, :3], target % 3), None)


def test_examples_pred_vs_true_and_overlays_are_labelled_pictures():
    imgs = torch.rand(3, 3, 16, 16)
    shot = pixels(_draw.examples(imgs, [[("true: cat", _draw.BLACK), ("pred: dog", RED)]] * 3))
    assert count(shot, RED, tol=40) > 20 and shot.shape[1] > 3 * 96
    counts = torch.zeros(48, 48)
    counts[10, 12] = 3
    counts[30, 29] = 1
    scatter = pixels(_draw.pred_vs_true(counts, -2.0, 5.0))
    assert count(scatter, (0, 150, 70)) > 300  # the identity line
    assert count(scatter, (20, 60, 200), tol=30) > 10  # the busiest cell's dot in full colour
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, 2:5, 2:5] = 1
    over = pixels(_draw.overlays(torch.rand(2, 1, 8, 8), masks, masks.flip(2), ["background", "square"]))
    assert count(over, _draw.PALETTE[1]) > 0 and over.shape[0] > 2 * 128


def run_pictures(project):
    """Short real runs of the three picture kinds; their run folders."""
    project.ok("--dataset", "digits", "--epochs", "1", "--run-name", "cls", *FAST)  # 80 %: some wrong
    project.ok("--dataset", "diabetes", "--epochs", "2", "--run-name", "reg", "--progress", "plain")
    project.ok("--dataset", "shapes", "--epochs", "1", "--max-steps", "20", "--run-name", "seg", "--progress", "plain")
    return [project.run_dir(r) for r in ("cls", "reg", "seg")]


def test_runs_log_the_pictures_and_tensorboard_shows_them_in_a_browser(project):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cls, reg, seg = run_pictures(project)
    want = {cls: ("val/confusion_matrix", "val/misclassified"), reg: ("val/pred_vs_true",),
            seg: ("val/confusion_matrix", "val/examples")}
    for folder, tags in want.items():
        acc = EventAccumulator(str(folder), size_guidance={"images": 0})
        acc.Reload()
        for tag in tags:
            image = acc.Images(tag)[-1]
            assert image.encoded_image_string[:4] == b"\x89PNG" and image.width > 150, (folder, tag)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("CI"):
            raise AssertionError("CI needs chromium for the TensorBoard screenshot")
        pytest.skip("no chromium for the TensorBoard screenshot")
    from e2e.checkout import free_port
    port = free_port()
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")  # the test environment's
    tb = subprocess.Popen([tensorboard, "--logdir", str(project.root / "logs"), "--port", str(port), "--host",
                           "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, tags = time.time() + 120, ""
        while time.time() < deadline and "misclassified" not in tags:  # the server has read the runs
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/data/plugin/images/tags" % port, timeout=5) as r:
                    tags = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert "misclassified" in tags
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "tensorboard-pictures.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--user-data-dir=%s" % (project.root / "chromium-profile"), "--window-size=1400,2200",
                        "--virtual-time-budget=20000", "--screenshot=%s" % shot,
                        "http://127.0.0.1:%d/#images&tagFilter=val" % port],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180, check=True)
    finally:
        tb.terminate()
        tb.wait(timeout=30)
    from PIL import Image
    img = np.asarray(Image.open(str(shot)).convert("RGB"))
    assert count(img, GREEN, tol=20) > 200, "no confusion matrix diagonal on the page"
    assert count(img, (0, 150, 70), tol=20) > 100, "no identity line of predicted vs true on the page"
    assert count(img, RED, tol=30) > 30, "no predicted labels under misclassified examples on the page"
