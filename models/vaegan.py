"""The sharp model: the film VAE trained against a PatchGAN discriminator (``cadl train --preset sharp``).

VAE decodings are blurred because a pixel loss is minimised by the mean of the plausible pictures. Larsen et
al. 2015 ("Autoencoding beyond pixels") replace part of the pixel loss with a learned similarity: distances
between a discriminator's features of the picture and of its reconstruction; VQGAN (Esser et al. 2021) adds
a hinge adversarial term whose weight is set each step from the ratio of gradient norms at the decoder's last
layer. Here:

    x (B, H, W, C) -> VAE encoder -> z -> VAE decoder -> y          (the film VAE of models.vae, unchanged)
    D: x or y -> [features after each 4x4 stride-2 spectral-norm conv, ...] -> logits (B, H/2^n, W/2^n, 1)

    generator loss = pixel (the VAE's summed error, optionally + MS-SSIM, + spectral_weight * the squared error
                    of spectral_tile-sided tiles' amplitude spectra) + beta * KL   (warm-up: only this, the plain VAE's
                                                                       step; D idle)
                   + on, after ``gan_start`` steps:  feature_weight * P * mean_l |D_l(x) - D_l(y)|
                                                   + lambda * (-mean D(y))         (hinge generator term)
        lambda = adv_weight * ramp * ||dNLL/dW_last|| / (||dADV/dW_last|| + 1e-4), clipped, no gradient
        (ramp: 0 -> 1 over the gan_start steps after gan_start)
        (NLL = pixel + features; W_last = the decoder's last conv kernel; P = pixels x channels, so every term
        is a per-image sum like the VAE's reconstruction and beta keeps its meaning)
    discriminator loss = mean relu(1 - D(x)) + mean relu(1 + D(y)), skipped (no update) while below
        ``d_floor``: the balance rule of CADL's VAE-GAN (a discriminator that already wins by that margin only
        runs away and leaves the decoder noise to chase)

Only the encoder and decoder are the model a render needs: ``export_vae`` copies them into a plain ``VAE``.
"""
import keras
import tensorflow as tf
from keras import layers

from models.defaults import GAN_DEFAULTS  # every knob: see there
from models.vae import VAE, to_float

# What the VAE itself uses under the sharp preset: the default's (summed squared error: an L1 pixel loss, the
# median, left moving objects out of the reconstructions in the first hundreds of steps: README, "Sharp
# re-renders"; --loss l1 still chooses it).
VAE_PRESET = {}


def make_gan_config(overrides=None):
    """GAN_DEFAULTS updated with ``overrides`` (None values ignored), checked."""
    gan = dict(GAN_DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in GAN_DEFAULTS:
            raise ValueError(f"unknown sharp option {key!r}")
        if value is not None:
            gan[key] = value
    gan["disc_widths"] = [int(v) for v in gan["disc_widths"]]
    if not gan["disc_widths"]:
        raise ValueError("disc_widths needs at least one width")
    for key in ("feature_weight", "adv_weight", "d_floor", "ms_ssim_weight", "spectral_weight"):
        gan[key] = float(gan[key])
        if gan[key] < 0:
            raise ValueError(f"{key} must be >= 0, not {gan[key]}")
    gan["gan_start"] = int(gan["gan_start"])
    gan["spectral_tile"] = int(gan["spectral_tile"])
    if gan["spectral_tile"] < 2:
        raise ValueError(f"spectral_tile must be at least 2, not {gan['spectral_tile']}")
    return gan


def ms_ssim_scales(size, window=11):
    """MS-SSIM scales that fit an (H, W) image: each scale's shorter side at least the SSIM window."""
    side, scales = min(size), 0
    while scales < 5 and side >= window:
        scales, side = scales + 1, side // 2
    return scales


def tile_spectra(images, tile):
    """(B, H, W, C) floats -> the amplitude spectra of its tile x tile tiles, (B, C, H/tile, W/tile, tile, tile),
    orthonormal (by Parseval each tile's squared amplitudes sum to its squared pixels)."""
    b, h, w, c = (tf.shape(images)[i] for i in range(4))
    t = tf.reshape(tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2]), [b, c, h // tile, tile, w // tile, tile])
    t = tf.transpose(t, [0, 1, 2, 4, 3, 5])  # (B, C, tiles down, tiles across, tile, tile)
    return tf.abs(tf.signal.fft2d(tf.complex(t, tf.zeros_like(t)))) / float(tile)


def spectral_distance(x, y, tile):
    """Per-image sum of squared differences of the tiles' amplitude spectra, averaged over the batch.

    Phase-free within a tile: detail drawn a little off costs much less here, against blurring it away, than
    under the summed squared error, which is least for the blur (the mean of the plausible pictures). On
    top of the squared error it pays the decoder to keep the detail's energy where it cannot place it exactly.
    Never above the squared error itself (| |a| - |b| | <= |a - b|)."""
    d = tile_spectra(y, tile) - tile_spectra(x, tile)
    return tf.reduce_mean(tf.reduce_sum(tf.square(d), axis=[1, 2, 3, 4, 5]))


def build_discriminator(image_size, channels, widths):
    """Model "discriminator": (B, H, W, C) floats in [0, 1] -> [features of each level..., logits].

    A PatchGAN (Isola et al. 2017): 4x4 stride-2 convs with leaky ReLU, then a 4x4 conv to one logit per
    patch, (B, H/2^n, W/2^n, 1); every conv spectrally normalised (Miyato et al. 2018), which bounds D's
    Lipschitz constant and keeps it from running away from the decoder."""
    h, w = image_size
    x_in = keras.Input((h, w, channels), name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="to_pm1")(x_in)
    features = []
    for i, width in enumerate(widths):
        # no bias: the next layer is an activation anyway, and Grappler's remapper cannot fuse conv + bias +
        # leaky ReLU under the gradient tape (it logs an error each compile)
        conv = layers.Conv2D(width, 4, strides=2, padding="same", use_bias=False, name=f"d_conv{i}")
        x = layers.SpectralNormalization(conv, name=f"d_sn{i}")(x)  # (B, H/2^(i+1), W/2^(i+1), width)
        x = layers.LeakyReLU(0.2, name=f"d_act{i}")(x)
        features.append(x)
    logits = layers.SpectralNormalization(layers.Conv2D(1, 4, padding="same", name="d_logits_conv"),
                                          name="d_logits")(x)
    logits = layers.Activation("linear", dtype="float32", name="d_out")(logits)
    return keras.Model(x_in, features + [logits], name="discriminator")


class VAEGAN(VAE):
    """The film VAE plus ``discriminator`` and its optimizer ``d_optimizer``; ``train_step`` updates both.

    Not a saved format: ``export_vae`` gives the plain VAE that render and retrain load."""

    def __init__(self, config=None, gan=None, **kwargs):
        super().__init__(config, **kwargs)
        self.gan = make_gan_config(gan)
        if self.gan["ms_ssim_weight"] and ms_ssim_scales(self.config["image_size"]) < 2:
            raise ValueError(f"ms_ssim_weight needs images of at least 22 pixels a side, not "
                             f"{self.config['image_size']}")
        tile = self.gan["spectral_tile"]
        if self.gan["spectral_weight"] and any(side % tile for side in self.config["image_size"]):
            raise ValueError(f"spectral_tile {tile} must divide the image size {self.config['image_size']}")
        self.discriminator = build_discriminator(self.config["image_size"], self.config["channels"],
                                                 self.gan["disc_widths"])
        self.d_optimizer = None
        for name in ("pixel", "features", "adversarial", "adv_weight", "d_loss", "d_real", "d_fake", "d_updates"):
            self.trackers[name] = keras.metrics.Mean(name=name)

    def set_d_optimizer(self, optimizer):
        self.d_optimizer = optimizer
        optimizer.build(self.discriminator.trainable_variables)

    @property
    def generator_variables(self):
        return self.encoder.trainable_variables + self.decoder.trainable_variables

    def _last_kernel(self):
        """The decoder's last conv kernel: where VQGAN compares the two losses' gradient norms."""
        for layer in reversed(self.decoder.layers):
            if getattr(layer, "kernel", None) is not None:
                return layer.kernel
        raise ValueError("decoder has no kernel")

    def _pixel(self, x, terms, y=None):
        """The pixel loss: the VAE's reconstruction term, + MS-SSIM and the spectral term when asked (they need
        the images ``y``)."""
        pixel = terms["reconstruction"]
        if self.gan["ms_ssim_weight"]:
            pixels = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
            scales = ms_ssim_scales(self.config["image_size"])
            weights = tf.constant([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales])
            weights = weights / tf.reduce_sum(weights)
            ms = tf.image.ssim_multiscale(x, y, 1.0, power_factors=weights, filter_size=11)
            pixel += self.gan["ms_ssim_weight"] * pixels * tf.reduce_mean(1.0 - ms)
        if self.gan["spectral_weight"]:
            pixel += self.gan["spectral_weight"] * spectral_distance(x, y, self.gan["spectral_tile"])
        return pixel

    def train_step(self, data):
        x = to_float(data)
        # The warm-up is the plain VAE's step (D neither runs nor trains: warm-up steps cost what the default
        # model's do); from gan_start on, the generator's and D's steps together.
        on = self.optimizer.iterations >= self.gan["gan_start"]
        terms = tf.cond(on, lambda: self._gan_step(x), lambda: self._pixel_step(x))
        return self._report(terms, tf.shape(x)[0])

    def _pixel_step(self, x):
        g_vars = self.generator_variables
        with tf.GradientTape() as tape:
            y, z_mean, z_log_var = self.forward(x, training=True)
            terms = self.terms(x, y, z_mean, z_log_var, training=True)
            pixel = self._pixel(x, terms, y)
            loss = pixel + terms["beta"] * terms["kl"]
            scaled = self.optimizer.scale_loss(loss / tf.distribute.get_strategy().num_replicas_in_sync)
        self.optimizer.apply(tape.gradient(scaled, g_vars), g_vars)
        zero = tf.constant(0.0)
        terms.update(loss=loss, pixel=pixel, features=zero, adversarial=zero, adv_weight=zero, d_loss=zero,
                     d_real=zero, d_fake=zero, d_updates=zero)
        return terms

    def _gan_step(self, x):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        pixels = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
        g_vars = self.generator_variables
        with tf.GradientTape(persistent=True) as tape:
            y, z_mean, z_log_var = self.forward(x, training=True)
            terms = self.terms(x, y, z_mean, z_log_var, training=True)
            pixel = self._pixel(x, terms, y)
            # D in inference mode here: the generator's step must not move D's spectral-norm estimates.
            real, fake = self.discriminator(x, training=False), self.discriminator(y, training=False)
            features = tf.add_n([tf.reduce_mean(tf.abs(tf.cast(a, tf.float32) - tf.cast(b, tf.float32)))
                                 for a, b in zip(real[:-1], fake[:-1])]) / len(real[:-1])
            features = self.gan["feature_weight"] * pixels * features
            nll = pixel + features
            adversarial = -tf.reduce_mean(tf.cast(fake[-1], tf.float32))
            with tape.stop_recording():
                kernel = self._last_kernel()
                g_nll, g_adv = tape.gradient(nll, kernel), tape.gradient(adversarial, kernel)
                weight = tf.norm(g_nll) / (tf.norm(g_adv) + 1e-4)
                # ramped in over gan_start further steps: an untrained D's output is nearly flat, so the ratio
                # starts in the thousands and a full-weight term at once wrecked the reconstructions (PSNR
                # 22.9 -> 10.1 dB in 30 steps, README "Sharp re-renders")
                step = tf.cast(self.optimizer.iterations, tf.float32)
                ramp = tf.clip_by_value((step - self.gan["gan_start"]) / max(self.gan["gan_start"], 1), 0.0, 1.0)
                weight = tf.stop_gradient(tf.clip_by_value(weight, 0.0, 1e4)) * self.gan["adv_weight"] * ramp
            loss = nll + terms["beta"] * terms["kl"] + weight * adversarial
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, g_vars)
        del tape
        self.optimizer.apply(grads, g_vars)

        # The discriminator's step on this batch's reconstructions (before the generator's update).
        y = tf.stop_gradient(y)
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as d_tape:
            d_real = tf.reduce_mean(tf.nn.relu(1.0 - self.discriminator(x, training=True)[-1]))
            d_fake = tf.reduce_mean(tf.nn.relu(1.0 + self.discriminator(y, training=True)[-1]))
            d_loss = d_real + d_fake
            d_scaled = self.d_optimizer.scale_loss(d_loss / replicas)
        d_grads = d_tape.gradient(d_scaled, d_vars)
        update = d_loss >= self.gan["d_floor"]  # the balance rule: a D that wins this clearly waits
        tf.cond(update, lambda: self._apply_d(d_grads, d_vars), lambda: tf.constant(False))
        terms.update(loss=loss, pixel=pixel, features=features, adversarial=adversarial, adv_weight=weight,
                     d_loss=d_loss, d_real=d_real, d_fake=d_fake, d_updates=tf.cast(update, tf.float32))
        return terms

    def _apply_d(self, grads, variables):
        self.d_optimizer.apply(grads, variables)
        return tf.constant(True)

    def _report(self, terms, batch):
        for name, tracker in self.trackers.items():
            if name in terms:  # test_step has no GAN terms: those trackers keep the training window's values
                tracker.update_state(terms[name], sample_weight=batch)
        self.beta_value.update_state(terms["beta"])
        return {m.name: m.result() for m in self.metrics
                if m.name in terms or m.name == "beta"}


def export_vae(model):
    """The plain ``VAE`` holding ``model``'s encoder and decoder weights: what an export and a render need."""
    plain = VAE(model.config, name="vae").build_all()
    plain.encoder.set_weights(model.encoder.get_weights())
    plain.decoder.set_weights(model.decoder.get_weights())
    return plain
