"""``cadl autoencoder`` and ``cadl classifier`` end to end on tiny generated datasets, as a user runs them."""
import os
import subprocess
import sys

import imageio.v2 as imageio
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import jobs
from fixtures_course import write_celeba, write_cifar10, write_image_folder, write_mnist
from jobs import autoencoder, classifier
from pipelines import atomic, checkpoints, course
from pipelines.errors import CadlError


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_mnist(folder, n_train=240, n_test=60)
    return str(folder)


def _png(path):
    return np.asarray(Image.open(path))


def test_autoencoder_job_writes_montages_gif_export_and_resumes(mnist, tmp_path):
    out = str(tmp_path / "ae")
    argv = ["--dataset", "mnist", "--data-dir", mnist, "--model", "fc", "--out", out, "--epochs", "2",
            "--batch-size", "50"]
    summary = autoencoder.run(argv)
    assert summary["epoch"] == 2 and summary["epochs_trained"] == 2 and len(summary["history"]) == 2
    assert summary["counts"] == {"train": 240, "validation": 30, "test": 30}
    assert 0 < summary["test_reconstruction_error"] < 0.2 and summary["test_psnr"] > 5
    assert summary["history"][-1]["validation"]["loss"] > 0
    assert atomic.read_json(os.path.join(out, "summary.json")) == summary
    # Montages: before training + one per epoch; [originals | reconstructions] of the 30 test images, each a
    # 6-wide, 5-high grid of 28x28 tiles with 1-pixel borders, 4 pixels apart.
    montages = sorted(os.listdir(os.path.join(out, "montages")))
    assert montages == ["epoch-0000.png", "epoch-0001.png", "epoch-0002.png"]
    assert _png(os.path.join(out, "montages", "epoch-0002.png")).shape == (5 * 29 + 1, 2 * (6 * 29 + 1) + 4)
    assert len(imageio.mimread(os.path.join(out, "reconstructions.gif"))) == 3
    assert _png(os.path.join(out, "mean.png")).shape == (28, 28)
    assert _png(os.path.join(out, "std.png")).max() == 255  # scaled to be visible

    # The export predicts what the last checkpoint predicts.
    images = np.random.default_rng(0).random((5, 28, 28, 1)).astype(np.float32)
    exported = course.load_model(os.path.join(out, "export", "model.keras"))
    checkpoint, path = course.restore_model(out)
    assert path == os.path.join(out, "checkpoints", "ckpt-2") == course.restore_model(os.path.dirname(path))[1]
    assert int(checkpoint.optimizer.iterations.numpy()) == 2 * 5  # two epochs of ceil(240 / 50) steps
    expected = keras.ops.convert_to_numpy(checkpoint(images))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(exported(images)), expected)
    saved = tf.saved_model.load(os.path.join(out, "export", "saved_model"))
    np.testing.assert_allclose(saved.serve(images).numpy(), expected, rtol=1e-5, atol=1e-6)

    # Rerun: nothing to train, same figures. More epochs: only the new one is trained.
    again = autoencoder.run(argv)
    assert again["epochs_trained"] == 0 and again["resumed_at"] == 2
    assert again["test_reconstruction_error"] == pytest.approx(summary["test_reconstruction_error"], rel=1e-6)
    more = autoencoder.run(argv[:-4] + ["--epochs", "3", "--batch-size", "50"])
    assert more["epochs_trained"] == 1 and [h["epoch"] for h in more["history"]] == [1, 2, 3]
    assert more["history"][:2] == summary["history"]
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["checkpoint"] + [
        f"ckpt-{n}.{ext}" for n in (2, 3) for ext in ("data-00000-of-00001", "index")] + ["state.json"]
    state = atomic.read_json(os.path.join(out, "checkpoints", "state.json"))
    assert state["epoch"] == 3 and state["checkpoint"] == "ckpt-3" and state["history"] == more["history"]

    # Another model into the same folder is refused; --restore continues a model into a new folder.
    with pytest.raises(CadlError, match="holds a run with other model"):
        autoencoder.run(argv[:5] + ["conv"] + argv[6:])
    restored = autoencoder.run(argv[:7] + [str(tmp_path / "ae2"), "--epochs", "0", "--restore", out])
    assert restored["restored_from"] == os.path.join(out, "checkpoints", "ckpt-3")
    assert restored["epochs_trained"] == 0
    assert restored["test_reconstruction_error"] == pytest.approx(more["test_reconstruction_error"], rel=1e-6)
    assert os.listdir(tmp_path / "ae2" / "montages") == ["epoch-0000.png"]
    fresh = autoencoder.run(argv[:-4] + ["--epochs", "1", "--batch-size", "50", "--fresh"])
    assert fresh["epochs_trained"] == 1 and "resumed_at" not in fresh
    assert sorted(os.listdir(os.path.join(out, "montages"))) == ["epoch-0000.png", "epoch-0001.png"]
    with pytest.raises(CadlError, match="not --model vae"):
        autoencoder.run(argv[:5] + ["vae"] + argv[6:7] + [str(tmp_path / "ae3"), "--restore", out])


def test_resumed_run_continues_as_the_uninterrupted_one(mnist, tmp_path):
    """The checkpoint holds the optimizer and the masking noise's generator: 2 + 1 epochs give what 3 give."""
    common = ["--dataset", "mnist", "--data-dir", mnist, "--model", "fc", "--noise", "0.3", "--batch-size", "60"]
    autoencoder.run(common + ["--out", str(tmp_path / "a"), "--epochs", "2"])
    resumed = autoencoder.run(common + ["--out", str(tmp_path / "a"), "--epochs", "3"])
    straight = autoencoder.run(common + ["--out", str(tmp_path / "b"), "--epochs", "3"])
    assert resumed["resumed_at"] == 2 and resumed["epochs_trained"] == 1
    assert resumed["history"][-1]["train"] == pytest.approx(straight["history"][-1]["train"], rel=1e-5)
    assert resumed["test_reconstruction_error"] == pytest.approx(straight["test_reconstruction_error"], rel=1e-5)


def test_checkpoints_refuse_non_finite_weights_and_name_what_does_not_restore(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    saved = checkpoints.Checkpoints(tmp_path / "ck", 2, run="RUN", unit="epoch", advice="lower it",
                                    **checkpoints.keras_objects(model))
    saved.save(1, state={"epoch": 1})
    assert checkpoints.read_state(tmp_path / "ck") == {"epoch": 1, "checkpoint": "ckpt-1"}
    model.layers[0].kernel.assign(np.full((3, 2), np.nan, np.float32))
    with pytest.raises(CadlError, match=r"^RUN: weights became non-finite by epoch 2; stopped \(last good "
                                        r"checkpoint: .*ckpt-1\); lower it$"):
        saved.save(2)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    other.compile(optimizer="adam", loss="mse")
    with pytest.raises(CadlError, match=r"ckpt-1: cannot restore \(") as error:
        checkpoints.Checkpoints(tmp_path / "ck", 2, **checkpoints.keras_objects(other)).restore()
    assert "\n" not in str(error.value)


def test_denoising_and_vae_jobs(mnist, tmp_path):
    common = ["--dataset", "mnist", "--data-dir", mnist, "--epochs", "1", "--batch-size", "60"]
    denoise = autoencoder.run(common + ["--model", "conv", "--noise", "0.3", "--out", str(tmp_path / "dn")])
    assert denoise["noise"] == 0.3 and denoise["test_denoising_error"] > 0
    # [clean | masked | reconstruction of the masked input]
    assert _png(tmp_path / "dn" / "montages" / "epoch-0001.png").shape[1] == 3 * (6 * 29 + 1) + 2 * 4
    vae = autoencoder.run(common + ["--model", "conv-vae", "--latent", "4", "--out", str(tmp_path / "vae")])
    assert set(vae["test"]) == {"loss", "reconstruction", "kl"}
    assert _png(tmp_path / "vae" / "samples.png").shape == (8 * 29 + 1, 8 * 29 + 1)


def test_classifier_jobs_write_weight_images_and_filters(mnist, tmp_path):
    common = ["--dataset", "mnist", "--data-dir", mnist, "--epochs", "2"]
    linear = classifier.run(common + ["--model", "linear", "--out", str(tmp_path / "linear")])
    assert 0 <= linear["test_accuracy"] <= 1 and linear["n_classes"] == 10 and linear["chance_accuracy"] < 0.2
    assert set(linear["history"][0]["validation"]) == {"accuracy", "loss"}
    weights = _png(tmp_path / "linear" / "weights.png")
    assert weights.shape == (4 * (3 * 29 + 1), 4 * (4 * 29 + 1), 3)  # ten 28x28 images in a 4-wide grid, x4
    conv = classifier.run(common + ["--model", "conv", "--out", str(tmp_path / "conv")])
    # conv1: 1 x 32 filters of 5x5 -> 6 x 6 grid; conv2: 32 x 64 = 2048 -> 46 wide, 45 high; enlarged x4.
    assert _png(tmp_path / "conv" / "filters-conv1.png").shape == (4 * (6 * 6 + 1),) * 2
    assert _png(tmp_path / "conv" / "filters-conv2.png").shape == (4 * (45 * 6 + 1), 4 * (46 * 6 + 1))
    assert conv["parameters"] > linear["parameters"]
    model = keras.models.load_model(tmp_path / "conv" / "export" / "model.keras")
    assert model.name == "conv" and model.output_shape == (None, 10)


def test_classifier_on_cifar10_tarball_and_image_folder(tmp_path):
    write_cifar10(tmp_path / "cifar", per_batch=20, tarball=True)
    summary = classifier.run(["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--model", "linear",
                              "--epochs", "1", "--split", "official", "--out", str(tmp_path / "c")])
    assert summary["counts"]["test"] == 20 and summary["image_shape"] == [32, 32, 3]
    assert os.path.isfile(tmp_path / "c" / "weights-rgb.png")
    write_image_folder(tmp_path / "shapes", per_class=8)
    summary = classifier.run(["--dataset", "folder", "--data-dir", str(tmp_path / "shapes"), "--size", "24x24",
                              "--model", "conv", "--improved", "--epochs", "1", "--out", str(tmp_path / "f")])
    assert summary["class_names"] == ["circles", "squares", "triangles"] and summary["options"]["improved"]


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    code = jobs.main(autoencoder.run, ["--dataset", "mnist", "--data-dir", str(tmp_path), "--out",
                                       str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cadl: error: ") and err.count("\n") == 1
    assert "train-images-idx3-ubyte" in err and "downloads nothing" in err
    write_image_folder(tmp_path / "flat" / "only", per_class=3)
    code = jobs.main(classifier.run, ["--dataset", "folder", "--data-dir", str(tmp_path / "flat" / "only" / "circles"),
                                      "--out", str(tmp_path / "o2")])
    assert code == 2 and "a classifier needs one sub-folder of images per class" in capsys.readouterr().err
    with pytest.raises(CadlError, match="apply to --model conv only"):
        classifier.run(["--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o3"),
                        "--dropout", "0.5"])


def test_help_through_the_cadl_command():
    for name in ("autoencoder", "classifier"):
        proc = subprocess.run([sys.executable, "-m", "jobs.cli", name, "--help"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and f"usage: cadl {name}" in proc.stdout and "--data-dir" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("model", ["fc", "conv", "denoising", "vae", "conv-vae"])
def test_every_autoencoder_learns_through_the_job(model, tmp_path):
    """Each model, 8 epochs on 600 generated digits: the validation loss falls and the test reconstruction
    error ends well below the ~0.05 of predicting the mean image (measured: fc 0.024, conv 0.015, denoising
    0.028, vae 0.029, conv-vae 0.029; the fixture's pixel noise puts the floor near 0.02)."""
    write_mnist(tmp_path / "mnist", n_train=600, n_test=100)
    summary = autoencoder.run(["--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"), "--model", model,
                               "--epochs", "8", "--batch-size", "25", "--out", str(tmp_path / "run")])
    valid = [h["validation"]["loss"] for h in summary["history"]]
    assert valid[-1] < valid[0], valid
    assert summary["test_reconstruction_error"] < 0.036, summary["test_reconstruction_error"]


@pytest.mark.slow
def test_conv_classifier_beats_linear_through_the_jobs(tmp_path):
    write_mnist(tmp_path / "mnist", n_train=3000, n_test=600)
    accuracy = {}
    for model in ("linear", "conv"):
        accuracy[model] = classifier.run(["--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"), "--model",
                                          model, "--epochs", "8", "--split", "official",
                                          "--out", str(tmp_path / model)])["test_accuracy"]
    assert accuracy["linear"] > 0.15 and accuracy["conv"] > 0.8 and accuracy["conv"] > accuracy["linear"] + 0.4


@pytest.mark.slow
def test_celeba_autoencoder(tmp_path):
    write_celeba(tmp_path / "celeba", n=24, zipped=True)
    summary = autoencoder.run(["--dataset", "celeba", "--data-dir", str(tmp_path / "celeba"), "--size", "32x32",
                               "--split", "official", "--model", "conv", "--epochs", "2",
                               "--out", str(tmp_path / "run")])
    assert summary["counts"] == {"train": 12, "validation": 6, "test": 6} and summary["image_shape"] == [32, 32, 3]
    assert _png(tmp_path / "run" / "mean.png").shape == (32, 32, 3)
