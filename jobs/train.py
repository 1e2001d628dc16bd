"""``cadl train --data DIR --out RUN``: train the convolutional VAE on extracted shards.

The flags of ``pipelines.training.TrainConfig``; the run folder, resume and GPU use are described there.
"""
import argparse
import dataclasses
import sys

import jobs
from jobs import config_file
from pipelines import training
from pipelines.training import LR_SCHEDULES, PRESETS, TrainConfig, train

# --help shows the run folder's layout and how a rerun resumes, as the library documents them.
DESCRIPTION = "train the convolutional VAE on extracted shards.\n\n" + training.__doc__.split("\n\n", 1)[1].split(
    "\n\nGPU:")[0]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Show "(default: X)" only where there is a default to show (model flags say their preset value)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


EPILOG = """examples:
  cadl train --data data/ --out runs/blade --max-seconds 600          # a CPU laptop, ten minutes
  cadl train --data data/ --out runs/blade --max-steps 20000          # rerun after a crash: resumes
  cadl train --data gs://bucket/data --out runs/big --epochs 30 --widths 64,128,256,512 --latent 256 \\
             --batch-size 256 --precision mixed_bfloat16 --jit        # GPUs (all visible ones are used)

several workers: the same command with --strategy multiworker on each, its TF_CONFIG naming the workers and
its own index (tested with two on 127.0.0.1: tests/test_multiworker.py), e.g. on host1 and host2:
  TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}' \
      cadl train --data gs://bucket/data --out /shared/runs/big --strategy multiworker --max-steps 20000
  TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 1}}' \
      cadl train --data gs://bucket/data --out /shared/runs/big --strategy multiworker --max-steps 20000
--data and --out must be the same folders for every worker. Worker 0 writes RUN; the others only their lock
there (their outputs go to a scratch folder in the temp dir, removed at the end). --batch-size is the global
batch. A worker dies: the others stop with one line; rerun every command to resume from the last checkpoint.
"""


def build_parser():
    p = argparse.ArgumentParser(prog="cadl train", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter)
    p.add_argument("--data", required=True, help="dataset folder (manifest.json + shards); local or gs://...")
    p.add_argument("--out", required=True, help="run folder: created, or resumed when it holds checkpoints")
    config_file.add_option(p)
    add_options(p)
    return p


def add_options(p, preset_defaults=True):
    """The training flags (all but --data and --out), on ``p``; ``cadl retrain`` takes them too.
    ``preset_defaults``: say each model flag's value in the default preset (imports TensorFlow)."""
    stop = p.add_argument_group("when to stop (the first reached; none given: --epochs 10)")
    stop.add_argument("--max-steps", type=int, help="global step target (a resumed run stops at the same step)")
    stop.add_argument("--max-seconds", type=float, help="wall-clock budget of this invocation, in seconds")
    stop.add_argument("--epochs", type=float, help="passes over the training split (global, like --max-steps)")

    m = p.add_argument_group("model (stored in RUN/config.json; a resumed run keeps its own)")
    m.add_argument("--preset", choices=PRESETS, default="default",
                   help="named starting point: default (ours), tiny (tests), course (the lesson's network), "
                        "sharp (the VAE trained against a PatchGAN discriminator: sharper re-renders)")
    m.add_argument("--arch", choices=("resnet", "course"), help="network family")
    m.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")],
                   help="channels per level, comma-separated; depth = their count; sides must divide by 2^depth")
    m.add_argument("--blocks", type=int, help="residual blocks per level")
    m.add_argument("--latent", type=int, help="size of z as a dense code (given alone: --latent-channels 0)")
    m.add_argument("--latent-channels", type=int,
                   help="N > 0: z is a spatial code, N numbers per cell of the lowest resolution (z size = "
                        "cells x N: 256 at 64x64); 0: a dense code of --latent numbers")
    m.add_argument("--hidden", type=int, help="dense units between conv features and z (0: none)")
    m.add_argument("--norm", choices=("group", "batch", "none"), help="normalisation layers")
    m.add_argument("--activation", choices=("silu", "relu", "sigmoid", "elu"), help="hidden activation")
    m.add_argument("--dropout", type=float, help="dropout rate after convolutions (0: none)")
    m.add_argument("--loss", choices=("sse", "l1", "mix"), help="reconstruction loss summed over pixels")
    m.add_argument("--beta", type=float, help="KL weight")
    m.add_argument("--beta-warmup", type=int, help="steps over which beta ramps up from 0")
    m.add_argument("--seed", type=int, default=0, help="weights, sampling noise and data order")
    m.add_argument("--init-from", help="warm start: weights of this model (run folder, export folder or .keras), "
                                       "and its network unless model flags are given; ignored when RUN "
                                       "already has checkpoints")

    s = p.add_argument_group("sharp preset (--preset sharp; ignored otherwise)")
    s.add_argument("--disc-widths", type=lambda v: [int(w) for w in v.split(",")],
                   help="channels of the discriminator's 4x4 stride-2 spectral-norm convs, comma-separated")
    s.add_argument("--feature-weight", type=float,
                   help="weight of feature matching on the discriminator's layers (the learned similarity)")
    s.add_argument("--adv-weight", type=float,
                   help="factor on the adaptive weight of the hinge adversarial term (0: off)")
    s.add_argument("--gan-start", type=int, help="steps of pixel-only training before the discriminator's terms")
    s.add_argument("--d-floor", type=float,
                   help="balance rule: the discriminator is not updated while its hinge loss is below this")
    s.add_argument("--ms-ssim-weight", type=float, help="> 0: add weight x (1 - MS-SSIM) to the pixel loss")
    s.add_argument("--spectral-weight", type=float,
                   help="> 0: add weight x the squared error of the amplitude spectra of image tiles (phase-free: "
                        "detail drawn a little off costs less than detail blurred away once weight > 1)")
    s.add_argument("--spectral-tile", type=int, help="side of the spectral term's tiles in pixels")
    s.add_argument("--d-lr", type=float, default=5e-4, help="the discriminator's Adam learning rate")

    t = p.add_argument_group("optimisation")
    t.add_argument("--batch-size", type=int, default=32, help="images per step (global, over all replicas)")
    t.add_argument("--lr", "--learning-rate", type=float, default=1e-3,
                   help="Adam learning rate (2e-3 diverged with the default normalisation-free network; use "
                        "--norm group to go higher)")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="learning rate over the budget: constant keeps --lr; cosine and linear decay from --lr "
                        "to 0 over the run (the fraction of --max-steps/--epochs reached, or of --max-seconds "
                        "spent in this invocation, whichever is further). Decay fits the training frames "
                        "closer but did worse on unseen frames (benchmarks/quality_bench.py), hence constant")

    t.add_argument("--clip-norm", type=float, help="clip each step's gradients to this global norm (default: none)")

    d = p.add_argument_group("input pipeline")
    d.add_argument("--augment", action="store_true", help="random horizontal flips")
    d.add_argument("--cache", choices=("auto", "yes", "no"), default="auto",
                   help="keep decoded training images in memory (auto: when they fit in 1 GiB)")
    d.add_argument("--shuffle-buffer", type=int, default=0, help="images in the shuffle buffer (0: ~256 MiB)")
    d.add_argument("--deterministic", action="store_true", help="reproducible input order (slower)")
    d.add_argument("--exact-resume", choices=("auto", "yes", "no"), default="auto",
                   help="store the input pipeline's position (decoded cache + shuffle buffer) in checkpoints so "
                        "a resumed run sees the same batches as an uninterrupted one (auto: when <= 128 MiB); "
                        "otherwise a resumed run draws a fresh order seeded by the step")
    d.add_argument("--skip-corrupt", action="store_true",
                   help="skip (and count) unreadable shards instead of stopping with an error")
    d.add_argument("--validation-batches", type=int, default=50, help="at most this many batches per validation")

    o = p.add_argument_group("outputs")
    o.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    o.add_argument("--checkpoint-seconds", type=float, default=120.0, help="also checkpoint after this many s")
    o.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    o.add_argument("--montage-every", type=int, default=50,
                   help="steps between montage PNGs and GIF frames (0: only at the start and the end)")
    o.add_argument("--validate-every", type=int, default=250,
                   help="steps between validation passes (0: only at the end)")
    o.add_argument("--log-every", type=int, default=10, help="steps between TensorBoard scalars")
    o.add_argument("--no-progress", action="store_true",
                   help="no progress bar: a log line per validation instead (also when stderr is not a terminal)")

    g = p.add_argument_group("accelerators")
    g.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"), default="float32",
                   help="compute precision; mixed_float16 uses dynamic loss scaling")
    g.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    g.add_argument("--strategy", choices=("auto", "default", "mirrored", "multiworker"), default="auto",
                   help="auto: MirroredStrategy when more than one GPU is visible; multiworker: "
                        "MultiWorkerMirroredStrategy over the workers in TF_CONFIG (see below)")
    g.add_argument("--steps-per-execution", type=int, default=1, help="training steps per tf.function call")
    if not preset_defaults:
        return
    from models.defaults import DEFAULTS, GAN_DEFAULTS  # no TensorFlow: --help starts at once

    for action in m._group_actions:  # model flags: say what the default preset uses
        key = action.dest
        if key in DEFAULTS and action.default is None:
            value = DEFAULTS[key]
            action.help += f" (default preset: {','.join(map(str, value)) if isinstance(value, list) else value})"
    for action in s._group_actions:
        if action.dest in GAN_DEFAULTS:
            value = GAN_DEFAULTS[action.dest]
            action.help += f" (sharp: {','.join(map(str, value)) if isinstance(value, list) else value})"


def config_from_args(args, **fields):
    """The flags -> ``TrainConfig``, field for field (``fields``: what the caller sets itself)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values["progress"] = not args.no_progress
    for key in ("widths", "disc_widths"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    values.update(fields)
    return TrainConfig(**values)


def run(argv=None):
    return train(config_from_args(config_file.parse(build_parser(), argv)))


if __name__ == "__main__":
    sys.exit(jobs.main(run))
