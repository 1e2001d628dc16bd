"""How fast is ``cadl render``, against its two unavoidable parts run alone on the same film in the same run,
and does its memory stay flat with the film's length?

    /work/venv/bin/python benchmarks/render_bench.py                          # 1-minute and 10-minute films
    /work/venv/bin/python benchmarks/render_bench.py --seconds 20 --long-seconds 120   # a quick look
    /work/venv/bin/python benchmarks/render_bench.py --model runs/films -- --smooth 5  # options after -- go
                                                                                       # to cadl render

Speed, on the short film (``--seconds``, default 60):
  (a) ffmpeg alone transcoding the film to the same codec and settings (libx264, ``--crf``, ``--preset``,
      yuv420p, audio copied): the decode + encode floor; run with ffmpeg's own thread count and with the
      encoder threads the render chose, and each figure is the better of the two;
  (b) the model alone as a job of its own: load the model, trace it (the first call) and reconstruct the
      same frames (already decoded and fitted, in memory, untimed) in batches of the same size as the render
      uses, in a process of its own, with TensorFlow's own thread count and with the render's
      (``--model-threads``); again the better of the two for each figure. Like (a), whose ffmpeg starts,
      opens its codecs and writes its file, (b) does what the model cannot be used without: the render's job
      loads and traces the same model, and both figures leave out the interpreter and TensorFlow's import;
  ours: ``cadl render --model M --input FILM --output OUT.mp4`` as a subprocess, reported three ways: the
      whole command (interpreter, TensorFlow import, model load included), the work the job times itself
      (``seconds.total`` / ``cpu_seconds.total`` of its summary: model load, render, join), and the frames
      alone (``seconds.render`` / ``cpu_seconds.render``: the streaming part, first model call included).
Each is shown with its CPU seconds (every process and thread). Goal on a machine whose model runs on an
accelerator: ours at most 1.15x the larger of (a) and (b) in wall time. On a CPU machine each of (a) and (b)
fills the cores by itself, so what is measured is waste: the job's CPU against (a)'s plus (b)'s, the last
line, ``render CPU / (ffmpeg CPU + model CPU) = X.XX`` (goal <= 1.15).

Memory: the same render command on the short film and on a long one (``--long-seconds``, default 600).
Peak memory is the largest sum of resident memory over the command's process tree (Python and its ffmpeg
decoder and encoders), sampled every 20 ms from /proc (a child caught between fork and exec, which shares
its parent's pages, is not counted twice); the Python process's own peak is shown too.
Goal: the two peaks within 25% of each other.

Last run (Dec 2026, 2 CPU cores, a slower machine than the earlier figures below, default 64x64 model,
320x180 film of 1,500 frames, ``--repeat 3``): (a) 4.5 s, 7.1 CPU s; (b) 8.0 s, 12.2 CPU s, 1.5 of them load
and first call; cadl render: frames 13.4 s, 19.6 CPU s (1.10x (a)+(b) without (b)'s load); job 14.4 s, 20.6 CPU
s (1.07x, the last line; 1.16x against a (b) without its load, the definition before this round); whole
command 22.9 s, 29.2 CPU s, of which 8.5 s start-up ('import tensorflow' alone 8.3 s here).
What this round changed: loading a model no longer traces the whole VAE symbolically to build it
(``VAE.build_from_config``: the encoder and decoder are built by the constructor), and inference graphs are
traced without autograph (they have no Python control flow): about 0.25 CPU s of the model's load and first
call.
Earlier (another machine): (a) 2.0 s, 3.0 CPU s; (b) without its load 1.9 s, 2.5 CPU s; job 7.5 CPU s (1.37x);
before that round 9.1 CPU s against 5.7 (1.5x) and ``cadl render --help`` 3.2 s. What that round changed:
  - the model gets half the cores (``--model-threads``, default) and the encoder the rest: TensorFlow with
    one thread per op takes 2.55 CPU s where two take 3.08, x264 on one thread 2.7 where three take 3.2, and
    neither slows the render (it needs both anyway): about -0.9 CPU s;
  - segments of 30 s of film instead of 10 (``--segment-seconds``): each starts an encoder, about 0.1 CPU s;
  - start-up: a job's ``--help`` imports neither TensorFlow nor Beam (3.2 s -> 0.15 s), and Keras no longer
    pulls in matplotlib.pyplot (0.35 s of every TensorFlow job's start); what is left before the job starts
    (2.6 s) is TensorFlow's own import (2.7 s alone here).
Tried without gain: XLA (``jit_compile``) inference, 4.2 CPU s for what the graph does in 3.1 on this CPU;
batches of 32 (10% less model CPU, on both sides of the ratio); loading the SavedModel instead of the Keras
file (its load costs what the Keras load and trace save; its first call still optimises the graph); no
grappler (first call 0.1 s cheaper, every batch 15% dearer); Python converting frames to YUV 4:2:0 for the
encoder (OpenCV's conversion costs about what ffmpeg's does, with other chroma); larger pipe buffers.
Where the rest went on the earlier machine (py-spy, per-thread CPU from /proc): the decoder is a second
ffmpeg process (0.5 CPU s: the transcode decodes inside its own), the encoder reads RGB and converts it
(0.2 CPU s), Python's per-batch work in the main thread 0.4 CPU s and the other threads 0.3 CPU s (queues,
composing, pipe writes). On this round's machine: TensorFlow's compute 10.6 CPU s (as the model alone), the
main thread 1.8 (load 0.9, trace 0.7), the encoder ~6.9 and decoder ~1.5 (against 7.3 for (a)), the writer
thread 0.6.
Earlier: peak memory 749 MiB (60 s film) vs 756 MiB (600 s film), 1.01x.

Start-up: importing Apache Beam delays a render's start by about a second, which is why
``pipelines.render_engine`` imports it only when a ``--runner`` asks for Beam.

Without ``--model`` a model of the default architecture at ``--size`` (64x64) is trained for a few steps
on frames extracted from a 10 s film (its quality does not matter here, only its cost). The machine may be
shared: run it when it is quiet, and compare figures from the same run only.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipelines import media  # noqa: E402
from pipelines.media import ffmpeg_exe  # noqa: E402
from pipelines.synthetic import make_film  # noqa: E402

from measure import timed  # noqa: E402  (benchmarks/measure.py)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="short film, for speed and memory (default: 60)")
    p.add_argument("--long-seconds", type=float, default=600.0, help="long film, for memory (default: 600)")
    p.add_argument("--film-size", default="320x180", help="film picture size WxH (default: 320x180)")
    p.add_argument("--rate", default="25", help="film frame rate (default: 25)")
    p.add_argument("--source", default="testsrc2", choices=("testsrc2", "mandelbrot", "life"),
                   help="lavfi source of the films (default: testsrc2)")
    p.add_argument("--model", default=None, help="a trained model; default: train one briefly (see above)")
    p.add_argument("--size", default="64x64", help="model input HxW when training one (default: 64x64)")
    p.add_argument("--train-steps", type=int, default=30, help="steps when training one (default: 30)")
    p.add_argument("--crf", type=int, default=18, help="H.264 crf for render and baseline (default: 18)")
    p.add_argument("--preset", default="medium", help="H.264 preset for both (default: medium)")
    p.add_argument("--batch-size", type=int, default=16, help="render's --batch-size and (b)'s (default: 16)")
    p.add_argument("--model-threads", type=int, default=0, help="render's --model-threads and (b)'s (default: 0)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each speed measurement; best kept")
    p.add_argument("--workdir", default=None, help="films, model and outputs (default: a temp folder; films "
                                                    "and the model are reused when they exist there)")
    p.add_argument("extra", nargs="*", help="options after -- are passed to cadl render")
    return p


def film(workdir, args, seconds):
    fw, fh = (int(v) for v in args.film_size.lower().split("x"))
    path = os.path.join(workdir, f"{args.source}-{fw}x{fh}-{args.rate}-{seconds:g}s.mp4")
    if not os.path.exists(path):
        print(f"generating {path} ...", flush=True)
        make_film(path, args.source, seconds=seconds, size=(fw, fh), rate=args.rate, audio=True)
    return path


def train_model(workdir, args):
    run_dir = os.path.join(workdir, f"model-{args.size}-{args.train_steps}")
    if os.path.exists(os.path.join(run_dir, "export", "model.keras")):
        return run_dir
    from jobs import extract, train
    source = make_film(os.path.join(workdir, "train.mp4"), "mandelbrot", seconds=10, size=(320, 180), rate="25")
    data = os.path.join(workdir, "train-data")
    shutil.rmtree(data, ignore_errors=True)
    print(f"training a {args.size} model for {args.train_steps} steps ...", flush=True)
    extract.run(["--input", source, "--output", data, "--size", args.size])
    train.run(["--data", data, "--out", run_dir, "--max-steps", str(args.train_steps), "--no-progress"])
    return run_dir


MODEL_ALONE = r"""
import json, sys, time
import numpy as np
from pipelines import media
model_path, film, batch_size, threads, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
frames = np.stack([f for _, _, f in media.read_frames(film, size=tuple(int(v) for v in sys.argv[6].split("x")),
                                              fit=sys.argv[7])])
batches = []
for i in range(0, len(frames), batch_size):  # padded to the batch size, as the render pads
    b = frames[i:i + batch_size]
    if len(b) < batch_size:
        b = np.concatenate([b, np.zeros((batch_size - len(b),) + b.shape[1:], b.dtype)])
    batches.append(b)
from pipelines import export  # TensorFlow's import: outside the job's time, as in the render's summary
start, cpu = time.perf_counter(), time.process_time()
if threads != "tensorflow":
    export.share_cpu_with_ffmpeg(int(threads))  # what cadl render does before it loads the model
model = export.load_inference(model_path)
model.reconstruct(batches[0])  # the first call traces the graph: part of the model's own job
ready = time.perf_counter() - start, time.process_time() - cpu
best = (float("inf"), float("inf"))
for _ in range(repeat):
    start, cpu = time.perf_counter(), time.process_time()
    for b in batches:
        model.reconstruct(b)
    best = min(best[0], time.perf_counter() - start), min(best[1], time.process_time() - cpu)
print(json.dumps({"seconds": ready[0] + best[0], "cpu": ready[1] + best[1],
                  "load_seconds": ready[0], "load_cpu": ready[1]}))
"""


def model_alone(model, film_path, batch_size, threads, repeat, env, size, fit):
    """The model alone, as a job of its own: load the model, trace it (the first call) and reconstruct every
    frame of the film in batches of ``batch_size`` (frames decoded and fitted in memory beforehand, untimed),
    with TensorFlow's ``threads`` per op ("tensorflow": its own choice; 0: what cadl render chooses), in a
    process of its own (a thread count is set once). ``size`` (H, W) and ``fit``: the model's, from the
    render's summary. Returns a dict: seconds, cpu (load and first call included), load_seconds, load_cpu."""
    h, w = size
    out = subprocess.run([sys.executable, "-c", MODEL_ALONE, model, film_path, str(batch_size), str(threads),
                          str(repeat), f"{h}x{w}", fit],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def render_cmd(model, film_path, out, args):
    return [sys.executable, "-m", "jobs.cli", "render", "--model", model, "--input", film_path, "--output", out,
            "--crf", str(args.crf), "--preset", args.preset, "--batch-size", str(args.batch_size),
            "--model-threads", str(args.model_threads),
            "--overwrite"] + list(args.extra)


def main(argv=None):
    args = build_parser().parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="render-bench-")
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    short = film(workdir, args, args.seconds)
    long_ = film(workdir, args, args.long_seconds)
    model = args.model or train_model(workdir, args)
    info = media.probe(short)
    print(f"film: {info.num_frames} frames, {info.width}x{info.height}, {float(info.fps):g} fps, "
          f"{info.duration:.1f} s; model {model}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)

    out_ff, out_ours = os.path.join(workdir, "ffmpeg.mp4"), os.path.join(workdir, "render.mp4")
    ff_cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", short, "-map", "0:v:0", "-map", "0:a?",
              "-c:v", "libx264", "-crf", str(args.crf), "-preset", args.preset, "-pix_fmt", "yuv420p",
              "-c:a", "copy", out_ff]
    inf = float("inf")
    best = dict.fromkeys(("ffmpeg", "model", "render", "render_job", "render_frames"), inf)
    cpu = dict.fromkeys(("ffmpeg", "model", "model_tf", "render", "render_job", "render_frames"), inf)
    load_cpu = inf  # (b)'s model load and first call
    for _ in range(args.repeat):
        short_run = timed(render_cmd(model, short, out_ours, args), env)
        if short_run.returncode:
            print(f"cadl render failed:\n{short_run.stderr}", file=sys.stderr)
            return 1
        with open(out_ours + ".summary.json") as f:
            summary = json.load(f)
        best["render"], cpu["render"] = min(best["render"], short_run.seconds), min(cpu["render"], short_run.cpu)
        best["render_job"] = min(best["render_job"], summary["seconds"]["total"])
        best["render_frames"] = min(best["render_frames"], summary["seconds"]["render"])
        cpu["render_job"] = min(cpu["render_job"], summary["cpu_seconds"]["total"])
        cpu["render_frames"] = min(cpu["render_frames"], summary["cpu_seconds"]["render"])
        # Each part alone twice: with its own thread count (its fastest wall time here) and with the one the
        # render gave it (its least CPU, sharing the cores): the floor of each figure is the better of the two.
        threads = summary["options"]["encoder_threads"]
        for cmd in (ff_cmd, ff_cmd[:-1] + ["-threads", str(threads), ff_cmd[-1]]):
            run = timed(cmd, env)
            if run.returncode:
                print(f"ffmpeg failed:\n{run.stderr}", file=sys.stderr)
                return 1
            best["ffmpeg"], cpu["ffmpeg"] = min(best["ffmpeg"], run.seconds), min(cpu["ffmpeg"], run.cpu)
        for threads, key in (("tensorflow", "model_tf"), (args.model_threads, "model")):
            alone = model_alone(model, short, args.batch_size, threads, 1, env, summary["model_size"],
                                summary["fit"])
            best["model"], cpu[key] = min(best["model"], alone["seconds"]), min(cpu[key], alone["cpu"])
            load_cpu = min(load_cpu, alone["load_cpu"])
        print(f"  ffmpeg {best['ffmpeg']:.1f} s ({cpu['ffmpeg']:.1f} CPU s), model {best['model']:.1f} s "
              f"({cpu['model']:.1f} CPU s), render {short_run.seconds:.1f} s ({short_run.cpu:.1f} CPU s; job "
              f"{summary['seconds']['total']:.1f} s: {summary['seconds']}; CPU {summary['cpu_seconds']}; "
              f"threads: model {summary['options']['model_threads']}, encoder "
              f"{summary['options']['encoder_threads']}), load average {os.getloadavg()[0]:.2f}", flush=True)
    cpu["model"] = min(cpu["model"], cpu["model_tf"])
    floor = max(best["ffmpeg"], best["model"])
    cpu_floor = cpu["ffmpeg"] + cpu["model"]
    n = info.num_frames

    # Start-up: what the command spends before its job starts (interpreter, imports), against TensorFlow's
    # own import, which a render cannot do without; and a job's --help, which needs neither.
    tf_import = timed([sys.executable, "-c", "import tensorflow"], env)
    help_run = timed([sys.executable, "-m", "jobs.cli", "render", "--help"], env)
    start_up = best["render"] - best["render_job"]

    print("long film ...", flush=True)
    long_out = os.path.join(workdir, "render-long.mp4")
    long_run = timed(render_cmd(model, long_, long_out, args), env)
    long_seconds = long_run.seconds
    if long_run.returncode:
        print(f"cadl render (long) failed:\n{long_run.stderr}", file=sys.stderr)
        return 1
    long_info = media.probe(long_)

    def line(label, key, note=""):
        cpu_text = f"  cpu {cpu[key]:6.1f} s" if key in cpu else " " * 16
        print(f"  {label:42s} {best[key]:7.1f} s  {n / best[key]:7.1f} frames/s{cpu_text}{note}")

    mib = 2 ** 20
    print("\nspeed (%d frames, best of %d; cpu: CPU seconds of every process and thread, which a shared "
          "machine disturbs less than wall time):" % (n, args.repeat))
    line(f"(a) ffmpeg alone, libx264 crf {args.crf} {args.preset}:", "ffmpeg")
    line("(b) model alone: load, trace, reconstruct:", "model",
         f"  (cpu: the lesser of {cpu['model_tf']:.1f} s with TensorFlow's threads and the render's; "
         f"{load_cpu:.1f} s of it load and first call)")
    line("cadl render, whole command:", "render",
         f"  = {best['render'] / floor:.2f}x the larger of (a), (b); cpu {cpu['render'] / cpu_floor:.2f}x "
         f"(a)+(b); interpreter, imports, model load included")
    line("cadl render, job's own time:", "render_job",
         f"  = {best['render_job'] / floor:.2f}x the larger of (a), (b); cpu {cpu['render_job'] / cpu_floor:.2f}x "
         f"(a)+(b) (model load included)")
    line("cadl render, frames only (no load, join):", "render_frames",
         f"  = {best['render_frames'] / floor:.2f}x the larger of (a), (b); "
         f"cpu {cpu['render_frames'] / (cpu_floor - load_cpu):.2f}x (a)+(b) without (b)'s load")
    print(f"  (a) and (b) need {cpu_floor:.1f} CPU s: on {os.cpu_count()} cores no overlap of them can take less "
          f"than {cpu_floor / os.cpu_count():.1f} s")
    print(f"\nstart-up: {start_up:.1f} s before the job starts (whole command minus the job's own time); "
          f"'import tensorflow' alone {tf_import.seconds:.1f} s; 'cadl render --help' {help_run.seconds:.2f} s")
    print("\nmemory (peak resident, process tree / python alone):")
    print(f"  {info.duration:6.0f} s film ({n} frames):        {short_run.peak / mib:7.0f} MiB / "
          f"{short_run.peak_main / mib:5.0f} MiB")
    print(f"  {long_info.duration:6.0f} s film ({long_info.num_frames} frames):    {long_run.peak / mib:7.0f} MiB / "
          f"{long_run.peak_main / mib:5.0f} MiB   ({long_seconds:.0f} s, {long_info.num_frames / long_seconds:.0f} "
          f"frames/s)")
    print(f"  long / short: {long_run.peak / short_run.peak:.2f}x tree, "
          f"{long_run.peak_main / short_run.peak_main:.2f}x python   (goal within 25%: <= 1.25x)")
    result = {"frames": n, "ffmpeg_s": best["ffmpeg"], "model_s": best["model"],
              "render_s": best["render"], "render_job_s": best["render_job"],
              "render_frames_s": best["render_frames"], "ffmpeg_cpu_s": cpu["ffmpeg"],
              "model_cpu_s": cpu["model"], "model_load_cpu_s": load_cpu, "render_cpu_s": cpu["render"],
              "render_job_cpu_s": cpu["render_job"],
              "render_frames_cpu_s": cpu["render_frames"], "start_up_s": start_up,
              "import_tensorflow_s": tf_import.seconds, "help_s": help_run.seconds,
              "ratio_command": best["render"] / floor, "ratio_job": best["render_job"] / floor,
              "ratio_frames": best["render_frames"] / floor, "load_average": os.getloadavg()[0],
              "peak_short_mib": short_run.peak / mib,
              "peak_long_mib": long_run.peak / mib, "memory_ratio": long_run.peak / short_run.peak,
              "long_frames": long_info.num_frames}
    with open(os.path.join(workdir, "render_bench.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"render CPU / (ffmpeg CPU + model CPU) = {cpu['render_job'] / cpu_floor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
