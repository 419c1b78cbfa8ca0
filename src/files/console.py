"""Program log (logs/<run>/train.log and stderr) and progress: a tqdm bar on a terminal, plain periodic
lines otherwise, so background runs and `docker logs` stay readable."""
import logging
import os
import sys

log = logging.getLogger("train")


class _TqdmStream(object):
    """Console handler target that prints above a live progress bar."""

    def write(self, text):
        from tqdm import tqdm
        if text.strip():
            tqdm.write(text.rstrip("\n"), file=sys.stderr)

    def flush(self):
        sys.stderr.flush()


class _NoStepLines(logging.Filter):
    def filter(self, record):
        return not getattr(record, "step_line", False)


class _NotFileOnly(logging.Filter):
    """Records logged with extra={"file_only": True} (the full config dump) go to train.log, not the console."""

    def filter(self, record):
        return not getattr(record, "file_only", False)


class _FileHandler(logging.FileHandler):
    """train.log; if it cannot be written (a full disk), one warning on the console and no tracebacks."""

    def handleError(self, record):
        log.removeHandler(self)
        log.warning("WARNING: cannot write %s (%s); logging to the console only", self.baseFilename,
                    sys.exc_info()[1])


def use_bar(mode):
    return mode == "bar" or (mode == "auto" and sys.stderr.isatty())


def setup(log_file, bar, main_process=True):
    """Log INFO and above to stderr and to log_file (appended to across resumes); other ranks log errors only."""
    log.handlers[:] = []
    log.setLevel(logging.INFO)
    log.propagate = False
    if not main_process:  # ranks > 0: only their errors, marked with the rank
        errors = logging.StreamHandler(sys.stderr)
        errors.setLevel(logging.ERROR)
        errors.setFormatter(logging.Formatter("[rank %s] %%(message)s" % os.environ.get("RANK", "?")))
        log.addHandler(errors)
        return
    console = logging.StreamHandler(_TqdmStream() if bar else sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    if bar:
        console.addFilter(_NoStepLines())
    console.addFilter(_NotFileOnly())
    log.addHandler(console)
    if log_file is not None:
        handler = _FileHandler(str(log_file))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)


class ProgressBar(object):
    """Steps done out of the total: a bar when `bar`, else nothing (the step lines are the progress)."""

    def __init__(self, bar, total, initial):
        self.bar, self.postfix = None, None
        if bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True, unit="step")

    def update(self):
        if self.bar is not None:
            if self.postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
