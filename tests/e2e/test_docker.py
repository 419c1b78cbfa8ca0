"""End to end on a real Docker engine: setup.sh, run.sh, docker compose up / stop / run, TensorBoard over
HTTP on 127.0.0.1 and in headless Chromium, file ownership (root and a non-root user), purge.sh.

The tests run in order on one copy of the project. Without a reachable engine they are skipped with a
loud reason; with REQUIRE_DOCKER=1 (CI sets it) that is a failure instead. Build settings come from the
documented variables that setup.sh reads: BASE_IMAGE, ENV_MANAGER, STACK (CI: a debootstrapped
Debian base, venv, the cpu stack and wheels in docker/wheels/).
"""
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from checkout import Checkout, copy_project, free_port, fresh_checkout, gone, owned_by, skip_without_docker
from conftest import REPO

ARTIFACTS = REPO / "test-artifacts"


skip_without_docker()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    co = fresh_checkout(tmp_path_factory, "tplproj")
    yield co
    subprocess.run(["./purge.sh", "--yes", "--all"], cwd=str(co.root), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def test_scripts_have_help_and_reject_unknown_options(checkout):
    for script in ("setup.sh", "run.sh", "purge.sh"):
        res = checkout.sh("./" + script, "--help")
        assert res.stdout.startswith("Usage: ./" + script), res.stdout
    for script in ("setup.sh", "purge.sh"):
        res = checkout.sh("./" + script, "--bogus", check=False)
        assert res.returncode == 2 and "Usage: ./%s" % script in res.stdout and "--bogus" in res.stdout


def test_setup_builds_links_and_writes_env_then_is_a_no_op(checkout):
    first = checkout.sh("./setup.sh")
    tmp = Path("/tmp") / checkout.project
    assert os.readlink(str(checkout.root / "logs")) == str(tmp / "logs")
    assert os.readlink(str(checkout.root / "models" / "tmp")) == str(tmp / "model")
    env = (checkout.root / ".env").read_text()
    assert "PROJECT=%s\n" % checkout.project in env and "HOST_UID=%d\n" % os.getuid() in env
    assert "TB_PORT=%d\n" % checkout.tb_port in env
    assert "dataset digits ready" in first.stdout
    assert "\x1b" not in first.stdout, "terminal control codes in output that is not a terminal"
    checkout.compose("config", "--quiet")
    inspect = ("docker", "image", "inspect", "--format", "{{.Id}}", checkout.project + "-trainer")
    image = checkout.sh(*inspect).stdout
    stamp = (checkout.root / ".env").stat().st_mtime_ns
    started = time.time()
    second = checkout.sh("./setup.sh")
    print("setup.sh again, nothing changed: %.1f s" % (time.time() - started))
    assert "wrote .env" not in second.stdout
    assert "nothing changed since the last setup" in second.stdout and "building" not in second.stdout
    assert (checkout.root / ".env").stat().st_mtime_ns == stamp
    assert checkout.sh(*inspect).stdout == image
    with open(str(checkout.root / "src" / "models" / "mlp.py"), "a") as f:  # a change: the next setup builds
        f.write("# changed\n")
    assert "building the image" in checkout.sh("./setup.sh").stdout
    # a reboot empties /tmp: setup.sh repairs the dangling links' targets
    shutil.rmtree(str(tmp))
    checkout.sh("./setup.sh", "--no-build")
    assert (tmp / "logs").is_dir() and (tmp / "model").is_dir()


def test_run_trains_to_completion_with_tensorboard_serving_it(checkout):
    res = checkout.sh("./run.sh", "--run-name", "viarun", "--epochs", "2", "--log-every", "5")
    assert "TensorBoard:  http://127.0.0.1:%d" % checkout.tb_port in res.stdout
    assert res.stdout.count("dataset digits ready") == 1, res.stdout  # setup's; the flag check is quiet
    assert "\x1b" not in res.stdout, "terminal control codes in output that is not a terminal"
    # still training when run.sh looked (the usual case), or a run this short already done: said truthfully
    assert ("stop:" in res.stdout and "resume:" in res.stdout) or "done: 46 steps" in res.stdout, res.stdout
    # the training runs on after run.sh (the terminal) is gone
    assert checkout.wait_exit("trainer") == 0
    assert checkout.tb_steps("viarun", "train/loss", 46) == list(range(5, 46, 5)) + [46]  # + the last partial window
    assert "viarun" in checkout.tb("/data/runs")
    assert checkout.tb_steps("viarun", "val/acc", 46) == [23, 46]
    assert (checkout.root / "models" / "best" / "viarun.pt").exists()
    assert owned_by(os.getuid(), checkout.root / "logs/", checkout.root / "models") == []


def test_run_sh_on_a_finished_run_says_so_instead_of_reporting_training(checkout):
    res = checkout.sh("./run.sh", "--run-name", "viarun", "--epochs", "2")
    assert "training in the background" not in res.stdout, res.stdout[-3000:]
    assert "the trainer has already finished" in res.stdout and "its --epochs 2 are done" in res.stdout
    assert "resume with a higher --epochs" in res.stdout


def test_a_base_image_that_cannot_be_pulled_names_the_next_steps(tmp_path_factory):
    co = fresh_checkout(tmp_path_factory, "tplnobase")
    try:
        env = dict(co.env, BASE_IMAGE="local/no-such-base:1")
        res = co.sh("./setup.sh", check=False, env=env, timeout=600)
        assert res.returncode == 1, res.stdout[-3000:]
        last = res.stdout.strip().splitlines()[-1]
        assert "BASE_IMAGE" in last and "./run.sh --native" in last, last
        assert "Air-gapped builds" in res.stdout, res.stdout[-3000:]
        from test_readme import readme_block
        route = [line.split("  #")[0].strip() for line in readme_block("### Air-gapped builds").splitlines()]
        for command in route[:3]:  # the README's commands, printed as they are typed
            assert "\n  %s\n" % command in res.stdout, (command, res.stdout[-3000:])
    finally:
        co.sh("./purge.sh", "--yes", check=False)


def test_tensorboard_page_renders_in_headless_chromium(checkout):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("CI"):
            raise AssertionError("CI needs chromium for the TensorBoard screenshot")
        pytest.skip("no chromium for the TensorBoard screenshot")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "tensorboard-scalars.png"
    profile = checkout.root.parent / "chromium-profile"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--user-data-dir=%s" % profile, "--window-size=1400,1000", "--virtual-time-budget=15000",
                    "--screenshot=%s" % shot, "http://127.0.0.1:%d/#scalars&tagFilter=train" % checkout.tb_port],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True)
    from PIL import Image
    img = Image.open(str(shot)).convert("RGB")
    assert img.size == (1400, 1000)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, "the page looks blank"
    header = sum(n for n, (r, g, b) in colours if r > 230 and 110 < g < 140 and b < 20)
    assert header > 1400 * 30, "no TensorBoard header bar in the screenshot"
    body = img.crop((0, 80, 1400, 1000))
    curve = sum(n for n, (r, g, b) in body.getcolors(maxcolors=1 << 20) if r > 240 and 95 < g < 130 and 50 < b < 90)
    assert curve > 300, "no scalar curve drawn (%d pixels of the first run's colour)" % curve


def test_compose_up_trains_the_default_run(checkout):
    checkout.compose("up", "--detach")
    assert checkout.wait_exit("trainer") == 0
    assert checkout.tb_steps("digits-cnn", "val/acc", 345)[-1] == 345
    assert checkout.container("tensorboard")["Health"] == "healthy"


def test_run_sh_nproc_trains_data_parallel_in_the_container_and_stops_cleanly(checkout):
    checkout.sh("./run.sh", "--nproc", "2", "--run-name", "ddp", "--model", "mlp", "--epochs", "500",
                "--ckpt-every", "1000", "--log-every", "5")
    log = checkout.root / "logs" / "ddp" / "train.log"
    checkout.wait_for_text(log, "step 30/")
    started = time.time()
    checkout.compose("stop", "trainer")
    assert time.time() - started < 30  # compose's stop_grace_period: after it, a SIGKILL (exit 137)
    assert checkout.container("trainer")["ExitCode"] == 0  # the launcher passed the stop to both processes
    text = log.read_text()
    assert "x 2 processes (global batch 64)" in text
    assert text.count("SIGTERM received") == 1 and text.count("saved checkpoint step") == 1, text[-3000:]
    import torch
    state = torch.load(str(checkout.root / "models" / "latest" / "ddp.pt"), map_location="cpu", weights_only=True)
    assert state["progress"]["step"] >= 30 and len(state["rng_ranks"]) == 2


def test_second_training_refused_then_compose_stop_saves_a_fresh_checkpoint(checkout):
    env = dict(checkout.env, TRAIN_ARGS="--run-name stopme --epochs 500 --ckpt-every 1000 --log-every 5")
    checkout.compose("up", "--detach", "trainer", env=env)
    log = checkout.root / "logs" / "stopme" / "train.log"
    checkout.wait_for_text(log, "step 50/")
    res = checkout.sh("./run.sh", "--run-name", "other", check=False)
    assert res.returncode == 1 and "training is already running" in res.stdout
    started = time.time()
    checkout.compose("stop", "trainer")
    assert time.time() - started < 30  # compose's stop_grace_period: after it, a SIGKILL (exit 137)
    assert checkout.container("trainer")["ExitCode"] == 0
    text = log.read_text()
    assert "SIGTERM received" in text and "saved checkpoint step" in text
    # the hint names what to type on the host, not inside the container
    assert "continue with: ./run.sh --run-name stopme (or: docker compose run --rm trainer python train.py " \
           "--resume --run-name stopme)" in text, text[-2000:]
    import torch
    state = torch.load(str(checkout.root / "models" / "latest" / "stopme.pt"), map_location="cpu", weights_only=True)
    step = state["progress"]["step"]
    assert step >= 50 and step % 1000, "the stop checkpoint is newer than any periodic one"
    res = checkout.compose("run", "--rm", "trainer", "python", "train.py", "--resume", "--run-name", "stopme",
                           "--max-steps", str(step + 7), "--progress", "plain")
    assert "resuming from /app/models/latest/stopme.pt at step %d" % step in res.stdout
    state = torch.load(str(checkout.root / "models" / "latest" / "stopme.pt"), map_location="cpu", weights_only=True)
    assert state["progress"]["step"] == step + 7
    assert owned_by(os.getuid(), checkout.root / "logs/", checkout.root / "models") == []


def test_compose_stop_with_dataloader_workers_saves_and_exits_0(checkout):
    """tini -g sends docker stop's SIGTERM to the whole group: the workers ignore it, the trainer saves."""
    env = dict(checkout.env, TRAIN_ARGS="--run-name workers --num-workers 2 --epochs 500 --ckpt-every 1000 "
                                        "--log-every 5")
    checkout.compose("up", "--detach", "trainer", env=env)
    log = checkout.root / "logs" / "workers" / "train.log"
    checkout.wait_for_text(log, "step 30/")
    checkout.compose("stop", "trainer")
    assert checkout.container("trainer")["ExitCode"] == 0, checkout.compose("logs", "trainer").stdout[-3000:]
    text, output = log.read_text(), checkout.compose("logs", "trainer").stdout
    assert "SIGTERM received" in text and "saved checkpoint step" in text, text[-2000:] + output[-3000:]
    assert "killed by signal" not in output
    import torch
    state = torch.load(str(checkout.root / "models" / "latest" / "workers.pt"), map_location="cpu", weights_only=True)
    assert state["progress"]["step"] >= 30


def test_setup_no_build_without_an_image_says_so_instead_of_building(tmp_path_factory):
    co = fresh_checkout(tmp_path_factory, "tplnobuild")
    try:
        res = co.sh("./setup.sh", "--no-build", check=False)
        assert res.returncode == 1 and "there is no image" in res.stdout, res.stdout[-2000:]
        assert co.sh("docker", "images", "-q", co.project + "-trainer").stdout.strip() == ""
    finally:
        co.sh("./purge.sh", "--yes", check=False)


def test_run_sh_checks_train_arguments_and_moves_tensorboard_off_a_busy_port(checkout):
    res = checkout.sh("./run.sh", "--no-such-flag", check=False)
    assert res.returncode == 2 and "unrecognized arguments: --no-such-flag" in res.stdout
    checkout.compose("stop", "tensorboard")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        taken = busy.getsockname()[1]
        env = dict(checkout.env, TB_PORT=str(taken))
        res = checkout.sh("./run.sh", "--run-name", "busyport", "--max-steps", "1", env=env)
        said = [line for line in res.stdout.splitlines() if "is taken by another program" in line]
        assert said and "port %d is taken" % taken in said[0], res.stdout[-3000:]  # said before the slow steps
        assert res.stdout.index(said[0]) < res.stdout.index("setup.sh: "), res.stdout[-3000:]
        port = int(said[0].split("goes on port ")[1].split()[0])
        assert port != taken and "TensorBoard:  http://127.0.0.1:%d" % port in res.stdout, res.stdout[-3000:]
        assert "TB_PORT=%d\n" % port in (checkout.root / ".env").read_text()
    finally:
        busy.close()
        checkout.compose("stop", "tensorboard")
        checkout.sh("./setup.sh", "--no-build")  # back to this checkout's own port


def test_docker_and_native_runs_share_this_checkouts_one_tensorboard(checkout):
    """Both serve logs/: a native run reuses the Docker TensorBoard, a Docker run reuses the native one."""
    native_pid = checkout.root / "logs" / ".tensorboard-native.pid"
    checkout.compose("up", "--detach", "tensorboard")
    checkout.tb_steps("viarun", "val/acc", 46)  # up and serving
    try:
        res = checkout.sh("./run.sh", "--native", "--run-name", "tonative", "--epochs", "1", "--log-every", "5")
        assert "TensorBoard:  http://127.0.0.1:%d" % checkout.tb_port in res.stdout, res.stdout[-3000:]
        assert "docker compose stop tensorboard (this checkout's Docker TensorBoard, reused)" in res.stdout, \
            res.stdout[-3000:]
        assert "is taken by another program" not in res.stdout and not native_pid.exists()
        checkout.wait_for_text(checkout.root / "logs" / "tonative" / "train.log", "done: 23 steps")
        assert checkout.tb_steps("tonative", "val/acc", 23) == [23]  # served by the container

        checkout.compose("stop", "tensorboard")
        res = checkout.sh("./run.sh", "--native", "--run-name", "tonative2", "--epochs", "1", "--log-every", "5")
        assert native_pid.exists() and "TensorBoard:  http://127.0.0.1:%d" % checkout.tb_port in res.stdout
        checkout.wait_for_text(checkout.root / "logs" / "tonative2" / "train.log", "done: 23 steps")
        res = checkout.sh("./run.sh", "--run-name", "todocker", "--epochs", "1", "--log-every", "5")
        assert "TensorBoard: this checkout's native one already serves logs/ (reused)" in res.stdout, \
            res.stdout[-3000:]
        assert "TensorBoard:  http://127.0.0.1:%d" % checkout.tb_port in res.stdout
        assert checkout.wait_exit("trainer") == 0
        row = checkout.container("tensorboard")
        assert row is None or row["State"] != "running", "a second TensorBoard was started"
        assert checkout.tb_steps("todocker", "val/acc", 23) == [23]  # served by the native one
    finally:
        if native_pid.exists():
            pid = int(native_pid.read_text().split()[0])
            try:
                os.kill(pid, 15)
            except OSError:
                pass
            deadline = time.time() + 60
            while not gone(pid) and time.time() < deadline:
                time.sleep(0.1)


def test_a_timm_model_in_the_image_trains_from_a_weights_file_or_says_in_one_line_why_not(checkout):
    """--model timm:resnet18 --pretrained FILE in the stack's image. The cpu stack's torchvision must be the CPU
    build of download.pytorch.org; where the image was built without that index (CI here cannot reach it: PyPI's
    torchvision is a CUDA build, which cannot load beside the CPU torch) the run says so in one line, never a
    traceback, and writes nothing."""
    timm = pytest.importorskip("timm", reason="the weights file is made with the host's timm")
    from safetensors.torch import save_file
    from conftest import write_images
    write_images(checkout.root / "data" / "timmpets", 6)
    save_file(timm.create_model("resnet18").state_dict(), str(checkout.root / "data" / "r18.safetensors"))
    res = checkout.compose("run", "--rm", "-T", "trainer", "python", "train.py", "--dataset", "folder:data/timmpets",
                           "--model", "timm:resnet18", "--pretrained", "data/r18.safetensors", "--image-size", "16",
                           "--max-steps", "2", "--progress", "plain", "--run-name", "timmpets", check=False)
    assert "Traceback" not in res.stdout, res.stdout[-3000:]
    if res.returncode == 0:
        assert "--pretrained data/r18.safetensors: loaded 120 of the model's 122 tensors" in res.stdout
        assert (checkout.root / "models" / "latest" / "timmpets.pt").exists()
    else:
        errors = [line for line in res.stdout.splitlines() if line.startswith("train.py: error:")]
        assert res.returncode == 2 and len(errors) == 1 and "torchvision" in errors[0], res.stdout[-3000:]
        assert not (checkout.root / "models" / "latest" / "timmpets.pt").exists()


def test_non_root_user_owns_what_the_containers_write(checkout, tmp_path_factory):
    if os.getuid() != 0:
        pytest.skip("creating a user needs root; this run is itself the non-root case")
    user = "tpluser"
    if subprocess.run(["id", user], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        subprocess.run(["useradd", "--create-home", "--groups", "docker", user], check=True)
    pw = pwd.getpwnam(user)
    base = Path("/tmp") / ("tpl-e2e-home-%d" % os.getpid())
    base.mkdir()
    root = base / ("tplnonroot%d" % os.getpid())
    root.mkdir()
    copy_project(root, link_wheels=False)  # chown must not reach the repo's own wheel files
    subprocess.run(["chown", "-R", "%d:%d" % (pw.pw_uid, pw.pw_gid), str(base)], check=True)
    other = Checkout(root, free_port(), user=user)
    try:
        other.sh("./setup.sh")
        assert "HOST_UID=%d\n" % pw.pw_uid in (root / ".env").read_text()
        other.compose("run", "--rm", "trainer", "python", "train.py", "--max-steps", "5", "--progress", "plain")
        assert (root / "models" / "latest" / "digits-cnn.pt").exists()
        assert owned_by(pw.pw_uid, root / "logs/", root / "models", root / "data") == []
        other.sh("./purge.sh", "--yes")
        assert not (Path("/tmp") / root.name).exists()
    finally:
        subprocess.run(["./purge.sh", "--yes"], cwd=str(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(str(base), ignore_errors=True)


def test_purge_removes_everything_of_the_project_and_keeps_data(checkout):
    (checkout.root / "data" / "keep-me.txt").write_text("mine")
    dry = checkout.sh("./purge.sh", "--dry-run")
    assert "dry run: nothing removed" in dry.stdout and (checkout.root / ".env").exists()
    no_tty = checkout.sh("./purge.sh", check=False)
    assert no_tty.returncode == 1 and "--yes" in no_tty.stdout
    checkout.sh("./purge.sh", "--yes")
    name = checkout.project
    label = "label=com.docker.compose.project=%s" % name
    assert checkout.sh("docker", "ps", "-aq", "--filter", label).stdout.strip() == ""
    assert checkout.sh("docker", "volume", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert checkout.sh("docker", "images", "-q", name + "-trainer").stdout.strip() == ""
    assert not (Path("/tmp") / name).exists()
    assert not os.path.lexists(str(checkout.root / "logs"))
    assert not os.path.lexists(str(checkout.root / "models" / "tmp"))
    assert (checkout.root / "data" / "keep-me.txt").read_text() == "mine"
    assert (checkout.root / "models" / "best" / "viarun.pt").exists()


def test_purge_refuses_a_symlink_pointing_elsewhere(checkout, tmp_path):
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "file").write_text("x")
    os.symlink(str(elsewhere), str(checkout.root / "logs"))
    try:
        res = checkout.sh("./purge.sh", "--yes", check=False)
        assert res.returncode == 1 and "refusing" in res.stdout
        assert (elsewhere / "file").exists()
    finally:
        os.unlink(str(checkout.root / "logs"))

