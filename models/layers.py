"""Layers the course's autoencoders need: decoders that reuse the encoder's weights ("tied weights").

The course builds its decoders from the encoder's own matrices: ``W = tf.transpose(Ws[layer_i])`` for the
fully connected autoencoder and ``tf.nn.conv2d_transpose(h, W, ...)`` with the encoder's ``W`` for the
convolutional one. Here that is a layer that holds a *reference* to the encoder layer and reads its kernel at
call time, so there is ONE variable: gradients from the encoder use and the decoder use add up on it, the
optimizer updates it once, and a saved model stores it once.

A tied layer is rebuilt (and re-tied) by the model that owns it, from that model's config: its own
``get_config`` holds its own settings only, since the layer it is tied to is not its to serialise.
"""
import keras
import tensorflow as tf
from keras import ops

PACKAGE = "cadl_course"  # not "cadl": models/vae.py registers its own VAE and Sampling there


class _Ref:
    """A plain reference: keeps Keras from tracking the encoder layer a second time as this layer's child
    (so the shared kernel is saved once, under the encoder, and the tied layer's own weights are its bias)."""

    def __init__(self, layer):
        self.layer = layer


def _tied_kernel(layer, kind):
    if layer is None:
        raise ValueError(f"{kind} has no layer to tie to: it is built by the model that owns it, "
                         "which passes tied_to=<encoder layer>")
    if not layer.built:
        raise ValueError(f"{kind}: the encoder layer {layer.name!r} must be built before its tied decoder layer")
    return layer.kernel


@keras.saving.register_keras_serializable(package=PACKAGE)
class TiedDense(keras.layers.Layer):
    """``activation(x @ tied_to.kernel^T + bias)``: a Dense layer that runs ``tied_to`` backwards.

    ``tied_to`` is a built ``keras.layers.Dense`` with kernel (n_in, n_out); this layer maps (batch, n_out)
    to (batch, n_in). Only the bias is this layer's own variable.
    """

    def __init__(self, tied_to=None, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self._tied = _Ref(tied_to)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias

    def tied_layer(self):
        """The encoder layer whose kernel this layer uses (a method, not an attribute, so Keras' saving
        walks the shared kernel once, under the encoder)."""
        return self._tied.layer

    def build(self, input_shape):
        kernel = _tied_kernel(self.tied_layer(), "TiedDense")
        n_in, n_out = kernel.shape
        if input_shape[-1] is not None and input_shape[-1] != n_out:
            raise ValueError(f"TiedDense tied to {self.tied_layer().name!r} expects {n_out} features, "
                             f"got {input_shape[-1]}")
        self.units = int(n_in)
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros") if self.use_bias \
            else None

    def call(self, inputs):
        y = ops.matmul(inputs, ops.transpose(self.tied_layer().kernel))  # (batch, n_out) @ (n_out, n_in)
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(activation=keras.activations.serialize(self.activation), use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TiedConv2DTranspose(keras.layers.Layer):
    """The transposed convolution of a ``keras.layers.Conv2D`` with *its* kernel: (B, h, w, out) -> (B, H, W, in).

    ``tied_to`` is a built Conv2D with kernel (kh, kw, in, out); ``conv2d_transpose`` reads that same array
    as (kh, kw, output channels, input channels), so no transpose is needed: the decoder literally reuses the
    encoder's filters. ``output_size`` (H, W) is the spatial size of the encoder layer's *input*, recorded by
    the model, so odd sizes come back exactly (MNIST: 28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28).
    """

    def __init__(self, tied_to=None, output_size=None, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if output_size is None or len(output_size) != 2:
            raise ValueError("TiedConv2DTranspose needs output_size=(H, W)")
        self._tied = _Ref(tied_to)
        self.output_size = tuple(int(s) for s in output_size)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias

    def tied_layer(self):
        """The encoder layer whose kernel this layer uses (a method, not an attribute, so Keras' saving
        walks the shared kernel once, under the encoder)."""
        return self._tied.layer

    def build(self, input_shape):
        kernel = _tied_kernel(self.tied_layer(), "TiedConv2DTranspose")
        if self.tied_layer().data_format != "channels_last":
            raise ValueError("TiedConv2DTranspose supports channels_last convolutions only")
        if tuple(self.tied_layer().dilation_rate) != (1, 1) or self.tied_layer().groups != 1:
            raise ValueError("TiedConv2DTranspose supports plain (undilated, ungrouped) convolutions only")
        self.filters = int(kernel.shape[2])  # the encoder's input channels are this layer's output channels
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias \
            else None

    def call(self, inputs):
        conv = self.tied_layer()
        batch = ops.shape(inputs)[0]
        # TensorFlow's op takes the output shape explicitly, which is what makes odd sizes round-trip.
        y = tf.nn.conv2d_transpose(
            inputs, conv.kernel, output_shape=tf.stack([batch, *self.output_size, self.filters]),
            strides=(1, *conv.strides, 1), padding=conv.padding.upper())
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(output_size=list(self.output_size), use_bias=self.use_bias,
                      activation=keras.activations.serialize(self.activation))
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskingNoise(keras.layers.Layer):
    """Masking noise (the course's ``corrupt``): while training, zero each input value with probability ``rate``.

    Denoising autoencoders see the corrupted input and are scored against the clean one. Seeded, and a
    no-op at inference, so exported models are deterministic.
    """

    def __init__(self, rate=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"masking noise rate must be in [0, 1), not {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        keep = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator) >= self.rate
        # Kept values are scaled by 1 / (1 - rate), as dropout does, so a clean input at inference has the
        # brightness the network saw in training (with the course's plain mask, a model trained on half the
        # pixels reconstructs clean inputs worse than corrupted ones).
        return inputs * ops.cast(keep, inputs.dtype) / (1.0 - self.rate)

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sampling(keras.layers.Layer):
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I) (seeded); the reparameterisation trick of the VAE."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, z_mean, z_log_var):
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Standardize(keras.layers.Layer):
    """(x - mean) / std with the dataset's mean image (and optionally std) stored *in* the model.

    The course feeds ``X - mean_img`` and adds the mean back to look at reconstructions; keeping the mean
    image as a (non-trainable) weight makes a saved model self-contained. ``inverse`` maps back.
    """

    def __init__(self, image_shape, use_std=False, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.use_std = bool(use_std)
        self.mean = self.add_weight(name="mean", shape=self.image_shape, initializer="zeros", trainable=False)
        self.std = self.add_weight(name="std", shape=self.image_shape, initializer="ones", trainable=False)

    def adapt_to(self, mean, std=None):
        """Set the statistics from the training split (arrays of ``image_shape``)."""
        self.mean.assign(ops.reshape(ops.convert_to_tensor(mean, "float32"), self.image_shape))
        if std is not None:
            self.std.assign(ops.reshape(ops.maximum(ops.convert_to_tensor(std, "float32"), 1e-3),
                                        self.image_shape))

    def call(self, x):
        x = x - self.mean
        return x / self.std if self.use_std else x

    def inverse(self, y):
        return (y * self.std if self.use_std else y) + self.mean

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), use_std=self.use_std)
        return config
