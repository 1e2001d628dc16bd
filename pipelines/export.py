"""Trained models as files: writing ``export/`` (a ``.keras`` file and a SavedModel), finding and loading them.

    RUN/export/model.keras     the Keras 3 file: the network, its config and weights (what render loads)
    RUN/export/saved_model/    a TensorFlow SavedModel for serving without cadl: the film VAE's ``encode``
                               (uint8 images -> z_mean, z_log_var), ``decode`` (z -> uint8 images) and
                               ``reconstruct`` (uint8 -> uint8 through z_mean); a course model's ``serve``
                               (float images -> outputs)

Both appear complete or not at all: each is written under a temporary name, then renamed into place.
``Inference`` wraps a loaded VAE for render and the latent tools: uint8 frames in, latents or frames out.
"""
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from models.vae import VAE, to_float, to_uint8
from pipelines import atomic
from pipelines.errors import CadlError


def export(model, folder, endpoints):
    """``folder/model.keras`` and ``folder/saved_model/``, each appearing complete; returns ``folder``.

    ``endpoints``: {name: (function, [tf.TensorSpec, ...])}, the SavedModel's signatures."""
    os.makedirs(folder, exist_ok=True)
    with atomic.atomic_path(os.path.join(folder, "model.keras")) as tmp:
        model.save(tmp)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    tf.get_logger().setLevel("WARNING")  # not "Assets written to <temporary folder>"
    final = os.path.join(folder, "saved_model")
    tmp = tempfile.mkdtemp(prefix=".saved_model.", dir=folder)
    try:
        archive.write_out(os.path.join(tmp, "new"), verbose=False)
        if os.path.exists(final):
            os.replace(final, os.path.join(tmp, "old"))
        os.replace(os.path.join(tmp, "new"), final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def vae_endpoints(model):
    """The film VAE's signatures: ``encode``, ``decode`` and ``reconstruct`` on uint8 images."""
    h, w = model.config["image_size"]
    images = tf.TensorSpec([None, h, w, model.config["channels"]], tf.uint8, name="images")
    zs = tf.TensorSpec([None, model.config["latent"]], tf.float32, name="z")

    def encode(x):
        z_mean, z_log_var = model.encoder(to_float(x), training=False)
        return {"z_mean": tf.cast(z_mean, tf.float32), "z_log_var": tf.cast(z_log_var, tf.float32)}

    def decode(z):
        return {"images": to_uint8(model.decoder(z, training=False))}

    def reconstruct(x):
        z_mean, _ = model.encoder(to_float(x), training=False)
        return {"images": to_uint8(model.decoder(z_mean, training=False))}

    return {"encode": (encode, [images]), "decode": (decode, [zs]), "reconstruct": (reconstruct, [images])}


def serve_endpoints(model, image_shape):
    """A course model's one signature, ``serve``: ``model(images, training=False)`` (inference mode stated
    explicitly, since Keras' random augmentation layers default to training mode when nobody says)."""
    spec = tf.TensorSpec((None,) + tuple(image_shape), tf.float32, name="images")
    return {"serve": (lambda images: model(images, training=False), [spec])}


# ---- finding and loading the film VAE ----

def resolve_model_path(path):
    """A run folder, its export folder, a ``.keras`` file or a symlink to any of them -> the ``.keras`` file."""
    real = os.path.realpath(os.fspath(path))
    candidates = [real] if real.endswith(".keras") else [
        os.path.join(real, "export", "model.keras"), os.path.join(real, "model.keras")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    if not os.path.exists(real):
        raise CadlError(f"{path}: no such model (expected a run folder, its export/ folder or a .keras file)")
    raise CadlError(f"{path}: no trained model here (looked for {', '.join(candidates)})")


def load_model(path):
    """The ``VAE`` saved at ``path`` (run folder, export folder, ``.keras`` file or symlink)."""
    keras_file = resolve_model_path(path)
    try:
        model = keras.saving.load_model(keras_file, compile=False)
    except Exception as e:  # a truncated or foreign file: one line naming it
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CadlError(f"{keras_file}: cannot load model ({reason})") from None
    if not isinstance(model, VAE):
        raise CadlError(f"{keras_file}: a {type(model).__name__} ({type(model).__module__}), not cadl's film VAE: "
                        f"it has no encoder and decoder to render or explore with (train one with cadl train)")
    return model


def load_inference(path):
    """``Inference`` for the model at ``path`` (see ``resolve_model_path``)."""
    return Inference(load_model(path), path=os.fspath(path))


def share_cpu_with_ffmpeg(threads=0):
    """Give TensorFlow's ops ``threads`` CPU threads each (0: half the cores, at least one, on a machine
    without a GPU; TensorFlow's own choice with one), so that a render's model leaves the other cores to its
    ffmpeg decoder and encoder instead of spinning against them. Returns the count set, or None when
    TensorFlow keeps its own (a GPU, or its runtime already started in this process).

    Measured on 2 cores (``benchmarks/render_bench.py``): one thread per op takes 2.55 CPU s for what two
    take 3.08 CPU s to do alone, and a render is no slower for it, since x264 fills the other core."""
    if threads == 0:
        if tf.config.list_physical_devices("GPU"):
            return None
        threads = max(1, (os.cpu_count() or 1) // 2)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    except RuntimeError:  # the runtime is up (an earlier model in this process): it keeps its pool
        return None
    return int(threads)


class Inference:
    """A trained VAE for inference: uint8 frames in, latent means or uint8 frames out, deterministic."""

    def __init__(self, model, path=None):
        self.model = model
        self.path = path
        self.config = dict(model.config)
        self.encoder, self.decoder = model.encoder, model.decoder
        # No Python control flow in these: autograph would only add to the first call's tracing.
        graph = dict(reduce_retracing=True, autograph=False)
        self._encode = tf.function(lambda x: self.encoder(to_float(x), training=False)[0], **graph)
        self._decode = tf.function(lambda z: to_uint8(self.decoder(z, training=False)), **graph)
        self._reconstruct = tf.function(
            lambda x: to_uint8(self.decoder(self.encoder(to_float(x), training=False)[0], training=False)),
            **graph)

    def _check(self, images):
        images = np.asarray(images)
        h, w = self.config["image_size"]
        if images.ndim != 4 or images.shape[1:] != (h, w, self.config["channels"]):
            raise CadlError(f"{self.path or 'model'}: expects (B, {h}, {w}, {self.config['channels']}) "
                            f"images, got {images.shape}")
        return images

    def encode(self, images):
        """uint8 (B, H, W, C) -> float32 z_mean (B, latent)."""
        return self._encode(tf.constant(self._check(images))).numpy()

    def decode(self, z):
        """(B, latent) -> uint8 (B, H, W, C)."""
        return self._decode(tf.constant(np.asarray(z, np.float32))).numpy()

    def reconstruct(self, images):
        """uint8 (B, H, W, C) -> uint8 (B, H, W, C), through z = z_mean."""
        return self._reconstruct(tf.constant(self._check(images))).numpy()
