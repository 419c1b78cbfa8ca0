"""The benchmarks run and print their tables (tiny sizes here; benchmarks/run.sh makes the real figures)."""
import re
import subprocess
import sys

from conftest import REPO, Project


def bench(*args):
    res = subprocess.run([sys.executable] + [str(a) for a in args], cwd=str(REPO), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:]
    return res.stdout


def rows(out):
    """{first cell: other cells} of the Markdown table rows in out."""
    lines = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in cells}


def test_loop_benchmark_compares_train_py_with_the_hand_written_loop():
    out = bench("benchmarks/loop_throughput.py", "--steps", "30", "--repeats", "1", "--preset", "default")
    table = rows(out)
    assert float(table["hand-written loop"][2]) == 1.0
    assert float(table["train.py"][0]) > 0 and float(table["train.py"][2]) > 0
    assert float(table["speed of light"][3]) == 1.0 and float(table["train.py"][3]) > 0
    assert "speed of light: the step alone, eager" in out or "speed of light: the step alone, cuda graph" in out


def test_checkpoint_stall_benchmark_reports_each_way_of_saving():
    out = bench("benchmarks/checkpoint_stall.py", "--width", "256", "--layers", "2", "--repeats", "1")
    table = rows(out)
    assert set(table) >= {"torch.save", "ours (background)", "ours (--no-async-ckpt)"}
    assert all(float(v[0]) > 0 for k, v in table.items() if k != "checkpoint"), out
    assert re.search(r"first save .* \d+ ms", out)


def test_data_benchmark_measures_loader_and_model_for_both_setups():
    out = bench("benchmarks/data_throughput.py", "--repeats", "1", "--batches", "5", "--steps", "2")
    table = rows(out)
    assert len([k for k in table if k.startswith(("default", "CIFAR"))]) == 2


def test_whole_run_benchmark_times_a_run_from_start_to_exit():
    out = bench("benchmarks/whole_run.py", "--repeats", "1", "--", "--max-steps", "30", "--epochs", "2")
    table = rows(out)
    assert table["train.py"][0].endswith(" s") and float(table["train.py"][0][:-2]) > 0
    assert table["train.py"][2] == "30" and float(table["train.py"][3]) > 0


def test_folder_benchmark_compares_ours_streaming_and_cached_with_a_hand_written_loader():
    out = bench("benchmarks/folder_loading.py", "--images", "120", "--repeats", "1", "--workers", "0")
    table = rows(out)
    assert float(table["hand-written (PIL + DataLoader)"][2]) == 1.0
    assert float(table["folder:PATH, streaming"][0]) > 0 and float(table["folder:PATH, cached"][2]) > 0


def test_own_data_accuracy_benchmark_puts_each_no_code_path_beside_its_baselines():
    out = bench("benchmarks/own_data_accuracy.py", "--hand-epochs", "2", "--", "--max-steps", "20")
    table = rows(out)
    for name in ("iris", "wine", "breast-cancer", "grades (categories, gaps)"):  # accuracy: ours, noise, linear, gbm
        ours, _, linear, gbm = (float(v) for v in table[name][2:6])
        assert 0 < ours <= 1 and 0.6 < linear <= 1 and 0.6 < gbm <= 1, (name, table[name])
    assert float(table["houses (54k rows, outliers)"][5]) > 0.9  # LightGBM's R^2 on the generated table
    for name in ("shapes (362 images, one class of 12)", "UCI digits as PNG files (1,797 8x8)"):
        assert 0 < float(table[name][2]) <= 1 and 0 < float(table[name][5]) <= 1, table[name]


def test_cpu_portable_benchmark_puts_pinned_kernels_beside_unpinned_ones():
    import shutil
    out = bench("benchmarks/cpu_portable.py", "--steps", "10", "--repeats", "1", "--only", "cnn")
    row = rows(out)["cnn on digits (batch 64)"]
    assert float(row[0]) > 0 and float(row[1]) > 0 and float(row[2]) > 0
    if shutil.which("qemu-x86_64"):  # .ci/run installs it: the pins make an AVX2 CPU compute the same bits
        assert row[3].endswith("; pinned: bit-identical"), row


def test_sweep_overhead_benchmark_puts_a_sweep_beside_its_trials_by_hand():
    out = bench("benchmarks/sweep_overhead.py", "--trials", "2", "--repeats", "1", "--", "--max-steps", "5")
    table = rows(out)
    assert float(table["by hand (one train.py per trial)"][3]) == 1.0 and float(table["train.py --sweep"][3]) > 0
    assert "The sweep's own cost per trial" in out


def test_real_data_benchmark_puts_each_default_beside_its_published_result(tmp_path):
    data = "/usr/share/datasets"  # Debian's dataset-fashion-mnist (.ci/run installs it); no CIFAR-10 here
    out = bench("benchmarks/real_data_defaults.py", "--datasets", "fashion-mnist,cifar10", "--data-dir",
                tmp_path, "--data-mirror", "file://" + data, "--", "--max-steps", "20")
    table = rows(out)
    acc, minutes, model, published = table["fashion-mnist"]
    assert 0.0 < float(acc.split(" %")[0]) <= 100 and minutes.endswith(" min"), table
    assert model.startswith("cnn: ") and "parameters" in model and published.startswith("92.50 %: 2 conv")
    assert table["cifar10"][0].startswith("not run: train.py: error: could not download file://%s/cifar10/" % data)
    assert table["cifar10"][3].startswith("82.0 %")


def test_cifar10_from_npm_writes_the_official_layout_that_train_py_reads(tmp_path):
    """The npm package's layout (a 32x32 RGB image per PNG row, labels as JSON), made here with pixel values
    whose channel means are CIFAR-10's test means, back to CIFAR's python tarball: the pixels land in the
    right planes and train.py reads it through --data-mirror with the written checksum."""
    import json
    import numpy as np
    from PIL import Image
    from src.data import cifar10
    pkg = tmp_path / "package"
    pkg.mkdir()
    rows = np.zeros((10000, 1024, 3), dtype=np.uint8)
    for c, (low, high_rows) in enumerate(((126, 210), (123, 7000), (114, 8520))):  # means 126.021, 123.7, 114.852
        rows[:, :, c] = low
        rows[:high_rows, :, c] = low + 1
    marked = rows.copy()
    marked[0, 1] = (1, 2, 3)  # test image 0, pixel (h 0, w 1)
    for i in range(1, 6):
        Image.fromarray(rows).save(str(pkg / ("data_batch_%d.png" % i)))
    Image.fromarray(marked).save(str(pkg / "test_batch.png"))
    test_labels = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1] + [i % 10 for i in range(9990)]
    (pkg / "train_lables.json").write_text(json.dumps([i % 10 for i in range(50000)]))
    (pkg / "test_lables.json").write_text(json.dumps(test_labels))
    mirror = tmp_path / "mirror"
    bench("benchmarks/cifar10_from_npm.py", pkg, mirror)
    x, y = cifar10.read_batches(mirror / "cifar10" / cifar10.FILE, ["test_batch"])
    assert x.shape == (10000, 3, 32, 32) and y.tolist() == test_labels
    assert x[0, :, 0, 1].tolist() == [1, 2, 3] and x[0, :, 0, 0].tolist() == [127, 124, 115]
    (tmp_path / "project").mkdir()
    res = Project(tmp_path / "project").ok("--dataset", "cifar10", "--data-mirror", "file://%s" % mirror,
                                           "--data-checksums", mirror / "sums.yaml", "--prepare-data")
    assert "dataset cifar10 ready" in res.stderr
