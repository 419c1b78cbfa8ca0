"""A researcher's own data without code: --dataset folder:PATH on real image files (PNG and JPEG made with Pillow
here), its splits, its class names in the checkpoint, the decoded cache, and exact resume whether the images are
held in memory or read by loader workers."""
import signal

import pytest
import torch

from conftest import Project, bash_block, finish_run, load, same_weights, split_counts, write_images

IMAGES = ["--model", "cnn", "--width", "8", "--batch-size", "16", "--deterministic", "--progress", "plain",
          "--image-size", "10", "--dropout", "0.1"]


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """A project with 3 classes x 40 images of 12x12 in data/pets/ (class folders, no split folders)."""
    project = Project(tmp_path_factory.mktemp("own-data"))
    write_images(project.root / "data" / "pets", 40)
    return project


def test_a_folder_of_class_folders_trains_and_keeps_its_class_names(pets):
    res = pets.ok(*(IMAGES + ["--dataset", "folder:data/pets", "--epochs", "3", "--run-name", "pets-a"]))
    # 120 images: about a fifth held out as test, a tenth of the rest as val, by a hash of each image's path
    assert "folder:data/pets (classification): " in res.stderr
    split_counts(res.stderr, 120)
    assert "decoding 120 images once into" in res.stderr
    state = load(pets.best("pets-a"))
    spec = state["model_spec"]
    assert spec["classes"] == ["cat", "dog", "fox"] and spec["input_shape"] == [3, 10, 10]
    mean = spec["input_transform"]["mean"]
    assert tuple(mean.shape) == (3, 1, 1) and mean[0, 0, 0] != mean[1, 0, 0]  # per channel, from train
    assert state["config"]["dataset"] == "folder:data/pets"
    val_acc = state["last_eval"]["val/acc"]
    assert val_acc > 0.6, "three colours should be told apart: val/acc %.2f" % val_acc
    again = pets.ok(*(IMAGES + ["--dataset", "folder:data/pets", "--max-steps", "1", "--run-name", "pets-b"]))
    assert "decoding" not in again.stderr  # the decoded cache is reused
    assert len(list((pets.root / "data" / ".cache").glob("folder-*.pt"))) == 1


def test_train_val_test_folders_are_the_splits_and_the_default_run_name_is_the_folders(tmp_path):
    project = Project(tmp_path)
    for split, n in (("train", 20), ("val", 4), ("test", 6)):
        write_images(project.root / "my shots" / split, n, classes=("a", "b"), seed=n)
    res = project.ok(*(IMAGES + ["--dataset", "folder:my shots", "--max-steps", "2"]))
    assert "(classification): 40 train / 8 val / 12 test samples" in res.stderr
    assert load(project.latest("my-shots-cnn"))["model_spec"]["classes"] == ["a", "b"]



def _args(pets):
    return IMAGES + ["--dataset", "folder:%s" % (pets.root / "data" / "pets"), "--epochs", "3", "--log-every", "2",
                     "--ckpt-every", "5", "--run-name", "exact"]


@pytest.fixture(scope="module")
def baseline(pets, tmp_path_factory):
    """The final weights of the run in one go, images decoded into memory."""
    return finish_run(Project(tmp_path_factory.mktemp("baseline")), _args(pets) + ["--image-cache", "on"], 18)


@pytest.mark.parametrize("cache,workers,stop", [
    ("on", "0", (signal.SIGTERM, "step ", 4)),
    ("off", "0", (signal.SIGTERM, "step ", 8)),
    ("off", "2", (signal.SIGTERM, "step ", 4)),
    ("off", "2", (signal.SIGKILL, "saved checkpoint step ", 10)),
])
def test_folder_data_resumes_exactly_from_memory_and_from_files_with_any_workers(pets, baseline, tmp_path, cache,
                                                                                 workers, stop):
    # read from the files (by 0 or 2 workers) or from memory, stopped and resumed: the weights of the run in one go
    got = finish_run(Project(tmp_path), _args(pets) + ["--image-cache", cache, "--num-workers", workers],
                     18, stop)
    assert same_weights(got, baseline), "a stopped and resumed run differs from the run in one go"


def test_the_readme_folder_commands_work_as_written(tmp_path):
    """README "Your images, no code": its block, typed as written (python: this interpreter)."""
    from test_readme import readme_block
    (tmp_path / "clone").mkdir()
    project = Project(tmp_path / "clone")
    write_images(project.root / "data" / "pets", 30, size=(40, 30))  # larger than 32 and not square
    res = bash_block(project, tmp_path, readme_block("### Your images, no code"))
    assert "run pets-cnn" in res.stdout and '"test/acc"' in res.stdout, res.stdout[-3000:]
    assert load(project.best("pets-cnn"))["model_spec"]["input_shape"] == [3, 32, 32]


def test_the_readme_fine_tuning_commands_work_as_written(tmp_path):
    """README "Fine-tuning from other weights": its block, typed as written, on two image folders."""
    from test_readme import readme_block
    (tmp_path / "clone").mkdir()
    project = Project(tmp_path / "clone")
    write_images(project.root / "data" / "pets", 20, size=(32, 32))
    write_images(project.root / "data" / "birds", 20, classes=("crow", "tit"), size=(32, 32), seed=1)
    res = bash_block(project, tmp_path, readme_block("### Fine-tuning from other weights"))
    assert "loaded 18 of the model's 20 tensors; fresh: 15.weight ([3, 128] in the checkpoint, the model's [2, 128])" \
        in res.stdout, res.stdout[-3000:]
    tuned = load(project.latest("birds-cnn"))
    assert tuned["model_spec"]["classes"] == ["crow", "tit"] and tuned["config"]["freeze"] == "0.*,1.*"
    # the first convolution stays as loaded until step 100, then trains on (the data's recipe runs past it)
    assert "from step 100 on the --freeze parameters train too (--unfreeze-at 100)" in res.stdout, res.stdout[-3000:]
    assert not torch.equal(tuned["model"]["0.weight"], load(project.best("pets-cnn"))["model"]["0.weight"])


def _split_files(root, *extra):
    """{split: set of paths relative to root} of a folder dataset, as train.py builds it (files read by workers)."""
    from src import data
    from src.app import flags
    cfg, _ = flags.parse(["--dataset", "folder:%s" % root, "--image-size", "10", "--image-cache", "off"] + list(extra))
    splits = data.build(cfg)
    return {name: {f.relative_to(root).as_posix() for f in getattr(splits, name).files}
            for name in ("train", "val", "test")}


def test_files_added_or_removed_move_no_other_file_between_splits(tmp_path):
    """--split-by path: by a hash of each image's path alone (54 of 78 new test images had been training images when
    the split was a permutation of positions in the sorted file list). The default, class, moves at most one other
    file of a class (test_results.py)."""
    root = write_images(tmp_path / "toys", 40)
    before = _split_files(root, "--split-by", "path")
    assert sum(len(v) for v in before.values()) == 120 and all(before.values())
    write_images(tmp_path / "more", 30, seed=5)
    for cls in ("cat", "dog", "fox"):  # 90 new files beside the old ones, and 6 old ones gone
        for f in sorted((tmp_path / "more" / cls).rglob("*.*")):
            f.rename(root / cls / ("new-" + f.name))
        for f in sorted((root / cls).glob("0[01]*.*"))[:2]:
            f.unlink()
    after = _split_files(root, "--split-by", "path")
    for name in before:
        kept = {f for f in before[name] if (root / f).exists()}
        assert kept <= after[name], "%s lost files that still exist" % name
    assert sum(len(v) for v in after.values()) == 120 + 90 - 6
    old = _split_files(root, "--split-by", "position")  # the rule of runs started before (resumed as they were)
    assert old != after and sum(len(v) for v in old.values()) == 204


def test_a_resume_on_changed_data_is_refused_unless_allowed_and_reproduce_says_what_changed(tmp_path):
    project = Project(tmp_path)
    write_images(project.root / "data" / "pets", 10)
    args = IMAGES + ["--dataset", "folder:data/pets", "--max-steps", "3", "--run-name", "p"]
    project.ok(*args)
    state = load(project.latest("p"))
    assert state["data"]["files"] == 30 and state["data"]["by"] == "content" and len(state["data"]["digest"]) == 32
    assert sum(state["data"]["splits"].values()) == 30
    write_images(project.root / "data" / "extra", 1, seed=9)
    (project.root / "data" / "extra" / "cat" / "000.png").rename(project.root / "data" / "pets" / "cat" / "new.png")
    kept = {p: p.read_bytes() for p in project.root.glob("models/**/*.pt")}
    res = project.run(*(args[:-4] + ["--max-steps", "6", "--run-name", "p", "--resume"]))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "run 'p' was trained on other data than folder:data/pets holds now (30 files, " \
        "now 31" in lines[-1] and "--allow-data-change" in lines[-1], res.stderr
    assert {p: p.read_bytes() for p in project.root.glob("models/**/*.pt")} == kept
    res = project.ok(*(args[:-4] + ["--max-steps", "6", "--run-name", "p", "--resume", "--allow-data-change"]))
    assert "WARNING: the data changed since step 3 (30 files, now 31" in res.stderr
    import json
    sessions = json.loads((project.run_dir("p") / "record.json").read_text())["sessions"]
    assert "30 files, now 31" in sessions[-1]["data_changed"] and sessions[-1]["data"]["files"] == 31
    assert load(project.latest("p"))["data"]["files"] == 31

    # a table whose labels were shuffled: the same bytes in number, other contents
    rows = ["x1,x2,y"] + ["%d,%d,%s" % (i, i % 7, "ab"[i % 2]) for i in range(200)]
    (project.root / "t.csv").write_text("\n".join(rows) + "\n")
    project.ok("--dataset", "csv:t.csv", "--max-steps", "3", "--run-name", "t", "--progress", "plain")
    shuffled = [rows[0]] + [r[:-1] + ("ba"[i % 2]) for i, r in enumerate(rows[1:])]
    (project.root / "t.csv").write_text("\n".join(shuffled) + "\n")
    res = project.run("--dataset", "csv:t.csv", "--max-steps", "6", "--run-name", "t", "--resume")
    assert res.returncode == 2 and "the same number of files and bytes, other contents" in res.stderr, res.stderr
    res = project.ok("--reproduce", "t")
    assert "data: differs from the run's: the same number of files and bytes, other contents" in res.stderr
    (project.root / "t.csv").write_text("\n".join(rows) + "\n")
    res = project.ok("--reproduce", "t", "--run-name", "t-again")
    assert "data: the same files as the run's" in res.stderr


def test_the_decoded_cache_sees_a_content_change_that_keeps_size_and_time(tmp_path):
    """The cache was keyed by (path, size, mtime): a file rewritten with the same size and time was served from the
    cache (a run reported 100 % where --image-cache off gave 40 %)."""
    import os
    project = Project(tmp_path)
    root = write_images(project.root / "data" / "pets", 8)
    args = IMAGES + ["--dataset", "folder:data/pets", "--max-steps", "1", "--image-cache", "on"]
    assert "decoding 24 images once" in project.ok(*(args + ["--run-name", "a"])).stderr
    assert "decoding" not in project.ok(*(args + ["--run-name", "b"])).stderr
    from PIL import Image
    one = root / "cat" / "000.png"
    Image.open(str(one)).save(str(one), compress_level=0)  # stored, not compressed: its size is its pixels'
    assert "decoding 24 images once" in project.ok(*(args + ["--run-name", "b2", "--allow-data-change"])).stderr
    info = one.stat()
    Image.open(str(root / "dog" / "001.png")).convert("RGB").resize(Image.open(str(one)).size).convert(
        Image.open(str(one)).mode).save(str(one), compress_level=0)  # a dog in the cat's file, same size
    os.utime(str(one), ns=(info.st_atime_ns, info.st_mtime_ns))
    assert one.stat().st_size == info.st_size and one.stat().st_mtime_ns == info.st_mtime_ns
    assert "decoding 24 images once" in project.ok(*(args + ["--run-name", "c", "--allow-data-change"])).stderr


def test_sixteen_bit_grey_images_keep_their_values_and_a_decompression_bomb_is_one_line(tmp_path):
    """16-bit grey PNGs (Pillow's I;16) decoded to a constant 255: two classes at 1000 and 40000 trained at chance.
    They are scaled from their depth now; an image too large to decode safely is one line in --predict too."""
    import numpy as np
    from PIL import Image
    from src.data.folder import Decoder
    from test_bad_input import bomb_png
    project = Project(tmp_path)
    rng = np.random.RandomState(0)
    for name, level in (("dim", 1000), ("bright", 40000)):
        (project.root / "data" / "xray" / name).mkdir(parents=True)
        for i in range(24):
            pixels = (level + rng.randint(0, 3000, (10, 10))).astype(np.uint16)
            Image.fromarray(pixels).save(str(project.root / "data" / "xray" / name / ("%02d.png" % i)))
    sample = project.root / "data" / "xray" / "bright" / "00.png"
    assert Image.open(str(sample)).mode in ("I;16", "I")  # Pillow < 10 opens 16-bit PNGs as 32-bit I
    pixels = Decoder(10, 1)(sample)
    assert 150 <= int(pixels.min()) and int(pixels.max()) <= 170  # 40000..43000 of 65535, not a flat 255
    dim = Decoder(10, 1)(project.root / "data" / "xray" / "dim" / "00.png")
    assert int(dim.max()) <= 16
    project.ok("--dataset", "folder:data/xray", "--model", "mlp", "--epochs", "5", "--progress", "plain",
               "--run-name", "xray")
    import json
    acc = json.loads((project.run_dir("xray") / "metrics.json").read_text())["test"]["test/acc"]
    assert acc == 1.0, acc
    (project.root / "bomb.png").write_bytes(bomb_png(30000, 30000))
    res = project.run("--predict", "bomb.png", "--run-name", "xray")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "bomb.png is too large to decode safely" in lines[0], res.stderr


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_deleted_while_streaming_saves_the_last_whole_step_and_says_how_to_go_on(tmp_path, workers):
    """A file deleted under a streaming run ended it with exit 2 (the code of bad input before any write) and saved
    nothing: now the last whole step is saved and one line says what to do."""
    project = Project(tmp_path)
    root = write_images(project.root / "data" / "pets", 40)
    proc = project.start(*(IMAGES + ["--dataset", "folder:data/pets", "--epochs", "200", "--image-cache", "off",
                                     "--num-workers", str(workers), "--run-name", "s", "--log-every", "1"]))
    from conftest import wait_for_line
    wait_for_line(proc, lambda line: line.startswith("step 3/"))
    for f in sorted(root.rglob("*.*")):
        f.unlink()  # every image: whatever the next batch holds, it is gone
    out, _ = proc.communicate(timeout=120)
    errors = [ln for ln in out.splitlines() if ln.startswith("train.py: error:")]
    assert proc.returncode == 1 and len(errors) == 1, out[-3000:]
    assert "cannot read image" in errors[0] and "saved step" in errors[0] and "--allow-data-change" in errors[0]
    assert "Traceback" not in out, out[-3000:]
    assert load(project.latest("s"))["progress"]["step"] >= 3
