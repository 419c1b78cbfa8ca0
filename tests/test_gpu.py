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
], ids=["default", "bf16-clip", "recipes", "resnet-adamw"])
def test_steps_between_logging_steps_never_wait_for_the_gpu(project, extra):
    res = project.ok(*(GPU + extra + ["--max-steps", "60", "--log-every", "20", "--sync-check", "--run-name", "sync"]))
    assert "data: cuda" in res.stderr, "the in-memory dataset was not held on the GPU"
    assert load(project.latest("sync"))["progress"]["step"] == 60


def test_data_on_the_gpu_resumes_bit_identically_and_trains_like_host_data(tmp_path_factory):
    args = GPU + RECIPE + ["--deterministic", "--epochs", "2", "--ckpt-every", "20", "--eval-every", "15",
                           "--run-name", "dev"]
    whole = Project(tmp_path_factory.mktemp("whole"))
    res = whole.ok(*args)
    assert "data: cuda" in res.stderr
    want = load(whole.latest("dev"))
    stopped = Project(tmp_path_factory.mktemp("stopped"))
    code, out, _ = stop_at(stopped.start(*args), signal.SIGTERM, "step ", 40)
    assert code == 0, out[-2000:]
    stopped.ok("--resume", "--run-name", "dev")
    got = load(stopped.latest("dev"))
    assert got["progress"] == want["progress"]
    assert same_weights(got["model"], want["model"]) and same_weights(got["ema"]["weights"], want["ema"]["weights"])
    host = Project(tmp_path_factory.mktemp("host"))
    host.ok(*(args + ["--data-on-device", "off"]))
    for key, value in load(host.latest("dev"))["model"].items():
        assert torch.allclose(value, want["model"][key], rtol=1e-3, atol=1e-5), key
