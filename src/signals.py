"""SIGTERM / SIGINT: the first asks the loop to finish its step, save and exit 0; a second Ctrl-C aborts."""
import logging
import signal

log = logging.getLogger("train")


class StopFlag(object):
    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            log.info("%s received: finishing this step, saving, then exiting (Ctrl-C again aborts at once)",
                     signal.Signals(signum).name)

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
