"""Slurm: what train.py learns from a job's environment, and the requeue it asks for (slurm/train.sbatch is the job
script; README "Clusters").

- The job: SLURM_JOB_ID (an array task: SLURM_ARRAY_JOB_ID + SLURM_ARRAY_TASK_ID) and SLURM_RESTART_COUNT, in the
  log and the hparams panel. A requeued job restarts the same command: `--resume auto` and a run name fixed by the
  job script make it one run with one TensorBoard history.
- The warning signal (`#SBATCH --signal=B:USR1@LEAD`; USR1 or USR2) means "save now, then requeue": the run stops
  like on SIGTERM (finish the step, save, exit), then rank 0 runs `scontrol requeue` on its own job. Where scontrol
  is missing (train.py in a container), train.py exits REQUEUE_EXIT instead and the job script requeues the job.
  SIGTERM (a preemption, `scontrol requeue`, scancel, the time limit) saves and exits 0 as everywhere: Slurm
  requeues a preempted job itself.
- `srun --ntasks N` (N > 1) starts train.py N times: rank, local rank, world size and the rendezvous address come
  from Slurm's variables (a launcher's own RANK, torchrun's, wins where set).
"""
import logging
import os
import re
import shutil
import subprocess
from collections import namedtuple

log = logging.getLogger("train")

REQUEUE_EXIT = 75  # EX_TEMPFAIL: "try again later"; the job script turns it into `scontrol requeue`


class Job(namedtuple("Job", "id array_id array_task restart")):
    """This process's Slurm job (None outside one)."""

    @classmethod
    def detect(cls, env=None):
        env = os.environ if env is None else env
        if not env.get("SLURM_JOB_ID"):
            return None
        return cls(env["SLURM_JOB_ID"], env.get("SLURM_ARRAY_JOB_ID") or None, env.get("SLURM_ARRAY_TASK_ID") or None,
                   int(env.get("SLURM_RESTART_COUNT") or 0))

    @property
    def target(self):
        """What `scontrol requeue` takes: the array task (ARRAYID_TASK) or the job."""
        return "%s_%s" % (self.array_id, self.array_task) if self.array_id and self.array_task else self.id

    def describe(self):
        return "slurm job %s%s, restart %d" % (self.id, " (array task %s)" % self.target if self.target != self.id
                                               else "", self.restart)

    def hparams(self):
        return {"slurm_job": self.target, "slurm_restart": self.restart}


def job():
    return Job.detect()


def adopt_srun_ranks(env=None):
    """Under `srun --ntasks N` (N > 1) with no launcher's RANK: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT from Slurm's variables (the batch step itself, which has no SLURM_STEP_NUM_TASKS, stays one
    process)."""
    env = os.environ if env is None else env
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or 1)
    if tasks <= 1 or "RANK" in env or "SLURM_PROCID" not in env:
        return False
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], str(tasks)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
                                             or "127.0.0.1"))
    env.setdefault("MASTER_PORT", str(15000 + int(env.get("SLURM_JOB_ID") or 0) % 20000))  # one per job
    return True


def first_host(nodelist):
    """The first host of a Slurm node list: "gpu[03-05,09],cpu1" -> "gpu03"."""
    match = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist.strip())
    if not match:
        return nodelist
    return match.group(1) + (match.group(2) or "")


def requeue(job, stop):
    """After the warning signal's save: requeue this job (rank 0); the exit code of train.py. Stop signals are
    ignored from here on: the requeue itself sends SIGTERM to the job."""
    stop.after_exit()
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.info("slurm: scontrol is not available here (in a container?): exiting %d, which the job script turns "
                 "into `scontrol requeue %s`", REQUEUE_EXIT, job.target)
        return REQUEUE_EXIT
    done = subprocess.run([scontrol, "requeue", job.target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if done.returncode != 0:
        log.error("slurm: `scontrol requeue %s` failed: %s; exiting %d. Submit with sbatch --requeue (and a cluster "
                  "with JobRequeue), or resubmit the job script: it resumes with --resume auto", job.target,
                  done.stdout.strip()[:300], REQUEUE_EXIT)
        return REQUEUE_EXIT
    log.info("slurm: requeued job %s; it resumes from this checkpoint when it starts again", job.target)
    return 0


def check_lead(lead, step_seconds, save_seconds):
    """At the first save: does the warning signal's lead cover a step plus a save? lead 0: not told."""
    need = step_seconds + save_seconds
    if not lead:
        log.info("slurm: a step plus a save take %.1f s: the job's warning signal (#SBATCH --signal=B:USR1@SECONDS) "
                 "must come earlier than that before the time limit (give the same --slurm-lead to have it checked)",
                 need)
    elif need > 0.5 * lead:
        advice = max(60, int(4 * need))
        log.warning("WARNING: a step plus a save take %.1f s, but the warning signal comes only %g s before the time "
                    "limit (--slurm-lead): the save may be cut off by the kill. Raise both: #SBATCH "
                    "--signal=B:USR1@%d and LEAD=%d in the job script", need, lead, advice, advice)
    else:
        log.info("slurm: a step plus a save take %.1f s; the warning signal comes %g s before the time limit: enough",
                 need, lead)
