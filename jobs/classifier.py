"""``cadl classifier``: the course's classifiers (session 3) on local MNIST, CIFAR-10 or a labelled image folder.

    cadl classifier --dataset mnist --data-dir data/mnist --model linear --out runs/linear
    cadl classifier --dataset mnist --data-dir data/mnist --model conv --out runs/conv

Models (``models/classifiers.py``), trained with Adam on one-hot labels and cross-entropy, as in the lesson:
    linear   softmax regression (flatten -> 10 softmax units); 5 epochs by default
    conv     5x5 stride-2 convolutions of 32 and 64 filters, a 128-unit layer, softmax; 10 epochs by default
``--improved`` adds the options measured to help (dropout 0.3 and random shifts of up to 10%; see
``benchmarks/course_classifiers.py``); each can also be set alone (``--batch-norm``, ``--dropout``, ...).

Writes into OUT (see ``pipelines/course.py`` for checkpoints, resume, ``--restore`` and the export)::

    weights.png            linear: the ten weight images, one per class, in a diverging colour map (blue
                           negative, white zero, red positive); colour data also gets weights-rgb.png
    filters-conv1.png      conv: the first and second convolution layers' filters, each tile scaled alone
    filters-conv2.png
    mean.png, std.png, config.json, checkpoints/, export/model.keras, export/saved_model/, summary.json

``summary.json`` holds ``test_accuracy`` and ``test_loss`` on the test split, the per-epoch history (train
loss and accuracy, validation loss and accuracy), epochs and times.

What these models reach on real data: README, "Benchmarks".
"""
import argparse
import logging
import os
import sys
import time

import keras
import numpy as np

import jobs
from jobs import config_file, course
from models import classifiers
from pipelines import course as engine
from pipelines import course_pictures as pictures
from pipelines.errors import CadlError

log = logging.getLogger("cadl")
DEFAULT_EPOCHS = {"linear": 5, "conv": 10}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cadl classifier",
        description="Train the course's linear (softmax regression) or convolutional classifier on local MNIST, "
                    "CIFAR-10 or an image folder with one sub-folder per class. Writes the linear layer's "
                    "weight images or the convolution filters, the dataset's mean and std images, checkpoints "
                    "(a rerun resumes), the exported model (.keras and SavedModel) and summary.json with the "
                    "test accuracy.")
    course.add_dataset_arguments(parser, ("mnist", "cifar10", "folder"))
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=classifiers.MODELS, default="linear",
                   help="linear: softmax regression; conv: the lesson's two-convolution network")
    g.add_argument("--improved", action="store_true",
                   help=f"conv: turn on the measured improvements {classifiers.IMPROVED}")
    g.add_argument("--init", default=None, metavar="NAME",
                   help="conv: kernel initialiser, e.g. he_normal (the lesson's: glorot_uniform)")
    g.add_argument("--batch-norm", action="store_true", default=None, help="conv: batch normalisation")
    g.add_argument("--dropout", type=float, default=None, metavar="P", help="conv: dropout before the softmax")
    g.add_argument("--augment", type=float, default=None, metavar="F",
                   help="conv: random shifts by up to F of the image size while training (e.g. 0.1)")
    course.add_training_arguments(parser, "passes over the training split (default: 5 linear, 10 conv)",
                                  batch_size=50, learning_rate=1e-3)
    config_file.add_option(parser)
    return parser


def run(argv=None):
    args = config_file.parse(build_parser(), argv)
    started = time.time()
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS[args.model]
    if args.epochs < 0 or args.batch_size < 1:
        raise CadlError("--epochs must be >= 0 and --batch-size >= 1")
    options = {"init": args.init, "batch_norm": args.batch_norm, "dropout": args.dropout, "augment": args.augment}
    if args.model == "linear" and (args.improved or any(v is not None for v in options.values())):
        raise CadlError("--improved, --init, --batch-norm, --dropout and --augment apply to --model conv only")
    course.check_output(args.out)
    keras.utils.set_random_seed(args.seed)
    ds = course.load_dataset(args, one_hot=True)
    if ds.labels is None:
        raise CadlError(f"{args.data_dir}: no labels: a classifier needs one sub-folder of images per class")
    if ds.n_classes < 2:
        raise CadlError(f"{args.data_dir}: only one class ({ds.class_names[0]}): a classifier needs two or more")
    outputs = engine.write_dataset_images(args.out, ds)
    run_config = course.run_config(args, improved=args.improved, **options)

    def build_model():
        model = classifiers.build(args.model, ds.image_shape, ds.n_classes, improved=args.improved,
                                  seed=args.seed, **options)
        return classifiers.compile_classifier(model, args.learning_rate)

    loop = course.loop(args)
    model, state = engine.prepare(loop, "classifier", run_config, build_model, ds.image_shape,
                                  lambda model: _check_compatible(model, args, ds), args.learning_rate,
                                  class_names=ds.class_names)

    train_started = time.time()
    state = engine.train(model, loop, ds, state, run_config, evaluate=_evaluate,
                         on_epoch_end=lambda epoch, model: None, labels=True)
    train_seconds = time.time() - train_started

    outputs.update(pictures.write_pictures(model, args.out, ds.image_shape))
    test_split = ds.test if len(ds.test) else ds.valid
    test = _evaluate(model, test_split) if len(test_split) else {}
    summary = {
        "job": "classifier", "dataset": args.dataset, "data_dir": os.path.abspath(args.data_dir),
        "model": args.model, "options": {k: v for k, v in run_config.items() if k in options or k == "improved"},
        "image_shape": list(ds.image_shape), "n_classes": ds.n_classes, "class_names": ds.class_names,
        "counts": ds.counts, "skipped": len(ds.skipped), "chance_accuracy": _chance(ds),
        "epochs": args.epochs, "epoch": state["epoch"],
        "epochs_trained": len(state["history"]) - (state.get("resumed_at") or 0),
        "test_split": "test" if len(ds.test) else ("validation" if len(ds.valid) else None),
        "test_accuracy": test.get("accuracy"), "test_loss": test.get("loss"),
        "validation_accuracy": state["history"][-1]["validation"].get("accuracy") if state["history"] else None,
        "history": state["history"], "parameters": int(model.count_params()),
        "train_seconds": train_seconds, "settings": args.settings, "outputs": outputs,
    }
    engine.finish(model, loop, ds.image_shape, state, summary, started)
    log.info("test accuracy %s (chance %.3f); outputs in %s",
             "-" if test.get("accuracy") is None else f"{test['accuracy']:.4f}", summary["chance_accuracy"], args.out)
    return summary


def _check_compatible(model, args, ds):
    source = args.restore or args.out
    shape = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
    if shape != tuple(ds.image_shape):
        raise CadlError(f"{source}: the model takes {shape} images but {args.dataset} gives {ds.image_shape}")
    if model.output_shape[-1] != ds.n_classes:
        raise CadlError(f"{source}: the model has {model.output_shape[-1]} classes, the data {ds.n_classes}")
    if model.name != args.model:
        raise CadlError(f"{source}: holds a {model.name!r} classifier, not --model {args.model}")


def _evaluate(model, split):
    return model.evaluate(engine.batches(split, 500, labels=True), verbose=0, return_dict=True)


def _chance(ds):
    """Accuracy of always answering the most common training class."""
    counts = np.bincount(ds.labels[ds.indices[0]], minlength=ds.n_classes)
    return float(counts.max() / max(counts.sum(), 1))


if __name__ == "__main__":
    sys.exit(jobs.main(run))
