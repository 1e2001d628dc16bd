"""The flags the course's two jobs (``cadl autoencoder``, ``cadl classifier``) share: the dataset options and
the training options, and what they map to: the loaded dataset, the run-defining options, the epoch loop's
``pipelines.course.Loop``.

The engine (epoch loop, checkpoints a rerun resumes from, ``--restore``, the export) and the run folder's
layout are ``pipelines/course.py``. A rerun with the same options resumes after the last finished epoch (and
with a larger ``--epochs`` trains on); a finished run is re-evaluated and re-exported, nothing retrained.
``--fresh`` starts over.
"""
import argparse
import logging
import os
import time

from pipelines import course as engine
from pipelines import geometry, loaders, owned
from pipelines.errors import CadlError

log = logging.getLogger("cadl")
# Options that define what is trained: a rerun whose values differ cannot resume the old run.
RUN_DEFINING = ("dataset", "data_dir", "model", "split", "limit", "size", "fit", "grayscale", "crop_factor",
                "seed")


def add_dataset_arguments(parser, choices):
    g = parser.add_argument_group("data (local files only; nothing is downloaded)")
    g.add_argument("--dataset", required=True, choices=choices,
                   help="mnist: IDX files (train-images-idx3-ubyte[.gz], ...) or Keras' mnist.npz; "
                        "cifar10: cifar-10-python.tar.gz or its cifar-10-batches-py/ folder; "
                        "celeba: img_align_celeba/ or .zip with list_eval_partition.txt; "
                        "folder: any images, one sub-folder per class for labels")
    g.add_argument("--data-dir", required=True, metavar="DIR", help="the folder holding those files")
    g.add_argument("--split", default="0.8,0.1,0.1", type=_split_arg, metavar="TRAIN,VALID,TEST",
                   help="fractions of a seeded shuffle of all examples (the lesson's [0.8, 0.1, 0.1]; default), "
                        "or 'official' for the published partition (MNIST/CIFAR-10 test files with the last "
                        "5000 training images validating; CelebA's list_eval_partition.txt)")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use at most N examples, spread evenly over the data (default: all)")
    g.add_argument("--size", type=_size_arg, default=(64, 64), metavar="HxW",
                   help="celeba and folder only: fit pictures to this size (default 64x64); MNIST and "
                        "CIFAR-10 keep 28x28 and 32x32")
    g.add_argument("--fit", choices=geometry.FITS, default="crop",
                   help="celeba and folder: how another aspect ratio is fitted (default crop)")
    g.add_argument("--crop-factor", type=float, default=0.8, metavar="F",
                   help="celeba only: keep the central F of each side first, as the course does (default 0.8)")
    g.add_argument("--grayscale", action="store_true", help="celeba and folder: read pictures as grey")
    return g


def add_training_arguments(parser, epochs_help, batch_size, learning_rate):
    g = parser.add_argument_group("training")
    g.add_argument("--out", required=True, metavar="OUT", help="run folder for every output (created)")
    g.add_argument("--epochs", type=int, default=None, metavar="N", help=epochs_help)
    g.add_argument("--batch-size", type=int, default=batch_size, metavar="B",
                   help=f"images per step (default {batch_size}, as in the lesson)")
    g.add_argument("--learning-rate", type=float, default=learning_rate, metavar="LR",
                   help=f"Adam's learning rate (default {learning_rate})")
    g.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and the "
                                                       "shuffling (default 0)")
    g.add_argument("--restore", metavar="PATH", default=None,
                   help="start from a saved model: a .keras file (an export), or a run folder (its latest "
                        "checkpoint, or its export when it has none); trains --epochs more epochs into OUT. "
                        "With --epochs 0 it only evaluates and exports")
    g.add_argument("--fresh", action="store_true", help="discard OUT's checkpoints instead of resuming")
    return g


def _split_arg(text):
    try:
        return loaders.parse_split(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size_arg(text):
    try:
        return geometry.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def load_dataset(args, one_hot):
    """Load the chosen dataset and log what it holds; ``CadlError`` if the files are not there."""
    started = time.time()
    ds = loaders.load(args.dataset, args.data_dir, one_hot=one_hot, split=args.split, limit=args.limit,
                       size=args.size, fit=args.fit, seed=args.seed, channels=1 if args.grayscale else 3,
                       crop_factor=args.crop_factor)
    counts = ds.counts
    log.info("%s: %d images of %s (train %d, validation %d, test %d)%s in %.1f s", args.dataset, len(ds),
             "x".join(map(str, ds.image_shape)), counts["train"], counts["validation"], counts["test"],
             f", {len(ds.skipped)} skipped" if ds.skipped else "", time.time() - started)
    for path, reason in ds.skipped[:5]:
        log.info("  skipped %s: %s", path, reason)
    if counts["train"] == 0:
        raise CadlError(f"{args.data_dir}: the split {args.split} leaves no training examples")
    return ds


def run_config(args, **extra):
    config = {k: getattr(args, k) for k in RUN_DEFINING}
    config["data_dir"] = os.path.abspath(args.data_dir)
    config["size"] = list(config["size"]) if config["size"] else None
    config.update(extra)
    return config


def check_output(out):
    owned.make_folder(out, "output folder")


def loop(args):
    """The epoch loop's knobs from the training options."""
    return engine.Loop(out=args.out, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                       restore=args.restore, fresh=args.fresh)
