"""What the benchmark scripts share: timing a command with its process tree's peak memory and CPU seconds, and
the course benchmarks' digit data.

The scripts run as ``python benchmarks/X.py``, so Python puts this folder first on ``sys.path`` and they
``import measure`` as a top-level module.
"""
import os
import resource
import subprocess
import sys
import threading
import time
from typing import NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TreeMemory(threading.Thread):
    """Samples the summed RSS (bytes) of a process and all its descendants (``peak``), and of the process alone
    (``peak_main``), every ``every`` seconds from /proc until stopped."""

    def __init__(self, pid, every=0.02):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.peak_main, self._done = pid, every, 0, 0, threading.Event()

    def run(self):
        while not self._done.is_set():
            tree, main = self._rss()
            self.peak, self.peak_main = max(self.peak, tree), max(self.peak_main, main)
            self._done.wait(self.every)

    def stop(self):
        self._done.set()
        self.join()

    def _rss(self):
        parents, rss, cmdlines = {}, {}, {}
        page = os.sysconf("SC_PAGE_SIZE")
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(name)] = int(fields[1])
                rss[int(name)] = int(fields[21]) * page
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdlines[int(name)] = f.read()
            except (OSError, IndexError, ValueError):
                continue
        tree, frontier = {self.pid}, [self.pid]
        while frontier:
            parent = frontier.pop()
            for child, ppid in parents.items():
                # A child with its parent's command line is a fork about to exec ffmpeg: it shares the
                # parent's pages, and counting them twice would be an artefact of sampling at that instant.
                if ppid == parent and child not in tree and cmdlines.get(child) != cmdlines.get(parent):
                    tree.add(child)
                    frontier.append(child)
        return sum(rss.get(p, 0) for p in tree), rss.get(self.pid, 0)


def children_cpu():
    """CPU seconds (user + system) of every finished child of this process and of their waited children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timed(NamedTuple):
    seconds: float     # wall time from start to exit
    peak: int          # peak summed RSS of the process tree, bytes
    peak_main: int     # peak RSS of the command's own process, bytes
    returncode: int
    stderr: str        # the last 3000 characters
    cpu: float         # CPU seconds of the whole process tree (every process and thread)


def timed(cmd, env=None):
    """Runs ``cmd`` (stdout discarded, stderr kept) and measures it; returns a :class:`Timed`."""
    cpu = children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env)
    memory = TreeMemory(proc.pid)
    memory.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    memory.stop()
    return Timed(seconds, memory.peak, memory.peak_main, proc.returncode, err.decode(errors="replace")[-3000:],
                 children_cpu() - cpu)


def add_digit_options(parser, generated):
    """The course benchmarks' data options: ``--data-dir``, or ``--generated N`` digits (default ``generated``)."""
    parser.add_argument("--data-dir", help="folder of MNIST-format IDX files (default: generated digits)")
    parser.add_argument("--generated", type=int, default=generated, metavar="N",
                        help=f"without --data-dir: N generated digits, the last sixth for testing "
                             f"(default {generated})")


def digits_dir(data_dir, generated, out):
    """``data_dir`` itself, or without it ``OUT/generated`` holding ``generated`` synthetic digits (the tests'
    generator, seed 1, the last sixth as the official test split) written as MNIST IDX files."""
    if data_dir is not None:
        return data_dir
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from fixtures_course import write_mnist

    data_dir = os.path.join(out, "generated")
    n_test = generated // 6
    write_mnist(data_dir, n_train=generated - n_test, n_test=n_test, seed=1)
    return data_dir
