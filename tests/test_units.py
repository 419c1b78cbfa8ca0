"""Fast in-process unit tests of the parts with no process behaviour: the flag records, the progress
dataclasses, the checkpoint manager's registry, the resume lookup and the checkpoint file format. The slow
tests (a real train.py in a subprocess) stay where signals, locks and exit codes are under test."""
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import REPO
from src.app import flags
from src.files.paths import RunPaths
from src.loop.progress import Best, LastEval, Progress, _Plain, finished, stopped_early
from src.runtime.errors import UsageError
from src.state import fileformat
from src.state.manager import CheckpointManager, Fixed, Optimizer
from src.state.resume import find_resume_state

OLD = REPO / "tests" / "fixtures" / "old-main-step4.pt"  # a real checkpoint (see tests/fixtures/README.md)


# ----- flags ----------------------------------------------------------------------------------------------------
def test_every_flag_has_one_record_and_the_parser_is_made_from_them():
    parser = flags.build_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == set(flags.BY_DEST)
    for dest, record in flags.BY_DEST.items():
        assert record.scope in ("run", "fixed", "local", "invocation"), dest
        assert record.group, dest
    cfg, user = flags.parse([])
    for dest, record in flags.BY_DEST.items():
        if record.default not in (None, "auto"):  # auto and None: the dataset's or task's own value
            assert flags.plain(cfg)[dest] == record.default, dest
    assert user == set()


@pytest.mark.parametrize("argv,message", [
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--keep-last", "0"], "--keep-last must be >= 1, got 0"),
    (["--lr", "inf"], "--lr must be a finite number within float32 range"),
    (["--verify-resume", "1"], "--verify-resume must be 2 steps or more"),
    (["--accum-steps", "65"], "--accum-steps must be in 1 .. --batch-size (64)"),
    (["--dataset", "diabetes", "--label-smoothing", "0.1"], "--label-smoothing applies to --task classification"),
    (["--monitor", "val/map:max"], "use METRIC:min or METRIC:max"),
])
def test_a_records_check_names_the_flag_and_the_value(argv, message):
    with pytest.raises(UsageError) as err:
        flags.parse(argv)
    assert message in str(err.value)


def test_a_config_file_is_coerced_by_the_records_types(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("lr: 1\nlr-milestones: [10, 20]\nscheduler: multistep\nema: 0.5\n")
    cfg, user = flags.parse(["--config", str(good)])
    assert (cfg.lr, cfg.lr_milestones, cfg.ema) == (1.0, (10, 20), 0.5) and {"lr", "ema"} <= user
    for text, message in (("lr: fast\n", "expected a number"), ("epochs: 1.5\n", "expected an integer"),
                          ("resume: latest\n", "unknown key"), ("tensorboard: 1\n", "expected true or false")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(UsageError) as err:
            flags.parse(["--config", str(bad)])
        assert message in str(err.value)


def test_values_are_parsed_once_into_real_types_and_saved_as_their_text(tmp_path):
    argv = ["--dataset", "synthetic", "--synthetic-shape", "1,8,6", "--scheduler", "multistep", "--lr-milestones",
            "5,9", "--monitor", "val/loss:min", "--augment", "crop:2,flip"]
    cfg, user = flags.parse(argv)
    assert cfg.synthetic_shape == (1, 8, 6) and cfg.lr_milestones == (5, 9)
    assert (cfg.monitor.metric, cfg.monitor.mode) == ("val/loss", "min")
    assert [name for name, _ in cfg.augment] == ["crop", "flip"] and cfg.augment[0][1] == (2,)
    text = flags.plain(cfg)
    assert (text["synthetic_shape"], text["lr_milestones"], text["monitor"], text["augment"]) == \
        ("1,8,6", "5,9", "val/loss:min", "crop:2,flip")
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in text.values())
    assert yaml.safe_load(flags.to_yaml(cfg)) == text
    again, _ = flags.merge_resumed(text, flags.parse([])[0], set())  # a checkpoint's text reads back as the same values
    assert flags.plain(again) == text and again.monitor == cfg.monitor and again.augment == cfg.augment
    auto = flags.parse(["--dataset", "cifar10"])[0]  # auto resolves to the typed value of the dataset and task
    assert auto.monitor == ("val/acc", "max") and str(auto.augment) == "crop:4,flip" and len(auto.augment) == 2


def test_the_scopes_decide_what_a_resume_inherits():
    saved = dict(flags.plain(flags.parse(["--lr", "0.2", "--dropout", "0.1"])[0]), data_dir="/elsewhere/data")
    cfg, user = flags.parse(["--epochs", "30"])
    merged, changes = flags.merge_resumed(saved, cfg, user)
    assert merged.lr == 0.2 and merged.dropout == 0.1  # run scope: from the checkpoint
    assert merged.data_dir == cfg.data_dir  # local: this invocation's
    assert merged.epochs == 30 and changes == [("epochs", 15, 30)]
    cfg, user = flags.parse(["--val-split", "0.3"])
    with pytest.raises(UsageError, match="--val-split cannot change on resume"):
        flags.merge_resumed(saved, cfg, user)
    assert "resume" not in flags.hparams(merged) and "data_dir" not in flags.hparams(merged)


# ----- progress -------------------------------------------------------------------------------------------------
def test_progress_saves_every_field_and_reads_older_checkpoints_without_the_newer_ones():
    p = Progress(epoch=2, sample_in_epoch=64, step=90, stale_evals=1, stale_ref=0.5, stale_ref_loss=0.7)
    assert Progress.of(p.state_dict()) == p
    old = Progress.of({"epoch": 1, "sample_in_epoch": 0, "step": 45, "eval_pending": False})  # format 1
    assert (old.step, old.stale_evals, old.stale_ref) == (45, 0, None)
    assert set(p.state_dict()) == {"epoch", "sample_in_epoch", "step", "eval_pending", "stale_evals", "stale_ref",
                                   "stale_ref_loss"}


def test_best_breaks_ties_by_loss_and_a_changed_monitor_starts_afresh():
    progress = Progress(stale_evals=3, stale_ref=0.9)
    best = Best.of_monitor(flags.Monitor("val/acc", "max"), on_change=progress.reset_stale)
    assert best.update(0.9, 10, loss=0.5) and not best.update(0.9, 20, loss=0.6) and best.update(0.9, 30, loss=0.4)
    assert (best.value, best.step, best.loss) == (0.9, 30, 0.4)
    assert not best.update(0.8, 40, loss=0.1)
    assert set(best.state_dict()) == {"metric", "mode", "value", "step", "loss"}
    other = Best.of_monitor(flags.Monitor("val/loss", "min"), on_change=progress.reset_stale)
    other.load_state_dict(best.state_dict())
    assert other.value is None and progress.stale_evals == 0 and progress.stale_ref is None
    same = Best.of_monitor(flags.Monitor("val/acc", "max"))
    same.load_state_dict(best.state_dict())
    assert same.state_dict() == best.state_dict()


def test_finished_and_early_stop():
    cfg = SimpleNamespace(epochs=3, max_steps=0, early_stop=2)
    assert not finished(cfg, Progress(epoch=2))
    assert finished(cfg, Progress(epoch=3)) and not finished(cfg, Progress(epoch=3, eval_pending=True))
    assert stopped_early(cfg, Progress(stale_evals=2)) and finished(cfg, Progress(stale_evals=2))
    assert finished(SimpleNamespace(epochs=9, max_steps=5, early_stop=0), Progress(step=5))
    last = LastEval()
    last.load_state_dict(None)
    assert last.state_dict() == {}


# ----- the checkpoint manager -----------------------------------------------------------------------------------
class _Counter(object):
    def __init__(self, log):
        self.n, self.log = 0, log

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.log.append(state)
        self.n = state["n"] if state else -1


def _manager(tmp_path):
    cfg = SimpleNamespace(async_ckpt=False, keep_last=2, ckpt_every=0, stop_grace=10.0, run_name="u",
                          logs_dir=str(tmp_path / "logs"), models_dir=str(tmp_path / "models"), data_dir=str(tmp_path))
    dist = SimpleNamespace(main=True, enabled=False, rank=0, world=1, barrier=lambda: None)
    return CheckpointManager(cfg, RunPaths(cfg), dist)


def test_the_manager_saves_and_restores_what_is_registered_in_order(tmp_path):
    seen = []
    manager = _manager(tmp_path)
    first, later = _Counter(seen), _Counter(seen)
    manager.register("first", first)
    manager.register("later", later, optional=True)
    manager.register("fact", Fixed({"x": 1}), optional=True)
    first.n, later.n = 3, 5
    manager.register("none", Fixed(None), optional=True)  # None is a value (git_commit outside a checkout)
    state = manager.state_dict()
    assert state == {"first": {"n": 3}, "later": {"n": 5}, "fact": {"x": 1}, "none": None}
    assert manager.required() == ["first"]
    del state["later"]  # an older checkpoint, from before the optional part
    manager.restore(dict(state, progress={"step": 7}), "here.pt")
    assert seen == [{"n": 3}, None] and later.n == -1 and manager.saved_step == 7
    with pytest.raises(UsageError, match="checkpoint there.pt lacks first"):
        manager.restore({"progress": {"step": 1}}, "there.pt")


def test_a_new_optional_part_of_any_kind_resumes_an_older_checkpoint_that_lacks_it(tmp_path):
    """register(optional=True) promises load_state_dict(None) for a part an older checkpoint lacks: every kind of
    part keeps its state as built (a dataclass part used to raise AttributeError on None)."""
    from dataclasses import dataclass

    @dataclass
    class Tracker(_Plain):  # a new piece of loop state, written like Progress
        runs: int = 3

    old = fileformat.load(OLD)
    manager = _manager(tmp_path)
    progress, best = Progress(), Best(metric="val/acc", mode="max")
    new_parts = {"tracker": Tracker(runs=5), "last_eval_new": LastEval(), "progress_new": Progress(step=2),
                 "best_new": Best(metric="val/acc", mode="max", value=0.5)}
    manager.register("progress", progress)
    manager.register("best", best)
    for name, part in new_parts.items():
        manager.register(name, part, optional=True)
    assert not set(new_parts) & set(old)
    manager.restore(old, "old-main-step4.pt")
    assert progress.step == 4 and manager.saved_step == 4
    assert new_parts["tracker"].runs == 5 and new_parts["progress_new"].step == 2
    assert (new_parts["best_new"].metric, new_parts["best_new"].value) == ("val/acc", 0.5)


def test_an_optimizer_state_that_does_not_fit_is_one_line(tmp_path):
    model = torch.nn.Linear(2, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    other = torch.optim.SGD(torch.nn.Linear(3, 3, bias=False).parameters(), lr=0.1)
    manager = _manager(tmp_path)
    manager.register("optimizer", Optimizer(sgd, "optimizer", "--optimizer sgd"))
    with pytest.raises(UsageError, match="checkpoint x.pt optimizer state does not fit --optimizer sgd"):
        manager.restore({"optimizer": other.state_dict(), "progress": {"step": 0}}, "x.pt")


# ----- resume lookup and the file format ------------------------------------------------------------------------
def _paths(tmp_path, resume):
    cfg = SimpleNamespace(run_name="old", logs_dir=str(tmp_path / "logs"), models_dir=str(tmp_path / "models"),
                          data_dir=str(tmp_path / "data"), resume=resume)
    paths = RunPaths(cfg)
    for folder in (paths.latest.parent, paths.tmp_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return cfg, paths


def test_the_resume_lookup_passes_over_a_damaged_latest_for_the_newest_valid_checkpoint(tmp_path):
    cfg, paths = _paths(tmp_path, "latest")
    with pytest.raises(UsageError, match="nothing to resume"):
        find_resume_state(cfg, paths, None)
    assert find_resume_state(SimpleNamespace(**dict(vars(cfg), resume="auto")), paths, None) == (None, None)
    shutil.copy(str(OLD), str(paths.tmp_checkpoint(4)))
    paths.latest.write_bytes(OLD.read_bytes()[:-100])  # torn
    state, source = find_resume_state(cfg, paths, None)
    assert source == paths.tmp_checkpoint(4) and state["progress"]["step"] == 4
    with pytest.raises(UsageError, match="already has checkpoints"):
        find_resume_state(SimpleNamespace(**dict(vars(cfg), resume=None)), paths, None)


def test_the_file_format_verifies_before_unpickling_and_round_trips(tmp_path):
    state = fileformat.load(OLD)
    blob = fileformat.serialize({k: v for k, v in state.items() if k != "format"})
    copy = tmp_path / "copy.pt"
    copy.write_bytes(blob)
    again = fileformat.load(copy)
    assert torch.equal(again["model"]["1.weight"], state["model"]["1.weight"])
    assert again["progress"] == state["progress"]
    broken = bytearray(blob)
    broken[len(broken) // 2] ^= 0xFF
    copy.write_bytes(bytes(broken))
    with pytest.raises(fileformat.CorruptCheckpoint):
        fileformat.load(copy)
    forged = dict(state, progress=dict(state["progress"], step=-3))
    copy.write_bytes(fileformat.serialize(forged))
    with pytest.raises(fileformat.CorruptCheckpoint, match="progress"):
        fileformat.load(copy)


def test_the_started_mark_is_the_checkouts_and_only_for_a_plain_name(tmp_path, monkeypatch):
    """run.sh (docker/lib.sh started_file) waits for logs/.started-<STARTED_MARK> of the checkout, wherever
    --logs-dir points; a mark that is not a plain name writes nothing."""
    from src.files.paths import ROOT
    cfg = SimpleNamespace(run_name="u", logs_dir=str(tmp_path / "elsewhere"), models_dir=str(tmp_path),
                          data_dir=str(tmp_path))
    monkeypatch.setenv("STARTED_MARK", "123-456")
    assert RunPaths(cfg).started_mark() == ROOT / "logs" / ".started-123-456"
    for bad in ("", "../x", "a/b", "x" * 65):
        monkeypatch.setenv("STARTED_MARK", bad)
        assert RunPaths(cfg).started_mark() is None
    lib = (ROOT / "docker" / "lib.sh").read_text()
    assert 'started_file() { echo "$LOGS/.started-$1"; }' in lib and 'LOGS="$ROOT/logs"' in lib


# ----- Slurm (runtime/slurm.py; tests/test_slurm.py runs jobs on a real cluster) ----------------------------------
def test_a_slurm_job_is_known_by_its_id_or_array_task_and_restart_count():
    from src.runtime.slurm import Job
    assert Job.detect({}) is None
    job = Job.detect({"SLURM_JOB_ID": "41", "SLURM_RESTART_COUNT": "2", "SLURM_JOB_NAME": "train"})
    assert (job.target, job.restart, job.hparams()) == ("41", 2, {"slurm_job": "41", "slurm_restart": 2})
    task = Job.detect({"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"})
    assert (task.target, task.restart) == ("40_3", 0)  # what `scontrol requeue` must name: this task only
    assert "array task 40_3" in task.describe()


def test_srun_tasks_take_their_rank_from_slurm_unless_a_launcher_set_one():
    from src.runtime.slurm import adopt_srun_ranks, first_host
    step = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4",
            "SLURM_STEP_NODELIST": "gpu[03-04]"}
    env = dict(step)
    assert adopt_srun_ranks(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("1", "4", "1", "gpu03")
    assert env["MASTER_PORT"] == str(15000 + 7)
    torchrun = dict(step, RANK="5", WORLD_SIZE="8")
    assert not adopt_srun_ranks(torchrun) and torchrun["RANK"] == "5"
    batch_step = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}  # the job script itself
    assert not adopt_srun_ranks(batch_step) and "RANK" not in batch_step
    assert [first_host(x) for x in ("n[7]", "a,b", "node[1,2]", "gpu[03-05,09],cpu1")] == ["n7", "a", "node1",
                                                                                        "gpu03"]


def test_the_first_save_under_slurm_says_whether_the_warning_lead_covers_a_step_and_a_save(caplog):
    from src.runtime.slurm import check_lead
    with caplog.at_level("INFO", logger="train"):
        check_lead(120, 0.2, 0.3)
        check_lead(10, 4.0, 3.0)
        check_lead(0, 0.2, 0.3)
    enough, short, unknown = (r.getMessage() for r in caplog.records)
    assert "0.5 s" in enough and "enough" in enough
    assert short.startswith("WARNING") and "--signal=B:USR1@60" in short and "7.0 s" in short
    assert "--slurm-lead" in unknown
