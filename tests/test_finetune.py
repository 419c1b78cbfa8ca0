"""Fine-tuning from other weights: --init-from says what it loaded, --init-partial loads what fits and starts a new
head fresh, --freeze keeps parameters fixed until --unfreeze-at, --lr-groups trains groups at their own learning
rate; all recorded in the checkpoint and resumed exactly."""
import signal

import pytest
import torch

from conftest import FAST, Project, load, scalars, stop_at

# digits' MLP has 64 inputs; 1x8x8 synthetic images with 3 classes fit its body but not its 10-way head (7.*)
TUNE = FAST + ["--dataset", "synthetic", "--synthetic-shape", "1,8,8", "--synthetic-classes", "3",
               "--synthetic-size", "600", "--dropout", "0.1", "--log-every", "2", "--ckpt-every", "5"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A project with a trained digits MLP, models/best/digits-mlp.pt."""
    project = Project(tmp_path_factory.mktemp("finetune"))
    project.ok(*(FAST + ["--max-steps", "20"]))
    return project


def test_init_from_another_head_is_refused_with_the_partial_flag_named(source):
    res = source.run(*(TUNE + ["--init-from", "models/best/digits-mlp.pt", "--max-steps", "2", "--run-name", "x"]))
    assert res.returncode == 2 and "7.weight is [10, 64], the model wants [3, 64]" in res.stderr
    assert res.stderr.strip().endswith("add --init-partial to load only the tensors that fit (the rest starts fresh)")


def test_partial_init_loads_the_body_starts_the_head_fresh_and_freezes_until_asked(source):
    weights = load(source.best("digits-mlp"))["model"]
    args = TUNE + ["--init-from", "models/best/digits-mlp.pt", "--init-partial", "--freeze", "1.*,4.*",
                   "--unfreeze-at", "12", "--lr-groups", "7.*=10", "--max-steps", "24", "--run-name", "tuned"]
    frozen = source.ok(*(args[:-4] + ["--max-steps", "10", "--run-name", "early"]))
    assert "loaded 4 of the model's 6 tensors; fresh: 7.weight ([10, 64] in the checkpoint, the model's [3, 64]), " \
        "7.bias ([10] in the checkpoint, the model's [3])" in frozen.stderr
    early = load(source.latest("early"))
    for name in ("1.weight", "1.bias", "4.weight", "4.bias"):  # frozen: still the source's, bit for bit
        assert torch.equal(early["model"][name], weights[name]), name
    assert not torch.equal(early["model"]["7.bias"][:3], weights["7.bias"][:3])
    assert early["init"]["fresh"][0].startswith("7.weight") and early["init"]["partial"] is True
    assert early["config"]["freeze"] == "1.*,4.*" and early["config"]["lr_groups"] == "7.*=10"
    groups = early["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])

    res = source.ok(*args)
    assert "from step 12 on the --freeze parameters train too (--unfreeze-at 12)" in res.stderr
    late = load(source.latest("tuned"))
    assert not torch.equal(late["model"]["1.weight"], weights["1.weight"])  # trained after step 12
    assert late["init"]["path"] == "models/best/digits-mlp.pt"


@pytest.mark.parametrize("sig,prefix,at", [
    (signal.SIGTERM, "step ", 6),                    # frozen when stopped
    (signal.SIGKILL, "saved checkpoint step ", 15),  # killed after the unfreeze
])
def test_a_fine_tuning_run_with_frozen_layers_resumes_exactly(source, tmp_path, sig, prefix, at):
    args = TUNE + ["--init-from", str(source.best("digits-mlp")), "--init-partial", "--freeze", "1.*",
                   "--unfreeze-at", "10", "--lr-groups", "7.*=3", "--max-steps", "24", "--run-name", "exact"]
    (tmp_path / "whole").mkdir()
    (tmp_path / "split").mkdir()
    whole, split = Project(tmp_path / "whole"), Project(tmp_path / "split")
    whole.ok(*args)
    code, _, _ = stop_at(split.start(*args), sig, prefix, at)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    res = split.ok("--resume", "--run-name", "exact")
    assert "resuming from" in res.stderr
    want, got = load(whole.latest("exact")), load(split.latest("exact"))
    assert got["progress"]["step"] == 24 and got["init"] == want["init"]
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    assert scalars(split.run_dir("exact"))["train/loss"] == scalars(whole.run_dir("exact"))["train/loss"]
