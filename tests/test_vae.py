"""The VAE: shapes for several sizes, config round trip, seeded sampling, beta warm-up, learning, inference."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import vae
from pipelines import export
from pipelines.errors import CadlError
from train_data import frames


def tiny(**kw):
    return vae.make_config(vae.TINY, **kw)


@pytest.mark.parametrize("size,arch", [((16, 16), "resnet"), ((16, 32), "resnet-group"), ((72, 128), "resnet"),
                                       ((16, 16), "course"), ((24, 40), "course")])
def test_shapes_for_several_sizes(size, arch):
    extra = {"arch": "course", "hidden": 12, "norm": "batch", "activation": "sigmoid", "dropout": 0.2} \
        if arch == "course" else {"norm": "group"} if arch == "resnet-group" else {}
    widths = [4, 4, 4] if size[0] % 8 == 0 and size[1] % 8 == 0 else [4, 4]
    model = vae.VAE(tiny(image_size=list(size), widths=widths, **extra)).build_all()
    assert model.encoder.name == "encoder" and model.decoder.name == "decoder"
    x = np.random.default_rng(0).integers(0, 256, (2,) + size + (3,), dtype=np.uint8)
    z_mean, z_log_var = model.encoder(vae.to_float(tf.constant(x)))
    assert z_mean.shape == (2, 8) and z_log_var.shape == (2, 8) and z_mean.dtype == tf.float32
    y = model(x)
    assert y.shape == (2,) + size + (3,)
    assert float(tf.reduce_min(y)) >= 0.0 and float(tf.reduce_max(y)) <= 1.0
    assert model.decoder(np.zeros((3, 8), np.float32)).shape == (3,) + size + (3,)


@pytest.mark.parametrize("size,widths", [((16, 16), [4, 4]), ((72, 128), [4, 4, 4])])
def test_spatial_code_shapes(size, widths):
    cfg = tiny(image_size=list(size), widths=widths, latent_channels=3)
    cells = (size[0] // 2 ** len(widths)) * (size[1] // 2 ** len(widths))
    assert cfg["latent"] == cells * 3  # derived: --latent does not apply to a spatial code
    model = vae.VAE(cfg).build_all()
    x = np.random.default_rng(0).integers(0, 256, (2,) + size + (3,), dtype=np.uint8)
    z_mean, z_log_var = model.encoder(vae.to_float(tf.constant(x)))
    assert z_mean.shape == z_log_var.shape == (2, cells * 3)
    assert model(x).shape == (2,) + size + (3,)
    assert model.decoder(np.zeros((1, cells * 3), np.float32)).shape == (1,) + size + (3,)
    # Each cell's code comes from its own place in the picture: changing one corner moves the codes of the
    # cells near it, not those of the far corner.
    y = x.copy()
    y[0, :4, :4] = 255 - y[0, :4, :4]
    dz = np.abs(model.encoder(vae.to_float(tf.constant(y)))[0].numpy() - z_mean.numpy())[0].reshape(
        size[0] // 2 ** len(widths), size[1] // 2 ** len(widths), 3)
    assert dz[0, 0].max() > 0 and dz[-1, -1].max() == 0
    with pytest.raises(ValueError, match="spatial code"):
        vae.make_config(vae.COURSE, latent_channels=2)


def test_configs_stored_before_a_knob_existed_rebuild_the_same_network(tmp_path):
    old = {k: v for k, v in vae.make_config(latent_channels=0).items()
           if k not in vae.LEGACY}
    cfg = vae.make_config(vae.upgrade_config(old))
    assert cfg["latent_channels"] == 0 and cfg["latent"] == old["latent"]
    model = vae.VAE(cfg).build_all()
    clone = vae.VAE.from_config({"config": old, "name": "vae"})
    assert [w.shape for w in clone.get_weights()] == [w.shape for w in model.get_weights()]


def test_grey_images():
    model = vae.VAE(tiny(channels=1)).build_all()
    assert model(np.zeros((1, 16, 16, 1), np.uint8)).shape == (1, 16, 16, 1)


def test_bad_configs():
    with pytest.raises(ValueError, match="divide by 2\\*\\*depth"):
        vae.make_config(image_size=[20, 20], widths=[8, 8, 8])
    with pytest.raises(ValueError, match="unknown model option"):
        vae.make_config(colour=True)
    with pytest.raises(ValueError, match="norm"):
        vae.make_config(norm="layer")


def test_config_round_trip_and_keras_file(tmp_path):
    model = vae.VAE(tiny(latent=6, seed=3)).build_all()
    clone = vae.VAE.from_config(model.get_config())
    assert clone.config == model.config
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, vae.VAE) and loaded.config == model.config
    x = frames(4, (16, 16))
    assert np.array_equal(loaded(x).numpy(), model(x).numpy())


def test_sampling_is_seeded_and_mean_outside_training():
    z_mean = tf.constant(np.ones((4, 5), np.float32))
    z_log_var = tf.zeros((4, 5))
    a, b = vae.Sampling(seed=7), vae.Sampling(seed=7)
    first = a(z_mean, z_log_var, training=True).numpy()
    assert np.array_equal(first, b(z_mean, z_log_var, training=True).numpy())
    assert not np.array_equal(first, a(z_mean, z_log_var, training=True).numpy())  # the state advances
    assert np.array_equal(a(z_mean, z_log_var, training=False).numpy(), z_mean.numpy())


def test_beta_warmup():
    model = vae.VAE(tiny(beta=0.5, beta_warmup=10)).build_all()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    assert float(model.beta()) == 0.0
    model.optimizer.iterations.assign(5)
    assert float(model.beta()) == pytest.approx(0.25)
    model.optimizer.iterations.assign(50)
    assert float(model.beta()) == pytest.approx(0.5)


def test_train_step_lowers_loss_and_reports_each_term():
    keras.utils.set_random_seed(0)
    model = vae.VAE(tiny()).build_all()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = tf.constant(frames(32, (16, 16)))
    first = model.test_step(x)
    assert set(first) >= {"loss", "reconstruction", "kl", "psnr"}
    for _ in range(60):
        model.train_step(x)
    model.reset_metrics()
    last = model.test_step(x)
    assert float(last["reconstruction"]) < 0.6 * float(first["reconstruction"])
    assert float(last["psnr"]) > float(first["psnr"]) + 2.0


def test_mixed_bfloat16_trains_on_cpu():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = vae.VAE(tiny()).build_all()
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        assert model.encoder.get_layer("stem").compute_dtype == "bfloat16"
        logs = model.train_step(tf.constant(frames(8, (16, 16))))
        assert np.isfinite(float(logs["loss"]))
        assert model.decoder(np.zeros((1, 8), np.float32)).dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_inference_from_every_kind_of_path(tmp_path):
    model = vae.VAE(tiny()).build_all()
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    model.save(str(run / "export" / "model.keras"))
    os.symlink(run, tmp_path / "LATEST")
    x = frames(5, (16, 16))
    want = np.round(np.clip(model(x).numpy(), 0, 1) * 255).astype(np.uint8)
    for path in (run, run / "export", run / "export" / "model.keras", tmp_path / "LATEST"):
        inf = export.load_inference(path)
        assert inf.config["image_size"] == [16, 16] and inf.config["channels"] == 3 and inf.config["fit"] == "crop"
        out = inf.reconstruct(x)
        assert out.dtype == np.uint8 and np.array_equal(out, want)
        assert np.array_equal(inf.reconstruct(x), out)  # deterministic
        z = inf.encode(x)
        assert z.shape == (5, 8) and z.dtype == np.float32
        assert np.array_equal(inf.decode(z), out)
    with pytest.raises(CadlError, match="expects"):
        inf.encode(np.zeros((1, 8, 8, 3), np.uint8))


def test_load_inference_errors(tmp_path):
    with pytest.raises(CadlError, match="no such model"):
        export.load_inference(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CadlError, match="no trained model"):
        export.load_inference(tmp_path / "empty")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(CadlError, match="cannot load"):
        export.load_inference(tmp_path / "bad.keras")


def test_a_loaded_vae_holds_every_weight_it_was_saved_with(tmp_path):
    # Loading skips Keras' symbolic build (VAE.build_from_config): nothing may be left unbuilt or unloaded.
    model = vae.VAE(tiny(image_size=[16, 16], widths=[4, 4])).build_all()
    x = frames(4, size=(16, 16))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert loaded.built and [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for saved, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(restored), err_msg=saved.path)
    np.testing.assert_array_equal(loaded(x), model(x))
