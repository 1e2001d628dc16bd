"""How does ``cadl extract`` scale on a Dask cluster, against the default runner in the same run?

    /work/venv/bin/python benchmarks/cluster_bench.py                     # 5 minutes of 640x360, 1, 2, 4 workers
    /work/venv/bin/python benchmarks/cluster_bench.py --seconds 60 --workers 1,2

One generated film (testsrc2, keyframe every 2 s so that it cuts into many segments) is extracted with the
whole ``cadl extract`` command (a subprocess, start-up included) by the default runner, then on a Dask
cluster of N worker processes (one thread each) started here with ``dask scheduler`` / ``dask worker`` on
127.0.0.1 and kept up between runs, as a real cluster is (its start-up is printed, not counted). Printed for
each: frames/s, CPU seconds of the command and of the workers, how many segments each worker decoded (from
the run's summary) and whether the records equal the default runner's byte for byte. The last line is the
scaling ratio: frames/s on the most workers over frames/s on one.

The ceiling: a worker process decodes with one ffmpeg (which itself uses a thread or two) and encodes PNGs in
Python, so N workers need about N cores; on a 2-core machine two workers are the most that can help, and four
only add contention. The driver's own work (probe, planning, publishing, reading every shard back) is serial.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from measure import timed  # noqa: E402  (benchmarks/measure.py)
from pipelines import media  # noqa: E402
from pipelines.synthetic import make_film  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="film length in seconds (default: 300)")
    p.add_argument("--film-size", default="640x360", help="film picture size WxH (default: 640x360)")
    p.add_argument("--size", default="72x128", help="record size HxW (default: 72x128)")
    p.add_argument("--workers", default="1,2,4", help="Dask worker processes to try (default: 1,2,4)")
    p.add_argument("--segment-seconds", type=float, default=10.0, help="cadl extract --segment-seconds")
    p.add_argument("--workdir", default=None, help="where the film and outputs go (default: a temp folder)")
    return p


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_cluster(n, log_dir):
    port = _port()
    address = f"tcp://127.0.0.1:{port}"
    logs = open(os.path.join(log_dir, f"cluster-{n}.log"), "w")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], stdout=logs, stderr=logs,
                              start_new_session=True)]
    for i in range(n):
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--host",
                                       "127.0.0.1", "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"],
                                      stdout=logs, stderr=logs, start_new_session=True))
    import dask.distributed as dd
    with dd.Client(address, timeout=60) as client:
        client.wait_for_workers(n, timeout=120)
    return address, procs


def _workers_cpu(procs):
    """CPU seconds so far of the workers' process trees (nanny, worker and their ffmpeg children)."""
    total = 0.0
    for p in procs[1:]:
        for pid in _tree(p.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf(
                    "SC_CLK_TCK")
            except OSError:
                pass
    return total


def _tree(root):
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def _records(folder):
    from pipelines import schema

    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    out = {}
    for split, entry in manifest["splits"].items():
        for name in entry["files"]:
            with open(os.path.join(folder, name), "rb") as f:
                out.setdefault(split, []).extend(schema.tfrecords(f.read()))
    return {k: sorted(v) for k, v in out.items()}


def main(argv=None):
    args = build_parser().parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="cluster-bench-")
    os.makedirs(workdir, exist_ok=True)
    fw, fh = (int(v) for v in args.film_size.lower().split("x"))
    film = os.path.join(workdir, f"testsrc2-{fw}x{fh}-{args.seconds:g}s.mp4")
    if not os.path.exists(film):
        print(f"generating {film} ...", flush=True)
        make_film(film, "testsrc2", seconds=args.seconds, size=(fw, fh), extra_video_args=("-g", "50"))
    info = media.probe(film)
    print(f"film: {info.num_frames} frames, {info.width}x{info.height}, {info.duration:.0f} s; records "
          f"{args.size}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = [sys.executable, "-m", "jobs.cli", "extract", "--input", film, "--size", args.size,
            "--segment-seconds", str(args.segment_seconds)]

    def extract(name, extra, procs=None):
        out = os.path.join(workdir, name)
        shutil.rmtree(out, ignore_errors=True)
        before = _workers_cpu(procs) if procs else 0.0
        run = timed(base + ["--output", out] + extra, env)
        if run.returncode != 0:
            sys.exit(f"{name} failed ({run.returncode}):\n{run.stderr}")
        workers_cpu = _workers_cpu(procs) - before if procs else 0.0
        summary = json.load(open(os.path.join(out, "summary.json")))
        fps = summary["records_new"] / run.seconds
        spread = sorted(summary.get("segments_per_worker", {}).values(), reverse=True)
        print(f"  {name:14s} {summary['records_new']} records in {run.seconds:6.2f} s = {fps:5.0f} frames/s, "
              f"CPU {run.cpu:6.2f} s here + {workers_cpu:6.2f} s in workers; segments per worker {spread}",
              flush=True)
        return out, fps

    local_out, local_fps = extract("default runner", [])
    reference = _records(local_out)
    rates = {}
    for n in [int(v) for v in args.workers.split(",")]:
        t = time.perf_counter()
        address, procs = _start_cluster(n, workdir)
        print(f"  (a scheduler and {n} worker processes up in {time.perf_counter() - t:.1f} s)", flush=True)
        try:
            out, rates[n] = extract(f"dask x{n}", ["--runner", "DaskRunner", "--dask_client_address", address], procs)
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        same = _records(out) == reference
        print(f"    records equal to the default runner's: {same}", flush=True)
        if not same:
            sys.exit("the Dask run wrote different records")
    most, least = max(rates), min(rates)
    for n, fps in sorted(rates.items()):
        print(f"dask x{n} / default runner = {fps / local_fps:.2f}")
    print(f"dask x{most} / dask x{least} (scaling) = {rates[most] / rates[least]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
