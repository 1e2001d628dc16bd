"""What the course's two jobs (``cadl autoencoder``, ``cadl classifier``) share: the dataset options, the
epoch loop with its progress lines, checkpoints that a rerun resumes from, ``--restore``, and the export.

Run folder (OUT)::

    config.json                 the options and the model's own config (self-describing)
    mean.png, std.png           the training split's mean and standard-deviation images (std scaled to its max)
    checkpoints/epoch-0003.keras, state.json    the last two epochs (model + optimizer), and how far we got
    export/model.keras          the trained model (load with keras.models.load_model after importing models)
    export/saved_model/         the same as a TensorFlow SavedModel (``serve`` signature: images -> outputs)
    summary.json                the figures (written last, atomically)

A rerun with the same options resumes after the last finished epoch (and with a larger ``--epochs`` trains
on); a finished run is re-evaluated and re-exported, nothing retrained. ``--fresh`` starts over.
"""
import glob
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from pipelines import visual
from pipelines import atomic, loaders, geometry, owned
from pipelines.errors import CadlError

log = logging.getLogger("cadl")
KEEP_CHECKPOINTS = 2
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
                   help="start from a saved model: a .keras file (a checkpoint or an export), or a run folder "
                        "(its latest checkpoint); trains --epochs more epochs into OUT. With --epochs 0 it "
                        "only evaluates and exports")
    g.add_argument("--fresh", action="store_true", help="discard OUT's checkpoints instead of resuming")
    return g


def _split_arg(text):
    try:
        return loaders.parse_split(text)
    except ValueError as e:
        raise __import__("argparse").ArgumentTypeError(str(e)) from None


def _size_arg(text):
    try:
        return geometry.parse_size(text)
    except ValueError as e:
        raise __import__("argparse").ArgumentTypeError(str(e)) from None


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


def write_dataset_images(out, ds):
    """OUT/mean.png and OUT/std.png; the std image is scaled by its maximum so that it is visible."""
    std = ds.std_image()
    visual.write_png(os.path.join(out, "mean.png"), _squeeze(ds.mean_image()))
    visual.write_png(os.path.join(out, "std.png"), _squeeze(std / max(float(std.max()), 1e-8)))
    return {"mean_image": "mean.png", "std_image": "std.png", "std_image_scale": float(std.max())}


def _squeeze(image):
    return image[..., 0] if image.shape[-1] == 1 else image


def batches(split, batch_size, labels=True, shuffle_seed=None):
    """tf.data over a split's uint8 pixels: (shuffle) -> batch -> to floats in [0, 1] -> prefetch."""
    pixels = split.pixels
    data = (pixels, split.labels.astype(np.float32)) if labels else pixels
    ds = tf.data.Dataset.from_tensor_slices(data)
    if shuffle_seed is not None:  # one seed per epoch: a resumed run sees the order it would have seen
        ds = ds.shuffle(len(pixels), seed=shuffle_seed, reshuffle_each_iteration=False)
    to_float = (lambda x, y: (tf.cast(x, tf.float32) / 255.0, y)) if labels else \
        (lambda x: tf.cast(x, tf.float32) / 255.0)
    return ds.batch(batch_size).map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# -- checkpoints, resume, restore -----------------------------------------------------------------------
def _checkpoint_dir(out):
    return os.path.join(out, "checkpoints")


def find_model_file(path):
    """A .keras file, or a run folder / checkpoints folder -> the .keras file to load."""
    path = os.fspath(path)
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise CadlError(f"{path}: --restore needs a .keras model file or a run folder")
        return path
    for folder in (path, _checkpoint_dir(path)):
        state = os.path.join(folder, "state.json")
        if os.path.isfile(state):
            ckpt = os.path.join(folder, atomic.read_json(state)["checkpoint"])
            if os.path.isfile(ckpt):
                return ckpt
    export = os.path.join(path, "export", "model.keras")
    if os.path.isfile(export):
        return export
    if os.path.isdir(path):
        raise CadlError(f"{path}: no model here (expected checkpoints/state.json or export/model.keras)")
    raise CadlError(f"{path}: no such model file or run folder")


def load_model(path):
    """Load a .keras model made by these jobs (the custom layers register when ``models`` is imported)."""
    import models.autoencoders  # noqa: F401  (registers TiedAutoencoder, TiedDense, ...)
    import models.layers  # noqa: F401

    try:
        return keras.models.load_model(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CadlError(f"{path}: cannot load this model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


def start(args, run_config, build_model):
    """Decide where training starts. Returns (model, state), state = {"epoch": done, "history": [...]}.

    - ``--restore PATH``: load that model (weights and optimizer), start at epoch 0 of this run;
    - a resumable OUT (same run-defining options): load its latest checkpoint, continue after it;
    - otherwise ``build_model()`` fresh.
    """
    ckpt_dir = _checkpoint_dir(args.out)
    state_path = os.path.join(ckpt_dir, "state.json")
    if args.fresh and os.path.isdir(ckpt_dir):
        shutil.rmtree(ckpt_dir)
    if args.restore:
        if os.path.isfile(state_path) and os.path.abspath(args.restore) != os.path.abspath(args.out):
            raise CadlError(f"{args.out}: already holds checkpoints; --restore starts a new run there: add --fresh "
                            "or choose another --out")
        path = find_model_file(args.restore)
        model = load_model(path)
        log.info("restored %s", path)
        return model, {"epoch": 0, "history": [], "restored_from": os.path.abspath(path)}
    if os.path.isfile(state_path):
        state = atomic.read_json(state_path)
        old = state.get("run", {})
        changed = sorted(k for k in set(old) | set(run_config) if old.get(k) != run_config.get(k))
        if changed:
            raise CadlError(f"{args.out}: holds a run with other {', '.join(changed)} "
                            f"({', '.join(f'{k}={old.get(k)!r}' for k in changed)}); use another --out or --fresh")
        path = os.path.join(ckpt_dir, state["checkpoint"])
        model = load_model(path)
        log.info("resuming %s after epoch %d", args.out, state["epoch"])
        state["resumed_at"] = state["epoch"]
        return model, state
    return build_model(), {"epoch": 0, "history": []}


def save_checkpoint(out, model, state, run_config):
    ckpt_dir = _checkpoint_dir(out)
    name = f"epoch-{state['epoch']:04d}.keras"
    with atomic.atomic_path(os.path.join(ckpt_dir, name)) as tmp:
        model.save(tmp)
    state = dict(state, checkpoint=name, run=run_config)
    atomic.write_json(os.path.join(ckpt_dir, "state.json"), state)
    for old in sorted(glob.glob(os.path.join(ckpt_dir, "epoch-*.keras")))[:-KEEP_CHECKPOINTS]:
        os.remove(old)


def train(model, args, ds, state, run_config, evaluate, on_epoch_end, labels):
    """Train epochs ``state["epoch"] + 1 .. args.epochs``, one ``fit`` per epoch, then: validation figures
    (``evaluate(model, split) -> dict``), one progress line, ``on_epoch_end(epoch, model)`` (montages),
    checkpoint. Returns the state (its ``history`` has one dict per finished epoch)."""
    first = state["epoch"] + 1
    if first > args.epochs:
        log.info("%s: all %d epochs done already", args.out, args.epochs)
    for epoch in range(first, args.epochs + 1):
        started = time.time()
        history = model.fit(batches(ds.train, args.batch_size, labels, shuffle_seed=args.seed * 1000 + epoch),
                            epochs=1, verbose=0, shuffle=False)  # shuffled (seeded) by batches()
        train_figures = {k: float(v[-1]) for k, v in history.history.items()}
        valid = evaluate(model, ds.valid) if len(ds.valid) else {}
        record = {"epoch": epoch, "train": train_figures, "validation": valid, "seconds": time.time() - started}
        state["history"].append(record)
        state["epoch"] = epoch
        log.info("epoch %d/%d  train %s  validation %s  (%.1f s)", epoch, args.epochs, _figures(train_figures),
                 _figures(valid) if valid else "-", record["seconds"])
        on_epoch_end(epoch, model)
        save_checkpoint(args.out, model, state, run_config)
    return state


def _figures(d):
    return " ".join(f"{k} {v:.4f}" for k, v in d.items())


def export(model, out, image_shape):
    """OUT/export/model.keras and OUT/export/saved_model/ (signature ``serve``: float images -> outputs)."""
    from pipelines import export as exporting

    exporting.export(model, os.path.join(out, "export"), exporting.serve_endpoints(model, image_shape))
    return {"keras": "export/model.keras", "saved_model": "export/saved_model"}


def ensure_built(model, image_shape):
    """A never-trained model (``--epochs 0``) still needs its variables before saving."""
    if not model.built:
        model(np.zeros((1,) + tuple(image_shape), np.float32))


def run_config(args, **extra):
    config = {k: getattr(args, k) for k in RUN_DEFINING}
    config["data_dir"] = os.path.abspath(args.data_dir)
    config["size"] = list(config["size"]) if config["size"] else None
    config.update(extra)
    return config


def check_output(out):
    owned.make_folder(out, "output folder")
