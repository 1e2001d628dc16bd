"""The sharp preset (VAE + PatchGAN): the discriminator learns, the balance rule holds it, a resumed sharp run
is exact, its export is a plain VAE that renders, and a render's --score summary."""
import os

import cv2
import imageio
import keras
import numpy as np
import pytest
import tensorflow as tf

from jobs import render, train
from models import vae, vaegan
from pipelines import atomic, export
from pipelines.errors import CadlError
from pipelines.synthetic import make_film
from train_data import frames, write_dataset

SHARP = ["--preset", "sharp", "--widths", "8,16", "--latent", "8", "--disc-widths", "8,16", "--gan-start", "4",
         "--batch-size", "8", "--no-progress", "--montage-every", "0", "--log-every", "2", "--deterministic"]
GAN_TERMS = {"pixel", "features", "adversarial", "adv_weight", "d_loss", "d_real", "d_fake", "d_updates"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_dataset(tmp_path_factory.mktemp("sharp") / "data", {"train": 48, "validation": 16}))


@pytest.fixture(scope="module")
def sharp_run(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sharp_run") / "run")
    return out, train.run(["--data", data, "--out", out, "--max-steps", "12"] + SHARP)


def _model(**gan):
    keras.utils.set_random_seed(0)
    model = vaegan.VAEGAN(vae.make_config(vae.TINY), gan={"disc_widths": [8, 16], **gan}).build_all()
    model.set_d_optimizer(keras.optimizers.Adam(2e-3, beta_1=0.5, beta_2=0.9))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.generator_variables)
    return model


def _steps(model, batch, n):
    step, logs = tf.function(model.train_step), []
    for _ in range(n):
        model.reset_metrics()  # per-step figures, not running means
        logs.append({k: float(v) for k, v in step(batch).items()})
    return logs


def test_discriminator_learns_to_tell_frames_from_reconstructions():
    model = _model(gan_start=3, d_floor=0.0)
    logs = _steps(model, tf.constant(frames(8, (16, 16))), 25)
    assert GAN_TERMS <= set(logs[0])
    warm, gan = logs[:3], logs[3:]
    assert all(h["d_updates"] == 0.0 and h["adv_weight"] == 0.0 and h["loss"] == pytest.approx(h["pixel"] + h["beta"] * h["kl"])
               for h in warm)  # the warm-up: pixels only, D idle
    assert gan[0]["d_loss"] == pytest.approx(2.0, abs=0.3)  # an untrained D cannot tell: hinge loss ~ 1 + 1
    assert np.mean([h["d_loss"] for h in gan[-5:]]) < gan[0]["d_loss"] - 0.3
    assert all(h["d_updates"] == 1.0 for h in gan) and all(h["adv_weight"] > 0 for h in gan[1:])  # ramped in
    assert logs[-1]["loss"] > logs[-1]["pixel"]  # features and the adversarial term are in the loss now


def test_balance_rule_skips_the_discriminator_update():
    model = _model(gan_start=0, d_floor=10.0)  # the hinge loss is always below 10: D never moves
    logs = _steps(model, tf.constant(frames(8, (16, 16))), 3)
    assert all(h["d_updates"] == 0.0 for h in logs)
    # (Keras' SpectralNormalization rewrites D's kernels as W / sigma in each training call: only the optimizer
    # tells whether D was updated.)
    assert int(model.d_optimizer.iterations.numpy()) == 0 and int(model.optimizer.iterations.numpy()) == 3


def test_sharp_run_folder(sharp_run):
    out, summary = sharp_run
    config = atomic.read_json(os.path.join(out, "config.json"))
    assert config["training"]["preset"] == "sharp" and config["sharp"]["disc_widths"] == [8, 16]
    assert config["model"]["loss"] == vae.DEFAULTS["loss"]
    assert summary["step"] == 12 and GAN_TERMS <= set(summary["train"]) and GAN_TERMS <= set(summary["history"][-1])
    assert {"psnr", "ssim", "laplacian_ratio"} <= set(summary["validation"])
    assert summary["validation_laplacian_ratio"] == summary["validation"]["laplacian_ratio"] > 0
    model = export.load_model(out)
    assert type(model) is vae.VAE and not hasattr(model, "discriminator")  # the export: encoder + decoder


@pytest.mark.slow
def test_resume_of_a_sharp_run_is_exact(sharp_run, data, tmp_path):
    whole, _ = sharp_run
    split = str(tmp_path / "split")
    train.run(["--data", data, "--out", split, "--max-steps", "6"] + SHARP)
    resumed = train.run(["--data", data, "--out", split, "--max-steps", "12"] + SHARP)
    assert resumed["resumed_from"] == 6 and resumed["step"] == 12
    a, b = export.load_model(whole).get_weights(), export.load_model(split).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    ra = tf.train.load_checkpoint(os.path.join(whole, "checkpoints", "ckpt-12"))
    rb = tf.train.load_checkpoint(os.path.join(split, "checkpoints", "ckpt-12"))
    names = [n for n, _ in tf.train.list_variables(os.path.join(whole, "checkpoints", "ckpt-12"))
             if n.startswith(("discriminator/", "d_optimizer/"))]
    assert len(names) > 10  # both networks and both optimizers are in the checkpoint
    assert all(np.array_equal(ra.get_tensor(n), rb.get_tensor(n)) for n in names)


def test_a_sharp_run_resumes_only_as_sharp(sharp_run, data):
    out, _ = sharp_run
    with pytest.raises(CadlError, match="preset sharp"):
        train.run(["--data", data, "--out", out, "--max-steps", "14", "--preset", "tiny", "--no-progress"])


def test_sharp_export_renders_and_scores(sharp_run, tmp_path):
    out, _ = sharp_run
    film = make_film(tmp_path / "film.mp4", "testsrc2", seconds=1.2, size=(64, 36), audio=False)
    summary = render.run(["--model", out, "--input", str(film), "--output", str(tmp_path / "out.mp4"),
                          "--preset", "ultrafast", "--score"])
    score = summary["score"]
    assert set(score) == {"psnr", "ssim", "ms_ssim", "laplacian_ratio", "flicker_ratio", "frames", "size",
                          "reference", "resolution"}
    assert score["frames"] == summary["frames"] == 30 and score["size"] == [16, 16]
    assert score["resolution"] == "model" and score["ms_ssim"] is None  # 16 pixels: one MS-SSIM scale
    assert 5 < score["psnr"] < 60 and 0 < score["laplacian_ratio"] and 0 < score["flicker_ratio"]
    assert -1 <= score["ssim"] <= 1
    assert atomic.read_json(str(tmp_path / "out.mp4") + ".summary.json")["score"] == score
    # The page beside the film: the figures, and a strip of 8 source frames over the same 8 rendered.
    page = str(tmp_path / "out.mp4") + ".report.html"
    assert summary["report"] == page and os.path.exists(page)
    html = open(page).read()
    assert "Laplacian" in html and "out.mp4.report-strip.png" in html
    strip = imageio.v3.imread(str(tmp_path / "out.mp4") + ".report-strip.png")
    assert strip.shape[0] >= 2 * 36 and strip.shape[1] >= 8 * 64  # 2 rows of 8 frames, padded


def test_score_refuses_side_by_side(sharp_run, tmp_path):
    with pytest.raises(CadlError, match="not with --side-by-side"):
        render.run(["--model", sharp_run[0], "--input", "x.mp4", "--output", str(tmp_path / "o.mp4"),
                    "--side-by-side", "--score"])


def test_spectral_distance_is_phase_free_and_bounded_by_the_squared_error():
    x = frames(4, (32, 32)).astype(np.float32) / 255
    blur = np.stack([cv2.GaussianBlur(f, (0, 0), 1.0) for f in x])
    shift = np.roll(x, 1, axis=2)  # the same detail, one pixel off

    def sse(y):
        return float(np.mean(np.sum((x - y) ** 2, axis=(1, 2, 3))))

    def spectral(y, tile=16):
        return float(vaegan.spectral_distance(tf.constant(x), tf.constant(y), tile))

    assert spectral(x) == pytest.approx(0.0, abs=1e-6)
    assert spectral(shift, tile=32) == pytest.approx(0.0, abs=1e-3)  # a shift within one (periodic) tile: free
    for y in (blur, shift):
        assert 0 < spectral(y) <= sse(y) * (1 + 1e-5)
    # against the blur, the shifted detail costs far less here than in the squared error
    assert spectral(shift) / spectral(blur) < 0.5 * sse(shift) / sse(blur)


def test_spectral_term_is_in_the_pixel_loss():
    model = _model(gan_start=100, spectral_weight=3.0)
    log = _steps(model, tf.constant(frames(8, (16, 16))), 1)[0]
    assert log["pixel"] > log["reconstruction"] > 0
    with pytest.raises(ValueError, match="spectral_tile 5 must divide"):
        vaegan.VAEGAN(vae.make_config(vae.TINY), gan={"spectral_weight": 1.0, "spectral_tile": 5})
