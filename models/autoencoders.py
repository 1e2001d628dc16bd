"""The course's autoencoders (session 3), as Keras 3 models that save and load as ``.keras``.

    TiedAutoencoder         fully connected, 784 -> 512 -> 256 -> 128 -> 64, decoder = the encoder's
                            matrices transposed (one variable per matrix, see ``models.layers.TiedDense``)
    TiedConvAutoencoder     convolutional, decoder = transposed convolutions with the encoder's kernels
    VAE                     variational, fully connected or convolutional (``convolutional=True``)

Every model takes images (batch, H, W, C) in [0, 1] (flattened rows are reshaped) and returns its
reconstruction in the same space. The dataset's mean image lives in the model (``adapt``); the network works
on ``x - mean`` as in the lesson and adds the mean back. ``noise`` > 0 makes any of them a *denoising*
model: during training the input is corrupted by masking noise (that fraction of pixels set to 0) and the
loss is measured against the clean input. At inference there is no noise, and the VAE decodes its mean code,
so predictions are deterministic.

Losses: the autoencoders minimise the mean squared error per pixel (the lesson's
``tf.reduce_mean(tf.squared_difference(X, Y))``); the VAE minimises, per image, the summed squared error plus
the KL divergence of its code from N(0, I) (the course's ``libs/vae.py``), with one metric per term.
"""
import math

import keras
import tensorflow as tf
from keras import ops

from models.layers import PACKAGE, MaskingNoise, Sampling, Standardize, TiedConv2DTranspose, TiedDense

MODELS = ("fc", "conv", "denoising", "vae", "conv-vae")


class _Autoencoder(keras.Model):
    """What every course autoencoder shares: mean image, masking noise, train_step/test_step and metrics."""

    variational = False

    def __init__(self, image_shape=(28, 28, 1), noise=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.n_features = math.prod(self.image_shape)
        self.noise = float(noise)
        self.seed = seed
        self.standardize = Standardize(self.image_shape, name="standardize")
        self.corrupt = MaskingNoise(self.noise, seed=seed, name="masking_noise")
        names = ("loss", "reconstruction", "kl") if self.variational else ("loss",)
        self.trackers = [keras.metrics.Mean(name=n) for n in names]

    @property
    def metrics(self):
        return list(self.trackers)

    def adapt(self, mean_image, std_image=None):
        """Store the training split's mean image in the model (call before training)."""
        self.standardize.adapt_to(mean_image, std_image)

    def build(self, input_shape=None):
        # Create every layer's variables with one pass on a blank image (the tied decoder layers need
        # their encoder layers built first, which the forward order guarantees).
        if not self.built:
            self.reconstruct_terms(ops.zeros((1,) + self.image_shape))
            self.built = True

    def _images(self, x):
        return ops.reshape(ops.cast(x, "float32"), (-1,) + self.image_shape)

    def call(self, x, training=False):
        return self.reconstruct_terms(x, training=training)[0]

    def loss_terms(self, x, training):
        """{"loss": scalar, ...}: the reconstruction of ``corrupt(x)`` scored against the clean ``x``.

        For the VAE while training, the KL term is weighted up linearly from 0 to 1 over the first
        ``kl_warmup`` steps ("KL annealing"): without it the fully connected VAE tends to settle on the mean
        image with an unused code (posterior collapse). Validation and test figures use the full weight."""
        recon, extra = self.reconstruct_terms(x, training=training)
        clean = self._images(x)
        if not self.variational:
            return {"loss": ops.mean(ops.square(recon - clean))}
        per_image = ops.sum(ops.square(ops.reshape(recon - clean, (-1, self.n_features))), axis=1)
        z_mean, z_log_var = extra
        kl = -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)
        beta = 1.0
        if training and self.kl_warmup > 0:
            beta = ops.minimum(1.0, ops.cast(self.optimizer.iterations, "float32") / float(self.kl_warmup))
        return {"loss": ops.mean(per_image + beta * kl), "reconstruction": ops.mean(per_image), "kl": ops.mean(kl)}

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            terms = self.loss_terms(x, training=True)
        grads = tape.gradient(terms["loss"], self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._update(terms)

    def test_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        return self._update(self.loss_terms(x, training=False))

    def _update(self, terms):
        for tracker in self.trackers:
            tracker.update_state(terms[tracker.name])
        return {t.name: t.result() for t in self.trackers}

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), noise=self.noise, seed=self.seed)
        return config


def _same_sizes(size, n, stride=2):
    """Spatial sizes through ``n`` 'same' convolutions of ``stride``: (28, 28) -> [(28,28), (14,14), (7,7), (4,4)]."""
    sizes = [tuple(size)]
    for _ in range(n):
        sizes.append(tuple(-(-s // stride) for s in sizes[-1]))
    return sizes


@keras.saving.register_keras_serializable(package=PACKAGE)
class TiedAutoencoder(_Autoencoder):
    """The lesson's fully connected autoencoder: ``dimensions`` [512, 256, 128, 64], tied decoder.

    Hidden layers use ``activation`` (ReLU, as in the lesson); the last decoder layer is linear, since it
    predicts ``x - mean``, which is negative where a pixel is darker than average.
    """

    def __init__(self, image_shape=(28, 28, 1), dimensions=(512, 256, 128, 64), activation="relu", noise=0.0,
                 seed=None, **kwargs):
        super().__init__(image_shape=image_shape, noise=noise, seed=seed, **kwargs)
        self.dimensions = [int(d) for d in dimensions]
        self.activation = activation
        self.encoder_layers = [keras.layers.Dense(d, activation=activation, name=f"encoder_{i}")
                               for i, d in enumerate(self.dimensions)]
        # Decoder layer i runs encoder layer (n-1-i) backwards; the last one is linear.
        n = len(self.dimensions)
        self.decoder_layers = [TiedDense(self.encoder_layers[n - 1 - i],
                                         activation=activation if i < n - 1 else None, name=f"decoder_{i}")
                               for i in range(n)]

    def encode(self, x, training=False):
        h = ops.reshape(self.standardize(self.corrupt(self._images(x), training=training)), (-1, self.n_features))
        for layer in self.encoder_layers:
            h = layer(h)
        return h  # (batch, dimensions[-1])

    def decode(self, code):
        h = code
        for layer in self.decoder_layers:
            h = layer(h)
        return self.standardize.inverse(ops.reshape(h, (-1,) + self.image_shape))

    def reconstruct_terms(self, x, training=False):
        return self.decode(self.encode(x, training=training)), None

    def get_config(self):
        config = super().get_config()
        config.update(dimensions=self.dimensions, activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TiedConvAutoencoder(_Autoencoder):
    """The lesson's convolutional autoencoder: ``filters`` [16, 16, 16] of 4x4, stride 2, tied decoder.

    MNIST: (28, 28, 1) -> (14, 14, 16) -> (7, 7, 16) -> (4, 4, 16) -> back through the same kernels.
    """

    def __init__(self, image_shape=(28, 28, 1), filters=(16, 16, 16), kernel_size=4, activation="relu",
                 noise=0.0, seed=None, **kwargs):
        super().__init__(image_shape=image_shape, noise=noise, seed=seed, **kwargs)
        self.filters = [int(f) for f in filters]
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.encoder_layers = [keras.layers.Conv2D(f, self.kernel_size, strides=2, padding="same",
                                                   activation=activation, name=f"encoder_{i}")
                               for i, f in enumerate(self.filters)]
        sizes = _same_sizes(self.image_shape[:2], len(self.filters))
        n = len(self.filters)
        self.decoder_layers = [TiedConv2DTranspose(self.encoder_layers[n - 1 - i], output_size=sizes[n - 1 - i],
                                                   activation=activation if i < n - 1 else None,
                                                   name=f"decoder_{i}")
                               for i in range(n)]

    def encode(self, x, training=False):
        h = self.standardize(self.corrupt(self._images(x), training=training))
        for layer in self.encoder_layers:
            h = layer(h)
        return h  # (batch, H/8, W/8, filters[-1]) for three layers

    def decode(self, code):
        h = code
        for layer in self.decoder_layers:
            h = layer(h)
        return self.standardize.inverse(h)

    def reconstruct_terms(self, x, training=False):
        return self.decode(self.encode(x, training=training)), None

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class VAE(_Autoencoder):
    """Variational autoencoder (the course's ``libs/vae.py``): fully connected or convolutional.

    Fully connected: image -> ``hidden`` dense layers -> (z_mean, z_log_var) of ``latent`` units -> the
    hidden layers mirrored -> image. Convolutional: ``filters`` 4x4 stride-2 convolutions -> a ``hidden[-1]``
    dense layer -> code -> mirrored transposed convolutions. The decoder has its own weights (a VAE's decoder
    maps codes, not encoder activations, back). Training samples z = mean + sigma * eps (seeded); inference
    uses the mean, so ``model(x)`` is deterministic.
    """

    variational = True

    def __init__(self, image_shape=(28, 28, 1), latent=16, hidden=(512, 256), convolutional=False,
                 filters=(32, 64, 64), kernel_size=4, activation="relu", kl_warmup=1000, noise=0.0, seed=None,
                 **kwargs):
        super().__init__(image_shape=image_shape, noise=noise, seed=seed, **kwargs)
        self.kl_warmup = int(kl_warmup)
        self.latent = int(latent)
        self.hidden = [int(h) for h in hidden]
        self.convolutional = bool(convolutional)
        self.filters = [int(f) for f in filters]
        self.kernel_size = int(kernel_size)
        self.activation = activation
        dense = lambda units, name, act=activation: keras.layers.Dense(units, activation=act, name=name)  # noqa
        if self.convolutional:
            self.sizes = _same_sizes(self.image_shape[:2], len(self.filters))
            self.encoder_layers = [keras.layers.Conv2D(f, self.kernel_size, strides=2, padding="same",
                                                       activation=activation, name=f"encoder_conv_{i}")
                                   for i, f in enumerate(self.filters)]
            self.encoder_layers += [keras.layers.Flatten(name="encoder_flatten"),
                                    dense(self.hidden[-1], "encoder_dense")]
            h, w = self.sizes[-1]
            self.decoder_layers = [dense(self.hidden[-1], "decoder_dense"),
                                   dense(h * w * self.filters[-1], "decoder_grid"),
                                   keras.layers.Reshape((h, w, self.filters[-1]), name="decoder_reshape")]
            # Transposed convolutions double the size; each output is cropped to the encoder's size there.
            outs = list(reversed(self.filters[:-1])) + [self.image_shape[-1]]
            self.decoder_layers += [keras.layers.Conv2DTranspose(
                f, self.kernel_size, strides=2, padding="same", name=f"decoder_deconv_{i}",
                activation=activation if i < len(outs) - 1 else None) for i, f in enumerate(outs)]
        else:
            self.encoder_layers = [keras.layers.Flatten(name="encoder_flatten")]
            self.encoder_layers += [dense(u, f"encoder_{i}") for i, u in enumerate(self.hidden)]
            self.decoder_layers = [dense(u, f"decoder_{i}") for i, u in enumerate(reversed(self.hidden))]
            self.decoder_layers += [dense(self.n_features, "decoder_out", None),
                                    keras.layers.Reshape(self.image_shape, name="decoder_reshape")]
        self.z_mean = keras.layers.Dense(self.latent, name="z_mean")
        self.z_log_var = keras.layers.Dense(self.latent, name="z_log_var")
        self.sampling = Sampling(seed=seed, name="sampling")

    def encode(self, x, training=False):
        """(z_mean, z_log_var), each (batch, latent)."""
        h = self.standardize(self.corrupt(self._images(x), training=training))
        for layer in self.encoder_layers:
            h = layer(h)
        return self.z_mean(h), self.z_log_var(h)

    def decode(self, z):
        h = z
        deconvs = 0
        for layer in self.decoder_layers:
            h = layer(h)
            if isinstance(layer, keras.layers.Conv2DTranspose):
                deconvs += 1
                th, tw = self.sizes[len(self.filters) - deconvs]
                h = h[:, :th, :tw, :]  # e.g. 4 -> 8 cropped to MNIST's 7
        return self.standardize.inverse(h)

    def reconstruct_terms(self, x, training=False):
        z_mean, z_log_var = self.encode(x, training=training)
        z = self.sampling(z_mean, z_log_var) if training else z_mean
        return self.decode(z), (z_mean, z_log_var)

    def get_config(self):
        config = super().get_config()
        config.update(latent=self.latent, hidden=self.hidden, convolutional=self.convolutional,
                      filters=self.filters, kernel_size=self.kernel_size, activation=self.activation,
                      kl_warmup=self.kl_warmup)
        return config


def build(kind, image_shape, noise=None, latent=16, seed=None, kl_warmup=1000):
    """The job's ``--model`` -> an unbuilt model. ``denoising`` is the fully connected tied autoencoder with
    masking noise 0.5 (the course's ``corrupt`` zeroes about half the pixels); ``noise`` overrides the rate
    for any kind (0 for the plain ones by default). ``latent`` and ``kl_warmup`` (steps) are the VAEs'."""
    if kind not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, not {kind!r}")
    rate = (0.5 if kind == "denoising" else 0.0) if noise is None else float(noise)
    if kind in ("fc", "denoising"):
        return TiedAutoencoder(image_shape, noise=rate, seed=seed, name=f"{kind.replace('-', '_')}_autoencoder")
    if kind == "conv":
        return TiedConvAutoencoder(image_shape, noise=rate, seed=seed, name="conv_autoencoder")
    return VAE(image_shape, latent=latent, convolutional=kind == "conv-vae", noise=rate, seed=seed,
               kl_warmup=kl_warmup, name=kind.replace("-", "_"))


def reconstruction_error(model, images, batch_size=256):
    """Mean squared error per pixel (values in [0, 1]) of ``model``'s deterministic reconstructions, and the
    PSNR in dB that it corresponds to; images are uint8 (N, H, W, C) or floats in [0, 1]."""
    total, count = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        x = ops.convert_to_tensor(x, "float32") / (255.0 if x.dtype == "uint8" else 1.0)
        recon = model(x, training=False)
        total += float(ops.sum(ops.square(ops.clip(recon, 0.0, 1.0) - ops.reshape(x, ops.shape(recon)))))
        count += int(math.prod(recon.shape))
    mse = total / max(count, 1)
    return {"mse": mse, "psnr": 10.0 * math.log10(1.0 / max(mse, 1e-10))}
