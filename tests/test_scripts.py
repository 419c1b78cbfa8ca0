"""The shell side of /tmp/<project> and purge.sh, on a real copy of the project: /tmp/<project> belongs to one
checkout of one user (mode 700, a marker naming the checkout), and purge.sh never deletes outside the
checkout and its own /tmp/<project>, nor stops a process that is not its trainer or TensorBoard."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from e2e.checkout import copy_project


def _project(tmp_path, name):
    root = tmp_path / name / "tplscripts"
    root.mkdir(parents=True)
    copy_project(root)
    return root


@pytest.fixture
def names():
    """Unique PROJECT names, with their /tmp/<name> removed afterwards."""
    made = []

    def new(tag):
        made.append("tplscripts-%s-%d" % (tag, os.getpid()))
        return made[-1]

    yield new
    for name in made:
        subprocess.run(["rm", "-rf", "/tmp/" + name])


def ensure_tmp_dir(root, project):
    """setup.sh's own step (docker/lib.sh ensure_tmp_dir) for this checkout and PROJECT."""
    script = 'set -euo pipefail; ROOT="$1"; source "$ROOT/docker/lib.sh"; load_project; ensure_tmp_dir'
    return subprocess.run(["bash", "-c", script, "setup.sh", str(root)], env=dict(os.environ, PROJECT=project),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_tmp_dir_is_private_and_marked_and_a_second_checkout_is_refused(tmp_path, names):
    name = names("twice")
    first, second = _project(tmp_path, "a"), _project(tmp_path, "b")
    assert ensure_tmp_dir(first, name).returncode == 0
    tmp = Path("/tmp") / name
    assert oct(tmp.stat().st_mode & 0o777) == "0o700" and (tmp / ".checkout").read_text().strip() == str(first)
    assert ensure_tmp_dir(first, name).returncode == 0, "not idempotent"
    res = ensure_tmp_dir(second, name)
    assert res.returncode == 2 and "belongs to another checkout (%s)" % first in res.stdout
    assert "PROJECT=" in res.stdout


def test_a_tmp_dir_others_can_write_or_own_is_refused(tmp_path, names):
    root = _project(tmp_path, "c")
    name = names("planted")
    tmp = Path("/tmp") / name
    tmp.mkdir()
    os.chmod(str(tmp), 0o777)
    res = ensure_tmp_dir(root, name)
    assert res.returncode == 2 and "can be written by other users (mode 777)" in res.stdout, res.stdout
    if os.getuid() == 0:
        os.chmod(str(tmp), 0o700)
        os.chown(str(tmp), 65534, 65534)
        res = ensure_tmp_dir(root, name)
        assert res.returncode == 2 and "belongs to another user (uid 65534)" in res.stdout, res.stdout


def test_purge_stays_inside_the_checkout(tmp_path, names):
    root = _project(tmp_path, "d")
    name = names("purge")
    assert ensure_tmp_dir(root, name).returncode == 0
    outside = tmp_path / "big-disk"
    for sub in ("tmp", "best", "latest"):
        (outside / sub).mkdir(parents=True)
        (outside / sub / "precious.pt").write_text("keep")
    shutil.rmtree(str(root / "models"))
    os.symlink(str(outside), str(root / "models"))
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # not our trainer
    (root / "logs").mkdir(exist_ok=True)
    (root / "logs" / ".train-native.pid").write_text(str(stranger.pid))
    unrelated = Path("/tmp") / names("unrelated")
    unrelated.mkdir()
    (unrelated / "x").write_text("someone else's")
    try:
        env = dict(os.environ, PROJECT=unrelated.name)
        dry = subprocess.run(["./purge.sh", "--dry-run"], cwd=str(root), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        assert "leaving %s" % unrelated in dry.stdout and "  %s\n" % unrelated not in dry.stdout, dry.stdout
        env = dict(os.environ, PROJECT=name)
        res = subprocess.run(["./purge.sh", "--yes", "--all"], cwd=str(root), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        assert res.returncode == 0, res.stdout
        assert stranger.poll() is None, "purge killed a process that is not the project's"
        assert sorted(p.name for p in outside.rglob("precious.pt")) == ["precious.pt"] * 3, res.stdout
        assert not (Path("/tmp") / name).exists() and (unrelated / "x").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_purge_keeps_a_venv_made_by_hand_and_removes_the_one_setup_made(tmp_path, names):
    """A .venv made by hand stays, also once setup.sh --native (run.sh --native) installed the requirements into it
    (it used to adopt it, and purge.sh then listed it for removal); one setup.sh made goes."""
    root = _project(tmp_path, "e")
    env = dict(os.environ, PROJECT=names("venv"))
    (root / ".venv" / "bin").mkdir(parents=True)  # python3 -m venv .venv, as the README's plain path does
    subprocess.run(["./purge.sh", "--yes"], cwd=str(root), env=env, stdout=subprocess.PIPE, check=True)
    assert (root / ".venv" / "bin").is_dir(), "purge removed a .venv made by hand"
    (root / ".venv" / ".requirements.sha256").write_text("stamp of setup.sh --native, which used the .venv\n")
    dry = subprocess.run(["./purge.sh", "--dry-run"], cwd=str(root), env=env, stdout=subprocess.PIPE, text=True)
    assert ".venv" not in dry.stdout, dry.stdout
    subprocess.run(["./purge.sh", "--yes"], cwd=str(root), env=env, stdout=subprocess.PIPE, check=True)
    assert (root / ".venv" / "bin").is_dir(), "purge removed a .venv made by hand that setup.sh had used"
    (root / ".venv" / ".made-by-setup").write_text("%s\n" % root)  # what setup.sh writes when it makes one
    subprocess.run(["./purge.sh", "--yes"], cwd=str(root), env=env, stdout=subprocess.PIPE, check=True)
    assert not (root / ".venv").exists()
    script = (REPO / "setup.sh").read_text()
    assert 'python3 -m venv "$venv"\n    printf \'%s\\n\' "$ROOT" >"$venv/.made-by-setup"' in script


def test_setup_says_what_it_moves_into_tmp(tmp_path, names):
    """A logs/ folder that train.py made before setup.sh ran moves into /tmp/<project>, said (it moved silently)."""
    root = _project(tmp_path, "m")
    project = names("move")
    (root / "logs").mkdir(exist_ok=True)
    (root / "logs" / "run-a").mkdir()
    (root / "logs" / "run-a" / "train.log").write_text("a run's log\n")
    script = ('set -euo pipefail; ROOT="$1"; source "$ROOT/docker/lib.sh"; load_project; ensure_tmp_dir; '
              'ensure_symlink "$ROOT/logs" "$TMP_DIR/logs"')
    res = subprocess.run(["bash", "-c", script, "setup.sh", str(root)], env=dict(os.environ, PROJECT=project),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert res.returncode == 0, res.stdout
    assert "setup.sh: moving %s/logs (2 files and folders) to /tmp/%s/logs; %s/logs becomes a link there" % (
        root, project, root) in res.stdout, res.stdout
    assert (root / "logs").is_symlink() and (Path("/tmp") / project / "logs" / "run-a" / "train.log").is_file()


def _start_time(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def test_a_pid_file_names_only_the_process_it_was_written_for(tmp_path, names):
    """A stale pid file whose pid now runs an unrelated command in the checkout (`tail -f train.py`) is not ours:
    purge.sh leaves it alone and run.sh does not call it the running trainer; the process recorded is stopped."""
    root = _project(tmp_path, "f")
    env = dict(os.environ, PROJECT=names("pids"))
    (root / "logs").mkdir(exist_ok=True)
    stranger = subprocess.Popen(["tail", "-f", "train.py"], cwd=str(root), stdout=subprocess.DEVNULL)
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "train.py"], cwd=str(root))
    try:
        live = 'source docker/lib.sh; live_pid "$1" || echo none'
        for content in ["%d" % stranger.pid, "%d 1" % stranger.pid]:  # an old pid file; one of an exited process
            (root / "logs").mkdir(exist_ok=True)
            (root / "logs" / ".train-native.pid").write_text(content + "\n")
            res = subprocess.run(["bash", "-c", live, "x", "logs/.train-native.pid"], cwd=str(root),
                                 stdout=subprocess.PIPE, text=True)
            assert res.stdout.strip() == "none", res.stdout
            subprocess.run(["./purge.sh", "--yes"], cwd=str(root), env=env, stdout=subprocess.PIPE, check=True)
            assert stranger.poll() is None, "purge killed an unrelated process through a stale pid file"
        (root / "logs").mkdir(exist_ok=True)
        (root / "logs" / ".train-native.pid").write_text("%d %s\n" % (ours.pid, _start_time(ours.pid)))
        res = subprocess.run(["bash", "-c", live, "x", "logs/.train-native.pid"], cwd=str(root),
                             stdout=subprocess.PIPE, text=True)
        assert res.stdout.strip() == str(ours.pid)
        subprocess.run(["./purge.sh", "--yes"], cwd=str(root), env=env, stdout=subprocess.PIPE, check=True)
        assert ours.wait(timeout=30) is not None and stranger.poll() is None
    finally:
        for proc in (stranger, ours):
            proc.kill()
            proc.wait()


def test_test_sh_takes_the_build_settings_of_env_unless_the_environment_sets_them(tmp_path):
    """./setup.sh keeps BASE_IMAGE, ENV_MANAGER and STACK in .env; test.sh exports them for its Docker tests."""
    (tmp_path / ".env").write_text("PROJECT=x\nBASE_IMAGE=local/debian:bookworm\nENV_MANAGER=venv\nSTACK=cpu\n")
    script = ('set -euo pipefail; ROOT="$1"; source "%s/docker/lib.sh"; export_build_settings; '
              'echo "$BASE_IMAGE|$ENV_MANAGER|$STACK"' % REPO)
    env = {k: v for k, v in os.environ.items() if k not in ("BASE_IMAGE", "ENV_MANAGER", "STACK")}
    res = subprocess.run(["bash", "-c", script, "test.sh", str(tmp_path)], env=dict(env, ENV_MANAGER="conda"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert res.stdout.strip() == "local/debian:bookworm|conda|cpu", res.stdout
    assert "export_build_settings" in (REPO / "test.sh").read_text()


def test_purge_everything_also_removes_what_the_air_gapped_and_test_steps_made(tmp_path, names):
    root = _project(tmp_path, "f")
    env = dict(os.environ, PROJECT=names("everything"))
    (root / ".venv-test" / "bin").mkdir(parents=True)
    (root / "test-artifacts").mkdir()
    (root / "test-artifacts" / "tensorboard-scalars.png").write_bytes(b"png")
    (root / "docker" / "wheels" / "made-here.whl").write_bytes(b"zip")
    (root / "models" / "best").mkdir(parents=True, exist_ok=True)
    (root / "models" / "best" / "run.pt").write_bytes(b"pt")
    plain = subprocess.run(["./purge.sh", "--all", "--dry-run"], cwd=str(root), env=env, stdout=subprocess.PIPE,
                           text=True).stdout
    assert "docker/wheels" not in plain and ".venv-test" not in plain, plain  # --all stays as it was
    dry = subprocess.run(["./purge.sh", "--everything", "--dry-run"], cwd=str(root), env=env,
                         stdout=subprocess.PIPE, text=True).stdout
    for made in ("docker/wheels", ".venv-test", "test-artifacts", "models/best/*"):  # listed before removing
        assert "  %s/%s" % (root, made) in dry, dry
    res = subprocess.run(["./purge.sh", "--everything", "--yes"], cwd=str(root), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    assert res.returncode == 0, res.stdout
    for made in ("docker/wheels", ".venv-test", "test-artifacts", "models/best/run.pt"):
        assert not (root / made).exists(), made
    assert (root / "train.py").is_file() and (root / "docker" / "Dockerfile").is_file()


def test_the_slurm_job_script_run_outside_slurm_says_how_to_submit_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    res = subprocess.run(["bash", "slurm/train.sbatch", "--epochs", "1"], cwd=str(REPO), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert res.returncode == 2 and "submit it with: sbatch slurm/train.sbatch" in res.stdout, res.stdout


def test_a_trainer_that_exited_but_is_not_yet_reaped_no_longer_runs(tmp_path):
    """A zombie keeps its /proc entry and start time until its parent reaps it: run.sh must not call it a running
    trainer (the next ./run.sh came right after the last one ended and was refused)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    start = _start_time(proc.pid)
    live = 'source docker/lib.sh; echo "%d %s" >"$1"; live_pid "$1" || echo none'
    pid_file = tmp_path / ".train-native.pid"
    try:
        res = subprocess.run(["bash", "-c", live % (proc.pid, start), "x", str(pid_file)], cwd=str(REPO),
                             stdout=subprocess.PIPE, text=True)
        assert res.stdout.strip() == str(proc.pid), res.stdout  # running
        proc.stdin.close()  # it exits; not waited for: a zombie
        deadline = time.time() + 60
        while "\tZ" not in Path("/proc/%d/status" % proc.pid).read_text() and time.time() < deadline:
            time.sleep(0.01)
        res = subprocess.run(["bash", "-c", live % (proc.pid, start), "x", str(pid_file)], cwd=str(REPO),
                             stdout=subprocess.PIPE, text=True)
        assert res.stdout.strip() == "none", res.stdout
    finally:
        proc.wait()


def test_purge_everything_removes_only_a_base_image_this_checkout_made(tmp_path, names):
    """purge.sh --everything listed the base image of .env's BASE_IMAGE whoever made it; now only one whose label
    (.ci/make-base-image.sh sets it) names this checkout."""
    from e2e.checkout import skip_without_docker
    skip_without_docker()
    root = _project(tmp_path, "i")
    env = dict(os.environ, PROJECT=names("image"))
    tar = tmp_path / "empty.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(tmp_path / "i"), "--files-from", "/dev/null"], check=True)
    tag = "local/tpl-purge-test-%d:x" % os.getpid()
    try:
        cases = ((str(root), True, None),
                 ("/elsewhere/checkout", False, "another checkout made it (/elsewhere/checkout)"),
                 (None, False, "this checkout did not make it"))
        for label, listed, note in cases:
            subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
            change = ["--change", "LABEL template.checkout=%s" % label] if label else []
            subprocess.run(["docker", "import"] + change + [str(tar), tag], check=True, capture_output=True)
            (root / ".env").write_text("PROJECT=%s\nBASE_IMAGE=%s\n" % (env["PROJECT"], tag))
            dry = subprocess.run(["./purge.sh", "--everything", "--dry-run"], cwd=str(root), env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
            assert ("image %s (the air-gapped route" % tag in dry) == listed, dry
            if note:
                assert "leaving image %s: %s" % (tag, note) in dry, dry
        assert "LABEL template.checkout=$checkout" in (REPO / ".ci" / "make-base-image.sh").read_text()
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
