"""``cadl demo``: the whole loop on a CPU in a few minutes, with nothing downloaded.

1. Generate two short films with the ffmpeg that imageio-ffmpeg ships: a "source" film (``testsrc2``)
   and a "target" film (``mandelbrot``), each with a sine-tone audio track.
2. extract the source film into sharded TFRecords (Beam, local runner).
3. train the convolutional VAE on those shards for a short CPU budget.
4. render the target film through the trained VAE, alone and side by side with the original.

``--sharp`` trains the sharp preset instead (the VAE against a PatchGAN discriminator, ``models/vaegan.py``;
its adversarial terms start after 50 steps here, to fit the short budget) and scores the render against
its film (``summary.json``'s ``render.score``: PSNR, SSIM, Laplacian ratio, flicker ratio).

Every stage is the real one: the library function (``pipelines.extract.extract``, ``pipelines.training.train``,
``pipelines.render.render``) that its ``cadl`` command calls, given its config.
Output (``./cadl-demo`` by default):

    films/source.mp4, films/target.mp4        the generated films
    data/                                     the extracted dataset (manifest.json, shards, mean/std)
    run/                                      the training run (montages, GIF, checkpoints, export)
    target-autoencoded.mp4                    the target film re-rendered through the VAE, audio kept
    target-side-by-side.mp4                   original | reconstruction
    summary.json                              every stage's figures and timings

A rerun keeps the generated films and redoes the rest.
"""
import argparse
import os
import shutil
import sys
import time

import jobs
from jobs import config_file
from pipelines import atomic, geometry
from pipelines.errors import CadlError
from pipelines.synthetic import make_film


def build_parser():
    p = argparse.ArgumentParser(
        prog="cadl demo",
        description="Generate two films, extract the first (Beam), train the VAE on it (CPU), render the "
                    "second through it. Finishes in a few minutes on a 2-core machine; downloads nothing.")
    p.add_argument("--out", default="cadl-demo", help="output folder (default: ./cadl-demo)")
    p.add_argument("--train-seconds", type=float, default=100.0,
                   help="training budget in seconds of wall time (default: 100)")
    p.add_argument("--film-seconds", type=float, default=20.0,
                   help="length of each generated film in seconds, 15-30 recommended (default: 20)")
    p.add_argument("--size", default="72x128",
                   help="image size HxW the VAE is trained at (default: 72x128, the films' 16:9; 64x64 trains "
                        "faster but renders only the centre square of a 16:9 film)")
    p.add_argument("--sharp", action="store_true",
                   help="train the sharp preset (VAE + PatchGAN discriminator) and score the render")
    config_file.add_option(p)
    return p


SHARP_GAN_START = 50  # steps of pixel-only warm-up under --sharp: the demo gets 100-300 steps (2 shared cores)


def _stage(number, title):
    print(f"\n[{number}/4] {title}", flush=True)
    return time.time()


def run(argv=None):
    args = config_file.parse(build_parser(), argv)
    try:
        size = geometry.parse_size(args.size)
    except ValueError as e:
        raise CadlError(f"--size: {e}") from None
    out = os.path.abspath(args.out)
    films = os.path.join(out, "films")
    data, run_dir = os.path.join(out, "data"), os.path.join(out, "run")
    rendered = os.path.join(out, "target-autoencoded.mp4")
    side = os.path.join(out, "target-side-by-side.mp4")
    # A rerun starts the derived stages afresh (the films are deterministic and kept).
    for stale in (data, run_dir, rendered, side):
        if os.path.isdir(stale):
            shutil.rmtree(stale)
        elif os.path.exists(stale):
            os.remove(stale)
    started = time.time()
    timings = {}

    t = _stage(1, f"generating two {args.film_seconds:g} s films with ffmpeg (testsrc2, mandelbrot)")
    source = os.path.join(films, "source.mp4")
    target = os.path.join(films, "target.mp4")
    if not os.path.exists(source):
        make_film(source, "testsrc2", seconds=args.film_seconds, size=(320, 180), rate="25", frequency=440)
    if not os.path.exists(target):
        make_film(target, "mandelbrot", seconds=args.film_seconds, size=(320, 180), rate="25",
                  frequency=660)
    timings["films"] = time.time() - t

    # imported late: TensorFlow and Beam take seconds to load
    from pipelines.extract import ExtractConfig, extract
    from pipelines.render import RenderConfig, render
    from pipelines.training import TrainConfig, train

    t = _stage(2, "extract: source film -> sharded TFRecords (Apache Beam)")
    extracted = extract(ExtractConfig(inputs=(source,), output=data, size=size))
    timings["extract"] = time.time() - t

    kind = "sharp VAE-GAN" if args.sharp else "convolutional VAE"
    t = _stage(3, f"train: {kind}, {args.train_seconds:g} s on the CPU")
    sharp = {"preset": "sharp", "gan_start": SHARP_GAN_START} if args.sharp else {}
    trained = train(TrainConfig(data=data, out=run_dir, max_seconds=args.train_seconds, **sharp))
    timings["train"] = time.time() - t

    t = _stage(4, "render: target film through the VAE (alone, then side by side)")
    rendered_summary = render(RenderConfig(model=run_dir, input=target, output=rendered, score=args.sharp))
    side_summary = render(RenderConfig(model=run_dir, input=target, output=side, side_by_side=True))
    timings["render"] = time.time() - t
    timings["total"] = time.time() - started

    summary = {
        "films": {"source": source, "target": target},
        "extract": extracted, "train": trained,
        "render": rendered_summary, "render_side_by_side": side_summary,
        "outputs": {
            "rendered": rendered, "side_by_side": side, "data": data, "run": run_dir,
            "montages": os.path.join(run_dir, "montages"),
            "gif": _first_existing(run_dir, ("reconstructions.gif", "montages/reconstructions.gif")),
        },
        "seconds": timings, "settings": args.settings,
    }
    atomic.write_json(os.path.join(out, "summary.json"), summary)
    print(f"\ncadl demo finished in {timings['total']:.0f} s:")
    for label, path in [("re-rendered film", rendered), ("side by side", side),
                        ("training montages", summary["outputs"]["montages"]),
                        ("reconstructions GIF", summary["outputs"]["gif"]),
                        ("dataset", data), ("training run", run_dir),
                        ("summary", os.path.join(out, "summary.json"))]:
        print(f"  {label:<20} {path}")
    return summary


def _first_existing(folder, names):
    for name in names:
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return os.path.join(folder, names[0])


if __name__ == "__main__":
    sys.exit(jobs.main(run))
