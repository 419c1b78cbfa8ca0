"""On a CUDA GPU (skipped elsewhere; `benchmarks/gpu_check.sh` runs these with the GPU benchmarks): a step between
logging steps never makes the host wait for the GPU (torch.cuda.set_sync_debug_mode("error") around it, through
train.py's hidden --sync-check), in-memory data held on the GPU resumes bit-identically and trains like data
read from host memory."""
import signal

import pytest
import torch

from conftest import Project, load, same_weights, stop_at

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = ["--device", "cuda", "--progress", "plain"]
RECIPE = ["--augment", "crop:1,flip", "--accum-steps", "2", "--ema", "0.9", "--label-smoothing", "0.1",
          "--early-stop", "50"]


@pytest.mark.parametrize("extra", [
    [],                                                                    # the default run
    ["--amp", "bf16", "--channels-last", "--grad-clip", "1"],
    RECIPE,
    ["--dataset", "synthetic", "--synthetic-size", "2560", "--model", "resnet", "--batch-size", "128", "--amp",
     "bf16", "--channels-last", "--optimizer", "adamw"],
    ["--dataset", "synthetic", "--synthetic-size", "2560", "--synthetic-shape", "3,64,64", "--model",
     "timm:resnet18", "--batch-size", "128", "--amp", "bf16", "--channels-last", "--compile"],
    ["--dataset", "synthetic", "--synthetic-size", "2560", "--synthetic-shape", "3,64,64", "--model",
     "timm:vit_tiny_patch16_224", "--batch-size", "128", "--amp", "bf16", "--compile"],
], ids=["default", "bf16-clip", "recipes", "resnet-adamw", "timm-resnet-compiled", "timm-vit-compiled"])
def test_steps_between_logging_steps_never_wait_for_the_gpu(project, extra):
    res = project.ok(*(GPU + extra + ["--max-steps", "60", "--log-every", "20", "--sync-check", "--run-name", "sync"]))
    assert "data: cuda" in res.stderr, "the in-memory dataset was not held on the GPU"
    assert load(project.latest("sync"))["progress"]["step"] == 60


def whole_and_resumed(tmp_path_factory, args, run, at, whole_extra=()):
    """(stderr of the run in one go, its final checkpoint, the final checkpoint of the same run stopped by SIGTERM
    at step >= at and resumed)."""
    whole = Project(tmp_path_factory.mktemp("whole"))
    res = whole.ok(*(list(args) + list(whole_extra)))
    stopped = Project(tmp_path_factory.mktemp("stopped"))
    code, out, _ = stop_at(stopped.start(*args), signal.SIGTERM, "step ", at)
    assert code == 0, out[-2000:]
    stopped.ok("--resume", "--run-name", run)
    return res.stderr, load(whole.latest(run)), load(stopped.latest(run))


def test_data_on_the_gpu_resumes_bit_identically_and_trains_like_host_data(tmp_path_factory):
    args = GPU + RECIPE + ["--deterministic", "--epochs", "2", "--ckpt-every", "20", "--eval-every", "15",
                           "--run-name", "dev"]
    stderr, want, got = whole_and_resumed(tmp_path_factory, args, "dev", 40)
    assert "data: cuda" in stderr
    assert got["progress"] == want["progress"]
    assert same_weights(got["model"], want["model"]) and same_weights(got["ema"]["weights"], want["ema"]["weights"])
    host = Project(tmp_path_factory.mktemp("host"))
    host.ok(*(args + ["--data-on-device", "off"]))
    for key, value in load(host.latest("dev"))["model"].items():
        assert torch.allclose(value, want["model"][key], rtol=1e-3, atol=1e-5), key


def test_cuda_graphs_replay_the_step_without_host_syncs_and_resume_bit_identically(tmp_path_factory):
    args = GPU + ["--cuda-graphs", "--deterministic", "--epochs", "2", "--ckpt-every", "20", "--eval-every", "15",
                  "--accum-steps", "2", "--augment", "crop:1,flip", "--run-name", "graphs"]
    stderr, want, got = whole_and_resumed(tmp_path_factory, args, "graphs", 30, ["--sync-check"])
    assert "--cuda-graphs: training forward and backward captured" in stderr
    assert got["progress"] == want["progress"] and same_weights(got["model"], want["model"])
    eager = Project(tmp_path_factory.mktemp("eager"))
    eager.ok(*(args + ["--no-cuda-graphs"]))
    for key, value in load(eager.latest("graphs"))["model"].items():
        assert torch.allclose(value, want["model"][key], rtol=1e-3, atol=1e-5), key


def test_a_model_the_graph_cannot_hold_trains_eagerly_with_one_line(project):
    (project.root / "src" / "models" / "branchy.py").write_text(
        "import torch.nn as nn\n\nfrom . import register\n\n\n"
        "class Branchy(nn.Module):\n"
        "    def __init__(self, n, k):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(n, k)\n\n"
        "    def forward(self, x):\n"
        "        x = x.flatten(1)\n"
        "        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)  # a host sync: no graph can hold it\n\n\n"
        "@register('branchy')\n"
        "def build(input_shape, num_classes, cfg):\n"
        "    return Branchy(input_shape[0] * input_shape[1] * input_shape[2], num_classes)\n")
    res = project.ok(*(GPU + ["--model", "branchy", "--cuda-graphs", "--max-steps", "20", "--run-name", "branchy"]))
    lines = [line for line in res.stderr.splitlines() if "cannot be captured" in line]
    assert len(lines) == 1 and "training without graphs" in lines[0]
    assert load(project.latest("branchy"))["progress"]["step"] == 20
