"""A researcher's own data without code: --dataset folder:PATH on real image files (PNG and JPEG made with Pillow
here), its splits, its class names in the checkpoint, the decoded cache, and exact resume whether the images are
held in memory or read by loader workers."""
import signal

import pytest
import torch

from conftest import Project, bash_block, finish_run, load, same_weights, write_images

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
    # 120 images: a fifth held out as test, a tenth of the rest as val, by fixed seeded splits
    assert "folder:data/pets (classification): 86 train / 10 val / 24 test samples" in res.stderr
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
    assert "loaded 12 of the model's 14 tensors; fresh: 11.weight ([3, 64] in the checkpoint, the model's [2, 64])" \
        in res.stdout, res.stdout[-3000:]
    tuned = load(project.latest("birds-cnn"))
    assert tuned["model_spec"]["classes"] == ["crow", "tit"] and tuned["config"]["freeze"] == "0.*,1.*"
    assert torch.equal(tuned["model"]["0.weight"], load(project.best("pets-cnn"))["model"]["0.weight"])
