"""Stop signals. SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 and SIGXCPU (whatever a user, a container engine or a
scheduler sends to end a job: `timeout -s USR1`, LSF's and PBS's CPU-time limit) ask the loop to finish its step,
save and exit 0; a second Ctrl-C aborts at once. Inside a Slurm job, SIGUSR1 and SIGUSR2 are the job's warning
before its time limit: the stop is marked as a `warning` and the run is then requeued (runtime/slurm.py).
Commands that do not train (--predict, --evaluate) end at once on a stop, with nothing written (`interrupting`).

train.py installs the handler as its first statement, before torch is imported, and it stays until the
process exits, so no stop is ever lost to a default handler (exit 143, nothing saved). While data is being
downloaded or prepared (`interrupting()`), a stop raises Stopped at once, so a blocking network read ends
within a second and its partial file is removed.

DataLoader workers ignore stop signals from their first instruction: the main process starts them with the
signals blocked (`blocked`), so a `docker stop` sent to the whole process group while a worker is starting stays
pending, and the worker's init function (`ignore_stop_signals`) ignores them, which discards what is pending,
before it unblocks them. The main process stops them after saving. Once the work is done (`after_exit`), a stop
changes nothing: the process exits with its own code, also while workers are being joined at shutdown.
"""
import contextlib
import logging
import os
import signal

log = logging.getLogger("train")
WARNINGS = (signal.SIGUSR1, signal.SIGUSR2)  # Slurm's warning signal: srun hands it to every process of the step
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) + WARNINGS + tuple(
    getattr(signal, name) for name in ("SIGXCPU",) if hasattr(signal, name))
HELD = SIGNALS  # what DataLoader workers start with blocked, then ignore


class Stopped(Exception):
    """A stop signal arrived before training started, or during a command that does not train: nothing to save."""

    def __init__(self, name):
        super(Stopped, self).__init__(name)
        self.name = name

    @property
    def exit_code(self):
        return 128 + int(getattr(signal, self.name, signal.SIGTERM))


class StopFlag(object):
    def __init__(self):
        self.requested = False
        self.name = None
        self.warning = False  # the stop came from Slurm's warning signal: save, then requeue
        self._raise = False

    def install(self):
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def request(self, why):
        """Ask for a stop as a signal would (`--stop-after-step` uses it)."""
        if not self.requested:
            self.requested, self.name = True, why
            if self.warning:
                log.info("%s received (Slurm's warning before the time limit): finishing this step, saving, then "
                         "requeueing the job", why)
            else:
                log.info("%s received: finishing this step, saving, then exiting (Ctrl-C again aborts at once)", why)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if signum in WARNINGS and not self.requested and os.environ.get("SLURM_JOB_ID"):
            self.warning = True
        if self._raise:  # nothing to finish or save: the one who catches Stopped says what happened
            self.requested, self.name = True, self.name or signal.Signals(signum).name
            raise Stopped(self.name)
        self.request(signal.Signals(signum).name)

    @contextlib.contextmanager
    def interrupting(self):
        """Inside, a stop signal raises Stopped at once (and one that came before raises on entry)."""
        if self.requested:
            raise Stopped(self.name)
        before, self._raise = self._raise, True
        try:
            yield
        finally:
            self._raise = before  # nested (data read inside --evaluate): the outer one still raises

    def after_exit(self):
        """The run is over (saved, or nothing to save): from now on a stop signal is ignored, so that one arriving
        while the interpreter shuts down (DataLoader workers joined, files closed) cannot turn the exit code into
        a death by that signal."""
        for sig in HELD:
            signal.signal(sig, signal.SIG_IGN)


STOP = StopFlag()  # the process's one flag (train.py installs it)


@contextlib.contextmanager
def blocked():
    """Stop signals held pending (not lost) inside: processes forked here start with them blocked."""
    if not hasattr(signal, "pthread_sigmask"):  # not on this platform: no fork-time window to close
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a signal that came meanwhile is handled now


def ignore_stop_signals(worker_id=None):
    """worker_init_fn of DataLoader workers: a `docker stop` or a Ctrl-C sent to the whole process group must not
    kill them mid-batch (the main process would fail with 'DataLoader worker ... killed' and save nothing). They
    start with the signals blocked (`blocked`); ignoring them discards any that came meanwhile, then they are
    unblocked. Slurm's warning signal, which srun sends to every process of the step, is ignored too."""
    for sig in HELD:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
