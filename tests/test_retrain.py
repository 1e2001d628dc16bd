"""cadl retrain: the pid lock, the promotion gate, atomic LATEST, and (slow) the scheduled step end to end
on tiny generated films with tiny training budgets."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jobs import retrain
from pipelines.errors import CadlError
from pipelines.lock import EXIT_BUSY, LockBusy, PidLock, pid_alive, read_holder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def _hold_lock(path):
    """A real second process that takes the lock, says so on stdout, and sleeps until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from pipelines.lock import PidLock
        lock = PidLock({os.fspath(path)!r}, what="retrain").acquire()
        print("held", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc):
    proc.kill()
    proc.wait()


def _snapshot(folder):
    """Every path under ``folder`` with its size and modification time (symlinks: their target)."""
    snap = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            snap[os.path.relpath(path, folder)] = (os.readlink(path) if os.path.islink(path)
                                                   else (st.st_size, st.st_mtime_ns))
    return snap


# ---------------------------------------------------------------------------------------------- lock
def test_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / "x.lock"
    with PidLock(path, what="retrain") as lock:
        assert read_holder(path)["pid"] == os.getpid()
        assert lock.recovered is None
        with pytest.raises(LockBusy) as busy:
            PidLock(path, what="retrain").acquire()
        assert f"another retrain is in progress (pid {os.getpid()})" in str(busy.value)
        assert busy.value.exit_code == EXIT_BUSY == 75
    assert not path.exists()


def test_lock_held_by_another_live_process(tmp_path):
    path = tmp_path / "x.lock"
    holder = _hold_lock(path)
    try:
        with pytest.raises(LockBusy, match=rf"in progress \(pid {holder.pid}\)"):
            PidLock(path, what="retrain").acquire()
        assert read_holder(path)["pid"] == holder.pid  # untouched
    finally:
        _kill(holder)


def test_stale_lock_of_a_killed_process_is_recovered(tmp_path):
    path = tmp_path / "x.lock"
    holder = _hold_lock(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert path.exists() and not pid_alive(holder.pid)
    with PidLock(path, what="retrain") as lock:
        assert lock.recovered["pid"] == holder.pid
        assert read_holder(path)["pid"] == os.getpid()
    assert not path.exists()


def test_recycled_pid_and_garbage_lock_are_stale(tmp_path):
    path = tmp_path / "x.lock"
    # Our own pid, but a different process start time: the pid was recycled, the holder is gone.
    path.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "proc_start": 1}))
    with PidLock(path) as lock:
        assert lock.recovered["pid"] == os.getpid()
    path.write_text("{half a lock")  # a holder that died mid-write
    with PidLock(path) as lock:
        assert lock.recovered == {}


def test_release_never_removes_someone_elses_lock(tmp_path):
    path = tmp_path / "x.lock"
    lock = PidLock(path).acquire()
    os.remove(path)
    holder = _hold_lock(path)  # someone else took it after ours vanished
    try:
        lock.release()
        assert read_holder(path)["pid"] == holder.pid
    finally:
        _kill(holder)


def test_only_one_of_many_racing_processes_takes_a_stale_lock(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": os.uname().nodename}))  # no such pid
    code = textwrap.dedent(f"""
        import time
        from pipelines.lock import PidLock, LockBusy
        time.sleep(max(0.0, {time.time() + 1.5} - time.time()))
        try:
            PidLock({os.fspath(path)!r}).acquire()
            print("won", flush=True)
            time.sleep(3)
        except LockBusy:
            print("busy", flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["busy", "busy", "busy", "won"]


# ----------------------------------------------------------------------------------- the gate
def test_first_model_is_promoted_unless_its_metrics_are_not_finite():
    assert retrain.decide({"loss": 0.5, "psnr": 20.0}, None)[0] is True
    promoted, reason = retrain.decide({"loss": float("nan"), "psnr": 20.0}, None)
    assert promoted is False and "not finite" in reason


def test_gate_tolerances():
    current = {"loss": 100.0, "psnr": 20.0}
    decide = retrain.decide
    assert decide({"loss": 100.0, "psnr": 20.0}, current)[0]            # equal is not worse
    assert decide({"loss": 100.9, "psnr": 19.95}, current, 0.01, 0.1)[0]  # within tolerance
    promoted, reason = decide({"loss": 101.5, "psnr": 20.5}, current, 0.01, 0.1)
    assert not promoted and "validation loss is worse" in reason
    promoted, reason = decide({"loss": 90.0, "psnr": 19.8}, current, 0.01, 0.1)
    assert not promoted and "PSNR is worse" in reason and "19.800" in reason
    assert decide({"loss": 101.5, "psnr": 19.0}, current, 0.02, 1.5)[0]   # looser gate
    # negative tolerances demand an improvement
    assert not decide({"loss": 99.5, "psnr": 20.2}, current, -0.01, 0.0)[0]
    assert decide({"loss": 98.0, "psnr": 20.2}, current, -0.01, -0.1)[0]
    assert not decide({"loss": 98.0, "psnr": 20.05}, current, -0.01, -0.1)[0]


# ------------------------------------------------------------------------------ versions, LATEST
def test_versions_and_atomic_latest(tmp_path):
    wd = retrain.Workdir(str(tmp_path))
    assert wd.versions() == [] and wd.next_version() == "v0001" and wd.current() is None
    for name in ("v0001", "v0002", "v0010"):
        os.makedirs(os.path.join(wd.models, name))
    os.makedirs(os.path.join(wd.models, "v12"))  # not a version name
    assert wd.versions() == ["v0001", "v0002", "v0010"] and wd.next_version() == "v0011"
    wd.point_latest("v0002")
    assert os.readlink(wd.latest) == "v0002" and wd.current() == "v0002"
    wd.point_latest("v0010")
    assert os.readlink(wd.latest) == "v0010"
    assert sorted(os.listdir(wd.models)) == ["LATEST", "v0001", "v0002", "v0010", "v12"]  # no temp left
    os.remove(wd.latest)
    os.symlink("v0099", wd.latest)
    with pytest.raises(CadlError, match="v0099"):
        wd.current()


def test_fingerprint_changes_with_the_data():
    manifest = {"image": {"height": 16, "width": 16}, "splits": {"train": {"count": 10}},
                "sources": {"/a.mp4": {"size": 1, "mtime": 2.0, "count": 10}}}
    same = json.loads(json.dumps(manifest))
    same["options"] = {"anything": 1}
    assert retrain.data_fingerprint(manifest) == retrain.data_fingerprint(same)
    more = json.loads(json.dumps(manifest))
    more["sources"]["/b.mp4"] = {"size": 1, "mtime": 2.0, "count": 5}
    assert retrain.data_fingerprint(manifest) != retrain.data_fingerprint(more)
    assert retrain.record_counts(manifest) == {"train": 10, "total": 10}


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(CadlError, match="--init-from"):
        retrain.run(["--inputs", str(tmp_path), "--work", str(tmp_path / "w"), "--init-from", "x"])
    (tmp_path / "file").write_text("")
    with pytest.raises(CadlError, match="must be a folder"):
        retrain.run(["--inputs", str(tmp_path), "--work", str(tmp_path / "file")])


def test_second_retrain_process_while_one_holds_the_lock_exits_75_touching_nothing(tmp_path, short_film):
    work = tmp_path / "work"
    (work / "models" / "v0001").mkdir(parents=True)
    os.symlink("v0001", work / "models" / "LATEST")
    (work / "summary.json").write_text("{}")
    holder = _hold_lock(work / "retrain.lock")
    try:
        before = _snapshot(work)
        second = subprocess.run([sys.executable, "-m", "jobs.retrain", "--inputs", str(short_film),
                                 "--work", str(work), "--max-steps", "1"],
                                cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == EXIT_BUSY, second.stderr
        assert f"another retrain is in progress (pid {holder.pid})" in second.stderr
        assert _snapshot(work) == before
    finally:
        _kill(holder)
