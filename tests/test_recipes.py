"""Training recipes: augmentation, gradient accumulation, early stopping, EMA of the weights and label smoothing,
all on at once, stay exactly resumable (SIGTERM and kill -9 at several points, 1 and 2 processes); accumulation
gives the gradient of the whole batch; augmentation is a pure function of (seed, epoch, sample); the paper
recipe's config is valid and its schedule is the paper's."""
import signal

import pytest
import torch

from conftest import FAST, Project, assert_same_scalars, load, same_weights, scalars, step_of, stop_at, wait_for_line

# 6 epochs of 45 steps; early stopping ends the run after three evaluations without a gain of 0.5 % (step 108 on
# torch 2.13; float rounding differs between torch versions, so the tests read the step from the baseline).
RECIPE = ["--augment", "crop:1,flip", "--accum-steps", "2", "--early-stop", "3", "--early-stop-delta", "0.005",
          "--ema", "0.9", "--label-smoothing", "0.1"]
ARGS = FAST + RECIPE + ["--epochs", "6", "--dropout", "0.1", "--log-every", "4", "--eval-every", "9",
                        "--ckpt-every", "10", "--run-name", "recipes"]
COMPARED = ("train/loss", "train/acc", "train/lr", "train/grad_norm", "val/loss", "val/acc", "val_raw/loss",
            "val_raw/acc")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    project = Project(tmp_path_factory.mktemp("recipes"))
    res = project.ok(*ARGS)
    state = load(project.latest("recipes"))
    at = state["progress"]["step"]
    assert 100 < at < 270, "the stop points below need an early stop between steps 100 and 270, not at %d" % at
    assert "early stop at step %d: val/acc has not improved by more than 0.005 in 3 evaluations" % at in res.stderr
    assert "done (stopped early): %d steps" % at in res.stderr
    return project, state, scalars(project.run_dir("recipes"), ("train/", "val"))


def assert_same_as_baseline(project, baseline):
    _, want, want_scalars = baseline
    got = load(project.latest("recipes"))
    assert got["progress"] == want["progress"]
    assert got["progress"]["stale_evals"] == 3
    assert same_weights(got["model"], want["model"]), "weights differ from the uninterrupted run"
    assert same_weights(got["ema"]["weights"], want["ema"]["weights"]), "EMA weights differ"
    assert got["ema"]["updates"] == want["ema"]["updates"] == want["progress"]["step"]
    assert same_weights(load(project.best("recipes"))["ema"]["weights"],
                        load(baseline[0].best("recipes"))["ema"]["weights"])
    assert_same_scalars(project.run_dir("recipes"), want_scalars, COMPARED, ("train/", "val"))


@pytest.mark.parametrize("sig,prefix,at", [
    (signal.SIGTERM, "step ", 8),                      # early, mid-epoch
    (signal.SIGTERM, "step ", 92),                     # while early stopping counts (one stale evaluation)
    (signal.SIGKILL, "saved checkpoint step ", 50),    # kill -9 right after a checkpoint, second epoch
    (signal.SIGKILL, "saved checkpoint step ", 100),   # kill -9 with two stale evaluations counted
])
def test_all_recipes_on_stop_anywhere_then_resume_is_bit_identical(project, baseline, sig, prefix, at):
    code, out, _ = stop_at(project.start(*ARGS), sig, prefix, at)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0), out[-2000:]
    stopped = load(project.latest("recipes"))["progress"]
    assert 0 < stopped["step"] < baseline[1]["progress"]["step"]
    res = project.ok("--resume", "--run-name", "recipes")
    assert "at step %d" % stopped["step"] in res.stderr
    assert "early stop at step %d" % baseline[1]["progress"]["step"] in res.stderr
    assert_same_as_baseline(project, baseline)


def test_an_early_stopped_run_counts_as_finished_and_a_larger_patience_trains_on(baseline):
    project, at = baseline[0], baseline[1]["progress"]["step"]
    res = project.ok("--resume", "--run-name", "recipes")
    assert "already finished: it stopped early at step %d" % at in res.stderr
    assert "resume with a larger --early-stop" in res.stderr
    assert load(project.latest("recipes"))["progress"]["step"] == at
    metrics = (project.run_dir("recipes") / "metrics.json").read_text()
    res = project.ok("--resume", "--run-name", "recipes", "--early-stop", "0", "--max-steps", str(at + 12))
    assert "config change on resume: early_stop 3 -> 0" in res.stderr
    state = load(project.latest("recipes"))
    assert state["progress"]["step"] == at + 12 and state["ema"]["updates"] == at + 12
    assert (project.run_dir("recipes") / "metrics.json").read_text() != metrics  # tested again at the new end


def test_ema_weights_are_what_is_evaluated_best_and_tested(baseline):
    project, state, values = baseline
    best = load(project.best("recipes"))
    assert not same_weights(best["ema"]["weights"], best["model"])
    # val/* is the average, val_raw/* the raw weights: logged at the same steps, with other values
    assert [s for s, _ in values["val/acc"]] == [s for s, _ in values["val_raw/loss"]]
    assert [v for _, v in values["val/loss"]] != [v for _, v in values["val_raw/loss"]]
    # the decay warms up: after n updates it is min(0.9, (1 + n) / (10 + n))
    from src.loop.ema import EMA
    assert EMA(torch.nn.Linear(1, 1), 0.9).decay_at(1) == pytest.approx(2 / 11.0)
    import sys
    sys.path.insert(0, str(project.root))
    from src.models import from_checkpoint
    model = from_checkpoint(project.best("recipes")).model  # inside the input scaling it applies to raw inputs
    for key, value in model.state_dict().items():
        assert torch.equal(value, best["ema"]["weights"][key]), key
    res = project.ok("--evaluate", "--run-name", "recipes", "--split", "test")
    import json
    assert json.loads(res.stdout)["test"] == json.loads((project.run_dir("recipes") / "metrics.json").read_text())[
        "test"], "--evaluate must test the same (EMA) weights the run tested"


def test_ema_is_an_average_of_the_weights_after_each_step():
    from src.loop.ema import EMA
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, 0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 3))  # BatchNorm statistics move; num_batches_tracked counts
    ema.update()
    d = ema.decay_at(1)
    now = model.state_dict()
    for key, value in ema.module.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, d * start[key] + (1 - d) * now[key]), key
        else:
            assert torch.equal(value, now[key]), key


def test_accumulation_gives_the_same_loss_curve_as_the_whole_batch(project):
    """No BatchNorm in the MLP: 4 micro-batches of 64 sum to the gradient of the batch of 256."""
    args = FAST + ["--batch-size", "256", "--epochs", "3", "--log-every", "1", "--dropout", "0"]
    project.ok(*(args + ["--run-name", "whole"]))
    res = project.ok(*(args + ["--run-name", "accum", "--accum-steps", "4"]))
    assert "4 micro-batches of ~64 per step (global batch 256)" in res.stderr
    whole, accum = scalars(project.run_dir("whole")), scalars(project.run_dir("accum"))
    assert len(whole["train/loss"]) == 18  # 6 optimizer steps an epoch, in both
    for tag in ("train/loss", "train/acc", "train/lr", "train/grad_norm", "val/loss", "val/acc"):
        assert [s for s, _ in accum[tag]] == [s for s, _ in whole[tag]], tag
        for (step, a), (_, b) in zip(whole[tag], accum[tag]):
            assert b == pytest.approx(a, rel=1e-5, abs=1e-7), "%s at step %d: %r vs %r" % (tag, step, a, b)
    a, b = load(project.latest("whole")), load(project.latest("accum"))
    assert a["progress"] == b["progress"] and a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 18
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-6), key


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_all_recipes_under_two_processes_resume_bit_identically(tmp_path_factory):
    """The run on 2 processes (micro-batches under no_sync, each rank's EMA buffers in the checkpoint) is stopped
    by SIGTERM and by kill -9 and resumed on 2 processes: bit-identical to its uninterrupted run."""
    import os
    whole = Project(tmp_path_factory.mktemp("ddp-whole"))
    res = whole.launch(2, *ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "early stop at step" in res.stderr
    want = load(whole.latest("recipes"))
    assert len(want["ema"]["buffers_ranks"]) == 2
    for sig, prefix, at in ((signal.SIGTERM, "step ", 30), (signal.SIGKILL, "saved checkpoint step ", 60)):
        project = Project(tmp_path_factory.mktemp("ddp-stopped"))
        proc = project.start_launch(2, *ARGS)
        wait_for_line(proc, lambda line, prefix=prefix, at=at: (step_of(line, prefix) or -1) >= at)
        if sig == signal.SIGKILL:  # the machine dies: the launcher and every worker (torchrun's own sessions)
            for pid in [proc.pid] + descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, sig)  # what docker stop and Ctrl-C reach: the launcher passes it on
        proc.communicate(timeout=60)
        stopped = load(project.latest("recipes"))["progress"]["step"]
        assert 0 < stopped < want["progress"]["step"]
        res = project.launch(2, *(ARGS + ["--resume"]))
        assert res.returncode == 0, res.stderr[-3000:]
        got = load(project.latest("recipes"))
        assert got["progress"] == want["progress"], sig
        assert same_weights(got["model"], want["model"]), "resumed 2-process run differs (%s)" % sig
        assert same_weights(got["ema"]["weights"], want["ema"]["weights"]), sig
        assert scalars(project.run_dir("recipes"), ("train/", "val")) == scalars(whole.run_dir("recipes"),
                                                                                  ("train/", "val")), sig


def descendants(pid):
    """Every process below pid (from /proc)."""
    import os
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        parent_pid = todo.pop()
        children = [p for p, parent in parents.items() if parent == parent_pid]
        found += children
        todo += children
    return found


# ----- augmentation ------------------------------------------------------------------------------------------------
def test_augmentation_is_a_pure_function_of_seed_epoch_and_sample():
    from src.augment import Augment
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 16, 16), torch.randint(0, 4, (40, 16, 16))  # images and per-pixel masks
    index = torch.arange(1000, 1040)
    aug = Augment("crop:3,flip,cutout:4", 7)
    whole_x, whole_y = aug(x, y, index, epoch=2)
    # the same samples in another order, in other batches (processes, micro-batches): the same result each
    order = torch.randperm(40)
    parts = [aug(x[p], y[p], index[p], epoch=2) for p in order.chunk(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_x[order])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole_y[order])
    again = Augment("crop:3,flip,cutout:4", 7)(x, y, index, epoch=2)
    assert torch.equal(again[0], whole_x)
    # another epoch or seed: other crops; masks move with their images
    assert not torch.equal(aug(x, y, index, epoch=3)[0], whole_x)
    assert not torch.equal(Augment("crop:3,flip,cutout:4", 8)(x, y, index, epoch=2)[0], whole_x)
    shifted = Augment("crop:3,flip", 7)
    img = torch.arange(16.0).view(1, 1, 1, 16).expand(40, 3, 16, 16).contiguous()
    out_x, out_y = shifted(img, img[:, 0].long(), index, epoch=0)
    assert torch.equal(out_x[:, 0].long(), out_y)
    assert (out_x != img).flatten(1).any(1).float().mean() > 0.5  # most samples moved


def test_random_numbers_are_uniform_and_device_independent():
    from src.augment import SampleRandom, hash32
    assert hash32(12345) == int(hash32(torch.tensor([12345]))[0])  # the same bits for Python ints and tensors
    rng = SampleRandom(0, 0, torch.arange(200000))
    u, k = rng.uniform(), rng.below(9)
    assert abs(float(u.mean()) - 0.5) < 0.005 and float(u.min()) >= 0 and float(u.max()) < 1
    counts = torch.bincount(k, minlength=9).double()
    assert int(k.min()) == 0 and int(k.max()) == 8 and float((counts / counts.mean() - 1).abs().max()) < 0.03
    if torch.cuda.is_available():
        on_gpu = SampleRandom(0, 0, torch.arange(200000, device="cuda"))
        assert torch.equal(on_gpu.uniform().cpu(), u)


def test_augmentation_is_the_same_with_loader_workers_and_across_processes(project, baseline):
    """Batches read by 2 DataLoader workers: bit-identical to the in-process reader. On 2 processes the samples of
    a batch are split across ranks: each is augmented as on 1 (only the gradient sums' rounding differs)."""
    project.ok(*(ARGS + ["--num-workers", "2"]))
    assert same_weights(load(project.latest("recipes"))["model"], baseline[1]["model"])
    if not torch.distributed.is_available():
        return
    args = ARGS + ["--dropout", "0", "--max-steps", "40"]  # dropout masks are per process
    project.ok(*(args + ["--run-name", "one"]))
    res = project.launch(2, *(args + ["--run-name", "two"]))
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = scalars(project.run_dir("one")), scalars(project.run_dir("two"))
    assert len(one["train/loss"]) == 10
    for (step, a), (_, b) in zip(one["train/loss"], two["train/loss"]):
        assert b == pytest.approx(a, rel=1e-4), "train/loss at step %d: %r vs %r" % (step, a, b)


def test_a_users_augmentation_is_one_registered_function_used_on_training_batches_only(project):
    (project.root / "src" / "augment" / "invert.py").write_text(
        "from . import register\n\n\n"
        "@register('invert')\n"
        "def invert(x, y, rng, p=0.5):\n"
        "    with open('calls.txt', 'a') as f:\n"
        "        f.write('%d\\n' % len(x))\n"
        "    flip = (rng.uniform() < p).view(-1, 1, 1, 1).to(x.dtype)\n"
        "    return x * (1 - 2 * flip), y\n")
    res = project.ok(*(FAST + ["--augment", "invert:0.3", "--max-steps", "50", "--eval-every", "20"]))
    assert "recipe: augment invert:0.3 (training batches only)" in res.stderr
    calls = [int(n) for n in (project.root / "calls.txt").read_text().split()]
    # once at the start on one sample of zeros (the argument check), then once per step with the step's samples
    # (1416 training samples: 44 batches of 32 and one of 8 an epoch): never on val or test
    assert calls == [1] + [32] * 44 + [8] + [32] * 5
    res = project.run(*(FAST + ["--augment", "spin", "--max-steps", "5", "--run-name", "x"]))
    assert res.returncode == 2 and "unknown augmentation 'spin' (known: crop, cutout, flip, invert" in res.stderr


def test_dataset_defaults_for_augment_auto():
    from src import data
    assert data.defaults("cifar10")["augment"] == "crop:4,flip"
    assert data.defaults("mnist")["augment"] == "crop:2"
    assert data.defaults("digits")["augment"] == "none"
    from src.app.flags import parse
    cfg, _ = parse(["--dataset", "cifar10"])
    assert str(cfg.augment) == "crop:4,flip"
    cfg, _ = parse(["--dataset", "cifar10", "--augment", "none"])
    assert str(cfg.augment) == "none" and not cfg.augment


# ----- label smoothing and the paper's recipe ----------------------------------------------------------------------
def test_label_smoothing_matches_torch_and_the_torch_1_7_formula():
    import torch.nn.functional as F
    from src.runtime import compat
    torch.manual_seed(0)
    logits, target = torch.randn(64, 10), torch.randint(0, 10, (64,))
    by_hand = compat.smoothed_cross_entropy(logits, target, 0.1)
    assert compat.cross_entropy(logits, target, 0.0) == F.cross_entropy(logits, target)
    assert float(by_hand) > float(F.cross_entropy(logits, target)) - 1  # a real number, not a stub
    if "label_smoothing" in F.cross_entropy.__code__.co_varnames:
        assert torch.allclose(by_hand, F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)
    # by definition: cross-entropy against (1 - eps) one-hot + eps / K
    soft = torch.full((64, 10), 0.01).scatter_(1, target.view(-1, 1), 0.91)
    assert torch.allclose(by_hand, -(soft * F.log_softmax(logits, 1)).sum(1).mean(), atol=1e-6)


def test_the_he2016_config_is_the_papers_recipe(project):
    from src.app import flags
    from src.loop import optim
    from src.files.paths import ROOT
    path = ROOT / "configs" / "cifar10-resnet20-he2016.yaml"
    cfg, _ = flags.parse(["--config", str(path)])
    assert (cfg.dataset, cfg.model, cfg.depth, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (
        "cifar10", "resnet", 20, 128, 0.1, 0.9, 1e-4)
    assert (cfg.max_steps, str(cfg.augment), cfg.val_split, cfg.optimizer) == (64000, "crop:4,flip", 0.1, "sgd")
    factor = optim.lr_factor(cfg, 64000)  # the lr of step k + 1 is lr * factor(k)
    assert [factor(k) for k in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    from src import models
    n = sum(p.numel() for p in models.build(cfg, (3, 32, 32), 10).parameters())
    assert 0.27e6 < n < 0.28e6, n  # the paper's 0.27M
    # every key is a valid flag for train.py itself: a few steps of it on CIFAR-shaped synthetic data
    res = project.ok("--config", str(path), "--dataset", "synthetic", "--synthetic-size", "300", "--max-steps", "4",
                     "--lr-milestones", "2,3", "--log-every", "1", "--eval-every", "2", "--run-name", "he")
    assert "recipe: augment crop:4,flip" in res.stderr
    lrs = [v for _, v in scalars(project.run_dir("he"))["train/lr"]]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_readme_augmentation_example_works_as_written(project):
    from test_training import _readme_snippet
    path = "src/augment/brightness.py"
    (project.root / path).write_text(_readme_snippet("# " + path))
    res = project.ok(*(FAST + ["--augment", "crop:1,brightness:0.3", "--max-steps", "20", "--run-name", "bright"]))
    assert "recipe: augment crop:1,brightness:0.3 (training batches only)" in res.stderr
    project.ok(*(FAST + ["--max-steps", "20", "--run-name", "plain"]))
    assert not same_weights(load(project.latest("bright"))["model"], load(project.latest("plain"))["model"])


def test_ties_on_a_saturated_metric_go_to_the_lower_val_loss(project):
    """On 9 validation samples val/acc reaches 1.0 early and stays: the best checkpoint and early stopping follow
    val/loss among the evaluations at 1.0, not the first of them; the rule is recomputed here from the logged
    values. The counter and the best loss live in the checkpoint, so a resume keeps judging the same way."""
    args = FAST + ["--val-split", "0.006", "--max-steps", "150", "--eval-every", "5", "--early-stop", "4",
                   "--run-name", "tie"]
    project.ok(*args)
    logged = scalars(project.run_dir("tie"))
    acc, loss = dict(logged["val/acc"]), dict(logged["val/loss"])
    best, ref, stale, stopped = None, None, 0, None
    for step in sorted(acc):
        if best is None or acc[step] > acc[best] or (acc[step] == acc[best] and loss[step] < loss[best]):
            best = step
        if ref is None or acc[step] > acc[ref] or (acc[step] == acc[ref] and loss[step] < loss[ref]):
            ref, stale = step, 0
        else:
            stale += 1
        if stale >= 4:
            stopped = step
            break
    first_top = min(s for s in acc if acc[s] == max(acc.values()))
    assert best > first_top, "the run never tied at its top accuracy: the test shows nothing (%s)" % acc
    saved = load(project.best("tie"))
    assert saved["progress"]["step"] == best and saved["best"]["loss"] == pytest.approx(loss[best], rel=1e-6)
    assert load(project.latest("tie"))["progress"]["step"] == (stopped or 150)
