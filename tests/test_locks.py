"""Every writer holds a lock on the folder it writes: while another live process holds it, a second extract,
train or render says who and exits 75 (EX_TEMPFAIL) having touched nothing (render's test is in test_render,
beside its model)."""
import logging
import os
import subprocess
import sys

import pytest

import jobs
from jobs import extract, train
from pipelines import lock, owned
from test_confinement import stills

HOLD = """
import sys, time
from pipelines import lock, owned
owned.mark(sys.argv[1], sys.argv[2])
held = lock.folder_lock(sys.argv[1], "test holder").acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
held.release()
"""


@pytest.fixture
def holder():
    """``holder(folder, kind)``: another live process holding ``folder``'s lock until the test ends."""
    procs = []

    def hold(folder, kind):
        os.makedirs(folder, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), kind], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))))
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc.pid

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


def _tree(folder):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


def command_line(run, argv, capsys):
    """(exit status, stderr) of ``jobs.main(run, argv)``, as the command line would give them."""
    capsys.readouterr()  # only what this command prints
    handlers = logging.root.handlers[:]
    try:
        code = jobs.main(run, argv)
    finally:  # main points logging at this test's captured stderr: give later tests theirs back
        logging.root.handlers[:] = handlers
    return code, capsys.readouterr().err.strip()


def _busy(run, argv, capsys, pid):
    code, err = command_line(run, argv, capsys)
    assert code == lock.EXIT_BUSY == 75
    assert err.startswith("cadl: error: another ") and f"pid {pid}" in err and "\n" not in err


def test_a_second_extract_exits_75_and_touches_nothing(tmp_path, holder, capsys):
    pictures = stills(tmp_path / "pictures")
    out = tmp_path / "data"
    extract.run(["--input", str(pictures), "--output", str(out), "--size", "16x16"])
    stills(tmp_path / "pictures", n=8, seed=1)  # something new for --incremental
    pid = holder(out, "dataset")
    before = _tree(out)
    for mode in ([], ["--incremental"]):
        _busy(extract.run, ["--input", str(pictures), "--output", str(out), "--size", "16x16"] + mode, capsys, pid)
    assert _tree(out) == before


def test_a_second_train_exits_75_and_touches_nothing(tmp_path, holder, capsys):
    data = tmp_path / "data"
    extract.run(["--input", str(stills(tmp_path / "pictures")), "--output", str(data), "--size", "16x16"])
    run_dir = tmp_path / "run"
    pid = holder(run_dir, "run")
    before = _tree(run_dir)
    _busy(train.run, ["--data", str(data), "--out", str(run_dir), "--preset", "tiny", "--max-steps", "2"], capsys,
          pid)
    assert _tree(run_dir) == before


def test_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / lock.LOCK_NAME).write_text('{"pid": %d, "host": "%s"}' % (int(dead.stdout), os.uname().nodename))
    extract.run(["--input", str(stills(tmp_path / "pictures")), "--output", str(out), "--size", "16x16"])
    assert not (out / lock.LOCK_NAME).exists() and owned.kind_of(out) in (None, "dataset")
