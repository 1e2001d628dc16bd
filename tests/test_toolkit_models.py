"""The course's models: tied weights really are one variable, every model learns, saved = restored = exported."""
import json

import numpy as np
import pytest
import tensorflow as tf

import keras
from fixtures_course import digits
from jobs import course
from models import autoencoders, classifiers
from models.layers import MaskingNoise, TiedConv2DTranspose, TiedDense
from pipelines import export
from pipelines.loaders import one_hot


@pytest.fixture(scope="module")
def mnist_like():
    """600 synthetic digits as floats (N, 28, 28, 1) in [0, 1] and their labels."""
    x, y = digits(600, seed=5, noise=0.05)
    return x[..., None].astype(np.float32) / 255.0, y.astype(np.int64)


# -- tied layers ------------------------------------------------------------------------------------------
def test_tied_dense_is_one_variable_with_gradients_from_both_uses():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    target = rng.normal(size=(5, 6)).astype(np.float32)
    enc = keras.layers.Dense(4, activation="relu", name="enc")
    dec = TiedDense(enc, name="dec")
    y = dec(enc(x))
    assert y.shape == (5, 6)
    assert [w.name for w in dec.trainable_weights] == ["bias"]  # the kernel is not the decoder's own
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((dec(enc(x)) - target) ** 2)
    g_model = tape.gradient(loss, enc.kernel).numpy()

    # The same function by hand, with the kernel held constant on one side or the other.
    w, b_enc, b_dec = (tf.constant(v.numpy()) for v in (enc.kernel, enc.bias, dec.bias))

    def grad(stop_encoder):
        with tf.GradientTape() as t:
            t.watch(w)
            w_enc = tf.stop_gradient(w) if stop_encoder else w
            w_dec = w if stop_encoder else tf.stop_gradient(w)
            h = tf.nn.relu(x @ w_enc + b_enc)
            out = tf.reduce_mean((h @ tf.transpose(w_dec) + b_dec - target) ** 2)
        return t.gradient(out, w).numpy()

    from_decoder, from_encoder = grad(True), grad(False)
    assert np.abs(from_decoder).max() > 1e-4 and np.abs(from_encoder).max() > 1e-4
    np.testing.assert_allclose(g_model, from_decoder + from_encoder, rtol=1e-4, atol=1e-6)


def test_tied_conv_transpose_is_the_adjoint_of_the_encoder_convolution():
    rng = np.random.default_rng(1)
    conv = keras.layers.Conv2D(8, 4, strides=2, padding="same", use_bias=False)
    x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    h = conv(x)  # (2, 4, 4, 8)
    deconv = TiedConv2DTranspose(conv, output_size=(7, 7), use_bias=False)
    y = rng.normal(size=h.shape).astype(np.float32)
    back = deconv(y)
    assert back.shape == (2, 7, 7, 3)  # odd sizes come back exactly
    assert deconv.trainable_weights == []
    # <conv(x), y> == <x, conv^T(y)>: the decoder applies exactly the transpose of the encoder's kernel.
    np.testing.assert_allclose(float(tf.reduce_sum(h * y)), float(tf.reduce_sum(x * back)), rtol=1e-4)
    with tf.GradientTape(persistent=True) as tape:
        encoder_only = tf.reduce_sum(conv(x) ** 2)
        decoder_only = tf.reduce_sum(deconv(y) ** 2)
        both = tf.reduce_sum(deconv(conv(x)) ** 2)
    assert tape.gradient(decoder_only, conv.kernel) is not None
    assert tape.gradient(encoder_only, conv.kernel) is not None
    assert np.abs(tape.gradient(both, conv.kernel).numpy()).max() > 0


def test_fc_autoencoder_has_the_lessons_shape_and_shares_its_matrices(mnist_like):
    model = autoencoders.TiedAutoencoder((28, 28, 1))
    model(mnist_like[0][:2])
    kernels = [layer.kernel.shape for layer in model.encoder_layers]
    assert kernels == [(784, 512), (512, 256), (256, 128), (128, 64)]
    for i, layer in enumerate(model.decoder_layers):
        assert layer.tied_layer() is model.encoder_layers[3 - i]
    kernel_vars = [v for v in model.trainable_variables if "kernel" in v.path]
    assert len(kernel_vars) == 4  # four matrices for eight layers
    assert model.count_params() == sum(a * b for a, b in kernels) + (512 + 256 + 128 + 64) + (784 + 512 + 256 + 128) \
        + 2 * 784  # biases of both sides + the stored mean and std images
    assert model.encode(mnist_like[0][:3]).shape == (3, 64)


def test_conv_autoencoder_reuses_the_encoder_kernels(mnist_like):
    model = autoencoders.TiedConvAutoencoder((28, 28, 1))
    assert model(mnist_like[0][:2]).shape == (2, 28, 28, 1)
    assert model.encode(mnist_like[0][:2]).shape == (2, 4, 4, 16)
    assert len([v for v in model.trainable_variables if "kernel" in v.path]) == 3


def test_masking_noise_zeroes_that_fraction_only_while_training():
    x = np.ones((4, 50, 50, 1), np.float32)
    noise = MaskingNoise(0.3, seed=3)
    np.testing.assert_array_equal(noise(x), x)
    masked = noise(x, training=True).numpy()
    assert abs((masked == 0).mean() - 0.3) < 0.02
    np.testing.assert_allclose(masked[masked > 0], 1 / 0.7, rtol=1e-6)  # kept pixels rescaled, as dropout


# -- every model learns -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", autoencoders.MODELS)
def test_each_autoencoder_lowers_its_loss(kind, mnist_like):
    x = mnist_like[0]
    keras.utils.set_random_seed(0)
    # VAEs: their KL weight reaches 1 after 100 of their 160 steps, so the loss compared is the full one.
    model = autoencoders.build(kind, (28, 28, 1), seed=0, kl_warmup=100)
    model.adapt(x[:500].mean(0))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = model.evaluate(x[500:], verbose=0, return_dict=True)
    error_before = autoencoders.reconstruction_error(model, x[500:])["mse"]
    batch_size, epochs = (25, 8) if model.variational else (50, 4)
    model.fit(x[:500], batch_size=batch_size, epochs=epochs, verbose=0)
    after = model.evaluate(x[500:], verbose=0, return_dict=True)
    error_after = autoencoders.reconstruction_error(model, x[500:])["mse"]
    assert after["loss"] < 0.9 * before["loss"], (before, after)
    assert error_after < 0.9 * error_before
    if model.variational:
        assert set(after) == {"loss", "reconstruction", "kl"} and after["kl"] > 0


def test_denoising_autoencoder_scores_the_corrupted_input_against_the_clean_one(mnist_like):
    x = mnist_like[0][:64]
    model = autoencoders.build("denoising", (28, 28, 1), seed=1)
    model.adapt(x.mean(0))
    assert model.noise == 0.5
    np.testing.assert_array_equal(model(x), model(x))  # inference: no noise
    assert not np.allclose(model(x, training=True), model(x))  # training: noise
    # Replay the same random mask: rewind the noise layer's seed state between the two draws.
    state = model.corrupt.seed_generator.state
    saved = state.numpy()
    loss = float(model.loss_terms(x, training=True)["loss"])
    state.assign(saved)
    corrupted = model.corrupt(x, training=True)
    assert 0.4 < float(np.mean(corrupted.numpy() == 0)) - float(np.mean(x == 0)) * 0.5 < 0.6
    h = keras.ops.reshape(model.standardize(corrupted), (64, -1))
    for layer in model.encoder_layers:
        h = layer(h)
    recon = model.decode(h).numpy()
    # The loss is the distance of the reconstruction of the corrupted input to the *clean* input.
    assert loss == pytest.approx(float(np.mean((recon - x) ** 2)), rel=1e-5)
    assert loss != pytest.approx(float(np.mean((recon - corrupted.numpy()) ** 2)), rel=1e-2)


def test_vae_is_deterministic_at_inference_and_samples_while_training(mnist_like):
    x = mnist_like[0][:16]
    model = autoencoders.build("conv-vae", (28, 28, 1), latent=4, seed=2)
    np.testing.assert_array_equal(model(x), model(x))
    assert not np.allclose(model(x, training=True), model(x))
    z_mean, z_log_var = model.encode(x)
    assert z_mean.shape == (16, 4) == z_log_var.shape
    assert model.decode(z_mean).shape == (16, 28, 28, 1)


def test_classifiers_beat_chance_and_conv_beats_linear():
    """On generated digits that move, rotate and vary in size, as MNIST's do."""
    x, y = digits(2400, seed=11)
    x = x[..., None].astype(np.float32) / 255.0
    train, test = slice(0, 2000), slice(2000, None)
    accuracy = {}
    for kind in ("linear", "conv"):
        keras.utils.set_random_seed(0)
        model = classifiers.compile_classifier(classifiers.build(kind, (28, 28, 1), 10, seed=0))
        model.fit(x[train], one_hot(y[train], 10), batch_size=50, epochs=8, verbose=0)
        accuracy[kind] = model.evaluate(x[test], one_hot(y[test], 10), verbose=0, return_dict=True)["accuracy"]
    assert accuracy["linear"] > 0.14, accuracy  # chance is 0.10
    assert accuracy["conv"] > 0.6, accuracy
    assert accuracy["conv"] > accuracy["linear"] + 0.3, accuracy


def test_conv_classifier_has_the_lessons_layers():
    model = classifiers.build("conv", (28, 28, 1), 10)
    shapes = {layer.name: layer.output.shape for layer in model.layers}
    assert shapes["conv1_relu"] == (None, 14, 14, 32) and shapes["conv2_relu"] == (None, 7, 7, 64)
    assert shapes["hidden_relu"] == (None, 128) and shapes["softmax"] == (None, 10)
    kernels = dict(classifiers.conv_kernels(model))
    assert kernels["conv1"].shape == (5, 5, 1, 32) and kernels["conv2"].shape == (5, 5, 32, 64)
    improved = classifiers.build("conv", (28, 28, 1), 10, improved=True)
    names = {layer.name for layer in improved.layers}
    assert {"augment", "dropout"} <= names
    assert classifiers.linear_weights(classifiers.build("linear", (28, 28, 1), 10), (28, 28, 1)).shape == \
        (10, 28, 28, 1)


# -- save, restore, export ----------------------------------------------------------------------------------
def _trained_briefly(family, kind, x, y):
    keras.utils.set_random_seed(0)
    if family == "classifier":
        options = dict(init="he_normal", batch_norm=True, dropout=0.3, augment=0.1) if kind == "conv" else {}
        model = classifiers.build(kind, (28, 28, 1), 10, seed=0, **options)
        classifiers.compile_classifier(model)
        model.fit(x, one_hot(y, 10), batch_size=32, epochs=1, verbose=0)
    else:
        model = autoencoders.build(kind, (28, 28, 1), seed=0)
        model.adapt(x.mean(0))
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(x, batch_size=32, epochs=1, verbose=0)
    return model


def _plain(config):
    return json.loads(json.dumps(config, default=str))  # tuples and lists compare equal


@pytest.mark.parametrize("family,kind", [("autoencoder", k) for k in autoencoders.MODELS]
                         + [("classifier", "linear"), ("classifier", "conv")])
def test_save_restore_and_export_give_identical_predictions(family, kind, mnist_like, tmp_path):
    """The conv classifier here has every option on (He init, batch norm, dropout, augmentation layers)."""
    x, y = mnist_like[0][:96], mnist_like[1][:96]
    model = _trained_briefly(family, kind, x, y)
    probe = x[:10]
    expected = keras.ops.convert_to_numpy(model(probe, training=False))

    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(probe, training=False)), expected)
    assert type(restored) is type(model) and _plain(restored.get_config()) == _plain(model.get_config())
    if family == "autoencoder":
        # The tie survives the round trip: one variable per encoder matrix, re-shared by the decoder.
        tied = [layer for layer in restored.decoder_layers if hasattr(layer, "tied_layer")]
        assert all(layer.tied_layer() in restored.encoder_layers for layer in tied)
        assert len(tied) == (0 if model.variational else len(restored.encoder_layers))
        np.testing.assert_array_equal(restored.standardize.mean.numpy(), model.standardize.mean.numpy())
    # The optimizer state comes back too, so training resumes where it was.
    assert int(restored.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) > 0

    export.export(model, str(tmp_path / "export"), export.serve_endpoints(model, (28, 28, 1)))
    loaded = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    np.testing.assert_allclose(loaded.serve(probe).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_course_and_film_models_register_under_their_own_names():
    # Both define a VAE and a Sampling layer; one Keras name for both made whichever module was imported
    # last deserialize the other's saved models.
    import keras

    from models import autoencoders, layers, vae

    assert keras.saving.get_registered_object("cadl>VAE") is vae.VAE
    assert keras.saving.get_registered_object(f"{layers.PACKAGE}>VAE") is autoencoders.VAE
    assert keras.saving.get_registered_object(f"{layers.PACKAGE}>Sampling") is layers.Sampling
