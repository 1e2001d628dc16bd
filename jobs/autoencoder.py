"""``cadl autoencoder``: the course's autoencoders (session 3) trained on local MNIST, CIFAR-10, CelebA or an
image folder, with the lesson's pictures.

    cadl autoencoder --dataset mnist --data-dir data/mnist --model fc --out runs/ae-fc

Models (``models/autoencoders.py``):
    fc          fully connected, 784 -> 512 -> 256 -> 128 -> 64, decoder = the encoder's matrices transposed
    conv        convolutional (16, 16, 16 filters of 4x4, stride 2), decoder = the encoder's kernels transposed
    denoising   ``fc`` trained on inputs with half the pixels masked, scored against the clean input
    vae         variational, fully connected (512, 256 -> --latent), KL annealed in over the first steps
    conv-vae    variational, convolutional
``--noise R`` gives any of them masking noise (``--model conv --noise 0.3`` is a denoising conv autoencoder).

Writes into OUT (see ``pipelines/course.py`` for checkpoints, resume, ``--restore`` and the export)::

    montages/epoch-0000.png ...   per epoch: the same test images | (masked, when denoising) | reconstructions
    reconstructions.gif           those montages as an animation (the lesson's ae.gif)
    samples.png                   VAEs: images decoded from random codes z ~ N(0, I)
    mean.png, std.png, config.json, checkpoints/, export/model.keras, export/saved_model/, summary.json

``summary.json`` holds ``test_reconstruction_error`` (mean squared error per pixel, values in [0, 1], of the
deterministic reconstruction of the clean test images) and its PSNR, ``test_denoising_error`` for denoising
models (masked test images in, clean images scored), the loss terms on the test split, the per-epoch
history, epochs and times.

What these models reach on real data: README, "Benchmarks".
"""
import argparse
import logging
import os
import sys
import time

import keras
import numpy as np
from PIL import Image

import jobs
from jobs import config_file, course
from models import autoencoders
from pipelines import course as engine
from pipelines import course_pictures as pictures
from pipelines import loaders, visual
from pipelines.errors import CadlError

log = logging.getLogger("cadl")
MONTAGE_IMAGES = 64  # test images shown in each epoch's montage (an 8 x 8 grid)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cadl autoencoder",
        description="Train one of the course's autoencoders (fully connected or convolutional with tied "
                    "weights, denoising, variational) on local MNIST, CIFAR-10, CelebA or an image folder. "
                    "Writes per-epoch reconstruction montages and their GIF, the dataset's mean and std images, "
                    "checkpoints (a rerun resumes), the exported model (.keras and SavedModel) and "
                    "summary.json with the test reconstruction error.")
    course.add_dataset_arguments(parser, loaders.DATASETS)
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=autoencoders.MODELS, default="fc",
                   help="fc | conv (tied weights) | denoising (fc with masking noise 0.5) | vae | conv-vae")
    g.add_argument("--noise", type=float, default=None, metavar="R",
                   help="masking noise: fraction of input pixels zeroed while training, in [0, 1) "
                        "(default 0.5 for denoising, 0 otherwise)")
    g.add_argument("--latent", type=int, default=16, metavar="Z", help="VAEs: size of the code (default 16)")
    g.add_argument("--kl-warmup", type=int, default=1000, metavar="STEPS",
                   help="VAEs: steps over which the KL term's weight rises from 0 to 1 (default 1000; 0: off)")
    course.add_training_arguments(parser, "passes over the training split (default 5, as in the lesson)",
                                  batch_size=100, learning_rate=1e-3)
    config_file.add_option(parser)
    return parser


def run(argv=None):
    args = config_file.parse(build_parser(), argv)
    started = time.time()
    if args.epochs is None:
        args.epochs = 5
    if args.epochs < 0 or args.batch_size < 1:
        raise CadlError("--epochs must be >= 0 and --batch-size >= 1")
    if args.noise is not None and not 0.0 <= args.noise < 1.0:
        raise CadlError(f"--noise must be in [0, 1), not {args.noise}")
    course.check_output(args.out)
    keras.utils.set_random_seed(args.seed)
    ds = course.load_dataset(args, one_hot=False)
    outputs = engine.write_dataset_images(args.out, ds)
    run_config = course.run_config(args, noise=args.noise, latent=args.latent, kl_warmup=args.kl_warmup)

    def build_model():
        model = autoencoders.build(args.model, ds.image_shape, noise=args.noise, latent=args.latent,
                                   seed=args.seed, kl_warmup=args.kl_warmup)
        model.adapt(ds.mean_image())
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
        return model

    loop = course.loop(args)
    model, state = engine.prepare(loop, "autoencoder", run_config, build_model, ds.image_shape,
                                  lambda model: _check_compatible(model, args, ds), args.learning_rate)

    shown = ds.test if len(ds.test) else (ds.valid if len(ds.valid) else ds.train)
    shown = shown.pixels[:MONTAGE_IMAGES]
    rate = float(getattr(model, "noise", 0.0))
    masked = pictures.mask(shown, rate, args.seed) if rate else None
    montage_dir = os.path.join(args.out, "montages")

    def write_montage(epoch, model):
        visual.write_png(os.path.join(montage_dir, f"epoch-{epoch:04d}.png"), pictures.montage(model, shown, masked, rate))

    # Montages belong to the run in the checkpoints: drop those of a discarded run (--fresh, --restore) or of
    # an epoch that was interrupted before its checkpoint, so the GIF shows this run only.
    for path in pictures.montage_files(montage_dir) if os.path.isdir(montage_dir) else []:
        if state["epoch"] == 0 or int(os.path.basename(path)[6:10]) > state["epoch"]:
            os.remove(path)
    if state["epoch"] == 0:
        write_montage(0, model)  # before training: what the untrained (or restored) network makes of the inputs
    train_started = time.time()
    state = engine.train(model, loop, ds, state, run_config, evaluate=_evaluate, on_epoch_end=write_montage,
                         labels=False)
    train_seconds = time.time() - train_started

    frames = [np.asarray(Image.open(p)) for p in sorted(pictures.montage_files(montage_dir))]
    visual.write_gif(os.path.join(args.out, "reconstructions.gif"), frames, fps=2)
    outputs.update(montages="montages/", gif="reconstructions.gif")
    if isinstance(model, autoencoders.VAE):
        z = np.random.default_rng(args.seed).normal(size=(MONTAGE_IMAGES, model.latent)).astype(np.float32)
        visual.write_png(os.path.join(args.out, "samples.png"),
                         visual.montage(np.clip(keras.ops.convert_to_numpy(model.decode(z)), 0, 1)))
        outputs["samples"] = "samples.png"

    test_split = ds.test if len(ds.test) else ds.valid
    test = _evaluate(model, test_split) if len(test_split) else {}
    error = autoencoders.reconstruction_error(model, test_split.pixels) if len(test_split) else None
    summary = {
        "job": "autoencoder", "dataset": args.dataset, "data_dir": os.path.abspath(args.data_dir),
        "model": args.model, "noise": rate, "image_shape": list(ds.image_shape), "counts": ds.counts,
        "skipped": len(ds.skipped), "epochs": args.epochs, "epoch": state["epoch"],
        "epochs_trained": len(state["history"]) - (state.get("resumed_at") or 0),
        "test_split": "test" if len(ds.test) else ("validation" if len(ds.valid) else None),
        "test": test, "test_reconstruction_error": error and error["mse"], "test_psnr": error and error["psnr"],
        "history": state["history"], "parameters": int(model.count_params()),
        "train_seconds": train_seconds, "settings": args.settings, "time_s": None, "outputs": outputs,
    }
    if rate and len(test_split):
        summary["test_denoising_error"] = pictures.denoising_error(model, test_split.pixels, rate, args.seed)
    engine.finish(model, loop, ds.image_shape, state, summary, started)
    log.info("test reconstruction error %s (PSNR %s dB); outputs in %s",
             "-" if error is None else f"{error['mse']:.5f}", "-" if error is None else f"{error['psnr']:.2f}",
             args.out)
    return summary


def _check_compatible(model, args, ds):
    if not isinstance(model, autoencoders._Autoencoder):
        raise CadlError(f"{args.restore or args.out}: holds a {type(model).__name__}, not a course autoencoder")
    if tuple(model.image_shape) != tuple(ds.image_shape):
        raise CadlError(f"{args.restore or args.out}: the model takes {model.image_shape} images but "
                        f"{args.dataset} gives {ds.image_shape}")
    want = autoencoders.build(args.model, ds.image_shape, noise=args.noise, latent=args.latent)
    if type(model) is not type(want) or getattr(model, "convolutional", None) != getattr(want, "convolutional",
                                                                                         None):
        raise CadlError(f"{args.restore}: holds a {model.name} model, not --model {args.model}")


def _evaluate(model, split):
    return model.evaluate(engine.batches(split, 256, labels=False), verbose=0, return_dict=True)


if __name__ == "__main__":
    sys.exit(jobs.main(run))
