"""cadl train --strategy multiworker: two worker processes on 127.0.0.1, one killed -9 and both restarted.

One run, in two launches of the same two commands (slow: CI runs ``pytest -m slow``). The first launch starts
from nothing; once the chief has a checkpoint, worker 1 is killed -9 and the chief stops with one line. The
second launch resumes both workers from the chief's checkpoint to the step asked. The ports are free ones
picked here, every process is killed at teardown, and every wait has a timeout. Fast: the strategy asked for
after other TensorFlow work is a one-line error.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipelines import atomic, export, tfdata, training
from pipelines.errors import CadlError
from pipelines.trainer import pick_strategy
from train_data import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY, KILL_AFTER = 16, 4, 4  # the step asked; checkpoints every EVERY; worker 1 dies after ckpt-KILL_AFTER
# `cadl train` as jobs.cli runs it (exit codes, one-line errors), printing the summary it returns.
WORKER = ("import json, sys\nimport jobs\nfrom jobs import train\n"
          "sys.exit(jobs.main(lambda argv: print('SUMMARY ' + json.dumps(train.run(argv)), flush=True), "
          "sys.argv[1:]))")
WAIT = 240  # seconds: the most any launch may take before the test gives up (and kills it)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def latest_step(run):
    path = tf.train.latest_checkpoint(os.path.join(run, "checkpoints"))
    return int(re.search(r"ckpt-(\d+)$", path).group(1)) if path else None


def scratch_folders(tmp):
    """The scratch folders in worker 1's temp dir (where TensorFlow's autograph also writes its files)."""
    return sorted(n for n in os.listdir(os.path.join(tmp, "tmp-1")) if n.startswith("cadl-worker-"))


class Cluster:
    """Two `cadl train --strategy multiworker` processes; ``launch`` starts both, ``kill_all`` ends them."""

    def __init__(self, tmp, data, run):
        self.tmp, self.run, self.procs = tmp, run, []
        self.argv = ["--data", data, "--out", run, "--strategy", "multiworker", "--preset", "tiny",
                     "--batch-size", "8", "--no-progress", "--montage-every", "0", "--max-steps", str(STEPS),
                     "--checkpoint-every", str(EVERY), "--log-every", "2"]

    def launch(self, name):
        workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
        self.procs = []
        for index in range(2):
            tmpdir = os.path.join(self.tmp, f"tmp-{index}")  # where a worker's scratch folder goes
            os.makedirs(tmpdir, exist_ok=True)
            env = dict(os.environ, TMPDIR=tmpdir, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
            log = open(os.path.join(self.tmp, f"{name}-{index}.log"), "w")
            self.procs.append(subprocess.Popen([sys.executable, "-c", WORKER] + self.argv, cwd=ROOT, env=env,
                                               stdout=log, stderr=subprocess.STDOUT))
            log.close()
        return self.procs

    def output(self, name, index):
        with open(os.path.join(self.tmp, f"{name}-{index}.log")) as f:
            return f.read()

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("multiworker"))
    data = str(write_dataset(os.path.join(tmp, "data"), {"train": 64, "validation": 16}))
    c = Cluster(tmp, data, os.path.join(tmp, "run"))
    c.data, c.t0 = data, time.time()
    try:
        chief, worker = c.launch("first")
        deadline = time.time() + WAIT
        while time.time() < deadline and chief.poll() is None and (latest_step(c.run) or 0) < KILL_AFTER:
            time.sleep(0.05)
        assert chief.poll() is None and worker.poll() is None, c.output("first", 0)[-3000:]
        worker.send_signal(signal.SIGKILL)
        killed = time.time()
        c.killed_rc, c.chief_rc = worker.wait(timeout=30), chief.wait(timeout=90)
        c.chief_seconds = time.time() - killed
        c.resumable = latest_step(c.run)
        c.scratch_left = scratch_folders(tmp)  # the killed worker's scratch stays behind
        for p in c.launch("second"):
            p.wait(timeout=WAIT)
        c.rcs = [p.returncode for p in c.procs]
        c.summaries = [json.loads(c.output("second", i).split("SUMMARY ", 1)[1].splitlines()[0])
                       if c.rcs[i] == 0 else None for i in range(2)]
        c.seconds = time.time() - c.t0
        yield c
    finally:
        c.kill_all()


@pytest.mark.slow
def test_killing_a_worker_stops_the_chief_in_one_line(cluster):
    assert cluster.killed_rc == -signal.SIGKILL
    assert cluster.chief_rc == 2, cluster.output("first", 0)[-3000:]
    errors = [line for line in cluster.output("first", 0).splitlines() if line.startswith("cadl: error:")]
    assert len(errors) == 1 and "another worker stopped answering" in errors[0]
    assert f"resume from {os.path.join(cluster.run, 'checkpoints', 'ckpt-')}" in errors[0]
    print(f"the chief stopped {cluster.chief_seconds:.1f} s after worker 1 was killed")


@pytest.mark.slow
def test_both_workers_resume_from_the_chiefs_checkpoint_and_reach_the_step(cluster):
    assert cluster.rcs == [0, 0], cluster.output("second", 0)[-3000:] + cluster.output("second", 1)[-3000:]
    assert KILL_AFTER <= cluster.resumable < STEPS and cluster.resumable % EVERY == 0
    for i, summary in enumerate(cluster.summaries):
        assert f"resumed from step {cluster.resumable}" in cluster.output("second", i)
        assert summary["step"] == STEPS and summary["stopped"] == "max_steps"
        assert summary["resumed_from"] == cluster.resumable
        assert summary["steps_this_run"] == STEPS - cluster.resumable
        assert summary["replicas"] == 2 and summary["batch_size"] == 8


@pytest.mark.slow
def test_both_workers_report_identical_losses(cluster):
    chief, worker = cluster.summaries
    steps = list(range(cluster.resumable + 2, STEPS + 1, 2))
    assert [h["step"] for h in chief["history"]] == steps
    # Exact: the training figures are the mean over the workers (one all-reduce), the validation figures each
    # worker's own over the whole validation set, equal only if the weights are.
    assert chief["history"] == worker["history"] and chief["train"] == worker["train"]
    assert chief["validation"] == worker["validation"]
    assert chief["history"][-1]["loss"] < chief["history"][0]["loss"]  # it goes on learning


@pytest.mark.slow
def test_the_chief_alone_writes_the_run_folder(cluster):
    chief = cluster.summaries[0]
    assert sorted(os.listdir(cluster.run)) == [".cadl", "checkpoints", "config.json", "export", "logs", "montages",
                                               "report", "report.html", "summary.json"]
    assert atomic.read_json(os.path.join(cluster.run, "summary.json")) == chief
    assert latest_step(cluster.run) == STEPS
    # Worker 1 wrote only into its scratch folder in its temp dir, removed when it finished; kill -9 leaves one.
    assert not cluster.summaries[1]["export"].startswith(cluster.run)
    assert len(cluster.scratch_left) == 1 and cluster.scratch_left[0].startswith("cadl-worker-1-")
    assert scratch_folders(cluster.tmp) == cluster.scratch_left


@pytest.mark.slow
def test_the_export_loads_and_infers(cluster):
    images = tfdata.load_images(cluster.data, "validation", 8)
    inference = export.load_inference(cluster.run)
    got = inference.reconstruct(images)
    assert got.shape == images.shape and got.dtype == np.uint8
    sm = tf.saved_model.load(os.path.join(cluster.run, "export", "saved_model"))
    served = sm.signatures["reconstruct"](images=tf.constant(images))["images"].numpy()
    assert np.abs(served.astype(int) - got.astype(int)).max() <= 1
    # The workers' own validation is what Keras' evaluate gives the exported model in one process.
    validation = cluster.summaries[0]["validation"]
    evaluated = training.evaluate(cluster.run, cluster.data, batch_size=8)
    for k in ("loss", "reconstruction", "kl", "psnr"):
        assert evaluated[k] == pytest.approx(validation[k], rel=1e-4)


def test_the_strategy_after_other_tensorflow_work_is_one_line(monkeypatch):
    """MultiWorkerMirroredStrategy configures collective ops, which only works before TensorFlow's runtime
    starts (here it has: this process listed its devices)."""
    tf.config.list_logical_devices("CPU")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": [f"127.0.0.1:{free_ports(1)[0]}"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(CadlError, match="multiworker: Collective ops must be configured at program startup; it "
                                        "must be the first TensorFlow work of its process"):
        pick_strategy("multiworker")
