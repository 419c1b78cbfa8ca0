"""Static checks: the Python 3.8 floor (vermin: stdlib and syntax; ruff with target-version py38), shellcheck
on every shell script, hadolint on the Dockerfile. The tools come from requirements-dev.txt."""
import os
import subprocess
import sys

from conftest import REPO

BIN = os.path.dirname(sys.executable)
SHELL_SCRIPTS = ["setup.sh", "run.sh", "purge.sh", "test.sh", "docker/lib.sh", ".ci/run", ".ci/install-docker.sh",
                 ".ci/make-base-image.sh", ".ci/make-wheelhouse.sh", ".ci/start-slurm.sh", "benchmarks/run.sh",
                 "benchmarks/gpu_check.sh", "slurm/train.sbatch"]


def _check(cmd):
    res = subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert res.returncode == 0, "%s\n%s" % (" ".join(cmd), res.stdout)
    return res.stdout


def test_python_code_is_valid_for_python_3_8():
    out = _check([os.path.join(BIN, "vermin"), "--no-tips", "--violations", "--eval-annotations", "-t=3.8-",
                  "train.py", "src", "tests", "benchmarks"])
    assert "Minimum required versions: 3." in out


def test_ruff():
    _check([sys.executable, "-m", "ruff", "check", "train.py", "src", "tests", "benchmarks"])


def test_shell_scripts_are_shellcheck_clean_and_strict():
    _check([os.path.join(BIN, "shellcheck"), "-x"] + SHELL_SCRIPTS)
    for script in SHELL_SCRIPTS:
        if script != "docker/lib.sh":  # sourced by the others, which set the options
            assert "set -euo pipefail" in (REPO / script).read_text(), script
            assert os.access(str(REPO / script), os.X_OK), script + " is not executable"


def test_dockerfile_is_hadolint_clean():
    _check([os.path.join(BIN, "hadolint"), "docker/Dockerfile"])
