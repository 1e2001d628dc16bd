"""The course toolkit's training engine, shared by ``cadl autoencoder`` and ``cadl classifier``: the epoch loop
with its progress lines, checkpoints that a rerun resumes from, restoring a saved model, and the export.

Run folder (OUT)::

    config.json                 the options and the model's own config (self-describing)
    mean.png, std.png           the training split's mean and standard-deviation images (std scaled to its max)
    checkpoints/ckpt-3.index, ckpt-3.data-*, checkpoint
                                the last two epochs (``pipelines.checkpoints``: weights, optimizer, noise
                                generators), numbered by epoch
    checkpoints/state.json      how far we got: epoch, history, the run-defining options, the checkpoint's
                                name and the model's Keras config (so that another run can rebuild it)
    export/model.keras          the trained model (load with keras.models.load_model after importing models)
    export/saved_model/         the same as a TensorFlow SavedModel (``serve`` signature: images -> outputs)
    summary.json                the figures (written last, atomically)

A rerun with the same options resumes after the last finished epoch (and with a larger ``epochs`` trains
on); a finished run is re-evaluated and re-exported, nothing retrained. ``fresh`` starts over. ``restore``
starts from a saved model: a ``.keras`` file (an export), or a run folder (its latest checkpoint, restored
into the model its state.json describes, or its export when it has no checkpoints).
"""
import dataclasses
import importlib
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from pipelines import atomic, checkpoints, visual
from pipelines import export as exporting
from pipelines.errors import CadlError

log = logging.getLogger("cadl")
KEEP_CHECKPOINTS = 2


@dataclasses.dataclass(frozen=True)
class Loop:
    """The knobs of the epoch loop."""
    out: str                # run folder (created by the job)
    epochs: int             # train until this many epochs are done (0: only evaluate and export)
    batch_size: int         # images per step
    seed: int = 0           # seed of each epoch's shuffle (the job seeds weights and split with it too)
    restore: str = None     # start from this saved model (.keras file or run folder) at epoch 0
    fresh: bool = False     # discard OUT's checkpoints instead of resuming


def prepare(loop, job, run_config, build_model, image_shape, check, learning_rate, **described):
    """Where a job's training starts (see ``start``), checked by ``check(model)``, built, and described in
    OUT/config.json (the options, the loop, ``described`` and the model's own config). Returns
    (model, state)."""
    model, state = start(loop, run_config, build_model)
    check(model)
    ensure_built(model, image_shape)
    atomic.write_json(os.path.join(loop.out, "config.json"),
                      {"job": job, "options": run_config, "epochs": loop.epochs, "batch_size": loop.batch_size,
                       "learning_rate": learning_rate, "image_shape": list(image_shape), **described,
                       "model": model.get_config()})
    return model, state


def finish(model, loop, image_shape, state, summary, started):
    """Export the model, complete the job's ``summary`` (where the run started from, the exports, the time)
    and write OUT/summary.json last."""
    for key in ("resumed_at", "restored_from"):
        if key in state:
            summary[key] = state[key]
    summary["outputs"].update(export(model, loop.out, image_shape))
    summary["time_s"] = time.time() - started
    atomic.write_json(os.path.join(loop.out, "summary.json"), summary)
    return summary


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
def checkpoint_dir(out):
    return os.path.join(out, "checkpoints")


def _checkpoints(out, model):
    return checkpoints.Checkpoints(checkpoint_dir(out), KEEP_CHECKPOINTS, run=out, unit="epoch",
                                   advice="try a lower --learning-rate", **checkpoints.keras_objects(model))


def ensure_built(model, image_shape):
    """A never-trained model (``epochs`` 0, or one about to be restored) still needs its variables."""
    if not model.built:
        model(np.zeros((1,) + tuple(image_shape), np.float32))


def _build_optimizer(model):
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _restore_checkpoint(model, out, state):
    """Build ``model`` and its optimizer, then load the checkpoint ``state`` names; returns its path."""
    ensure_built(model, state["image_shape"])
    _build_optimizer(model)
    path = os.path.join(checkpoint_dir(out), state["checkpoint"])
    _checkpoints(out, model).restore(path)
    return path


def _register_models():
    """Keras finds the course's classes by name once their modules are imported (TiedAutoencoder, TiedDense...)."""
    importlib.import_module("models.autoencoders")  # which imports models.layers


def load_model(path):
    """Load a .keras model made by these jobs."""
    _register_models()
    try:
        return keras.models.load_model(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CadlError(f"{path}: cannot load this model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


def restore_model(path):
    """A saved course model -> (model with its optimizer, where it came from).

    ``path``: a .keras file (an export), or a run folder (or its checkpoints folder): its latest checkpoint,
    restored into a fresh model built from the Keras config state.json keeps, or else its export/model.keras."""
    path = os.fspath(path)
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise CadlError(f"{path}: --restore needs a .keras model file or a run folder")
        return load_model(path), path
    if os.path.isfile(os.path.join(path, checkpoints.STATE)):  # the checkpoints folder itself: its run folder
        path = os.path.dirname(os.path.abspath(path))
    state = checkpoints.read_state(checkpoint_dir(path)) if os.path.isdir(path) else None
    if state is not None:
        _register_models()
        try:
            model = keras.saving.deserialize_keras_object(state["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise CadlError(f"{os.path.join(checkpoint_dir(path), checkpoints.STATE)}: cannot rebuild the model "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return model, _restore_checkpoint(model, path, state)
    export = os.path.join(path, "export", "model.keras")
    if os.path.isfile(export):
        return load_model(export), export
    if os.path.isdir(path):
        raise CadlError(f"{path}: no model here (expected checkpoints/state.json or export/model.keras)")
    raise CadlError(f"{path}: no such model file or run folder")


def start(loop, run_config, build_model):
    """Decide where training starts. Returns (model, state), state = {"epoch": done, "history": [...]}.

    - ``loop.restore``: that model (weights and optimizer), start at epoch 0 of this run;
    - a resumable OUT (same run-defining options): ``build_model()``, its latest checkpoint, continue after it;
    - otherwise ``build_model()`` fresh.
    """
    ckpt_dir = checkpoint_dir(loop.out)
    if loop.fresh and os.path.isdir(ckpt_dir):
        shutil.rmtree(ckpt_dir)
    state = checkpoints.read_state(ckpt_dir)
    if loop.restore:
        if state is not None and os.path.abspath(loop.restore) != os.path.abspath(loop.out):
            raise CadlError(f"{loop.out}: already holds checkpoints; --restore starts a new run there: add --fresh "
                            "or choose another --out")
        model, path = restore_model(loop.restore)
        log.info("restored %s", path)
        return model, {"epoch": 0, "history": [], "restored_from": os.path.abspath(path)}
    if state is not None:
        old = state.get("run", {})
        changed = sorted(k for k in set(old) | set(run_config) if old.get(k) != run_config.get(k))
        if changed:
            raise CadlError(f"{loop.out}: holds a run with other {', '.join(changed)} "
                            f"({', '.join(f'{k}={old.get(k)!r}' for k in changed)}); use another --out or --fresh")
        model = build_model()
        _restore_checkpoint(model, loop.out, state)
        log.info("resuming %s after epoch %d", loop.out, state["epoch"])
        state = {"epoch": state["epoch"], "history": state["history"], "resumed_at": state["epoch"]}
        return model, state
    return build_model(), {"epoch": 0, "history": []}


def train(model, loop, ds, state, run_config, evaluate, on_epoch_end, labels):
    """Train epochs ``state["epoch"] + 1 .. loop.epochs``, one ``fit`` per epoch, then: validation figures
    (``evaluate(model, split) -> dict``), one progress line, ``on_epoch_end(epoch, model)`` (montages),
    checkpoint. Returns the state (its ``history`` has one dict per finished epoch)."""
    first = state["epoch"] + 1
    if first > loop.epochs:
        log.info("%s: all %d epochs done already", loop.out, loop.epochs)
        return state
    ensure_built(model, ds.image_shape)
    _build_optimizer(model)  # its slots exist before the checkpoint names them
    saved = _checkpoints(loop.out, model)
    described = {"run": run_config, "model": keras.saving.serialize_keras_object(model),
                 "image_shape": list(ds.image_shape)}
    for epoch in range(first, loop.epochs + 1):
        started = time.time()
        history = model.fit(batches(ds.train, loop.batch_size, labels, shuffle_seed=loop.seed * 1000 + epoch),
                            epochs=1, verbose=0, shuffle=False)  # shuffled (seeded) by batches()
        train_figures = {k: float(v[-1]) for k, v in history.history.items()}
        valid = evaluate(model, ds.valid) if len(ds.valid) else {}
        record = {"epoch": epoch, "train": train_figures, "validation": valid, "seconds": time.time() - started}
        state["history"].append(record)
        state["epoch"] = epoch
        log.info("epoch %d/%d  train %s  validation %s  (%.1f s)", epoch, loop.epochs, _figures(train_figures),
                 _figures(valid) if valid else "-", record["seconds"])
        on_epoch_end(epoch, model)
        saved.save(epoch, state=dict(described, epoch=epoch, history=state["history"]))
    return state


def _figures(d):
    return " ".join(f"{k} {v:.4f}" for k, v in d.items())


def export(model, out, image_shape):
    """OUT/export/model.keras and OUT/export/saved_model/ (signature ``serve``: float images -> outputs)."""
    exporting.export(model, os.path.join(out, "export"), exporting.serve_endpoints(model, image_shape))
    return {"keras": "export/model.keras", "saved_model": "export/saved_model"}
