"""The default (cu92) stack's code proven on the real torch 1.7.1: an image built by docker/Dockerfile from
a Debian bullseye base (Python 3.9, the closest to 3.8 that can be built here) with torch 1.7.1, numpy
1.19.5, tensorboard 2.13 and setuptools 59.5 (stacks/compat/requirements.txt), running the core suite
inside; and checkpoints carried between that torch and this one.

COMPAT_BASE_IMAGE names the base (CI: a debootstrapped local/debian:bullseye; with a registry,
debian:bullseye). Without it these tests are skipped, unless REQUIRE_DOCKER=1.
"""
import os
import subprocess
import sys

import pytest
from checkout import copy_project, skip_without_docker
from conftest import REPO, load

skip_without_docker()
BASE = os.environ.get("COMPAT_BASE_IMAGE", "")
if not BASE:
    if os.environ.get("REQUIRE_DOCKER") == "1":
        raise RuntimeError("REQUIRE_DOCKER=1 needs COMPAT_BASE_IMAGE (a Debian bullseye image) for the torch 1.7 tests")
    pytest.skip("COMPAT_BASE_IMAGE not set: torch 1.7.1 compatibility tests skipped", allow_module_level=True)

IMAGE = "tpl-compat-torch17:latest"
CORE = ["tests/test_cli.py", "tests/test_doctor.py", "tests/test_resume.py", "tests/test_checkpoint.py",
        "tests/test_signals.py", "tests/test_tensorboard.py", "tests/test_data.py", "tests/test_training.py",
        "tests/test_distributed.py", "tests/test_checkpoint_writer.py", "tests/test_reliability.py",
        "tests/test_bad_input.py", "tests/test_first_run.py", "tests/test_tasks.py", "tests/test_recipes.py",
        "tests/test_predictions.py", "tests/test_units.py", "tests/test_architecture.py", "tests/test_own_data.py",
        "tests/test_finetune.py", "tests/test_tables.py", "tests/test_results.py", "tests/test_timm.py"]


def _run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture(scope="module")
def image():
    res = _run(["docker", "build", "--quiet", "-f", "docker/Dockerfile", "--build-arg", "BASE_IMAGE=" + BASE,
                "--build-arg", "ENV_MANAGER=venv", "--build-arg", "REQUIREMENTS=stacks/compat/requirements.txt",
                "-t", IMAGE, "."], cwd=str(REPO), env=dict(os.environ, DOCKER_BUILDKIT="1"), timeout=1800)
    assert res.returncode == 0, res.stdout[-4000:]
    versions = _run(["docker", "run", "--rm", IMAGE, "python", "-c",
                     "import sys, torch, numpy, tensorboard, setuptools; print(sys.version_info[:2], torch.__version__,"
                     " numpy.__version__, tensorboard.__version__, setuptools.__version__)"]).stdout
    assert "(3, 9) 1.7.1 1.19.5 2.13.0 59.5.0" in versions, versions
    return IMAGE


def test_core_suite_passes_on_torch_1_7(image):
    res = _run(["docker", "run", "--rm", "-v", "%s:/repo:ro" % REPO, "-w", "/repo", "-e", "PYTHONDONTWRITEBYTECODE=1",
                image, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider"] + CORE, timeout=1500)
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "core-suite-torch-1.7.1.log").write_text(res.stdout)
    assert res.returncode == 0, res.stdout[-6000:]
    summary = res.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary


def test_checkpoints_move_between_torch_1_7_and_this_torch(image, tmp_path):
    copy_project(tmp_path)
    fast = ["--model", "mlp", "--width", "32", "--batch-size", "32", "--progress", "plain", "--run-name", "x"]

    here = [sys.executable, "train.py"]
    there = ["docker", "run", "--rm", "--user", "%d:%d" % (os.getuid(), os.getgid()), "-v", "%s:/work" % tmp_path,
             "-w", "/work", image, "python", "train.py"]
    for cmd, steps, resume in ((here, 5, []), (there, 10, ["--resume"]), (here, 15, ["--resume"])):
        res = _run(cmd + fast + resume + ["--max-steps", str(steps)], cwd=str(tmp_path), timeout=300)
        assert res.returncode == 0, res.stdout[-3000:]
        if resume:
            assert "at step %d" % (steps - 5) in res.stdout, res.stdout[-2000:]
    state = load(tmp_path / "models" / "latest" / "x.pt")
    assert state["progress"]["step"] == 15
    assert state["versions"]["torch"].startswith("2.")
