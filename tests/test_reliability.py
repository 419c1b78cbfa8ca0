"""Reliability and security, each case a reproduction of an attack or accident on the real train.py:
checkpoints that would run code, folders in /tmp that another user could plant files in, the run lock and
file names, resume settings that must not travel between checkouts, and a failed resume that must leave
the run as it was."""
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from conftest import FAST, load, wait_for_line
from src.runtime import compat
from src.state import fileformat

MARKER = "/tmp/tpl-payload-ran-%d" % os.getpid()


class Payload(object):
    """Unpickling this runs a shell command: what an attacker puts in a checkpoint."""

    def __reduce__(self):
        return (os.system, ("touch %s" % MARKER,))


def tree_digest(*folders):
    """One hash of every file (path and bytes) under the folders: 'nothing saved before changed'."""
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def evil_checkpoint(path, base, signed=True):
    """A checkpoint with a payload in its weights, signed like a real one (the digest is no secret)."""
    state = dict(base, model={"fc.weight": Payload()})
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(fileformat.sign(buf.getvalue()) if signed else buf.getvalue())


@pytest.fixture(autouse=True)
def no_marker():
    if os.path.exists(MARKER):
        os.remove(MARKER)
    yield
    ran = os.path.exists(MARKER)
    if ran:
        os.remove(MARKER)
    assert not ran, "a checkpoint's payload ran code"


def one_line(res, code, text):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code, res.stderr[-2000:]
    assert lines and lines[-1].startswith("train.py: error:") and text in lines[-1], res.stderr[-2000:]


@pytest.mark.parametrize("signed", [True, False])
def test_a_checkpoint_payload_never_runs_through_resume_or_init_from(project, signed):
    project.ok(*(FAST + ["--max-steps", "3"]))
    evil = project.root / "evil.pt"
    evil_checkpoint(evil, load(project.latest("digits-mlp")), signed)
    res = project.run(*(FAST + ["--resume", str(evil), "--run-name", "x"]))
    one_line(res, 2, "unreadable checkpoint")
    res = project.run(*(FAST + ["--init-from", str(evil), "--run-name", "y"]))
    one_line(res, 2, "unreadable checkpoint")
    assert not project.run_dir("x").exists() and not project.run_dir("y").exists()


def test_a_planted_newer_checkpoint_in_models_tmp_is_skipped_not_run(project):
    project.ok(*(FAST + ["--max-steps", "6", "--ckpt-every", "3"]))
    good = load(project.latest("digits-mlp"))
    evil_checkpoint(project.tmp_dir("digits-mlp") / "step-99.pt", good)
    res = project.ok(*(FAST + ["--resume", "--max-steps", "8"]))
    assert "step-99.pt is unreadable" in res.stderr and "skipping it" in res.stderr
    assert load(project.latest("digits-mlp"))["progress"]["step"] == 8


def test_the_restricted_unpickler_for_torch_without_weights_only_loading(tmp_path):
    """The path torch 1.7.1 (the cu92 stack) takes, run here too: real checkpoints load, payloads do not."""
    good = {"model": {"w": torch.arange(6.0).view(2, 3)}, "rng": {"torch": torch.get_rng_state()},
            "progress": {"step": 3}, "python": (3, (1, 2), None)}
    buf = io.BytesIO()
    torch.save(good, buf)
    back = compat.load_bytes(buf.getvalue(), restricted=True)
    assert torch.equal(back["model"]["w"], good["model"]["w"]) and back["python"] == (3, (1, 2), None)
    buf = io.BytesIO()
    torch.save({"model": Payload()}, buf)
    with pytest.raises(Exception, match="forbidden object"):
        compat.load_bytes(buf.getvalue(), restricted=True)


def test_the_digest_covers_the_raw_bytes_before_unpickling(project, tmp_path):
    project.ok(*(FAST + ["--max-steps", "3"]))
    blob = project.latest("digits-mlp").read_bytes()
    archive = zipfile.ZipFile(io.BytesIO(blob))
    # a torn or flipped byte: the archive's own checks catch it before the digest
    data_pkl = [n for n in archive.namelist() if n.endswith("data.pkl")][0]
    info = archive.getinfo(data_pkl)
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the local header's own extra field (alignment)
    changed = bytearray(blob)
    changed[start + info.file_size // 2] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(bytes(changed))
    with pytest.raises(fileformat.CorruptCheckpoint, match="damaged archive"):
        fileformat.load(tmp_path / "flipped.pt")
    # a record rewritten with a valid CRC but without a new digest (weights edited): the digest catches it
    out = io.BytesIO()
    tensors = [n for n in archive.namelist() if "/data/" in n]
    biggest = max(tensors, key=lambda n: archive.getinfo(n).file_size)  # storage names differ across torch versions
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as edited:
        for name in archive.namelist():
            data = archive.read(name)
            if name == biggest:
                data = bytes(len(data))
            edited.writestr(name, data)
    (tmp_path / "edited.pt").write_bytes(out.getvalue())
    with pytest.raises(fileformat.CorruptCheckpoint, match="do not match the stored digest"):
        fileformat.load(tmp_path / "edited.pt")


def test_a_signed_checkpoint_with_missing_parts_is_one_line(project):
    project.ok(*(FAST + ["--max-steps", "3"]))
    state = load(project.latest("digits-mlp"))
    for drop, where in (("progress", "progress"), ("optimizer", "optimizer")):
        crafted = {k: v for k, v in state.items() if k != drop}
        buf = io.BytesIO()
        torch.save(crafted, buf)
        path = project.root / ("no-%s.pt" % drop)
        path.write_bytes(fileformat.sign(buf.getvalue()))
        one_line(project.run(*(FAST + ["--resume", str(path), "--run-name", "z"])), 2, "'%s'" % where)
    crafted = dict(state, config=dict(state["config"], run_name="../../.."))
    buf = io.BytesIO()
    torch.save(crafted, buf)
    (project.root / "escape.pt").write_bytes(fileformat.sign(buf.getvalue()))
    before = set(os.listdir(str(project.root.parent)))
    one_line(project.run("--resume", "escape.pt", "--progress", "plain"), 2, "the checkpoint's run name")
    assert set(os.listdir(str(project.root.parent))) == before, "something was made outside the project"


def _shared_folder(tmp_path):
    """A folder that, like /tmp, anyone may create entries in."""
    shared = tmp_path / "sharedtmp"
    shared.mkdir()
    os.chmod(str(shared), 0o1777)
    return shared


def test_a_models_tmp_in_a_folder_others_can_write_is_refused(project, tmp_path):
    shared = _shared_folder(tmp_path)
    planted = shared / "proj"
    (planted / "model").mkdir(parents=True)
    os.chmod(str(planted), 0o777)  # pre-made by another user, world-writable
    (project.root / "models").mkdir()
    os.symlink(str(planted / "model"), str(project.root / "models" / "tmp"))
    res = project.run(*(FAST + ["--max-steps", "2"]))
    one_line(res, 2, "can be written by other users")
    assert "PROJECT=" in res.stderr and not project.run_dir("digits-mlp").exists()
    os.chmod(str(planted), 0o700)
    project.ok(*(FAST + ["--max-steps", "2"]))


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_models_tmp_owned_by_another_user_is_refused(project, tmp_path):
    shared = _shared_folder(tmp_path)
    planted = shared / "proj"
    (planted / "model").mkdir(parents=True, mode=0o700)
    os.chown(str(planted), 65534, 65534)
    (project.root / "models").mkdir()
    os.symlink(str(planted / "model"), str(project.root / "models" / "tmp"))
    one_line(project.run(*(FAST + ["--max-steps", "2"])), 2, "belongs to another user (uid 65534)")


def test_a_tmp_folder_another_checkout_made_is_refused(project, tmp_path):
    shared = _shared_folder(tmp_path)
    other = shared / "proj"
    (other / "model").mkdir(parents=True)
    os.chmod(str(other), 0o700)
    (other / ".checkout").write_text("/home/someone/other-checkout\n")
    (project.root / "models").mkdir()
    os.symlink(str(other / "model"), str(project.root / "models" / "tmp"))
    res = project.run(*(FAST + ["--max-steps", "2"]))
    one_line(res, 2, "was made by another checkout (/home/someone/other-checkout)")
    assert "PROJECT=another-name" in res.stderr and "chmod" not in res.stderr
    (other / ".checkout").write_text(str(project.root) + "\n")  # this checkout's own
    project.ok(*(FAST + ["--max-steps", "2"]))


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to plant a file as another user")
def test_a_checkpoint_planted_while_the_folder_was_open_is_refused_after_a_chmod(project, tmp_path):
    shared = _shared_folder(tmp_path)
    planted = shared / "proj"
    (planted / "model" / "digits-mlp").mkdir(parents=True)
    os.chmod(str(planted), 0o777)
    project.ok(*(FAST + ["--max-steps", "2", "--models-dir", str(tmp_path / "m0")]))
    evil = planted / "model" / "digits-mlp" / "step-999.pt"
    shutil.copy(str(tmp_path / "m0" / "latest" / "digits-mlp.pt"), str(evil))
    os.chown(str(evil), 65534, 65534)  # another local user's file
    os.chmod(str(planted), 0o700)  # what the old advice said to do
    (project.root / "models").mkdir()
    os.symlink(str(planted / "model"), str(project.root / "models" / "tmp"))
    res = project.run(*(FAST + ["--max-steps", "4", "--resume", "auto", "--run-name", "digits-mlp"]))
    one_line(res, 2, "which belongs to another user (uid 65534)")
    assert "PROJECT=another-name" in res.stderr and not project.latest("digits-mlp").exists()


def test_a_dangling_tmp_link_is_made_again_private_with_a_marker(project, tmp_path):
    shared = _shared_folder(tmp_path)
    target = shared / "proj-after-reboot"
    (project.root / "models").mkdir()
    os.symlink(str(target / "model"), str(project.root / "models" / "tmp"))
    project.ok(*(FAST + ["--max-steps", "2"]))
    assert oct(target.stat().st_mode & 0o777) == "0o700"
    assert (target / ".checkout").read_text().strip() == str(project.root)


def test_the_lock_covers_the_checkpoints_whatever_the_logs_dir(project):
    first = project.start(*(FAST + ["--epochs", "50", "--log-every", "1", "--ckpt-every", "100000",
                                    "--logs-dir", "logs-a"]))
    from conftest import wait_for_line
    wait_for_line(first, lambda line: line.startswith("step 3/"))
    res = project.run(*(FAST + ["--max-steps", "3", "--logs-dir", "logs-b", "--resume", "auto"]))
    first.kill()
    first.wait()
    one_line(res, 1, "already being trained")


def test_stale_temporary_files_of_another_run_are_left_alone(project):
    latest = project.root / "models" / "latest"
    latest.mkdir(parents=True)
    mine, other = latest / ".x.pt.tmp-4242", latest / ".x.pt2.pt.tmp-4242"
    mine.write_bytes(b"left by a killed writer")
    other.write_bytes(b"run x.pt2's write in progress")
    project.ok(*(FAST + ["--max-steps", "2", "--run-name", "x"]))
    assert not mine.exists() and other.exists()


def test_a_fresh_start_never_touches_another_runs_tensorboard_history(project):
    project.ok(*(FAST + ["--max-steps", "12", "--models-dir", "models-elsewhere"]))
    run_dir = project.run_dir("digits-mlp")
    before = tree_digest(run_dir)
    res = project.run(*(FAST + ["--max-steps", "5"]))  # its checkpoints are not in models/
    one_line(res, 2, "already holds the TensorBoard history")
    assert tree_digest(run_dir) == before


def test_a_resume_takes_its_folders_from_this_checkout_not_the_checkpoint(project, tmp_path):
    elsewhere = tmp_path / "other-checkout-data"
    project.ok(*(FAST + ["--max-steps", "3", "--data-dir", str(elsewhere)]))
    assert load(project.latest("digits-mlp"))["config"]["data_dir"] == str(elsewhere)
    shutil.rmtree(str(elsewhere))
    elsewhere.write_text("not a folder any more: a resume that used it would fail")
    project.ok(*(FAST + ["--resume", "--max-steps", "6"]))
    assert load(project.latest("digits-mlp"))["config"]["data_dir"] == str(project.root / "data")


def test_a_failed_resume_leaves_config_and_tensorboard_history_as_they_were(project):
    """A failure that no check can see beforehand (here: the model's first step raises) changes nothing."""
    (project.root / "src" / "models" / "flaky.py").write_text(
        "import os\nimport torch.nn as nn\nfrom . import register\n\n\n"
        "class Flaky(nn.Module):\n"
        "    def __init__(self, n, k):\n        super().__init__()\n        self.fc = nn.Linear(n, k)\n\n"
        "    def forward(self, x):\n"
        "        if os.environ.get('FLAKY') and self.training:  # the start-up check runs it in eval mode\n"
        "            raise RuntimeError('flaky model')\n"
        "        return self.fc(x.flatten(1))\n\n\n"
        "@register('flaky')\ndef build(input_shape, num_classes, cfg):\n"
        "    c, h, w = input_shape\n    return Flaky(c * h * w, num_classes)\n")
    args = ["--model", "flaky", "--batch-size", "32", "--progress", "plain", "--deterministic"]
    project.ok(*(args + ["--max-steps", "20", "--log-every", "5"]))
    from conftest import summary_steps
    run_dir = project.run_dir("digits-flaky")
    hparams_before = len(summary_steps(run_dir, "_hparams_/session_start_info"))
    kept = ("train.log", "run.lock")  # the log of the attempt grows; the lock holds the pid of the last trainer
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name not in kept}
    res = project.run(*(args + ["--resume", "--max-steps", "40", "--lr", "0.01"]),
                      env=dict(project.env, FLAKY="1"))
    assert res.returncode == 1 and "flaky model" in res.stderr
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name not in kept}
    assert after == before, "the failed resume changed %s" % sorted(k for k in after if after[k] != before.get(k))
    assert hparams_before >= 1


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the given size at a new folder (root only): a real full disk."""
    mounted = []

    def make(name, size):
        folder = tmp_path / name
        folder.mkdir()
        if os.getuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs",
                                               str(folder)]).returncode:
            pytest.skip("needs root and mount for a small filesystem")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)])


def fill(folder):
    """Write until the filesystem under folder is full."""
    try:
        with open(str(folder / "filler"), "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:  # full (the open itself fails when it already is)
        pass


def test_a_full_disk_under_logs_at_start_is_one_line(project, small_disk):
    logs = small_disk("logs", "256k")
    fill(logs)
    res = project.run(*(FAST + ["--max-steps", "5", "--logs-dir", str(logs)]))
    one_line(res, 1, "No space left on device")
    assert "free space there" in res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr and "Logging error" not in res.stderr


def test_a_full_disk_during_training_stops_with_one_line_and_keeps_the_last_checkpoint(project, small_disk):
    logs = small_disk("logs", "2m")
    proc = project.start(*(FAST + ["--epochs", "50", "--log-every", "1", "--ckpt-every", "10", "--logs-dir",
                                   str(logs)]))
    from conftest import wait_for_line
    wait_for_line(proc, lambda line: line.startswith("saved checkpoint step 20"))
    fill(logs)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("train.py: error:") and "free space" in last and "--resume" in last, out[-3000:]
    assert "Traceback" not in out
    assert fileformat.load(project.latest("digits-mlp"))["progress"]["step"] >= 20


def test_a_checkpoint_that_does_not_fit_is_refused_before_writing(project, small_disk):
    models = small_disk("models", "2m")
    res = project.run("--model", "mlp", "--width", "1024", "--max-steps", "3", "--progress", "plain",
                      "--models-dir", str(models))
    one_line(res, 1, "not enough space for a checkpoint")
    written = [p for p in models.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert written == [], "a partial checkpoint was written"
    res = project.ok(*(FAST + ["--max-steps", "3", "--keep-last", "100", "--models-dir", str(models)]))
    assert "keeps 100 checkpoints" in res.stderr and "lower --keep-last" in res.stderr, res.stderr[-2000:]


def test_the_first_save_says_whether_it_fits_the_stop_grace_period(project):
    res = project.ok(*(FAST + ["--max-steps", "3"]))
    assert "takes" in res.stderr and "a stop fits in its 10 s grace period" in res.stderr
    res = project.ok(*(FAST + ["--max-steps", "3", "--run-name", "tight", "--stop-grace", "0.000001"]))
    assert "WARNING: a checkpoint" in res.stderr and "Raise the grace period" in res.stderr


def test_verify_resume_passes_on_exact_code_and_names_hidden_randomness(project):
    res = project.ok("--model", "mlp", "--verify-resume", "12", "--progress", "plain")
    assert "verify-resume: PASS" in res.stderr, res.stderr[-2000:]
    (project.root / "src" / "data" / "noisy.py").write_text(
        "import numpy as np\nimport torch\nfrom . import register\nfrom .digits import build as digits\n\n\n"
        "class Noisy(object):\n"
        "    batched = True\n\n"
        "    def __init__(self, inner):\n"
        "        self.inner, self.rng = inner, np.random.default_rng()  # its own, unseeded generator\n\n"
        "    def __len__(self):\n        return len(self.inner)\n\n"
        "    def __getitem__(self, index):\n"
        "        x, y = self.inner[index]\n"
        "        return x + torch.from_numpy(self.rng.normal(size=x.shape).astype('float32')), y\n\n\n"
        "@register('noisy')\ndef build(cfg):\n"
        "    s = digits(cfg)\n    return s._replace(train=Noisy(s.train))\n")
    res = project.run("--model", "mlp", "--dataset", "noisy", "--verify-resume", "12", "--progress", "plain")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "verify-resume: FAIL" in res.stderr and "model.1.weight" in res.stderr
    assert "two uninterrupted runs differ too" in res.stderr


RACE = """
import os, sys, time
import train
from src.app import run

real = run.build_all


def paused(*args, **kw):  # after the checks that need no lock, before the lock: where the other run slipped in
    open("b-checked", "w").close()
    while not os.path.exists("b-go"):
        time.sleep(0.01)
    return real(*args, **kw)


run.build_all = paused
train.leave(train.main(sys.argv[1:]))
"""


def test_a_run_that_ends_while_another_starts_keeps_its_history(project):
    """Run B (same --run-name, other --models-dir) passes the first history check before run A writes anything;
    A trains to the end; then B locks the run folder: it checks again there, and refuses."""
    b = subprocess.Popen([sys.executable, "-c", RACE] + FAST + ["--max-steps", "5", "--models-dir", "models-b"],
                         cwd=str(project.root), env=project.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    while not (project.root / "b-checked").exists():
        assert b.poll() is None, b.communicate()[0]
        time.sleep(0.01)
    project.ok(*(FAST + ["--max-steps", "12"]))  # run A, start to end
    run_dir = project.run_dir("digits-mlp")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != "run.lock"}
    (project.root / "b-go").touch()
    out, _ = b.communicate(timeout=300)
    assert b.returncode == 2 and "already holds the TensorBoard history" in out, out
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != "run.lock"} == before
    assert not (project.root / "models-b" / "latest" / "digits-mlp.pt").exists()


def test_a_run_killed_during_its_final_test_runs_the_test_on_resume(project):
    args = FAST + ["--max-steps", "20"]
    project.ok(*args)
    metrics = project.run_dir("digits-mlp") / "metrics.json"
    want = json.loads(metrics.read_text())
    # what a kill -9 during the final test leaves: latest saved as finished, best there, no metrics.json
    metrics.unlink()
    res = project.ok(*(args + ["--resume"]))
    assert "its test did not complete" in res.stderr and "test of the best checkpoint" in res.stderr, res.stderr
    assert json.loads(metrics.read_text()) == want
    res = project.ok(*(args + ["--resume"]))
    assert "already finished" in res.stderr
    # a real kill -9 as the test starts: whatever it caught, --resume ends with the same results
    proc = project.start(*(FAST + ["--max-steps", "20", "--run-name", "k"]))
    wait_for_line(proc, lambda line: "(end of training)" in line)
    proc.kill()
    proc.wait()
    project.ok(*(FAST + ["--max-steps", "20", "--run-name", "k", "--resume"]))
    got = json.loads((project.run_dir("k") / "metrics.json").read_text())
    assert got["test"] == want["test"] and got["step"] == 20


def test_verify_resume_refuses_a_stop_past_the_end_of_the_run_and_leaves_no_folder(project, tmp_path):
    env = dict(project.env, TMPDIR=str(tmp_path))
    res = project.run("--model", "mlp", "--epochs", "1", "--batch-size", "128", "--verify-resume", "40", "--progress",
                      "plain", env=env)  # 12 steps an epoch
    one_line(res, 2, "end the run at step 12, before the stop after step 20")
    assert "verify-resume: PASS" not in res.stderr
    assert list(tmp_path.glob("verify-resume-*")) == []
    res = project.run("--model", "mlp", "--dataset", "nope-not-a-dataset", "--verify-resume", "4", env=env)
    assert res.returncode == 2
    # a failing sub-run (its model raises at the first step) cleans up too
    (project.root / "src" / "models" / "broken.py").write_text(
        "import torch.nn as nn\nfrom . import register\n\n\nclass Broken(nn.Linear):\n"
        "    def forward(self, x):\n        raise RuntimeError('broken model')\n\n\n"
        "@register('broken')\ndef build(input_shape, num_classes, cfg):\n    return Broken(64, num_classes)\n")
    res = project.run("--model", "broken", "--verify-resume", "4", "--progress", "plain", env=env)
    assert res.returncode != 0
    assert list(tmp_path.glob("verify-resume-*")) == []
