"""Sharp re-renders: the default VAE against ``--preset sharp`` on a film held out in time, same budget each.

    python benchmarks/sharpness_bench.py [--budget 600] [--seconds 60] [--size 64x64] [--picture docs/sharpness.png]

A generated film with structure and motion (ffmpeg's ``testsrc2``, or ``--source``) is extracted with the
real ``cadl extract``: its first 80% (in time) is the training data; its last 20% is cut out as a film of its
own (lossless H.264), never seen in training. Both models train with the real ``cadl train --max-seconds
BUDGET`` at the same time, as two processes: on a machine shared with other work they share it equally (the
CPU seconds each got are printed). Each then renders the held-out film with the real ``cadl render --score``
(the sharp model also with ``--smooth 3``, latent smoothing against flicker), and the table shows PSNR, SSIM,
Laplacian ratio (detail kept, render / source) and flicker ratio (frame-to-frame change, render / source),
scored at the model's input size. The picture: held-out frames, source | default | sharp.

Goals (issue 14), on the held-out part: sharp's Laplacian ratio >= 0.8, its SSIM not below the default's, its
PSNR at most 1 dB below the default's, its flicker ratio <= 1.15. The last line: sharp's Laplacian ratio over
the default's.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = {"default": [], "sharp": ["--preset", "sharp"]}
FIGURES = ("psnr", "ssim", "ms_ssim", "laplacian_ratio", "flicker_ratio")


def _train_all(train_data, work, budget, extra):
    """Both trainings at once, each a ``cadl train`` process; returns {name: (summary, cpu seconds)}."""
    procs = {}
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name, flags in MODELS.items():
        out = os.path.join(work, f"run-{name}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "jobs.cli", "train", "--data", train_data, "--out", out, "--max-seconds",
               str(budget), "--no-progress", "--montage-every", "0"] + flags + extra.get(name, [])
        log = open(os.path.join(work, f"train-{name}.log"), "w")
        procs[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), out, log)
    results = {}
    for name, (proc, out, log) in procs.items():
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        if proc.returncode:
            raise SystemExit(f"cadl train for {name} failed ({proc.returncode}); see {log.name}")
        with open(os.path.join(out, "summary.json")) as f:
            results[name] = (json.load(f), usage.ru_utime + usage.ru_stime)
    return results


def _picture(path, film, outputs, size, count=4):
    """Rows of held-out frames: source | each output, at the model's input size (the outputs brought back as
    ``--score`` brings them back), 2x nearest-upscaled."""
    import numpy as np

    from pipelines import geometry, media, metrics, video_out, visual

    info = media.probe(film)
    layout = geometry.make_layout(info, {"image_size": list(size), "fit": "crop"}, video_out.output_format(film))
    picks = [round((i + 0.5) * info.num_frames / count) for i in range(count)]
    source = {i: f for i, _, f in media.read_frames(film, size=size, fit="crop") if i in picks}
    columns = [source] + [{i: f for i, f in metrics.read_render(o, layout) if i in picks} for o in outputs]
    tiles = [col[i].repeat(2, 0).repeat(2, 1) for i in picks for col in columns]
    visual.write_png(path, visual.montage(np.stack(tiles), cols=len(columns), pad=2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per model, both at once")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the generated film in seconds")
    p.add_argument("--film-size", default="320x180", help="generated film WxH (ffmpeg order)")
    p.add_argument("--source", default="testsrc2", help="lavfi source of the film")
    p.add_argument("--size", default="64x64", help="training frame size HxW")
    p.add_argument("--sharp-flags", default="", help="extra cadl train flags for the sharp model")
    p.add_argument("--picture", default=os.path.join(ROOT, "docs", "sharpness.png"), help="side-by-side PNG")
    p.add_argument("--work", help="working folder (default: a temporary one)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    from jobs import extract, render
    from pipelines import geometry, media
    from pipelines.synthetic import make_film

    work = args.work or tempfile.mkdtemp(prefix="cadl-sharpness-")
    os.makedirs(work, exist_ok=True)
    w, h = (int(v) for v in args.film_size.split("x"))
    film = os.path.join(work, f"film-{args.source}.mp4")
    if not os.path.exists(film):
        make_film(film, args.source, seconds=args.seconds, size=(w, h), rate="25", audio=False)
    cut = media.probe(film).duration * 0.8
    train_data, held_out = os.path.join(work, "train-data"), os.path.join(work, "held-out.mp4")
    if not os.path.exists(os.path.join(train_data, "manifest.json")):
        extract.run(["--input", film, "--size", args.size, "--num-shards", "2", "--validation-block", "2",
                     "--output", train_data, "--end", f"{cut:.3f}", "--validation-fraction", "0.05"])
    if not os.path.exists(held_out):  # the last 20%, losslessly re-encoded: the reference of every score
        subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-ss", f"{cut:.3f}", "-i", film,
                        "-an", "-c:v", "libx264", "-qp", "0", "-preset", "veryfast", held_out], check=True)

    t = time.time()
    trained = _train_all(train_data, work, args.budget, {"sharp": args.sharp_flags.split()})
    train_wall = time.time() - t
    rows = {}
    for name, smooth in (("default", 1), ("sharp", 1), ("sharp", 3)):
        label = name if smooth == 1 else f"{name} --smooth {smooth}"
        out = os.path.join(work, f"render-{name}-{smooth}.mp4")
        summary = render.run(["--model", os.path.join(work, f"run-{name}"), "--input", held_out, "--output", out,
                              "--overwrite", "--no-audio", "--crf", "12", "--smooth", str(smooth), "--score"])
        train_summary, cpu = trained[name]
        rows[label] = dict({k: summary["score"][k] for k in FIGURES}, output=out, steps=train_summary["step"],
                           cpu_s=cpu, frames=summary["score"]["frames"])
    print(f"\nheld-out {args.source} ({rows['default']['frames']} frames, last 20% of {args.seconds:g} s), "
          f"{args.size}, budget {args.budget:g} s each (trained at once; {train_wall:.0f} s wall)")
    print(f"{'model':>17} {'PSNR dB':>8} {'SSIM':>6} {'MS-SSIM':>8} {'Laplacian':>9} {'flicker':>8} "
          f"{'steps':>6} {'CPU s':>6}")
    for label, r in rows.items():
        ms = f"{r['ms_ssim']:.3f}" if r["ms_ssim"] is not None else "-"
        print(f"{label:>17} {r['psnr']:8.2f} {r['ssim']:6.3f} {ms:>8} {r['laplacian_ratio']:9.3f} "
              f"{r['flicker_ratio']:8.3f} {r['steps']:6d} {r['cpu_s']:6.0f}")
    _picture(args.picture, held_out, [rows["default"]["output"], rows["sharp"]["output"]],
             geometry.parse_size(args.size))
    print(f"picture (source | default | sharp): {args.picture}")
    d, s = rows["default"], rows["sharp"]
    goals = {"laplacian_ratio >= 0.8": s["laplacian_ratio"] >= 0.8, "ssim >= default": s["ssim"] >= d["ssim"],
             "psnr >= default - 1 dB": s["psnr"] >= d["psnr"] - 1.0, "flicker <= 1.15": s["flicker_ratio"] <= 1.15}
    print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "budget_s": args.budget, "goals": goals}, f, indent=2)
    print(f"sharp / default Laplacian ratio: {s['laplacian_ratio'] / d['laplacian_ratio']:.2f}x "
          f"({s['laplacian_ratio']:.3f} vs {d['laplacian_ratio']:.3f}; PSNR {s['psnr'] - d['psnr']:+.2f} dB, "
          f"flicker {s['flicker_ratio']:.2f} vs {d['flicker_ratio']:.2f}), budget {args.budget:g} s")
    return rows


if __name__ == "__main__":
    main()
