"""The GPU check: what cadl does on a machine with an NVIDIA GPU, in one run of at most about 8 minutes.

    bash benchmarks/gpu_check.sh                     # on the GPU machine: writes gpu_check.json
    bash benchmarks/gpu_check.sh --cpu-dry-run       # the same path with tiny sizes, on a CPU (tested)

It installs nothing beyond the project's own requirements (``gpu_check.sh`` runs ``pip install .`` only when
cadl is not importable), generates a film with the ffmpeg imageio-ffmpeg ships, extracts it with
``cadl extract`` at 64x64 and 144x256, then records, each ``cadl train`` in its own process:
  - training images/s at both sizes for float32, mixed_bfloat16, mixed_float16 (dynamic loss scaling) and
    float32 with ``--jit`` (XLA), steady state (log windows after step 10), and that every loss stayed finite;
  - ``--strategy mirrored`` over all visible GPUs at 144x256 (the global batch split over the replicas);
  - render frames/s of a 1080p film through the 144x256 model, against ffmpeg alone transcoding it to the same
    codec and settings (the 1.15x goal: with the model on the GPU, the render should come within 1.15x of the
    transcode).
The JSON file (``--out``) holds every figure, the GPU names, TensorFlow's version and the commands; it is
written atomically when the check ends, and after each step, so a cut-off run keeps what it measured. The
last printed line is the render's wall time over ffmpeg's alone.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

FULL = {"film": (1280, 720), "film_seconds": 60, "sizes": [(64, 64), (144, 256)], "steps": 300, "batch": 128,
        "render_film": (1920, 1080), "render_seconds": 20}
DRY = {"film": (160, 96), "film_seconds": 3, "sizes": [(16, 16), (16, 32)], "steps": 24, "batch": 8,
       "render_film": (192, 108), "render_seconds": 2}
MODES = [("float32", []), ("mixed_bfloat16", ["--precision", "mixed_bfloat16"]),
         ("mixed_float16", ["--precision", "mixed_float16"]), ("float32 --jit", ["--jit"])]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU: the same path, for tests")
    p.add_argument("--out", default="gpu_check.json", help="the JSON file of results (default: gpu_check.json)")
    p.add_argument("--workdir", default=None, help="films, datasets and runs (default: a temp folder)")
    p.add_argument("--steps", type=int, default=None, help="training steps per measurement")
    return p


class Check:
    """The results so far, written to ``out`` after every step."""

    def __init__(self, out, plan, dry):
        self.out, self.started = out, time.time()
        self.results = {"dry_run": dry, "plan": {k: v for k, v in plan.items()}, "training": [], "render": None,
                        "mirrored": None, "problems": []}

    def save(self):
        from pipelines import atomic
        self.results["seconds"] = round(time.time() - self.started, 1)
        atomic.write_json(self.out, self.results)


def _env(dry):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run takes the CPU path even on a GPU machine
    return env


def _steady_rate(run, batch):
    """images/s over the log windows after step 10, from RUN/report/history.jsonl."""
    with open(os.path.join(run, "report", "history.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if r.get("kind") == "train"]
    images = seconds = 0.0
    for before, row in zip(rows, rows[1:]):
        if before["step"] >= 10 and row.get("images_per_s"):
            n = (row["step"] - before["step"]) * batch
            images, seconds = images + n, seconds + n / row["images_per_s"]
    if not seconds:  # too few steps for a window after the first: the summary's rate
        return json.load(open(os.path.join(run, "summary.json")))["images_per_s"]
    return images / seconds


def _train(data, run, steps, batch, extra, env):
    import math

    cmd = [sys.executable, "-m", "jobs.cli", "train", "--data", data, "--out", run, "--max-steps", str(steps),
           "--batch-size", str(batch), "--no-progress", "--log-every", "10"] + extra
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    entry = {"command": " ".join(["cadl"] + cmd[3:]), "wall_seconds": round(time.time() - t, 1),
             "returncode": proc.returncode}
    if proc.returncode != 0:
        entry["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return entry
    summary = json.load(open(os.path.join(run, "summary.json")))
    losses = [(summary.get("train") or {}).get("loss"), (summary.get("validation") or {}).get("loss")]
    entry.update(images_per_s=round(_steady_rate(run, batch), 1), step=summary.get("step"),
                 train_loss=losses[0], validation_loss=losses[1],
                 finite=all(v is not None and math.isfinite(v) for v in losses))
    return entry


def _transcode_seconds(film, out, env):
    from pipelines.media import ffmpeg_exe
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", film, "-c:v", "libx264", "-crf", "18", "-preset",
           "medium", "-pix_fmt", "yuv420p", "-c:a", "copy", out]
    t = time.time()
    subprocess.run(cmd, check=True, env=env)
    return time.time() - t


def main(argv=None):
    args = build_parser().parse_args(argv)
    dry = args.cpu_dry_run
    plan = dict(DRY if dry else FULL)
    if args.steps:
        plan["steps"] = args.steps
    env = _env(dry)
    import tensorflow as tf

    from pipelines.extract import ExtractConfig, extract
    from pipelines.media import probe
    from pipelines.synthetic import make_film

    gpus = [] if dry else tf.config.list_physical_devices("GPU")
    if not dry and not gpus:
        print("gpu_check: no GPU is visible to TensorFlow (nvidia-smi? CUDA_VISIBLE_DEVICES?); "
              "--cpu-dry-run runs the same path on the CPU", file=sys.stderr)
        return 2
    check = Check(os.path.abspath(args.out), plan, dry)
    check.results.update(tensorflow=tf.__version__,
                         gpus=[tf.config.experimental.get_device_details(g).get("device_name", g.name)
                               for g in gpus], cpus=os.cpu_count())
    work = args.workdir or tempfile.mkdtemp(prefix="gpu-check-")
    os.makedirs(work, exist_ok=True)
    print(f"gpu_check{' (cpu dry run)' if dry else ''}: {len(gpus)} GPUs {check.results['gpus']}, "
          f"TensorFlow {tf.__version__}; work in {work}", flush=True)

    film = make_film(os.path.join(work, "film.mp4"), "testsrc2", seconds=plan["film_seconds"], size=plan["film"],
                     audio=False)
    data = {}
    for size in plan["sizes"]:
        data[size] = os.path.join(work, f"data-{size[0]}x{size[1]}")
        extract(ExtractConfig(inputs=(film,), output=data[size], size=tuple(size)))

    for size in plan["sizes"]:
        for mode, extra in MODES:
            run = os.path.join(work, f"run-{size[0]}x{size[1]}-{mode.replace(' ', '').replace('-', '')}")
            entry = dict(size=f"{size[0]}x{size[1]}", mode=mode,
                         **_train(data[size], run, plan["steps"], plan["batch"], extra, env))
            check.results["training"].append(entry)
            check.save()
            print(f"  train {entry['size']:>8} {mode:15s} " + (
                f"{entry['images_per_s']:8.1f} images/s, losses finite: {entry['finite']}" if "error" not in entry
                else f"failed: {entry['error']}"), flush=True)
    big = plan["sizes"][-1]
    run = os.path.join(work, "run-mirrored")
    entry = _train(data[big], run, plan["steps"], plan["batch"], ["--strategy", "mirrored"], env)
    entry["replicas"] = max(1, len(gpus))
    check.results["mirrored"] = entry
    check.save()
    print(f"  train {big[0]}x{big[1]} mirrored over {entry['replicas']} replicas: "
          f"{entry.get('images_per_s', entry.get('error'))} images/s", flush=True)

    model = os.path.join(work, f"run-{big[0]}x{big[1]}-float32")
    source = make_film(os.path.join(work, "render-source.mp4"), "testsrc2", seconds=plan["render_seconds"],
                       size=plan["render_film"])
    frames = probe(source).num_frames
    alone = _transcode_seconds(source, os.path.join(work, "transcode.mp4"), env)
    out = os.path.join(work, "rendered.mp4")
    cmd = [sys.executable, "-m", "jobs.cli", "render", "--model", model, "--input", source, "--output", out,
           "--overwrite"]
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t
    render = {"film": f"{plan['render_film'][0]}x{plan['render_film'][1]}", "frames": frames,
              "ffmpeg_alone_seconds": round(alone, 2), "render_wall_seconds": round(wall, 2),
              "returncode": proc.returncode, "command": " ".join(["cadl"] + cmd[3:])}
    if proc.returncode == 0:
        summary = json.load(open(out + ".summary.json"))
        render.update(frames_out=summary.get("frames"), stage_seconds=summary.get("seconds"),
                      frames_per_s=round(frames / wall, 1), ffmpeg_frames_per_s=round(frames / alone, 1),
                      ratio=round(wall / alone, 3))
    else:
        render["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    check.results["render"] = render
    problems = [f"train {e['size']} {e['mode']}: {e.get('error') or 'a loss is not finite'}"
                for e in check.results["training"] if "error" in e or not e.get("finite")]
    if "error" in render or render.get("frames_out") != frames:
        problems.append(f"render: {render.get('error') or 'frame count differs'}")
    check.results["problems"] = problems
    check.save()
    print(f"  render {render['film']} {frames} frames: {render.get('frames_per_s')} frames/s; ffmpeg alone "
          f"{render.get('ffmpeg_frames_per_s')} frames/s", flush=True)
    print(f"results in {check.out}; problems: {problems or 'none'}")
    if "ratio" in render:
        print(f"render wall / ffmpeg alone (1080p, model on {'the CPU' if dry else 'the GPU'}) = {render['ratio']:.2f}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
