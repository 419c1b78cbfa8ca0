"""Start train.py on N processes of this node (run.sh --nproc N, compose's NPROC):

    python -m src.launch 4 --epochs 30          # = torchrun --standalone --nproc_per_node 4 train.py --epochs 30
    python -m src.launch 1 --epochs 30          # = python train.py --epochs 30 (this process becomes it)

On torch < 1.10 (the cu92 stack) `python -m torch.distributed.launch --use_env` stands in for torchrun.
A stop signal (docker stop, Ctrl-C, kill; under Slurm also its warning USR1/USR2) is passed to the training
processes themselves: they finish the step, rank 0 saves, all exit 0, and so does the launcher (torchrun would
report its own SIGTERM as a failure). Several nodes: run torchrun on each one yourself (README, "Clusters").
"""
import os
import signal
import subprocess
import sys

from .runtime import compat
from .files.paths import ROOT


def command(nproc, train_args, python=sys.executable):
    train = [str(ROOT / "train.py")] + list(train_args)
    if nproc == 1:
        return [python] + train
    return compat.launcher(python, nproc) + train


def children(pid):
    """Process ids whose parent is pid (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def ignore_warnings():
    """In torchrun before it starts: Slurm's warning signal (USR1/USR2), which srun sends to every process of the
    step, must not kill it (its default action); the training processes install their own handler."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def main(argv):
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m src.launch NPROC [train.py flags]  (NPROC: processes on this node, >= 1)",
              file=sys.stderr)
        return 2
    nproc = int(argv[0])
    cmd = command(nproc, argv[1:])
    if nproc == 1:
        os.execv(cmd[0], cmd)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # share, not oversubscribe
    started = []  # the launcher, once it runs; the handlers are in place before, so no stop is lost

    def relay(signum, frame):
        for pid in children(started[0].pid) if started else ():
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, relay)
    # the launcher in its own session: signals to this process group (tini -g, a terminal) reach only us
    launcher = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=ignore_warnings)
    started.append(launcher)
    code = launcher.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
