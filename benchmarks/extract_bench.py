"""How fast is ``cadl extract`` on a film, against the course's own recipe on the same film in the same run?

    /work/venv/bin/python benchmarks/extract_bench.py                    # 5 minutes of 640x360, 72x128 records
    /work/venv/bin/python benchmarks/extract_bench.py --seconds 30       # a quick look
    /work/venv/bin/python benchmarks/extract_bench.py -- --format jpeg   # options after -- go to cadl extract

Baseline: ``ffmpeg -i film -s WxH -f image2 frames/%08d.jpg`` (the course's frame dump, with the ffmpeg that
imageio-ffmpeg ships). Ours: the whole ``cadl extract --input film --output DIR --size HxW`` command as a
subprocess, interpreter and pipeline start-up included. Both are timed on the same generated film one after
the other, and the figure that matters is the ratio of their frame rates (goal: >= 0.5x).

Peak memory is the largest sum of resident memory over the command's whole process tree (Python, its
worker threads, the ffmpeg decoders), sampled every 20 ms from /proc (a child caught between fork and exec,
which shares its parent's pages, is not counted twice); the largest single process comes from
``getrusage(RUSAGE_CHILDREN)``. The machine may be shared: run it when it is quiet, and compare figures
from the same run only.

Figures behind choices in the extraction code (measured when each choice was made; rerun to check them):
  - PNG records are written with the "up" filter and run-length zlib (``extract_decode._Encode``): 2-2.5x
    faster than libpng's adaptive filters with deflate, within a few % of their size (testsrc2 and mandelbrot
    frames).
  - Per-pixel moments accumulate in uint32 with in-place adds (``extract_decode._Moments``): twice as fast as
    int64 temporaries.
  - The local runner's workers (``extract_beam.pipeline_options``): threads on up to 4 cores (on 2 cores threads
    were faster than processes, Beam's start-up included); on more, the ~0.1 ms of Python per frame that holds
    the GIL caps threads near what ~4 ffmpeg decoders deliver, so the workers are processes.
  - Neither the driver nor the workers import TensorFlow: it costs ~2 s and ~0.6 GB per process
    (``schema.RecordEncoder`` writes the Example wire format instead).
"""
import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pipelines import media  # noqa: E402
from pipelines.media import ffmpeg_exe  # noqa: E402
from pipelines.synthetic import make_film  # noqa: E402

from measure import timed  # noqa: E402  (benchmarks/measure.py)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="film length in seconds (default: 300)")
    p.add_argument("--film-size", default="640x360", help="film picture size WxH (default: 640x360)")
    p.add_argument("--rate", default="25", help="film frame rate (default: 25)")
    p.add_argument("--source", default="testsrc2", choices=("testsrc2", "mandelbrot", "life"),
                   help="lavfi source of the film (default: testsrc2)")
    p.add_argument("--size", default="72x128", help="record size HxW for cadl extract; the baseline gets the "
                                                    "same as WxH (default: 72x128)")
    p.add_argument("--workdir", default=None, help="where the film and outputs go (default: a temp folder; the "
                                                    "film is reused between runs when it exists there)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each command; the best is reported")
    p.add_argument("--entry", choices=("cadl", "module"), default="cadl",
                   help="run 'cadl extract' (the console script, via jobs.cli) or 'python -m jobs.extract'")
    p.add_argument("extra", nargs="*", help="options after -- are passed to cadl extract")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    fw, fh = (int(v) for v in args.film_size.lower().split("x"))
    workdir = args.workdir or tempfile.mkdtemp(prefix="extract-bench-")
    os.makedirs(workdir, exist_ok=True)
    film = os.path.join(workdir, f"{args.source}-{fw}x{fh}-{args.rate}-{args.seconds:g}s.mp4")
    if not os.path.exists(film):
        print(f"generating {film} ...", flush=True)
        t = time.perf_counter()
        make_film(film, args.source, seconds=args.seconds, size=(fw, fh), rate=args.rate, audio=True)
        print(f"  {time.perf_counter() - t:.1f} s", flush=True)
    info = media.probe(film)
    print(f"film: {info.num_frames} frames, {info.width}x{info.height}, {float(info.fps):g} fps, "
          f"{info.duration:.1f} s, {os.path.getsize(film) / 2 ** 20:.1f} MiB; records {h}x{w}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)

    frames_dir, out = os.path.join(workdir, "frames"), os.path.join(workdir, "dataset")
    baseline_cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", film, "-s", f"{w}x{h}", "-f", "image2",
                    os.path.join(frames_dir, "%08d.jpg")]
    entry = [sys.executable, "-m", "jobs.cli", "extract"] if args.entry == "cadl" else \
        [sys.executable, "-m", "jobs.extract"]
    ours_cmd = entry + ["--input", film, "--output", out, "--size", f"{h}x{w}"] + list(args.extra)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    best = {}
    for attempt in range(args.repeat):
        for name, cmd in (("baseline", baseline_cmd), ("cadl extract", ours_cmd)):
            shutil.rmtree(frames_dir, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(frames_dir)
            run = timed(cmd, env)
            seconds, peak, cpu = run.seconds, run.peak, run.cpu
            if run.returncode != 0:
                print(f"{name} failed ({run.returncode}):\n{run.stderr}", file=sys.stderr)
                return 1
            if name == "baseline":
                count = len(os.listdir(frames_dir))
            else:
                with open(os.path.join(out, "summary.json")) as f:
                    count = json.load(f)["records_new"]
            print(f"  {name:13s} run {attempt + 1}: {count} frames in {seconds:.2f} s = {count / seconds:.0f} fps, "
                  f"peak memory {peak / 2 ** 20:.0f} MiB, CPU {cpu:.2f} s", flush=True)
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = {"seconds": seconds, "count": count, "peak": peak, "cpu": cpu}
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    base, ours = best["baseline"], best["cadl extract"]
    if ours["count"] != info.num_frames:
        print(f"warning: cadl extract wrote {ours['count']} records for {info.num_frames} frames", file=sys.stderr)
    ratio = (ours["count"] / ours["seconds"]) / (base["count"] / base["seconds"])
    print(f"\nbaseline  ffmpeg -i film -s {w}x{h} -f image2 frames/%08d.jpg : "
          f"{base['count'] / base['seconds']:.0f} fps ({base['seconds']:.2f} s), peak {base['peak'] / 2 ** 20:.0f} MiB")
    print(f"ours      {' '.join(['cadl extract'] + ours_cmd[len(entry):]).replace(workdir, '$W')} : "
          f"{ours['count'] / ours['seconds']:.0f} fps ({ours['seconds']:.2f} s), peak {ours['peak'] / 2 ** 20:.0f} MiB "
          f"(largest single process {largest:.0f} MiB)")
    print(f"ratio     {ratio:.2f}x the baseline's frame rate (goal >= 0.5x); CPU time per frame "
          f"{ours['cpu'] / ours['count'] * 1e3:.2f} ms vs {base['cpu'] / base['count'] * 1e3:.2f} ms "
          f"(less sensitive to a busy machine than wall time)")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
