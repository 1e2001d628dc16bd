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
from pipelines import manifest as mf
from pipelines import retrain as retraining
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
    assert retraining.decide({"loss": 0.5, "psnr": 20.0}, None)[0] is True
    promoted, reason = retraining.decide({"loss": float("nan"), "psnr": 20.0}, None)
    assert promoted is False and "not finite" in reason


def test_gate_tolerances():
    current = {"loss": 100.0, "psnr": 20.0}
    decide = retraining.decide
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
    wd = retraining.Workdir(str(tmp_path))
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
    assert retraining.data_fingerprint(manifest) == retraining.data_fingerprint(same)
    more = json.loads(json.dumps(manifest))
    more["sources"]["/b.mp4"] = {"size": 1, "mtime": 2.0, "count": 5}
    assert retraining.data_fingerprint(manifest) != retraining.data_fingerprint(more)
    assert mf.counts(manifest) == {"train": 10, "total": 10}


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


# ------------------------------------------------------------------ end to end (slow): real jobs
# Tiny everything: 8 s films (two 4 s validation blocks, so one is held out) at 32x32, every 2nd frame,
# train's "tiny" preset, a few steps. What is tested is the orchestration, not the model's quality.
DATA = ["--size", "32x32", "--every", "2"]
TRAIN = ["--preset", "tiny", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    from pipelines.synthetic import make_film

    root = tmp_path_factory.mktemp("retrain-films")
    (root / "old").mkdir()
    (root / "new").mkdir()
    return {"a": make_film(root / "old" / "a.mp4", "testsrc2", seconds=8, size=(64, 48), rate="25"),
            "b": make_film(root / "new" / "b.mkv", "mandelbrot", seconds=8, size=(64, 48), rate="25"),
            "old": str(root / "old"), "new": str(root / "new")}


@pytest.fixture(scope="module")
def first(tmp_path_factory, films):
    """A WORKDIR after one real retrain on film a: v0001 promoted. Tests copy it before changing it."""
    work = tmp_path_factory.mktemp("retrain-first") / "work"
    summary = retrain.run(["--inputs", films["old"], "--work", str(work), "--max-steps", "5"] + DATA + TRAIN)
    return {"work": str(work), "summary": summary}


def _copy(first, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(first["work"], work, symlinks=True)
    return work


def _models(work):
    return _snapshot(os.path.join(work, "models"))


@pytest.mark.slow
def test_first_run_extracts_trains_and_promotes_v0001(first, films):
    s, work = first["summary"], first["work"]
    assert s["status"] == "promoted" and s["promoted"] is True and s["version"] == "v0001"
    assert s["latest"] == "v0001" and s["current"] is None
    assert "no promoted model" in s["reason"]
    assert s["inputs"]["seen"] == 1 and s["inputs"]["new"] == 1 and s["inputs"]["already_extracted"] == 0
    assert s["inputs"]["new_paths"] == [os.path.abspath(films["a"])]
    assert s["records"]["train"] > 0 and s["records"]["validation"] > 0
    assert s["records"]["total"] == s["records"]["new"] == 100  # 8 s at 25 fps, every 2nd frame
    assert s["candidate"]["init_from"] is None and s["candidate"]["train"]["step"] == 5
    assert set(s["candidate"]["metrics"]) >= {"loss", "psnr", "count"}
    assert s["candidate"]["metrics"]["count"] == s["records"]["validation"]
    assert os.readlink(os.path.join(work, "models", "LATEST")) == "v0001"
    v1 = os.path.join(work, "models", "v0001")
    assert os.path.isfile(os.path.join(v1, "export", "model.keras"))
    assert atomic_read(os.path.join(v1, "retrain.json"))["promoted"] is True
    assert os.listdir(os.path.join(work, "candidates")) == []      # no partial left behind
    assert not os.path.exists(os.path.join(work, "retrain.lock"))  # released
    assert atomic_read(os.path.join(work, "summary.json"))["run_id"] == s["run_id"]
    assert [json.loads(line)["status"] for line in open(os.path.join(work, "history.jsonl"))] == ["promoted"]


def atomic_read(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
def test_render_with_the_promoted_model_through_latest(first, films, tmp_path):
    from jobs import render
    from pipelines import media

    out = tmp_path / "b-through-latest.mp4"
    summary = render.run(["--model", os.path.join(first["work"], "models", "LATEST"), "--input", films["b"],
                          "--output", str(out)])
    assert media.probe(str(out)).num_frames == media.probe(films["b"]).num_frames == 200
    assert summary is not None


@pytest.mark.slow
def test_nothing_new_exits_0_without_training_and_force_trains(first, films, tmp_path, capsys):
    work = _copy(first, tmp_path)
    before = _models(work)
    s = retrain.run(["--inputs", films["old"], "--work", str(work), "--max-steps", "5"] + TRAIN)
    out = capsys.readouterr().out
    assert "nothing new" in out and "skipping 1 already extracted" in out
    assert s["status"] == "nothing new" and s["trained"] is False and s["promoted"] is False
    assert s["inputs"]["new"] == 0 and s["inputs"]["already_extracted"] == 1 and s["records"]["new"] == 0
    assert _models(work) == before and os.listdir(work / "candidates") == []
    # through the command line too: exit code 0
    assert subprocess.run([sys.executable, "-m", "jobs.retrain", "--inputs", films["old"], "--work", str(work)],
                          cwd=REPO, env=ENV, capture_output=True, timeout=300).returncode == 0

    # --force trains anyway; a gate that demands 100 dB of improvement rejects the candidate, which is kept
    s = retrain.run(["--inputs", films["old"], "--work", str(work), "--max-steps", "3", "--force",
                     "--psnr-tolerance", "-100"] + TRAIN)
    assert s["status"] == "rejected" and s["trained"] and s["promoted"] is False and "PSNR is worse" in s["reason"]
    assert s["candidate"]["init_from"] == "v0001" and s["current"]["version"] == "v0001"
    assert s["candidate"]["metrics"]["count"] == s["current"]["metrics"]["count"]  # the same validation set
    assert _models(work) == before and os.readlink(work / "models" / "LATEST") == "v0001"
    kept = work / "candidates" / s["run_id"]
    assert (kept / "export" / "model.keras").is_file()
    assert atomic_read(kept / "retrain.json")["promoted"] is False
    statuses = [json.loads(line)["status"] for line in open(work / "history.jsonl")]
    assert statuses == ["promoted", "nothing new", "nothing new", "rejected"]
    # WORKDIR/report.html: every run over time, the versions, why each candidate was or was not promoted
    from test_report import check_page
    page = check_page(str(work / "report.html"))
    assert page.sources == ["report/psnr.png"]
    text = " ".join(page.text)
    assert "v0001" in text and "first model: there is no promoted model to compare with" in text
    assert s["reason"] in text and text.count("nothing new") >= 2 and s["run_id"] in text


@pytest.mark.slow
def test_a_new_film_is_extracted_alone_and_the_candidate_warm_starts(first, films, tmp_path):
    work = _copy(first, tmp_path)
    before = _snapshot(work / "models" / "v0001")
    s = retrain.run(["--inputs", films["old"], "--inputs", films["new"], "--work", str(work), "--max-steps", "5",
                     "--loss-tolerance", "1e6", "--psnr-tolerance", "1e6"] + TRAIN)
    assert s["inputs"]["seen"] == 2 and s["inputs"]["already_extracted"] == 1 and s["inputs"]["new"] == 1
    assert s["inputs"]["new_paths"] == [os.path.abspath(films["b"])]
    assert s["extract"]["records_new"] == s["records"]["new"] == 100 and s["records"]["total"] == 200
    assert s["candidate"]["init_from"] == "v0001"
    config = atomic_read(work / "models" / "v0002" / "config.json")
    assert os.path.realpath(config["training"]["init_from"]) == os.path.realpath(work / "models" / "v0001")
    # both models measured on the one validation set, which now includes the new film's held-out block
    assert s["candidate"]["metrics"]["count"] == s["current"]["metrics"]["count"] == s["records"]["validation"]
    assert s["promoted"] and s["version"] == "v0002" and os.readlink(work / "models" / "LATEST") == "v0002"
    assert _snapshot(work / "models" / "v0001") == before  # earlier versions untouched


@pytest.mark.slow
def test_concurrent_run_and_a_run_killed_mid_training(first, films, tmp_path):
    work = _copy(first, tmp_path)
    models_before = _models(work)
    log = open(tmp_path / "first.log", "w")
    argv = ["--inputs", films["old"], "--inputs", films["new"], "--work", str(work)] + TRAIN
    # A long budget with frequent checkpoints: we kill it once it has checkpointed.
    proc = subprocess.Popen([sys.executable, "-m", "jobs.retrain"] + argv +
                            ["--max-steps", "100000", "--checkpoint-every", "5"],
                            cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not list((work / "candidates").glob(".partial-*/checkpoints/*.index")):
            assert proc.poll() is None, open(tmp_path / "first.log").read()[-3000:]
            if time.monotonic() > deadline:  # a hang guard, not a speed check (speed: benchmarks/)
                pytest.fail("hang guard: the candidate wrote no checkpoint in 240 s")
            time.sleep(0.5)
        partial = next((work / "candidates").glob(".partial-*"))

        # A second, real process while the first trains: documented exit code, nothing touched.
        outside = {k: v for k, v in _snapshot(work).items() if not k.startswith("candidates")}
        second = subprocess.run([sys.executable, "-m", "jobs.retrain"] + argv + ["--max-steps", "5"],
                                cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == EXIT_BUSY == 75, second.stderr
        assert f"another retrain is in progress (pid {proc.pid})" in second.stderr
        assert {k: v for k, v in _snapshot(work).items() if not k.startswith("candidates")} == outside
        assert proc.poll() is None  # the first is still training

        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    # Killed mid-training: LATEST and every version untouched; a stale lock and a partial candidate remain.
    assert _models(work) == models_before and os.readlink(work / "models" / "LATEST") == "v0001"
    assert read_holder(work / "retrain.lock")["pid"] == proc.pid
    assert partial.is_dir()

    # The next run takes the stale lock over, resumes the candidate from its checkpoint, and decides.
    s = retrain.run(argv + ["--max-steps", "100000", "--max-seconds", "2"])
    assert s["recovered"]["stale_lock"]["pid"] == proc.pid
    assert s["recovered"]["resumed_candidate"] == str(partial)
    assert s["candidate"]["resumed"] is True and s["candidate"]["train"]["resumed_from"] >= 5
    assert s["inputs"]["new"] == 0 and s["trained"]  # extracted by the killed run, trained on now
    assert s["status"] in ("promoted", "rejected") and s["current"]["version"] == "v0001"
    expected = "v0002" if s["promoted"] else "v0001"
    assert os.readlink(work / "models" / "LATEST") == expected
    assert not list((work / "candidates").glob(".partial-*")) and not (work / "retrain.lock").exists()
    # and now there is nothing new
    assert retrain.run(argv + ["--max-steps", "5"])["status"] == "nothing new"


@pytest.mark.slow
def test_a_promotion_cut_off_between_its_two_renames_is_finished(first, films, tmp_path):
    work = _copy(first, tmp_path)
    state = atomic_read(work / "state.json")
    # What a run killed right after renaming its candidate to v0002 (before switching LATEST) leaves:
    shutil.copytree(work / "models" / "v0001", work / "models" / "v0002")
    decision = dict(atomic_read(work / "models" / "v0001" / "retrain.json"), version="v0002", run_id="cut-off")
    with open(work / "models" / "v0002" / "retrain.json", "w") as f:
        json.dump(decision, f)
    s = retrain.run(["--inputs", films["old"], "--work", str(work)] + TRAIN)
    assert s["recovered"]["finished_promotion"] == "v0002"
    assert os.readlink(work / "models" / "LATEST") == "v0002"
    assert s["status"] == "nothing new" and decision["data_fingerprint"] == state["data_fingerprint"]
    # A rollback by hand (LATEST back to v0001) after a finished promotion is respected, not "finished".
    os.symlink("v0001", work / "models" / "LATEST.new")
    os.replace(work / "models" / "LATEST.new", work / "models" / "LATEST")
    s = retrain.run(["--inputs", films["old"], "--work", str(work)] + TRAIN)
    assert "finished_promotion" not in s["recovered"] and s["rolled_back"] == {"latest": "v0001", "newest": "v0002"}
    assert os.readlink(work / "models" / "LATEST") == "v0001" and s["status"] == "nothing new"


@pytest.mark.slow
def test_a_failure_or_sigterm_leaves_latest_and_every_version_untouched(first, films, tmp_path):
    work = _copy(first, tmp_path)
    models_before = _models(work)
    # Training fails (a warm start cannot load into another architecture): one-line error, candidate kept.
    with pytest.raises(CadlError, match="architecture"):
        retrain.run(["--inputs", films["old"], "--work", str(work), "--force", "--max-steps", "2", "--widths",
                     "8,8"] + TRAIN)
    s = atomic_read(work / "summary.json")
    assert s["status"] == "failed" and s["stage"] == "train" and "architecture" in s["error"]
    assert (work / "candidates" / f"{s['run_id']}-failed").is_dir()
    assert not list((work / "candidates").glob(".partial-*")) and not (work / "retrain.lock").exists()
    # Extraction fails (nothing readable in the inputs): exit 2 from the command line.
    (tmp_path / "empty").mkdir()
    failed = subprocess.run([sys.executable, "-m", "jobs.retrain", "--inputs", str(tmp_path / "empty"),
                             "--work", str(work)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "cadl: error:" in failed.stderr
    assert atomic_read(work / "summary.json")["stage"] == "extract"

    # SIGTERM (systemd stop, Airflow kill) mid-training: train checkpoints, retrain exits 130 and frees the
    # lock; the partial candidate stays for the next run to resume.
    log = open(tmp_path / "term.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.retrain", "--inputs", films["old"], "--inputs",
                             films["new"], "--work", str(work), "--max-steps", "100000"] + TRAIN,
                            cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not list((work / "candidates").glob(".partial-*/config.json")):
            assert proc.poll() is None, open(tmp_path / "term.log").read()[-3000:]
            if time.monotonic() > deadline:  # a hang guard, not a speed check (speed: benchmarks/)
                pytest.fail("hang guard: training did not start in 240 s")
            time.sleep(0.5)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130, open(tmp_path / "term.log").read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert not (work / "retrain.lock").exists()
    s = atomic_read(work / "summary.json")
    assert s["status"] == "interrupted" and s["stage"] == "train"
    assert [p.name for p in (work / "candidates").glob(".partial-*")]
    assert _models(work) == models_before and os.readlink(work / "models" / "LATEST") == "v0001"
    statuses = [json.loads(line)["status"] for line in open(work / "history.jsonl")]
    assert statuses == ["promoted", "failed", "failed", "interrupted"]
