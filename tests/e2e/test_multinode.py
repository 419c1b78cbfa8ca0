"""Two nodes for real: two containers of the project's image on a Docker network this test creates (internal: no
route out) and removes, `torchrun --nnodes 2` with a c10d rendezvous, models/ and logs/ on one shared folder
(rank 0 writes). A run is stopped (SIGTERM to both nodes), resumed on two nodes, stopped again, and finished on
one node with another process count; a node killed with SIGKILL makes the other exit at once with one line.

The model is the MLP with a sleep in its training forward pass (a plugin file mounted into the image's src/),
so that the run lives long enough to be stopped at chosen steps; the sleep changes no number.
"""
import os
import re
import subprocess
import time

import pytest
import torch

from checkout import fresh_checkout, skip_without_docker
from conftest import FAST, PACED_MODEL, load, same_weights, scalars, summary_steps

skip_without_docker()

ARGS = FAST + ["--model", "paced", "--epochs", "4", "--log-every", "5", "--ckpt-every", "10",
               "--models-dir", "/shared/models", "--logs-dir", "/shared/logs"]  # 180 steps
TAGS = ("train/loss", "train/acc", "train/lr", "val/loss", "val/acc")


class Cluster(object):
    def __init__(self, checkout, image, network, shared, plugin):
        self.checkout, self.image, self.network, self.shared, self.plugin = checkout, image, network, shared, plugin
        self.names = []

    def docker(self, *args, check=True, timeout=600):
        res = subprocess.run(["docker"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=timeout)
        assert not check or res.returncode == 0, "docker %s: %s" % (" ".join(args), res.stdout[-3000:])
        return res

    def start(self, node, command, pace="0.05"):
        """A container of the project's image on the test's network, reachable there as `node`, running command
        (tini -g first: a stop reaches every process)."""
        name = "%s-%s" % (self.network, node)
        self.docker("rm", "-f", name, check=False)
        self.docker("run", "-d", "--name", name, "--network", self.network, "--network-alias", node,
                    "--hostname", node, "--user", "%d:%d" % (os.getuid(), os.getgid()),
                    "-e", "PYTHONUNBUFFERED=1", "-e", "PACE=%s" % pace, "-v", "%s:/shared" % self.shared,
                    "-v", "%s:/app/src/models/paced.py:ro" % self.plugin, self.image, *command)
        self.names.append(name)
        return name

    def torchrun(self, node, run, extra=()):
        return self.start(node, ["python", "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                                 "--rdzv_backend", "c10d", "--rdzv_endpoint", "node0:29400", "--rdzv_id", run,
                                 "train.py"] + ARGS + ["--run-name", run, "--resume", "auto"] + list(extra))

    def logs(self, name):
        return self.docker("logs", name, check=False).stdout

    def wait_exit(self, name, timeout=300):
        return int(self.docker("wait", name, timeout=timeout).stdout.strip())

    def wait_for_step(self, run, at_least, names, timeout=300):
        """Until rank 0's train.log shows a step >= at_least (the containers still running)."""
        log = self.shared / "logs" / run / "train.log"
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = log.read_text() if log.exists() else ""
            steps = [int(m) for m in re.findall(r"(?m) INFO step (\d+)/", text)]
            if steps and max(steps) >= at_least:
                return max(steps)
            for name in names:
                state = self.docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
                assert state == "true", "%s ended early:\n%s" % (name, self.logs(name)[-3000:])
            time.sleep(0.2)
        raise AssertionError("step %d never came:\n%s" % (at_least, "\n".join(self.logs(n)[-2000:] for n in names)))

    def latest(self, run):
        return self.shared / "models" / "latest" / (run + ".pt")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    co = fresh_checkout(tmp_path_factory, "tplmn")
    co.sh("./setup.sh")
    network = "tplmn%d" % os.getpid()
    shared = tmp_path_factory.mktemp("shared")
    plugin = shared / "paced.py"
    plugin.write_text(PACED_MODEL)
    subprocess.run(["docker", "network", "rm", network], capture_output=True)
    subprocess.run(["docker", "network", "create", "--internal", network], check=True, capture_output=True)
    c = Cluster(co, co.project + "-trainer", network, shared, plugin)
    yield c
    for name in c.names:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(["docker", "network", "rm", network], capture_output=True)
    subprocess.run(["./purge.sh", "--yes", "--all"], cwd=str(co.root), capture_output=True)


def _stop_both(cluster, run, at_least):
    nodes = [cluster.torchrun("node0", run), cluster.torchrun("node1", run)]
    cluster.wait_for_step(run, at_least, nodes)
    cluster.docker("kill", "-s", "TERM", *nodes)
    for name in nodes:
        cluster.wait_exit(name)
    text = "".join(cluster.logs(name) for name in nodes)
    assert "SIGTERM received" in text and "stopped at step" in text, text[-3000:]
    return load(cluster.latest(run))["progress"]["step"]


def test_two_nodes_stop_resume_on_two_then_on_one_node_and_end_like_an_uninterrupted_run(cluster):
    base = cluster.start("base", ["python", "-m", "src.launch", "2"] + ARGS + ["--run-name", "base"], pace="0")
    assert cluster.wait_exit(base) == 0, cluster.logs(base)[-3000:]
    first = _stop_both(cluster, "mn", 30)
    second = _stop_both(cluster, "mn", first + 30)
    assert 30 <= first < second < 180
    log = (cluster.shared / "logs" / "mn" / "train.log").read_text()
    assert "x 2 processes" in log and "resuming from /shared/models/latest/mn.pt at step %d" % first in log
    one = cluster.start("one", ["python", "train.py"] + ARGS + ["--run-name", "mn", "--resume", "auto"])
    assert cluster.wait_exit(one) == 0, cluster.logs(one)[-3000:]
    assert "resuming from /shared/models/latest/mn.pt at step %d" % second in cluster.logs(one)
    got, want = load(cluster.latest("mn")), load(cluster.latest("base"))
    assert got["progress"]["step"] == 180
    # two nodes x 1 process = 2 processes on one node, to the bit; then 1 process: the same within float rounding
    run, ref = scalars(cluster.shared / "logs" / "mn"), scalars(cluster.shared / "logs" / "base")
    for tag in TAGS:
        assert [x for x in run[tag] if x[0] <= second] == [x for x in ref[tag] if x[0] <= second], tag
        assert len(run[tag]) == len(ref[tag]) and all(abs(a[1] - b[1]) <= 1e-3 * max(1.0, abs(b[1]))
                                                      for a, b in zip(run[tag], ref[tag])), tag
        steps = summary_steps(cluster.shared / "logs" / "mn", tag)
        assert steps == sorted(set(steps)), tag
    assert not same_weights(got["model"], {})
    for key in want["model"]:
        assert torch.allclose(got["model"][key], want["model"][key], rtol=1e-3, atol=1e-4), key


def test_a_node_killed_makes_the_other_exit_at_once_with_one_line_and_the_run_continues(cluster):
    nodes = [cluster.torchrun("node0", "lost"), cluster.torchrun("node1", "lost")]
    cluster.wait_for_step("lost", 25, nodes)
    killed = time.time()
    cluster.docker("kill", "-s", "KILL", nodes[1])
    cluster.wait_exit(nodes[0], timeout=120)
    seconds = time.time() - killed
    print("node lost -> the other node's trainer exited: %.1f s" % seconds)
    text = cluster.logs(nodes[0])
    lines = [line for line in text.splitlines() if "another process of this run is gone" in line]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), text[-3000:]
    assert "--resume auto" in lines[0] and "The last checkpoint (step " in lines[0], lines[0]
    assert seconds < 60, seconds
    kept = load(cluster.latest("lost"))["progress"]["step"]
    one = cluster.start("again", ["python", "train.py"] + ARGS + ["--run-name", "lost", "--resume", "auto"])
    assert cluster.wait_exit(one) == 0, cluster.logs(one)[-3000:]
    assert "resuming from /shared/models/latest/lost.pt at step %d" % kept in cluster.logs(one)
    assert load(cluster.latest("lost"))["progress"]["step"] == 180
