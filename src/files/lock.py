"""One trainer per run: flocks on logs/<run>/run.lock and models/latest/.<run>.lock, so two trainers that
share either folder (whatever --logs-dir and --models-dir say) cannot write the same run. The kernel drops
a lock when its process dies, so a leftover file from a killed trainer never blocks the next one."""
import fcntl
import os

from ..runtime.errors import TrainingError, UsageError


def alive(pid):
    """Whether a process with this pid exists (one of another user's included)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, as another user
        return True
    return True


class RunLock(object):
    def __init__(self, path, run_name):
        self.path, self.run_name, self.fd = str(path), run_name, None

    def __enter__(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UsageError("cannot open the run lock %s (%s): the run may belong to another user; pick another "
                             "--run-name, or fix the folder's permissions" % (self.path, err.strerror or err))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise TrainingError("run '%s' is already being trained (pid %s holds %s); stop it first, or pick "
                                "another --run-name" % (self.run_name, holder, self.path))
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
