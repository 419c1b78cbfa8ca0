"""Slurm, for real: the job script slurm/train.sbatch submitted with sbatch to the one-host cluster that
.ci/start-slurm.sh starts (Debian's Slurm 22.05), preempted by `scontrol requeue` and by the warning signal of a
short --time, released from the requeue hold with StartTime=now, and compared with an uninterrupted run: the
final weights and every logged scalar bit-identical, no TensorBoard step twice. Also an array job with one task
requeued, and two processes under srun (ranks from Slurm) and under torchrun in a job.

The model is the MLP slowed down by a sleep in its forward pass (a test plugin), so that a job lives long enough
to be preempted at chosen moments; the sleep changes no number.
"""
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import yaml

from conftest import (FAST, PACED_MODEL, REPO, assert_same_scalars, load, raw_events, same_weights, scalars, step_of,
                      summary_steps)

if shutil.which("sbatch") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
    if os.environ.get("REQUIRE_SLURM"):
        raise RuntimeError("REQUIRE_SLURM is set but no Slurm cluster answers; start one with .ci/start-slurm.sh")
    pytest.skip("no Slurm cluster here (.ci/start-slurm.sh starts one)", allow_module_level=True)

PACED = FAST + ["--model", "paced", "--log-every", "5", "--ckpt-every", "20"]
TAGS = ("train/loss", "train/acc", "train/lr", "val/loss", "val/acc")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


@pytest.fixture
def cluster(project):
    """The project with the job script and the paced model; every job it submits is cancelled at the end."""
    shutil.copytree(str(REPO / "slurm"), str(project.root / "slurm"))
    (project.root / "src" / "models" / "paced.py").write_text(PACED_MODEL)
    project.env.update(PYTHON=sys.executable, PACE="0.04")  # the job script's Python: this one
    project.jobs = []
    yield project
    for job in project.jobs:
        subprocess.run(["scancel", job], capture_output=True)


def submit(project, sbatch_args, train_args, env=None):
    res = subprocess.run(["sbatch", "--parsable"] + sbatch_args + ["slurm/train.sbatch"] + [str(a) for a in train_args],
                         cwd=str(project.root), env=dict(project.env, **(env or {})), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    project.jobs.append(job)
    return job


def job_info(job):
    """scontrol's fields of a job (or array task ID_N): {"JobState": "RUNNING", "Restarts": "1", ...}."""
    res = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S*)", res.stdout))


def wait_state(job, states, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job)
        if info.get("JobState") in states:
            return info
        time.sleep(0.1)
    raise AssertionError("job %s never reached %s: %s" % (job, states, job_info(job)))


def release(job):
    """A requeued job is held (BeginTime about two minutes on, Slurm's credential lifetime): once it is pending
    again, the processes of its last start are gone and the clock is past the second of their end (slurmd refuses
    a start that its revocation of the old credential still covers, and the job then FAILS: the hold normally
    covers that), let it start now."""
    _let_start(job, wait_state(job, ("PENDING",)))


def _let_start(job, info):
    deadline = time.time() + 120
    while subprocess.run(["pgrep", "-f", r"slurmstepd: \[%s\." % info["JobId"]], capture_output=True).returncode == 0:
        assert time.time() < deadline, "job %s: the last start's slurmstepd never ended" % info["JobId"]
        time.sleep(0.1)
    # slurmd revoked the old start's credential; a new one is valid only if made in a later second (credential
    # times are whole seconds: a start in the same second is refused, "Job credential revoked", and the job FAILS)
    tick = int(time.time()) + 1
    while time.time() < tick:
        time.sleep(0.02)
    subprocess.run(["scontrol", "update", "jobid=%s" % job, "StartTime=now"], check=True, capture_output=True)


def run_to_end(job, out, timeout=600):
    """Release the job from every requeue (its own, at the warning signal) until it ends; its final info."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job)
        state = info.get("JobState")
        if state in ENDED:
            assert state == "COMPLETED", "job %s ended %s:\n%s" % (job, state, out.read_text()[-4000:])
            return info
        if state == "PENDING" and info.get("Restarts", "0") != "0" and info.get("Reason") == "BeginTime":
            _let_start(job, info)
        time.sleep(0.2)
    raise AssertionError("job %s did not end:\n%s" % (job, out.read_text()[-4000:]))


def wait_in_file(path, predicate, job, after=0, timeout=180):
    """The index of the first line of path (from line `after` on) for which predicate is true, while job lives."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        for i in range(after, len(lines)):
            if predicate(lines[i]):
                return i
        if job_info(job).get("JobState") in ENDED:
            break
        time.sleep(0.1)
    raise AssertionError("no such line in %s:\n%s" % (path, path.read_text()[-3000:] if path.exists() else "(none)"))


def warned_once(job, out):
    """At step 10, the warning signal as `--signal=B:` sends it (to the job script's shell); the job, requeued once,
    run to its end; its output."""
    wait_in_file(out, stepped(10), job)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, capture_output=True)
    release(job)
    info = run_to_end(job, out)
    assert info["Restarts"] == "1", info
    return out.read_text()


def stepped(at_least):
    return lambda line: (step_of(line, "step ") or -1) >= at_least


def baseline(project, args, run, nproc=1):
    """The same training uninterrupted, outside Slurm, without the sleep."""
    env = dict(project.env, PACE="0")
    if nproc == 1:
        res = subprocess.run(project.cmd(list(args) + ["--run-name", run]), cwd=str(project.root), env=env,
                             capture_output=True, text=True, timeout=600)
    else:
        res = subprocess.run(project.launch_cmd(nproc, list(args) + ["--run-name", run]), cwd=str(project.root),
                             env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return load(project.latest(run))


def assert_same_run(project, run, want, base_run, steps):
    got = load(project.latest(run))
    assert got["progress"]["step"] == steps
    assert same_weights(got["model"], want["model"]), "the requeued run's weights differ from the uninterrupted run"
    assert same_weights(load(project.best(run))["model"], load(project.best(base_run))["model"])
    assert_same_scalars(project.run_dir(run), scalars(project.run_dir(base_run)), TAGS)
    test_steps = summary_steps(project.run_dir(run), "test/acc")
    assert len(test_steps) == 1, test_steps


def test_a_job_preempted_then_warned_at_its_time_limit_requeues_itself_and_ends_bit_identical(cluster):
    """Preempted once by `scontrol requeue` (SIGTERM: save, Slurm requeues), then by the warning signal of a
    one-minute --time (USR1 10 s before it, which Slurm's 30 s timer sends 10 to 40 s before it: save, train.py
    requeues its own job), as often as the run needs."""
    args = PACED + ["--epochs", "40", "--slurm-lead", "10"]  # 1800 steps of ~0.04 s: more than a job's time
    job = submit(cluster, ["--job-name", "pre", "--time=1", "--signal=B:USR1@10"], args)
    out = cluster.root / ("slurm-pre-%s.out" % job)
    wait_in_file(out, stepped(20), job)
    preempted = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    release(job)
    restart = wait_in_file(out, lambda line: line.startswith("slurm job %s: restart 1 " % job), job)
    wait_in_file(out, stepped(21), job, after=restart)
    resumed = time.time() - preempted
    info = run_to_end(job, out)
    text = out.read_text()
    print("preemption to resumed training (scontrol requeue -> first step logged again): %.1f s" % resumed)
    assert int(info["Restarts"]) >= 2, info
    assert "SIGTERM received" in text, text[-3000:]
    assert "SIGUSR1 received (Slurm's warning before the time limit)" in text, text[-3000:]
    assert "slurm: requeued job %s;" % job in text, text[-3000:]
    assert "the warning signal comes 10 s before the time limit: enough" in text, text[-3000:]
    assert text.count("run pre-%s: resuming from" % job) == int(info["Restarts"])
    want = baseline(cluster, args, "base")
    assert_same_run(cluster, "pre-%s" % job, want, "base", 1800)
    hparams = [v.metadata.plugin_data.content for e in raw_events(cluster.run_dir("pre-%s" % job))
               for v in e.summary.value if v.tag == "_hparams_/session_start_info"]
    assert hparams and b"slurm_restart" in hparams[-1] and b"slurm_job" in hparams[-1]


def test_an_array_job_with_one_task_requeued_ends_like_two_uninterrupted_runs(cluster):
    args = PACED + ["--epochs", "3"]
    array = submit(cluster, ["--job-name", "arr", "--array=0-1", "--output=slurm-arr-%A_%a.out"], args)
    out = cluster.root / ("slurm-arr-%s_1.out" % array)
    wait_in_file(out, stepped(20), "%s_1" % array)
    subprocess.run(["scontrol", "requeue", "%s_1" % array], check=True, capture_output=True)
    release("%s_1" % array)
    first = run_to_end("%s_0" % array, cluster.root / ("slurm-arr-%s_0.out" % array))
    second = run_to_end("%s_1" % array, out)
    assert (first["Restarts"], second["Restarts"]) == ("0", "1")
    for task in (0, 1):
        want = baseline(cluster, args + ["--seed", task], "seed%d" % task)
        assert_same_run(cluster, "arr-%s_%d" % (array, task), want, "seed%d" % task, 135)
    assert load(cluster.latest("arr-%s_0" % array))["config"]["seed"] == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_two_processes_in_a_job_stop_at_the_warning_signal_and_resume_bit_identical(cluster, launcher):
    """srun --ntasks 2 (each task's rank from Slurm), or one srun task running torchrun with 2 processes: the
    warning signal, as `--signal=B:` sends it (to the job script's shell), reaches every process; rank 0 saves and
    requeues; the run ends as an uninterrupted 2-process run."""
    args = PACED + ["--epochs", "3", "--batch-size", "64"]
    if launcher == "srun":
        job = submit(cluster, ["--job-name", "two", "--ntasks=2"], args)
    else:
        job = submit(cluster, ["--job-name", "two", "--ntasks=1", "--cpus-per-task=2"], args,
                     env={"NPROC_PER_NODE": "2", "RDZV_PORT": str(_free_port())})
    text = warned_once(job, cluster.root / ("slurm-two-%s.out" % job))
    assert "x 2 processes" in text and "task 0 of 2" in text, text[-3000:]
    assert "SIGUSR1 received (Slurm's warning before the time limit)" in text, text[-3000:]
    want = baseline(cluster, args, "base2", nproc=2)
    assert_same_run(cluster, "two-%s" % job, want, "base2", 69)


def test_the_readme_slurm_commands_work_as_written(cluster, tmp_path):
    """README "Slurm": its block typed as written (python: this interpreter, as an activated environment gives);
    every job ends COMPLETED with its run trained to the end."""
    from conftest import bash_block
    from test_readme import readme_block
    cluster.env.pop("PYTHON")  # the job script's default: the python on PATH
    res = bash_block(cluster, tmp_path, readme_block("### Slurm"))
    jobs = re.findall(r"Submitted batch job (\d+)", res.stdout)
    assert len(jobs) == 4, res.stdout
    cluster.jobs += jobs
    runs = ["train-%s" % jobs[0], "train-%s" % jobs[1], "train-%s" % jobs[2]] + \
        ["train-%s_%d" % (jobs[3], task) for task in range(3)]
    for job in jobs[:3] + ["%s_%d" % (jobs[3], task) for task in range(3)]:
        out = cluster.root / ("slurm-train-%s.out" % job_info(job).get("JobId", job))
        run_to_end(job, out)
    for run in runs:
        state = load(cluster.latest(run))
        assert state["progress"]["epoch"] == 3 and (cluster.run_dir(run) / "metrics.json").is_file(), run
    assert [load(cluster.latest(run))["config"]["seed"] for run in runs[3:]] == [0, 1, 2]
    assert "x 2 processes" in (cluster.run_dir(runs[1]) / "train.log").read_text()
    assert "x 2 processes" in (cluster.run_dir(runs[2]) / "train.log").read_text()


def test_where_train_py_cannot_reach_scontrol_it_exits_75_and_the_job_script_requeues(cluster, tmp_path):
    """As inside a container: train.py's PATH has no scontrol (the job script's has)."""
    shim = tmp_path / "python-without-scontrol"
    shim.write_text('#!/bin/sh\nPATH=/nonexistent exec "%s" "$@"\n' % sys.executable)
    shim.chmod(0o755)
    args = PACED + ["--epochs", "3"]
    job = submit(cluster, ["--job-name", "box"], args, env={"PYTHON": str(shim)})
    text = warned_once(job, cluster.root / ("slurm-box-%s.out" % job))
    assert "scontrol is not available here" in text and "requeued (train.py exited 75 after saving)" in text, text
    assert_same_run(cluster, "box-%s" % job, baseline(cluster, args, "base"), "base", 135)


def test_a_sweep_as_a_slurm_array_shares_its_trials_and_survives_the_warning_signal(cluster):
    """SWEEP=spec sbatch --array 0-1: two jobs take the trials of one sweep; both warned mid-trial, each saves its
    trial, requeues itself once, and continues: every trial done, results as an uninterrupted sweep's."""
    spec = {"base": {"model": "paced", "width": 64, "batch_size": 32, "deterministic": True, "epochs": 1,
                     "ckpt_every": 10, "log_every": 5}, "grid": {"lr": [0.05, 0.1]}, "seeds": [0, 1]}
    (cluster.root / "sw.yaml").write_text(yaml.safe_dump(spec))
    job = submit(cluster, ["--array", "0-1", "--job-name", "sw"], [], env={"SWEEP": "sw.yaml"})
    tasks = ["%s_%d" % (job, t) for t in range(2)]
    logs = cluster.run_dir("sw")
    deadline = time.time() + 180
    while not any((step_of(line, "step ") or -1) >= 10 for log in logs.glob("trial-*.log")
                  for line in log.read_text().splitlines()):
        assert time.time() < deadline, "no trial reached step 10"
        time.sleep(0.1)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, capture_output=True)
    for task in tasks:
        release(task)
    for task in tasks:
        info = run_to_end(task, cluster.root / ("slurm-sw-%s.out" % task))
        assert info["Restarts"] == "1", info
    trials = json.loads((logs / "sweep.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["done"] * 4 and max(t["attempts"] for t in trials) == 2
    cluster.ok("--sweep", "sw.yaml", "--run-name", "plain", env=dict(cluster.env, PACE="0"))

    def rows(name):
        with open(str(cluster.run_dir(name) / "results.csv")) as f:
            return [{k: v for k, v in r.items() if k not in ("run", "seconds", "attempts")} for r in csv.DictReader(f)]
    assert rows("sw") == rows("plain")
