"""Stop signals. SIGTERM, SIGINT and SIGHUP ask the loop to finish its step, save and exit 0; a second
Ctrl-C aborts at once.

train.py installs the handler as its first statement, before torch is imported, and it stays until the
process exits, so no stop is ever lost to a default handler (exit 143, nothing saved). While data is being
downloaded or prepared (`interrupting()`), a stop raises Stopped at once, so a blocking network read ends
within a second and its partial file is removed. DataLoader workers ignore stop signals
(`ignore_stop_signals`): the main process stops them after saving.
"""
import contextlib
import logging
import signal

log = logging.getLogger("train")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(Exception):
    """A stop signal arrived before training started: nothing to save."""

    def __init__(self, name):
        super(Stopped, self).__init__(name)
        self.name = name


class StopFlag(object):
    def __init__(self):
        self.requested = False
        self.name = None
        self._raise = False

    def install(self):
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def request(self, why):
        """Ask for a stop as a signal would (`--stop-after-step` uses it)."""
        if not self.requested:
            self.requested, self.name = True, why
            log.info("%s received: finishing this step, saving, then exiting (Ctrl-C again aborts at once)", why)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)
        if self._raise:
            raise Stopped(self.name)

    @contextlib.contextmanager
    def interrupting(self):
        """Inside, a stop signal raises Stopped at once (and one that came before raises on entry)."""
        if self.requested:
            raise Stopped(self.name)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False


STOP = StopFlag()  # the process's one flag (train.py installs it)


def ignore_stop_signals(worker_id=None):
    """worker_init_fn of DataLoader workers: a `docker stop` or a Ctrl-C sent to the whole process group must not
    kill them mid-batch (the main process would fail with 'DataLoader worker ... killed' and save nothing)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
