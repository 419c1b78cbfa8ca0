"""A copy of the project (like a fresh clone) driven through its own scripts, for the end-to-end tests."""
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO


def _docker_problem():
    if not shutil.which("docker"):
        return "no docker command"
    res = subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode:
        return "docker info failed: %s" % res.stderr.strip().splitlines()[-1:]
    res = subprocess.run(["docker", "compose", "version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return None if res.returncode == 0 else "no docker compose plugin"


def skip_without_docker():
    """Skip the calling test module loudly when no engine is reachable; fail instead with REQUIRE_DOCKER=1."""
    why_not = _docker_problem()
    if why_not:
        if os.environ.get("REQUIRE_DOCKER") == "1":
            raise RuntimeError("REQUIRE_DOCKER=1 but the Docker tests cannot run: %s" % why_not)
        pytest.skip("DOCKER TESTS SKIPPED: no Docker engine reachable (%s); CI runs them with REQUIRE_DOCKER=1"
                    % why_not, allow_module_level=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_project(dest, link_wheels=True):
    """The tracked files (a fresh clone) plus docker/wheels/ (hard-linked unless link_wheels is false)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=str(REPO), stdout=subprocess.PIPE,
                           text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith("docker/wheels/") or not (REPO / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(REPO / rel), str(dest / rel))
    wheels = dest / "docker" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for whl in (REPO / "docker" / "wheels").glob("*.whl"):
        try:
            if not link_wheels:
                raise OSError("copy")
            os.link(str(whl), str(wheels / whl.name))
        except OSError:
            shutil.copy2(str(whl), str(wheels / whl.name))


class Checkout(object):
    def __init__(self, root, tb_port, user=None):
        self.root, self.tb_port, self.user = Path(root), tb_port, user
        self.project = self.root.name
        self.env = {k: v for k, v in os.environ.items() if k not in ("PROJECT", "TB_PORT", "TRAIN_ARGS")}
        self.env["TB_PORT"] = str(tb_port)
        if user:
            self.env.update(HOME=pwd.getpwnam(user).pw_dir, USER=user, LOGNAME=user)

    def sh(self, *cmd, check=True, timeout=900, env=None):
        cmd = list(cmd)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--"] + cmd
        res = subprocess.run(cmd, cwd=str(self.root), env=env or self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=timeout)
        if check:
            assert res.returncode == 0, "%s failed (%d):\n%s" % (" ".join(cmd), res.returncode, res.stdout[-4000:])
        return res

    def compose(self, *args, **kw):
        return self.sh("docker", "compose", *args, **kw)

    def container(self, service):
        out = self.compose("ps", "-a", "--format", "json", service).stdout.strip()
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")] if out else []
        if out.startswith("["):
            rows = json.loads(out)
        return rows[0] if rows else None

    def wait_exit(self, service, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            row = self.container(service)
            if row and row["State"] == "exited":
                return row["ExitCode"]
            time.sleep(1)
        logs = self.compose("logs", service).stdout
        raise AssertionError("%s did not finish in %d s:\n%s" % (service, timeout, logs))

    def wait_for_text(self, path, text, timeout=600):
        """Wait until the file at path holds text (a trainer's log line), however busy the machine."""
        deadline, seen = time.time() + timeout, ""
        while time.time() < deadline:
            seen = path.read_text() if path.exists() else ""
            if text in seen:
                return seen
            time.sleep(0.5)
        raise AssertionError("%r never appeared in %s:\n%s" % (text, path, seen[-3000:]))

    def tb(self, path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.tb_port, path), timeout=10) as resp:
            return json.loads(resp.read().decode())

    def tb_steps(self, run, tag, want_last, timeout=90):
        """Steps of a scalar as TensorBoard serves it, once it has caught up to want_last."""
        deadline, steps = time.time() + timeout, []
        while time.time() < deadline:
            try:
                steps = [int(s) for _, s, _ in self.tb("/data/plugin/scalars/scalars?run=%s&tag=%s" % (run, tag))]
            except Exception:  # not loaded yet
                steps = []
            if steps and steps[-1] >= want_last:
                return steps
            time.sleep(2)
        raise AssertionError("TensorBoard never served %s/%s up to step %d (got %s)" % (run, tag, want_last, steps))


def gone(pid):
    """Whether pid has exited (no such process, or a zombie that init has not reaped yet)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def owned_by(uid, *folders):
    bad = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(str(folder)):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if os.lstat(path).st_uid != uid:
                    bad.append(path)
    return bad


def fresh_checkout(tmp_path_factory, prefix, drop_env=()):
    """A new copy of the project in a folder named prefix<pid> (its PROJECT), with a free TensorBoard port."""
    root = tmp_path_factory.mktemp(prefix) / ("%s%d" % (prefix, os.getpid()))
    root.mkdir()
    copy_project(root)
    co = Checkout(root, free_port())
    for key in drop_env:
        co.env.pop(key, None)
    return co
