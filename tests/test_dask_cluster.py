"""cadl extract and cadl render on a real Dask cluster: a scheduler and two worker processes on 127.0.0.1,
started and stopped here, the way README's "On a Dask cluster" starts them. What the cluster writes must be
what the default runner writes: the same records byte for byte, the same manifest counts and moments, the same
rendered frames; a worker killed mid-job loses and repeats nothing."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from pipelines import media
from pipelines.extract import ExtractConfig, extract
from pipelines.synthetic import make_film

dd = pytest.importorskip("dask.distributed")
pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``dask scheduler`` and ``dask worker`` processes (no nanny: a killed worker stays dead)."""

    def __init__(self, workers=2, log_dir="."):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log_dir, self.procs, self.workers = log_dir, [], {}
        self.procs.append(self._start("scheduler", [
            "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
            "--no-dashboard"]))
        for i in range(workers):
            self.workers[f"w{i}"] = self._start(f"w{i}", [
                "-m", "distributed.cli.dask_worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                "--no-nanny", "--no-dashboard", "--name", f"w{i}", "--death-timeout", "60"])
        self.procs += self.workers.values()
        with dd.Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=90)

    def _start(self, name, args):
        log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
        return subprocess.Popen([sys.executable] + args, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def worker_ids(self):
        """The "host:pid" of each live worker process, as extraction's summary names them."""
        with dd.Client(self.address, timeout=30) as client:
            return list(client.run(lambda: f"{socket.gethostname()}:{os.getpid()}").values())

    def stop(self):
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(log_dir=str(tmp_path))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def long_film(tmp_path_factory):
    """20 s at 25 fps with a keyframe every 10 frames: a few dozen segments of half a second to spread."""
    return make_film(tmp_path_factory.mktemp("dask") / "long.mp4", "testsrc2", seconds=20, size=(320, 180),
                     extra_video_args=("-g", "10", "-keyint_min", "10", "-sc_threshold", "0"))


def _records(folder):
    """{split: sorted record bytes} and the manifest's counts: what a dataset holds, whoever wrote it."""
    import json

    from pipelines import schema

    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    out = {}
    for split, entry in manifest["splits"].items():
        for name in entry["files"]:
            with open(os.path.join(folder, name), "rb") as f:
                out.setdefault(split, []).extend(schema.tfrecords(f.read()))
    counts = {k: v["count"] for k, v in manifest["splits"].items()}
    sources = {k: v["count"] for k, v in manifest["sources"].items()}
    return {k: sorted(v) for k, v in out.items()}, counts, sources


def _moments(folder):
    with np.load(os.path.join(folder, "moments.npz")) as z:
        return {k: z[k].copy() for k in z.files}


def _extract(film, out, *beam_args, **knobs):
    return extract(ExtractConfig(inputs=(str(film),), output=str(out), size=(32, 32), segment_seconds=0.5,
                                 beam_args=tuple(beam_args), **knobs))


def _same_dataset(a, b):
    ra, rb = _records(a), _records(b)
    assert ra[1] == rb[1] and ra[2] == rb[2]
    assert ra[0] == rb[0]  # every record, byte for byte, exactly once
    ma, mb = _moments(a), _moments(b)
    assert ma.keys() == mb.keys() and all(np.array_equal(ma[k], mb[k]) for k in ma)


def test_extract_on_a_dask_cluster_equals_the_default_runner(cluster, long_film, tmp_path):
    local = _extract(long_film, tmp_path / "local")
    on_dask = _extract(long_film, tmp_path / "dask", "--runner", "DaskRunner",
                       "--dask_client_address", cluster.address)
    assert on_dask["runner"] == "DaskRunner" and on_dask["records_new"] == local["records_new"] == 500
    _same_dataset(tmp_path / "local", tmp_path / "dask")
    spread = on_dask["segments_per_worker"]  # one film, both worker processes
    assert len(spread) == 2 and sum(spread.values()) == sum(local["segments_per_worker"].values()) > 20
    assert min(spread.values()) >= 5, spread
    assert set(spread) == set(cluster.worker_ids())
    assert not [n for n in os.listdir(tmp_path / "dask") if n.startswith(".cadl-extract-")]


def test_a_worker_killed_mid_extract_loses_and_repeats_nothing(cluster, long_film, tmp_path):
    _extract(long_film, tmp_path / "local")
    result, failure = {}, []

    def run():
        try:
            result.update(_extract(long_film, tmp_path / "dask", "--runner", "DaskRunner",
                                   "--dask_client_address", cluster.address))
        except BaseException as e:  # noqa: BLE001 - reported below
            failure.append(e)

    job = threading.Thread(target=run)
    job.start()
    # Kill the first worker seen writing a shard into the run's temp folder: a task dies mid-write.
    victim, deadline = None, time.monotonic() + 120
    while victim is None and job.is_alive() and time.monotonic() < deadline:
        for name, proc in cluster.workers.items():
            with contextlib.suppress(OSError):
                fds = os.listdir(f"/proc/{proc.pid}/fd")
                for fd in fds:
                    with contextlib.suppress(OSError):
                        if ".cadl-extract-" in os.readlink(f"/proc/{proc.pid}/fd/{fd}"):
                            victim = name
                            break
            if victim:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.01)
    job.join(timeout=300)
    assert victim, "no worker was seen writing"
    assert not job.is_alive() and not failure, failure
    assert result["records_new"] == 500
    _same_dataset(tmp_path / "local", tmp_path / "dask")


def test_render_on_a_dask_cluster_equals_the_local_render(cluster, tmp_path):
    from pipelines import export, training
    from pipelines.render import RenderConfig, render

    film = make_film(tmp_path / "film.mp4", "testsrc2", seconds=4, size=(128, 72),
                     extra_video_args=("-g", "25"))
    extract(ExtractConfig(inputs=(str(film),), output=str(tmp_path / "data"), size=(16, 16)))
    training.train(training.TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), preset="tiny",
                                        max_steps=5, progress=False))
    assert export.load_inference(str(tmp_path / "run"))
    common = dict(model=str(tmp_path / "run"), input=str(film), segment_seconds=1.0, codec="ffv1")
    local = render(RenderConfig(output=str(tmp_path / "local.mkv"), **common))
    on_dask = render(RenderConfig(output=str(tmp_path / "dask.mkv"), runner="DaskRunner",
                                  beam_args=("--dask_client_address", cluster.address), **common))
    assert on_dask["runner"] == "DaskRunner" and on_dask["segments"] == local["segments"] == 4
    assert on_dask["frames"] == local["frames"] == 100
    fa = [f for _, _, f in media.read_frames(tmp_path / "local.mkv")]
    fb = [f for _, _, f in media.read_frames(tmp_path / "dask.mkv")]
    assert len(fa) == len(fb) == 100 and all(np.array_equal(x, y) for x, y in zip(fa, fb))
