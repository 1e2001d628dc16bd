"""The film VAE: a convolutional variational autoencoder in Keras 3 (loading and serving it: ``pipelines.export``).

    x (B, H, W, C) uint8 or [0, 1] floats
      -> encoder "encoder": convs, stride-2 down ``depth`` times -> (B, H/2^d, W/2^d, widths[-1])
                            -> 1x1 convs -> z_mean, z_log_var per cell, flattened (B, latent = cells x
                               latent_channels): a spatial code (default); or flatten -> dense (latent_channels 0)
      -> Sampling (seeded): z = z_mean + exp(z_log_var / 2) * eps   (z = z_mean outside training)
      -> decoder "decoder": z back on its grid + conv (or dense) -> (B, H/2^d, W/2^d, widths[-1])
                            -> nearest-upsample + conv, ``depth`` times
                            -> (B, H, W, C) in [0, 1]

Two architectures share this code: ``arch="resnet"`` (the default: residual blocks, GroupNorm, SiLU, nearest
upsample + conv, which does not checkerboard) and ``arch="course"`` (the CADL session-3 network: stride-2
convs and transposed convs, batch norm, sigmoid activations, dropout, a hidden dense layer), kept as the
quality benchmark's baseline. The config dict is the model's only description: ``VAE(config)`` rebuilds it,
``get_config`` returns it, and it is saved inside ``.keras`` files and the run folder's ``config.json``.
"""
import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from models.defaults import DEFAULTS  # every knob: see there

# What a stored config written before a knob existed meant by its absence (old run folders and .keras files
# rebuild the network they were trained as).
LEGACY = {"latent_channels": 0}

# A small named variant for tests: trains in seconds.
TINY = {"image_size": [16, 16], "widths": [8, 16], "latent": 8, "latent_channels": 0, "blocks": 1, "beta_warmup": 0}

# The lesson's hyperparameters (CADL session 3), for the quality baseline.
COURSE = {"arch": "course", "widths": [100, 100, 100], "hidden": 250, "latent": 100, "latent_channels": 0,
          "norm": "batch", "activation": "sigmoid", "dropout": 0.2, "loss": "sse", "beta": 1.0, "beta_warmup": 0}


def upgrade_config(stored):
    """A complete config stored by an older version -> today's, meaning the same network."""
    return {**LEGACY, **stored}


def make_config(overrides=None, **kwargs):
    """DEFAULTS updated with ``overrides`` and ``kwargs``, checked; unknown keys are an error."""
    config = dict(DEFAULTS)
    for source in (overrides or {}), kwargs:
        for key, value in source.items():
            if key not in DEFAULTS:
                raise ValueError(f"unknown model option {key!r}")
            config[key] = value
    config["image_size"] = [int(v) for v in config["image_size"]]
    config["widths"] = [int(v) for v in config["widths"]]
    depth = len(config["widths"])
    h, w = config["image_size"]
    if depth < 1 or h % 2**depth or w % 2**depth:
        raise ValueError(f"image size {h}x{w} must divide by 2**depth = {2**depth} (depth = len(widths))")
    config["latent_channels"] = int(config["latent_channels"])
    if config["latent_channels"] < 0:
        raise ValueError(f"latent_channels must be >= 0, not {config['latent_channels']}")
    if config["latent_channels"]:
        if config["arch"] != "resnet" or config["hidden"]:
            raise ValueError("latent_channels (a spatial code) needs arch resnet and hidden 0")
        config["latent"] = (h // 2**depth) * (w // 2**depth) * config["latent_channels"]
    if config["arch"] not in ("resnet", "course"):
        raise ValueError(f"arch must be resnet or course, not {config['arch']!r}")
    if config["norm"] not in ("group", "batch", "none"):
        raise ValueError(f"norm must be group, batch or none, not {config['norm']!r}")
    if config["loss"] not in ("sse", "l1", "mix"):
        raise ValueError(f"loss must be sse, l1 or mix, not {config['loss']!r}")
    return config


def _norm(kind, width, name):
    if kind == "batch":
        return layers.BatchNormalization(name=name)
    if kind == "group":
        return layers.GroupNormalization(groups=min(8, width), name=name)
    return layers.Identity(name=name)


def _act(kind, name):
    return layers.Activation({"silu": "silu", "relu": "relu", "sigmoid": "sigmoid", "elu": "elu"}[kind],
                             name=name)


def _res_block(x, width, cfg, name):
    """norm -> act -> conv -> norm -> act -> conv, plus the input (pre-activation residual block)."""
    h = _norm(cfg["norm"], width, f"{name}_n1")(x)
    h = _act(cfg["activation"], f"{name}_a1")(h)
    h = layers.Conv2D(width, 3, padding="same", name=f"{name}_c1")(h)
    h = _norm(cfg["norm"], width, f"{name}_n2")(h)
    h = _act(cfg["activation"], f"{name}_a2")(h)
    if cfg["dropout"]:
        h = layers.Dropout(cfg["dropout"], name=f"{name}_drop")(h)
    # Zero-initialised last conv: each block starts as the identity, which keeps a normalisation-free stack
    # stable (SkipInit / Fixup) at the default learning rate.
    h = layers.Conv2D(width, 3, padding="same", name=f"{name}_c2", kernel_initializer="zeros")(h)
    return layers.Add(name=f"{name}_add")([x, h])


def build_encoder(cfg):
    """Model "encoder": (B, H, W, C) floats in [0, 1] -> [z_mean, z_log_var], each (B, latent) float32."""
    h_in, w_in = cfg["image_size"]
    x_in = keras.Input((h_in, w_in, cfg["channels"]), name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="to_pm1")(x_in)  # [-1, 1]: centred inputs train faster
    if cfg["arch"] == "course":
        for i, width in enumerate(cfg["widths"]):
            x = layers.Conv2D(width, 3, strides=2, padding="same", name=f"down{i}")(x)
            x = _norm(cfg["norm"], width, f"down{i}_norm")(x)
            x = _act(cfg["activation"], f"down{i}_act")(x)
            if cfg["dropout"]:
                x = layers.Dropout(cfg["dropout"], name=f"down{i}_drop")(x)
    else:
        x = layers.Conv2D(cfg["widths"][0], 3, padding="same", name="stem")(x)
        for i, width in enumerate(cfg["widths"]):
            # Stride-2 conv halves H and W: (B, H/2^(i+1), W/2^(i+1), width)
            x = layers.Conv2D(width, 3, strides=2, padding="same", name=f"down{i}")(x)
            for b in range(cfg["blocks"]):
                x = _res_block(x, width, cfg, f"enc{i}_res{b}")
        x = _norm(cfg["norm"], cfg["widths"][-1], "enc_out_norm")(x)
        x = _act(cfg["activation"], "enc_out_act")(x)
    if cfg["latent_channels"]:
        # A spatial code: each cell of the lowest resolution gets its own latent_channels numbers, read by a 1x1
        # conv from that cell's features; flattened, z is still a vector of size cells * latent_channels.
        z_mean = layers.Conv2D(cfg["latent_channels"], 1, name="z_mean_grid", dtype="float32")(x)
        z_log_var = layers.Conv2D(cfg["latent_channels"], 1, name="z_log_var_grid", dtype="float32",
                                  kernel_initializer="zeros")(x)
        z_mean = layers.Flatten(name="z_mean", dtype="float32")(z_mean)
        z_log_var = layers.Flatten(name="z_log_var_raw", dtype="float32")(z_log_var)
        return keras.Model(x_in, [z_mean, _bounded_log_var(z_log_var)], name="encoder")
    x = layers.Flatten(name="flatten")(x)  # (B, H/2^d * W/2^d * widths[-1])
    if cfg["hidden"]:
        x = layers.Dense(cfg["hidden"], name="hidden")(x)
        if cfg["arch"] == "course" and cfg["norm"] == "batch":
            x = layers.BatchNormalization(name="hidden_norm")(x)
        x = _act(cfg["activation"], "hidden_act")(x)
    # The latent heads stay float32 under mixed precision: exp(z_log_var) overflows float16.
    z_mean = layers.Dense(cfg["latent"], name="z_mean", dtype="float32")(x)
    z_log_var = layers.Dense(cfg["latent"], name="z_log_var_raw", dtype="float32", kernel_initializer="zeros")(x)
    return keras.Model(x_in, [z_mean, _bounded_log_var(z_log_var)], name="encoder")


def _bounded_log_var(z_log_var):
    # Softly bounded to (-10, 10): exp(z_log_var) in the KL term otherwise overflows to inf when a large
    # learning rate kicks the head (lr 2e-3 diverged without this).
    z_log_var = layers.Rescaling(0.1, name="z_log_var_in", dtype="float32")(z_log_var)
    z_log_var = layers.Activation("tanh", name="z_log_var_tanh", dtype="float32")(z_log_var)
    return layers.Rescaling(10.0, name="z_log_var", dtype="float32")(z_log_var)


def build_decoder(cfg):
    """Model "decoder": z (B, latent) -> (B, H, W, C) float32 in [0, 1]."""
    depth = len(cfg["widths"])
    h0, w0 = cfg["image_size"][0] // 2**depth, cfg["image_size"][1] // 2**depth
    z_in = keras.Input((cfg["latent"],), name="z")
    x = z_in
    if cfg["hidden"]:
        x = layers.Dense(cfg["hidden"], name="hidden")(x)
        if cfg["arch"] == "course" and cfg["norm"] == "batch":
            x = layers.BatchNormalization(name="hidden_norm")(x)
        x = _act(cfg["activation"], "hidden_act")(x)
    if cfg["latent_channels"]:  # the spatial code back onto its grid, then a conv to the features
        x = layers.Reshape((h0, w0, cfg["latent_channels"]), name="unflatten")(x)
        x = layers.Conv2D(cfg["widths"][-1], 3, padding="same", name="project")(x)
    else:
        x = layers.Dense(h0 * w0 * cfg["widths"][-1], name="project")(x)
        x = layers.Reshape((h0, w0, cfg["widths"][-1]), name="unflatten")(x)  # (B, H/2^d, W/2^d, widths[-1])
    if cfg["arch"] == "course":
        outs = list(reversed(cfg["widths"][:-1])) + [cfg["channels"]]
        for i, width in enumerate(outs):
            x = _norm(cfg["norm"], cfg["widths"][-1], f"up{i}_norm")(x) if i == 0 else x
            x = _act(cfg["activation"], f"up{i}_act")(x)
            if cfg["dropout"] and i > 0:
                x = layers.Dropout(cfg["dropout"], name=f"up{i}_drop")(x)
            last = i == len(outs) - 1
            x = layers.Conv2DTranspose(width, 3, strides=2, padding="same", name=f"up{i}",
                                       dtype="float32" if last else None)(x)
            if not last:
                x = _norm(cfg["norm"], width, f"up{i}_bn")(x)
        out = layers.Activation("sigmoid", name="pixels", dtype="float32")(x)
        return keras.Model(z_in, out, name="decoder")
    for i, width in enumerate(reversed(cfg["widths"])):
        for b in range(cfg["blocks"]):
            x = _res_block(x, width, cfg, f"dec{i}_res{b}")
        # Nearest upsample then conv: no checkerboard artefacts of transposed convs. (B, 2h, 2w, next width)
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"up{i}")(x)
        nxt = cfg["widths"][::-1][i + 1] if i + 1 < depth else cfg["widths"][0]
        x = layers.Conv2D(nxt, 3, padding="same", name=f"up{i}_conv")(x)
    x = _norm(cfg["norm"], cfg["widths"][0], "dec_out_norm")(x)
    x = _act(cfg["activation"], "dec_out_act")(x)
    x = layers.Conv2D(cfg["channels"], 3, padding="same", name="to_pixels", dtype="float32")(x)
    out = layers.Activation("sigmoid", name="pixels", dtype="float32")(x)
    return keras.Model(z_in, out, name="decoder")


@keras.saving.register_keras_serializable(package="cadl")
class Sampling(layers.Layer):
    """z = z_mean + exp(z_log_var / 2) * eps with seeded noise (training); z = z_mean otherwise.

    The noise state is a variable of the layer, so checkpoints carry it and a resumed run draws the
    same noise as an uninterrupted one.
    """

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, z_mean, z_log_var, training=None):
        if not training:
            return z_mean
        eps = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def to_uint8(images):
    """The decoder's [0, 1] output -> uint8 0..255, rounded (what a film frame holds)."""
    return tf.cast(tf.round(tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0) * 255.0), tf.uint8)


def to_float(images):
    """uint8 (0..255) -> float32 [0, 1]; floats pass through as float32."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


@keras.saving.register_keras_serializable(package="cadl")
class VAE(keras.Model):
    """Encoder + seeded sampling + decoder; ``train_step``/``test_step`` report loss, reconstruction, kl, psnr."""

    def __init__(self, config=None, **kwargs):
        super().__init__(**kwargs)
        self.config = make_config(config)
        self.encoder = build_encoder(self.config)
        self.decoder = build_decoder(self.config)
        self.sampling = Sampling(self.config["seed"], name="sampling")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "reconstruction", "kl", "psnr")}
        self.beta_value = keras.metrics.Mean(name="beta")  # the current beta, reported for the logs

    @property
    def metrics(self):
        return list(self.trackers.values()) + [self.beta_value]

    def call(self, images, training=False):
        z_mean, z_log_var = self.encoder(to_float(images), training=training)
        z = self.sampling(z_mean, z_log_var, training=training)
        return self.decoder(z, training=training)

    def beta(self):
        """beta ramped linearly over ``beta_warmup`` optimizer steps."""
        beta = float(self.config["beta"])
        warmup = int(self.config["beta_warmup"])
        if not warmup or self.optimizer is None:
            return tf.constant(beta, tf.float32)
        step = tf.cast(self.optimizer.iterations, tf.float32)
        return beta * tf.minimum(1.0, step / float(warmup))

    def compute_terms(self, x, training):
        """Per-batch means of the loss terms for float images ``x`` in [0, 1]; returns a dict of scalars."""
        return self.terms(x, *self.forward(x, training), training)

    def forward(self, x, training):
        """Float images (B, H, W, C) in [0, 1] -> (reconstructions float32 in [0, 1], z_mean, z_log_var)."""
        z_mean, z_log_var = self.encoder(x, training=training)
        z = self.sampling(z_mean, z_log_var, training=training)
        return tf.cast(self.decoder(z, training=training), tf.float32), z_mean, z_log_var

    def terms(self, x, y, z_mean, z_log_var, training):
        """The loss terms of images ``x`` reconstructed as ``y`` through the code (z_mean, z_log_var)."""
        err = y - x
        sq = tf.reduce_sum(tf.square(err), axis=[1, 2, 3])  # (B,) summed over pixels
        if self.config["loss"] == "sse":
            rec = sq
        elif self.config["loss"] == "l1":
            rec = tf.reduce_sum(tf.abs(err), axis=[1, 2, 3])
        else:
            rec = sq + 0.1 * tf.reduce_sum(tf.abs(err), axis=[1, 2, 3])
        # KL(q(z|x) || N(0, I)) per image, summed over the latent dimensions.
        kl = -0.5 * tf.reduce_sum(1.0 + z_log_var - tf.square(z_mean) - tf.exp(z_log_var), axis=1)
        pixels = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
        psnr = 10.0 * tf.math.log(1.0 / tf.maximum(sq / pixels, 1e-10)) / tf.math.log(10.0)
        beta = self.beta() if training else tf.constant(float(self.config["beta"]), tf.float32)
        rec, kl = tf.reduce_mean(rec), tf.reduce_mean(kl)
        return {"loss": rec + beta * kl, "reconstruction": rec, "kl": kl, "psnr": tf.reduce_mean(psnr),
                "beta": beta}

    def _report(self, terms, batch):
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name], sample_weight=batch)
        self.beta_value.update_state(terms["beta"])
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x = to_float(data)
        with tf.GradientTape() as tape:
            terms = self.compute_terms(x, training=True)
            # Gradients are summed over replicas: scale the per-replica mean; then loss-scale for float16.
            loss = terms["loss"] / tf.distribute.get_strategy().num_replicas_in_sync
            loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return self._report(terms, tf.shape(x)[0])

    def test_step(self, data):
        x = to_float(data)
        return self._report(self.compute_terms(x, training=False), tf.shape(x)[0])

    def get_config(self):
        return {"config": dict(self.config), "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = upgrade_config(config.get("config") or {})
        return cls(**config)

    def build_from_config(self, config):
        """Loading a saved model: the encoder and decoder were built whole by ``__init__`` (functional models)
        and the sampling layer has no weights, so there is nothing to build. Keras' default would trace the
        whole model symbolically to find out (a render's model load: 1.0 -> 0.86 CPU s on 2 cores)."""
        self.sampling.built = True
        self.built = True

    def build_all(self):
        """Create every weight (a forward pass on zeros), so checkpoints restore and summaries work."""
        h, w = self.config["image_size"]
        self(np.zeros((1, h, w, self.config["channels"]), np.float32))
        return self
