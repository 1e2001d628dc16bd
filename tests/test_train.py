"""cadl train end to end on tiny data: run folder, exports, resume, warm start, evaluate, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from jobs import train
from models import vae
from pipelines import atomic, export, schema, tfdata, training
from pipelines import trainer as trainer_module
from pipelines import manifest as mf
from pipelines.errors import CadlError
from train_data import write_dataset

FAST = ["--preset", "tiny", "--batch-size", "8", "--no-progress", "--montage-every", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_dataset(tmp_path_factory.mktemp("train") / "data", {"train": 64, "validation": 16}))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One run of 60 steps through the Trainer (so the in-process model can be compared with the exports)."""
    out = str(tmp_path_factory.mktemp("run") / "run")
    config = train.config_from_args(train.build_parser().parse_args(
        ["--data", data, "--out", out, "--max-steps", "60", "--montage-every", "20", "--log-every", "5",
         "--lr", "3e-3", "--lr-schedule", "cosine"] + FAST[:-2]))
    trainer = trainer_module.Trainer(config)
    summary = trainer.fit()
    return out, trainer, summary


def test_run_folder_contents(trained, data):
    out, trainer, summary = trained
    config = atomic.read_json(os.path.join(out, "config.json"))
    assert config["image_size"] == [16, 16] and config["channels"] == 3 and config["fit"] == "crop"
    assert config["model"]["latent"] == vae.TINY["latent"]
    assert summary == atomic.read_json(os.path.join(out, "summary.json"))
    assert summary["step"] == 60 and summary["epochs"] == pytest.approx(60 * 8 / 64)
    assert summary["stopped"] == "max_steps" and summary["resumed_from"] is None
    assert summary["images_per_s"] > 0 and summary["wall_time_s"] > 0
    assert set(summary["validation"]) >= {"loss", "reconstruction", "kl", "psnr"}
    assert summary["validation_psnr"] == summary["validation"]["psnr"] > 10.0
    history = summary["history"]
    assert [h["step"] for h in history][:3] == [5, 10, 15]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]  # it learns
    assert os.path.basename(tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))) == "ckpt-60"
    montages = sorted(os.listdir(os.path.join(out, "montages")))
    assert [m for m in montages if m.startswith("recon-")] == [f"recon-{s:07d}.png" for s in (0, 20, 40, 60)]
    assert "latent-0000060.png" in montages
    import imageio.v2 as imageio
    gif = imageio.mimread(os.path.join(out, "montages", "reconstructions.gif"))
    assert len(gif) == 4
    for name in ("train", "validation"):
        assert os.listdir(os.path.join(out, "logs", name))


def tb_values(out, name):
    """(step, summary value) of every value in RUN/logs/NAME's TensorBoard event files."""
    folder = os.path.join(out, "logs", name)
    for f in sorted(os.listdir(folder)):
        for record in tf.data.TFRecordDataset(os.path.join(folder, f)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            yield from ((event.step, v) for v in event.summary.value)


def test_tensorboard_events_hold_scalars_and_images(trained):
    tags = {v.tag for name in ("train", "validation") for _, v in tb_values(trained[0], name)}
    assert {"loss", "kl", "reconstruction", "learning_rate", "images_per_s", "psnr",
            "reconstructions", "latent_samples"} <= tags


def test_learning_rate_decays_over_the_budget(trained):
    trainer = trained[1]
    assert trainer_module.lr_factor("cosine", 0) == 1 and trainer_module.lr_factor("cosine", 1) == 0
    assert trainer_module.lr_factor("cosine", 0.5) == pytest.approx(0.5) and trainer_module.lr_factor("linear", 0.25) == 0.75
    assert trainer_module.lr_factor("constant", 0.9) == 1 and trainer_module.lr_factor("linear", 2) == 0
    # The last of 60 steps ran at cosine(59/60) of --lr 3e-3; TensorBoard saw it fall all the way.
    assert float(trainer.optimizer.learning_rate) == pytest.approx(3e-3 * trainer_module.lr_factor("cosine", 59 / 60))
    lrs = [(step, float(tf.make_ndarray(v.tensor))) for step, v in tb_values(trained[0], "train")
           if v.tag == "learning_rate"]
    values = [v for _, v in sorted(lrs)]
    assert len(values) >= 10 and values == sorted(values, reverse=True) and values[-1] < 0.05 * values[0]


def test_warm_start_keeps_the_network_it_starts_from(data, tmp_path):
    source = str(tmp_path / "source")
    train.run(["--data", data, "--out", source, "--max-steps", "3", "--latent", "5"] + FAST)
    # No model flags: the new run takes the source's network (a dense code of 5), not today's preset.
    summary = train.run(["--data", data, "--out", str(tmp_path / "warm"), "--max-steps", "3",
                         "--init-from", source] + FAST[2:])
    assert summary["config"]["latent"] == 5 and summary["config"]["latent_channels"] == 0


def test_without_a_bar_each_validation_logs_a_line(data, tmp_path, caplog):
    caplog.set_level("INFO", logger="cadl.train")
    train.run(["--data", data, "--out", str(tmp_path / "run"), "--max-steps", "10", "--validate-every", "5"]
              + FAST)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(":")[0] for line in lines[:2]] == ["step 5/10", "step 10/10"]
    assert "validation loss" in lines[0] and "images/s" in lines[0]


def test_constant_learning_rate_by_default(data, tmp_path):
    out = str(tmp_path / "run")
    trainer = trainer_module.Trainer(train.config_from_args(train.build_parser().parse_args(
        ["--data", data, "--out", out, "--max-steps", "5", "--lr", "2e-3"] + FAST)))
    trainer.fit()
    assert float(trainer.optimizer.learning_rate) == pytest.approx(2e-3)


def assert_same_picture(got, want):
    # Eager and graph execution (oneDNN) may differ in the last float bits, which can flip a pixel that
    # sits on a rounding boundary by one level; anything more is a real difference.
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).mean() < 0.001


def test_exports_reconstruct_like_the_in_process_model(trained, data):
    out, trainer, _ = trained
    images = tfdata.load_images(data, "validation", 8)
    z_in = trainer.model.encoder(images.astype(np.float32) / 255.0, training=False)[0]
    want = np.round(np.clip(trainer.model.decoder(z_in).numpy(), 0, 1) * 255).astype(np.uint8)
    inf = export.load_inference(out)
    assert_same_picture(inf.reconstruct(images), want)
    np.testing.assert_allclose(inf.encode(images), z_in.numpy(), rtol=1e-5, atol=1e-5)
    sm = tf.saved_model.load(os.path.join(out, "export", "saved_model"))
    assert set(sm.signatures) >= {"encode", "decode", "reconstruct"}
    got = sm.signatures["reconstruct"](images=tf.constant(images))["images"].numpy()
    assert_same_picture(got, want)
    z = sm.signatures["encode"](images=tf.constant(images))["z_mean"]
    np.testing.assert_allclose(z.numpy(), z_in.numpy(), rtol=1e-5, atol=1e-5)
    assert_same_picture(sm.signatures["decode"](z=z)["images"].numpy(), want)


def test_evaluate_and_warm_start(trained, data, tmp_path):
    out, _, summary = trained
    metrics = training.evaluate(out, data)
    assert metrics["count"] == 16
    assert metrics["psnr"] == pytest.approx(summary["validation"]["psnr"], abs=1e-3)
    assert set(metrics) == {"loss", "reconstruction", "kl", "psnr", "count"}
    warm = str(tmp_path / "warm")
    result = train.run(["--data", data, "--out", warm, "--init-from", out, "--max-steps", "0"] + FAST)
    assert result["step"] == 0
    a, b = export.load_model(out).get_weights(), export.load_model(warm).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(CadlError, match="architecture"):
        train.run(["--data", data, "--out", str(tmp_path / "w2"), "--init-from", out, "--latent", "5",
                   "--max-steps", "0"] + FAST)


@pytest.mark.slow
def test_resume_continues_exactly(data, tmp_path, caplog):
    common = ["--data", data, "--deterministic"] + FAST
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    train.run(common + ["--out", whole, "--max-steps", "30"])
    assert train.run(common + ["--out", split, "--max-steps", "15"])["step"] == 15
    with caplog.at_level("INFO", logger="cadl.train"):
        resumed = train.run(common + ["--out", split, "--max-steps", "30"])
    assert "resumed from step 15" in caplog.text
    assert resumed["step"] == 30 and resumed["resumed_from"] == 15 and resumed["steps_this_run"] == 15
    a, b = export.load_model(whole).get_weights(), export.load_model(split).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # same data order, same noise, same optimizer state
    again = train.run(common + ["--out", split, "--max-steps", "30"])  # the global target is reached already
    assert again["step"] == 30 and again["steps_this_run"] == 0


def test_bad_data_folders(tmp_path, data):
    with pytest.raises(CadlError, match="no such data folder"):
        train.run(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")] + FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CadlError, match="no manifest.json"):
        train.run(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")] + FAST)
    old = write_dataset(tmp_path / "old", {"train": 8}, size=(16, 16), shards=1, schema_version=0)
    with pytest.raises(CadlError, match="schema version 0"):
        train.run(["--data", str(old), "--out", str(tmp_path / "r")] + FAST)
    empty = write_dataset(tmp_path / "nothing", {"train": 0}, size=(16, 16), shards=1)
    with pytest.raises(CadlError, match="no 'train' records"):
        train.run(["--data", str(empty), "--out", str(tmp_path / "r")] + FAST)


def test_run_folder_for_another_image_size(trained, tmp_path):
    run = trained[0]
    other = str(write_dataset(tmp_path / "wide", {"train": 16, "validation": 4}, size=(16, 32)))
    with pytest.raises(CadlError, match=r"config.json: model is for 16x16x3 images but .* 16x32x3"):
        train.run(["--data", other, "--out", run, "--max-steps", "4"] + FAST)
    with pytest.raises(CadlError, match="model is for 16x16x3"):
        training.evaluate(run, other)


def test_resume_from_a_finished_run(trained, data, tmp_path, caplog):
    run = str(tmp_path / "copy")
    shutil.copytree(trained[0], run)
    with caplog.at_level("INFO", logger="cadl.train"):
        summary = train.run(["--data", data, "--out", run, "--max-steps", "70"] + FAST)
    assert "resumed from step 60" in caplog.text
    assert summary["step"] == 70 and summary["resumed_from"] == 60 and summary["steps_this_run"] == 10
    assert os.path.basename(tf.train.latest_checkpoint(os.path.join(run, "checkpoints"))) == "ckpt-70"
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == [
        "checkpoint"] + [f"ckpt-{s}.{ext}" for s in (60, 70) for ext in ("data-00000-of-00001", "index")]
    with pytest.raises(CadlError, match="latent"):
        train.run(["--data", data, "--out", run, "--max-steps", "80", "--latent", "3"] + FAST)


@pytest.fixture
def corrupt_data(tmp_path):
    data = str(write_dataset(tmp_path / "d", {"train": 48, "validation": 8}, size=(16, 16), shards=3))
    shard = os.path.join(data, atomic.read_json(os.path.join(data, schema.MANIFEST))["splits"]["train"]["files"][1])
    with open(shard, "r+b") as f:
        f.seek(30)
        f.write(b"\x00garbage\x00" * 4)
    return data, shard


def test_corrupt_shard_is_named(corrupt_data, tmp_path):
    data, shard = corrupt_data
    with pytest.raises(CadlError, match=f"{shard}: corrupt shard"):
        train.run(["--data", data, "--out", str(tmp_path / "r1"), "--max-steps", "20"] + FAST)


@pytest.mark.slow
def test_corrupt_shard_is_skipped_and_counted(corrupt_data, tmp_path):
    data, shard = corrupt_data
    summary = train.run(["--data", data, "--out", str(tmp_path / "r2"), "--max-steps", "20", "--skip-corrupt"]
                        + FAST)
    assert summary["step"] == 20
    assert [s["file"] for s in summary["skipped_shards"]] == [shard]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    run = str(tmp_path / "run")
    with pytest.raises(CadlError, match="(loss became nan|non-finite)"):
        train.run(["--data", data, "--out", run, "--max-steps", "50", "--lr", "1e30", "--checkpoint-every", "1"]
                  + FAST)
    latest = tf.train.latest_checkpoint(os.path.join(run, "checkpoints"))
    assert latest is not None
    values = [tf.train.load_variable(latest, name) for name, _ in tf.train.list_variables(latest)
              if name.startswith("optimizer/_trainable_variables/")]
    assert values and all(np.all(np.isfinite(v)) for v in values)


@pytest.mark.slow
def test_mixed_bfloat16_and_xla_run(data, tmp_path):
    run = str(tmp_path / "bf16")
    summary = train.run(["--data", data, "--out", run, "--max-steps", "10", "--precision", "mixed_bfloat16",
                         "--jit"] + FAST)
    assert summary["precision"] == "mixed_bfloat16" and np.isfinite(summary["validation"]["loss"])
    import keras
    assert keras.mixed_precision.global_policy().name == "float32"  # left as found
    assert export.load_inference(run).reconstruct(tfdata.load_images(data, "validation", 2)).shape == (2, 16, 16, 3)


def test_help_describes_every_option():
    text = train.build_parser().format_help()
    for option in ("--max-steps", "--max-seconds", "--epochs", "--precision", "--jit", "--skip-corrupt",
                   "--init-from", "--augment", "--checkpoint-every", "--keep"):
        assert option in text


def _train_process(data, out, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-m", "jobs.train", "--data", data, "--out", out, *FAST, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _wait_for_checkpoint(out, proc, minimum, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        latest = tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))
        if latest and int(latest.rsplit("-", 1)[1]) >= minimum:
            return int(latest.rsplit("-", 1)[1])
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_kill_9_then_resume_ends_at_the_same_step(data, tmp_path):
    out = str(tmp_path / "run")
    proc = _train_process(data, out, "--max-steps", "100000", "--checkpoint-every", "10")
    _wait_for_checkpoint(out, proc, 30)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    latest = int(tf.train.latest_checkpoint(os.path.join(out, "checkpoints")).rsplit("-", 1)[1])
    done = subprocess.run([sys.executable, "-m", "jobs.train", "--data", data, "--out", out, *FAST,
                           "--max-steps", str(latest + 25)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumed from step {latest}" in done.stderr
    summary = atomic.read_json(os.path.join(out, "summary.json"))
    assert summary["step"] == latest + 25 and summary["resumed_from"] == latest


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_step_reached(data, tmp_path):
    out = str(tmp_path / "run")
    proc = _train_process(data, out, "--max-steps", "100000", "--checkpoint-every", "10000")
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out, "montages", "latent-0000000.png")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # let it train a while
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["stopped"] == "interrupted" and summary["step"] > 0
    latest = tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))
    assert int(latest.rsplit("-", 1)[1]) == summary["step"]


@pytest.mark.slow
def test_trains_on_real_extraction_output(short_film, tmp_path):
    from jobs import extract

    data = str(tmp_path / "data")
    extract.run(["--input", str(short_film), "--output", data, "--size", "32x32", "--validation-fraction", "0.2",
                 "--validation-block", "0.5"])
    manifest = tfdata.load_manifest(data)
    assert mf.split_count(manifest, "train") > 0
    out = str(tmp_path / "run")
    summary = train.run(["--data", data, "--out", out, "--max-steps", "80", "--preset", "tiny", "--batch-size", "8",
                         "--no-progress", "--lr", "3e-3", "--log-every", "10"])
    assert summary["step"] == 80
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    inf = export.load_inference(out)
    assert inf.config["image_size"] == [32, 32]
    frames = tfdata.load_images(data, summary["validation_split"], 4)
    assert inf.reconstruct(frames).shape == (4, 32, 32, 3)


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from jobs import train
from pipelines import trainer
trainer.pick_strategy = lambda kind: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
summary = train.run(sys.argv[1:])
assert summary["replicas"] == 2, summary["replicas"]
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_replicas(data, tmp_path):
    """The multi-device path (distributed dataset, per-replica loss scaling) on two logical CPUs."""
    out = str(tmp_path / "run")
    done = subprocess.run([sys.executable, "-c", MIRRORED, "--data", data, "--out", out, *FAST, "--max-steps", "30",
                           "--lr", "3e-3", "--log-every", "5"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = atomic.read_json(os.path.join(out, "summary.json"))
    assert summary["step"] == 30 and summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    assert export.load_inference(out).reconstruct(tfdata.load_images(data, "validation", 2)).shape == (2, 16, 16, 3)


def test_train_from_python_with_a_config_and_no_command_line(data, tmp_path):
    out = str(tmp_path / "run")
    config = training.TrainConfig(data=data, out=out, preset="tiny", max_steps=6, batch_size=8, progress=False,
                                  montage_every=0, widths=(8, 16))
    summary = training.train(config)
    assert summary["step"] == 6 and summary["config"]["widths"] == [8, 16]
    assert atomic.read_json(os.path.join(out, "summary.json"))["step"] == 6
    assert atomic.read_json(os.path.join(out, "config.json"))["training"]["batch_size"] == 8
    with pytest.raises(CadlError, match="--batch-size must be positive, not 0"):
        training.TrainConfig(data=data, out=out, batch_size=0)
    with pytest.raises(CadlError, match="lr_schedule must be one of"):
        training.TrainConfig(data=data, out=out, lr_schedule="step")
