"""A pid lock file: at most one process at a time works in a folder (``cadl retrain`` on its WORKDIR; extract
on its output folder, train on its run folder and render on its ``OUT.parts`` folder, each with
``folder_lock``: ``FOLDER/.cadl-lock``).

The lock is a small JSON file created with ``O_CREAT | O_EXCL``, so exactly one process can create it;
it names its holder (pid, host, the process's start time) and is removed when the holder is done. A
holder that died without removing it (``kill -9``, a power cut) leaves a *stale* lock: the next process
sees that the pid is gone (or now belongs to a different process, by its start time) and takes the lock
over. Checking and taking over happen under a short ``flock`` on the folder that holds the lock file, so
two processes that find the same stale lock cannot both take it (and nothing but the lock file is written).

A lock held by a process on another host (a shared filesystem) cannot be checked and is treated as live.
"""
import contextlib
import errno
import fcntl
import json
import os
import socket
import time

from pipelines.errors import CadlError

# sysexits.h EX_TEMPFAIL: "try again later". What every job exits with when its lock is busy.
EXIT_BUSY = 75
LOCK_NAME = ".cadl-lock"   # in the folder a job writes; with its ".guard" beside it


class LockBusy(CadlError):
    """Another live process holds the lock. ``holder`` is the lock file's content (pid, host, ...)."""

    def __init__(self, message, holder):
        super().__init__(message, exit_code=EXIT_BUSY)
        self.holder = holder


def _proc_start(pid):
    """The process's start time in clock ticks since boot (Linux), or None where /proc is unavailable.

    Together with the pid it identifies a process: a recycled pid has a different start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may contain spaces; fields after it are plain.
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid, proc_start=None):
    """Whether ``pid`` is a running process (and, when ``proc_start`` is known, the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    if proc_start is not None:
        now = _proc_start(pid)
        if now is not None and now != proc_start:
            return False
        if now is None and os.path.exists("/proc/self/stat"):
            return False  # /proc works here but not for this pid: it is gone (or a zombie reaped)
    return _not_zombie(pid)


def _not_zombie(pid):
    # A killed child that its parent has not reaped yet still answers kill(pid, 0): state "Z".
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_holder(path):
    """The content of the lock file at ``path`` (a dict), or None when there is none or it is unreadable."""
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written or garbage: no live holder can be proven


class PidLock:
    """``with PidLock(path, what="retrain"):`` holds the lock for the block, or raises ``LockBusy``.

    ``recovered`` is the stale holder's content when this process took over a dead process's lock.
    """

    def __init__(self, path, what="job"):
        self.path = os.fspath(path)
        self.what = what
        self.recovered = None
        self._mine = None

    def acquire(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with self._guard():
            holder = read_holder(self.path)
            if holder is not None:
                if self._live(holder):
                    raise LockBusy(f"another {self.what} is in progress (pid {holder['pid']}); "
                                   f"lock file {self.path}", holder)
                os.remove(self.path)  # stale: its process is gone
                self.recovered = holder
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:  # a full disk: leave no empty lock behind
                os.remove(self.path)
                raise
        self._mine = me
        return self

    def release(self):
        """Remove the lock file if it is still ours (never someone else's)."""
        if self._mine is None:
            return
        with self._guard():
            holder = read_holder(self.path)
            if holder and holder.get("pid") == self._mine["pid"] and holder.get("host") == self._mine["host"]:
                os.remove(self.path)
        self._mine = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    @staticmethod
    def _live(holder):
        if not holder:
            return False  # unreadable: written by a process that died mid-write (we write under the guard)
        if holder.get("host") not in (None, socket.gethostname()):
            return True  # another machine's process: we cannot tell, so we do not steal it
        return pid_alive(holder["pid"], holder.get("proc_start"))

    @contextlib.contextmanager
    def _guard(self):
        # A short exclusive flock around check-and-take: the kernel drops it if we die, so it never goes stale.
        # It is taken on the folder itself, which leaves no file behind.
        fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                except OSError as e:  # EINTR from a signal: try again
                    if e.errno != errno.EINTR:
                        raise
            yield
        finally:
            os.close(fd)


def folder_lock(folder, what, name=LOCK_NAME):
    """The ``PidLock`` of a folder a job writes (``folder/.cadl-lock``); the folder must exist."""
    return PidLock(os.path.join(os.fspath(folder), name), what=what)
