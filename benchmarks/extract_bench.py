"""How fast is ``cadl extract`` on a film, against the course's own recipe on the same film in the same run?

    /work/venv/bin/python benchmarks/extract_bench.py                    # both films, 5 minutes each
    /work/venv/bin/python benchmarks/extract_bench.py --seconds 30       # a quick look
    /work/venv/bin/python benchmarks/extract_bench.py --films real --repeat 3
    /work/venv/bin/python benchmarks/extract_bench.py -- --format jpeg   # options after -- go to cadl extract

Two films, each made here with the ffmpeg that imageio-ffmpeg ships: "generated", H.264 in MP4 at 640x360
(``--film-size``, ``--source``), records 72x128 (``--size``); and "real", the kind users bring from the course's
era: MPEG-4 Part 2 with B-frames in AVI (XviD tag, no pts), 768x576 with grain, records 64x64 (``--real-size``).

Baseline: ``ffmpeg -i film -s WxH -f image2 frames/%08d.jpg`` (the course's frame dump). Ours: the whole
``cadl extract --input film --output DIR --size HxW`` command as a subprocess, interpreter and pipeline start-up
included. Both are timed on the same film one after the other, ``--repeat`` pairs (medians reported), and the
figures that matter are the ratio of their frame rates (baseline wall / ours for the same frames; goal >= 1.0x)
and CPU seconds per frame of the whole process tree (goal: at most the baseline's). The last line gives the
ratio of each film.

Peak memory is the largest sum of resident memory over the command's whole process tree (Python, its
worker threads, the ffmpeg decoders), sampled every 20 ms from /proc (a child caught between fork and exec,
which shares its parent's pages, is not counted twice); the largest single process comes from
``getrusage(RUSAGE_CHILDREN)``. The machine may be shared: run it when it is quiet, and compare figures
from the same run only.

Figures behind choices in the extraction code (measured when each choice was made; rerun to check them):
  - PNG records are written with the "up" filter and run-length zlib (``extract_decode._Encode``): 2-2.5x
    faster than libpng's adaptive filters with deflate, within a few % of their size (testsrc2 and mandelbrot
    frames). cadl writes the PNG itself (``extract_decode.encode_png``: numpy's row differences, Python's
    zlib) from the RGB the decoder gives: byte for byte the size of OpenCV's libpng with the same settings,
    114 vs 130 us per 72x128 testsrc2 frame and 124 vs 134 us per 64x64 real-kind frame (cvtColor to BGR
    included, as OpenCV needs it; Dec 2026). zlib itself is ~110 us of it.
  - Per-pixel moments accumulate in uint32 with in-place adds (``extract_decode._Moments``): twice as fast as
    int64 temporaries.
  - The local runner's workers (``extract_beam.pipeline_options``): threads on up to 4 cores (on 2 cores threads
    were faster than processes, Beam's start-up included); on more, the ~0.1 ms of Python per frame that holds
    the GIL caps threads near what ~4 ffmpeg decoders deliver, so the workers are processes.
  - Neither the driver nor the workers import TensorFlow: it costs ~2 s and ~0.6 GB per process
    (``schema.RecordEncoder`` writes the Example wire format instead).
  - Where ``cadl extract``'s CPU goes on the real-kind film (7,500 frames, 64x64 PNG records, 2 cores, Dec
    2026): ffmpeg ~4.9 s (decoding alone 3.4 s; the scale to 64x64 ~1 s), Python ~2.6 s: Beam's import,
    graph and runner ~1.0 s whatever the film, PNG encoding ~0.9 s (zlib itself: 110 us per 64x64 picture,
    as much in ffmpeg's own PNG encoder; level 0 would be 20 us at 2.8x the size), records and shards ~0.2 s,
    reading frames ~0.2 s. The probe is ~0.1 s (a demux and 8 decoded frames: the film is not decoded twice).
    Against the recipe's ~7 CPU s, all in ffmpeg (JPEG at 64x64 costs 20 us).
  - A decoded frame's timestamp comes from ffmpeg's ``-stats_enc_pre`` on a pipe of its own, not from
    ``showinfo`` lines on stderr parsed in a thread: Python's CPU to read 7,500 frames 0.4-0.5 s -> 0.2 s.
  - ffmpeg's filters get the decoder's one thread (``-filter_threads 1``): the default, one per core, cost
    0.5-1.0 CPU s of hand-overs on the real-kind film, for the same pixels.
  - Films are cut by work (``extract_decode.segment_seconds``): 4 work items for the real-kind film on 2 workers
    instead of 16 10-second ones (each an ffmpeg start and a seek: ~25 ms CPU).
"""
import argparse
import json
import os
import resource
import shutil
import statistics
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
    p.add_argument("--seconds", type=float, default=300.0, help="length of each film in seconds (default: 300)")
    p.add_argument("--film-size", default="640x360", help="generated film's picture size WxH (default: 640x360)")
    p.add_argument("--rate", default="25", help="film frame rate (default: 25)")
    p.add_argument("--source", default="testsrc2", choices=("testsrc2", "mandelbrot", "life"),
                   help="lavfi source of the generated film (default: testsrc2)")
    p.add_argument("--size", default="72x128", help="record size HxW for cadl extract on the generated film; "
                                                    "the baseline gets the same as WxH (default: 72x128)")
    p.add_argument("--real-film-size", default="768x576",
                   help="real-kind film's picture size WxH (default: 768x576, PAL's square-pixel size)")
    p.add_argument("--real-size", default="64x64", help="record size HxW on the real-kind film (default: 64x64)")
    p.add_argument("--films", default="generated,real",
                   help="which films to run, comma-separated: generated, real (default: both)")
    p.add_argument("--workdir", default=None, help="where the films and outputs go (default: a temp folder; "
                                                    "films are reused between runs when they exist there)")
    p.add_argument("--repeat", type=int, default=1, help="timed A/B pairs on each film; the median of each "
                                                         "side's wall and CPU is reported (the best too)")
    p.add_argument("--entry", choices=("cadl", "module"), default="cadl",
                   help="run 'cadl extract' (the console script, via jobs.cli) or 'python -m jobs.extract'")
    p.add_argument("extra", nargs="*", help="options after -- are passed to cadl extract")
    return p


def make_real_kind(path, seconds, size, rate):
    """An AVI like the films users bring from the course's era: MPEG-4 Part 2 (XviD tag) with B-frames and
    a keyframe at most every 10 s (XviD's default), MP3 audio; grain over testsrc2's moving pattern so the
    decoder has real texture to work on."""
    make_film(path, "testsrc2", seconds=seconds, size=size, rate=rate, audio=True,
              extra_video_args=["-vf", "noise=alls=4:allf=t", "-c:v", "mpeg4", "-vtag", "XVID", "-q:v", "4",
                                "-bf", "2", "-g", "250", "-pix_fmt", "yuv420p"])
    return path


def run_film(args, workdir, kind, env, entry):
    """Times the baseline and cadl extract on one film, alternately ``--repeat`` times; returns the figures."""
    if kind == "generated":
        fw, fh = (int(v) for v in args.film_size.lower().split("x"))
        h, w = (int(v) for v in args.size.lower().split("x"))
        film = os.path.join(workdir, f"{args.source}-{fw}x{fh}-{args.rate}-{args.seconds:g}s.mp4")
        make = lambda: make_film(film, args.source, seconds=args.seconds, size=(fw, fh), rate=args.rate,
                                 audio=True)
    else:
        fw, fh = (int(v) for v in args.real_film_size.lower().split("x"))
        h, w = (int(v) for v in args.real_size.lower().split("x"))
        film = os.path.join(workdir, f"xvid-{fw}x{fh}-{args.rate}-{args.seconds:g}s.avi")
        make = lambda: make_real_kind(film, args.seconds, (fw, fh), args.rate)
    if not os.path.exists(film):
        print(f"generating {film} ...", flush=True)
        t = time.perf_counter()
        make()
        print(f"  {time.perf_counter() - t:.1f} s", flush=True)
    info = media.probe(film)
    print(f"\n{kind} film: {info.num_frames} frames, {info.width}x{info.height} {info.video_codec}, "
          f"{float(info.fps):g} fps, {info.duration:.1f} s, {len(info.keyframes)} keyframes, "
          f"{os.path.getsize(film) / 2 ** 20:.1f} MiB; records {h}x{w}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    frames_dir, out = os.path.join(workdir, "frames"), os.path.join(workdir, "dataset")
    baseline_cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", film, "-s", f"{w}x{h}", "-f", "image2",
                    os.path.join(frames_dir, "%08d.jpg")]
    ours_cmd = entry + ["--input", film, "--output", out, "--size", f"{h}x{w}"] + list(args.extra)
    runs = {"baseline": [], "cadl extract": []}
    for attempt in range(args.repeat):
        for name, cmd in (("baseline", baseline_cmd), ("cadl extract", ours_cmd)):
            shutil.rmtree(frames_dir, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(frames_dir)
            run = timed(cmd, env)
            if run.returncode != 0:
                print(f"{name} failed ({run.returncode}):\n{run.stderr}", file=sys.stderr)
                return None
            if name == "baseline":
                count = len(os.listdir(frames_dir))
            else:
                with open(os.path.join(out, "summary.json")) as f:
                    count = json.load(f)["records_new"]
            print(f"  {name:13s} run {attempt + 1}: {count} frames in {run.seconds:.2f} s = "
                  f"{count / run.seconds:.0f} fps, peak memory {run.peak / 2 ** 20:.0f} MiB, CPU {run.cpu:.2f} s "
                  f"({run.cpu / count * 1e3:.2f} ms/frame), load {os.getloadavg()[0]:.2f}", flush=True)
            runs[name].append({"seconds": run.seconds, "count": count, "peak": run.peak, "cpu": run.cpu})
    base, ours = (_summarise(runs[k]) for k in ("baseline", "cadl extract"))
    if ours["count"] != info.num_frames:
        print(f"warning: cadl extract wrote {ours['count']} records for {info.num_frames} frames", file=sys.stderr)
    # Both sides decode the same frames; the recipe may write a frame more or less (its -s rescale keeps
    # ffmpeg's own rate handling), so speed is compared as frames per second.
    ratio = (ours["count"] / ours["seconds"]) / (base["count"] / base["seconds"])
    best = (ours["count"] / ours["best"]) / (base["count"] / base["best"])
    print(f"baseline  ffmpeg -i film -s {w}x{h} -f image2 frames/%08d.jpg : "
          f"{base['count'] / base['seconds']:.0f} fps ({base['seconds']:.2f} s median), "
          f"peak {base['peak'] / 2 ** 20:.0f} MiB")
    print(f"ours      {' '.join(['cadl extract'] + ours_cmd[len(entry):]).replace(workdir, '$W')} : "
          f"{ours['count'] / ours['seconds']:.0f} fps ({ours['seconds']:.2f} s median), "
          f"peak {ours['peak'] / 2 ** 20:.0f} MiB")
    cpu_ours, cpu_base = ours["cpu"] / ours["count"] * 1e3, base["cpu"] / base["count"] * 1e3
    print(f"{kind}: ratio {ratio:.2f}x the baseline's frame rate (best runs {best:.2f}x; goal >= 1.0x); CPU per "
          f"frame {cpu_ours:.2f} ms vs {cpu_base:.2f} ms ({ours['cpu']:.2f} vs {base['cpu']:.2f} CPU s, "
          f"{cpu_ours / cpu_base:.2f}x; goal <= 1.0x)", flush=True)
    return {"ratio": ratio, "cpu": cpu_ours / cpu_base}


def _summarise(runs):
    """Medians of a side's runs (wall, CPU, peak) and its best wall time."""
    pick = lambda key: statistics.median(r[key] for r in runs)
    return {"seconds": pick("seconds"), "cpu": pick("cpu"), "peak": pick("peak"), "count": runs[0]["count"],
            "best": min(r["seconds"] for r in runs)}


def main(argv=None):
    args = build_parser().parse_args(argv)
    kinds = [k.strip() for k in args.films.split(",") if k.strip()]
    if not kinds or any(k not in ("generated", "real") for k in kinds):
        print("--films takes generated, real or both", file=sys.stderr)
        return 2
    workdir = args.workdir or tempfile.mkdtemp(prefix="extract-bench-")
    os.makedirs(workdir, exist_ok=True)
    entry = [sys.executable, "-m", "jobs.cli", "extract"] if args.entry == "cadl" else \
        [sys.executable, "-m", "jobs.extract"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = {}
    for kind in kinds:
        results[kind] = run_film(args, workdir, kind, env, entry)
        if results[kind] is None:
            return 1
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nlargest single process {largest:.0f} MiB; load average {os.getloadavg()[0]:.2f}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print("ratio (baseline wall / ours, goal >= 1.0x): " +
          ", ".join(f"{k} {r['ratio']:.2f}x (CPU {r['cpu']:.2f}x)" for k, r in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
