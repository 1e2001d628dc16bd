"""The one checkpoint scheme of every training loop (the film VAE's ``Trainer`` and the course jobs' epochs).

``Checkpoints(folder, keep, model=..., optimizer=..., rng=...)`` wraps a ``tf.train.Checkpoint`` of those
objects and a ``tf.train.CheckpointManager`` in ``folder``::

    folder/checkpoint                   the pointer to the latest checkpoint (TensorFlow's text file)
    folder/ckpt-N.index, .data-*        checkpoint N (N: the step or epoch it was taken at); ``keep`` kept
    folder/state.json                   optional sidecar: how far the run got, written after its checkpoint

A checkpoint holds variables only (weights, the optimizer's slots and step, the Keras noise generators'
states, and whatever else is named), so restoring needs the same objects built first. ``save`` refuses
non-finite weights, so the latest checkpoint is always a good one; ``restore`` raises a one-line
``CadlError`` naming the checkpoint when it does not fit. The state sidecar is written after the checkpoint
it names, atomically: a reader that finds ``state.json`` also finds its checkpoint.
"""
import os

import tensorflow as tf

from pipelines import atomic
from pipelines.errors import CadlError

STATE = "state.json"
# What a checkpoint that does not fit the objects raises while restoring.
_RESTORE_ERRORS = (tf.errors.OpError, AssertionError, ValueError)


def keras_objects(model):
    """What a Keras model's checkpoint holds: weights, optimizer (with its step), the noise generators."""
    rng = tf.Module()
    # Keras' SeedGenerator states (sampling noise, dropout, masking) are not checkpoint children of their layers.
    rng.states = [sg.state for layer in model._flatten_layers() for sg in layer._seed_generators]
    return {"model": model, "optimizer": model.optimizer, "rng": rng}


def read_state(folder):
    """``folder/state.json`` as a dict, or None when there is none."""
    path = os.path.join(folder, STATE)
    if not os.path.isfile(path):
        return None
    try:
        return atomic.read_json(path)
    except (OSError, ValueError) as e:
        raise CadlError(f"{path}: unreadable checkpoint state ({_first_line(e)}); use --fresh") from None


class Checkpoints:
    """The numbered checkpoints of ``objects`` in ``folder``, the newest ``keep`` kept.

    ``run``, ``unit`` and ``advice`` only word the error of a non-finite save: "RUN: weights became
    non-finite by UNIT N; stopped (last good checkpoint: ...); ADVICE"."""

    def __init__(self, folder, keep, *, run=None, unit="step", advice=None, **objects):
        self.folder = os.fspath(folder)
        self.objects = objects
        self.run, self.unit, self.advice = run or self.folder, unit, advice
        self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(**objects), self.folder, max_to_keep=keep)

    @property
    def latest(self):
        """The path prefix of the newest checkpoint (``folder/ckpt-N``), or None."""
        return self.manager.latest_checkpoint

    def restore(self, path=None, optional=()):
        """Load checkpoint ``path`` (default: the latest) into the objects; returns the names restored.

        Every object must find its values (``assert_existing_objects_matched``); saved values without an
        object are ignored (``expect_partial``). A name in ``optional`` is left out when the checkpoint has no
        values for it, or when restoring it fails (e.g. an input pipeline of another shape)."""
        path = path or self.latest
        if not path:
            raise CadlError(f"{self.folder}: no checkpoint to restore")
        try:
            saved = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(path)}
            objects = {k: v for k, v in self.objects.items() if k not in optional or k in saved}
            try:
                _restore(objects, path)
            except _RESTORE_ERRORS:
                left_out = [k for k in optional if k in objects]
                if not left_out:
                    raise
                objects = {k: v for k, v in objects.items() if k not in left_out}
                _restore(objects, path)
        except _RESTORE_ERRORS as e:
            raise CadlError(f"{path}: cannot restore ({_first_line(e)})") from None
        return sorted(objects)

    def save(self, number, state=None):
        """Checkpoint ``number`` (then ``state`` plus ``"checkpoint": "ckpt-N"`` as ``state.json``); returns
        its path. Non-finite weights are refused: the previous checkpoint stays the last good one."""
        model = self.objects.get("model")
        weights = model.trainable_variables if model is not None else []
        if weights and not bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in weights])):
            raise CadlError(f"{self.run}: weights became non-finite by {self.unit} {number}; stopped (last good "
                            f"checkpoint: {self.latest or 'none'})" + (f"; {self.advice}" if self.advice else ""))
        path = self.manager.save(checkpoint_number=number)
        if state is not None:
            atomic.write_json(os.path.join(self.folder, STATE), dict(state, checkpoint=os.path.basename(path)))
        return path


def _restore(objects, path):
    # expect_partial first: a checkpoint that does not fit raises below, without a second warning about it
    tf.train.Checkpoint(**objects).restore(path).expect_partial().assert_existing_objects_matched()


def _first_line(e):
    text = str(getattr(e, "message", "") or e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
