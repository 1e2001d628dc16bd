"""Bad input, odd options and signals: one line naming the file and the problem, a non-zero exit, nothing
left behind; model loading stays in Keras' safe mode."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jobs import extract, train
from pipelines import manifest as mf
from pipelines.synthetic import make_film
from test_confinement import stills
from test_locks import command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_line")
    extract.run(["--input", str(stills(root / "pictures", n=12)), "--output", str(root / "data"), "--size", "16x16"])
    return root / "data"


def _one_line(code, err, *words):
    # The last line is the message (before it, in-process, may come a library's import-time warning).
    line = err.splitlines()[-1] if err else ""
    assert code == 2 and line.startswith("cadl: error: ") and "Traceback" not in err, err
    for word in words:
        assert word in line, err


def test_a_huge_size_is_refused(tmp_path, capsys):
    code, err = command_line(extract.run, ["--input", str(stills(tmp_path / "p")), "--output", str(tmp_path / "d"),
                                           "--size", "100000x100000"], capsys)
    _one_line(code, err, "--size", "8192")


@pytest.mark.parametrize("bad", [[], {"schema_version": 1, "image": {"height": 16, "width": 16, "channels": 3},
                                      "splits": {"train": {"count": "many", "files": []}}}])
def test_a_malformed_manifest_is_one_line_for_train_and_extract(data, tmp_path, capsys, bad):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(bad))
    code, err = command_line(train.run, ["--data", str(folder), "--out", str(tmp_path / "run")], capsys)
    _one_line(code, err, "manifest.json")
    code, err = command_line(extract.run, ["--input", str(stills(tmp_path / "p")), "--output", str(folder),
                                           "--size", "16x16", "--incremental"], capsys)
    _one_line(code, err, "manifest.json")


def test_a_run_config_whose_model_is_a_string(data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model": "<string>"}))
    code, err = command_line(train.run, ["--data", str(data), "--out", str(run_dir), "--preset", "tiny",
                                         "--max-steps", "2"], capsys)
    _one_line(code, err, "config.json", "not a model configuration")


def test_max_steps_0_on_a_new_run_exports_nothing(data, tmp_path, capsys):
    code, err = command_line(train.run, ["--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "0"],
                             capsys)
    _one_line(code, err, "--max-steps 0")
    assert not os.path.exists(tmp_path / "run" / "export")


def test_a_lambda_layer_is_refused_by_safe_mode(tmp_path):
    import keras

    from pipelines import export
    from pipelines.errors import CadlError

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(CadlError, match=r"lambda.keras: cannot load model .*(Lambda|safe)"):
        export.load_model(tmp_path / "lambda.keras")


def test_a_killed_runs_work_folder_is_removed_by_the_next(data, tmp_path):
    left = data / f"{extract.TMP_PREFIX}deadbeef0000"
    (left / "parts").mkdir(parents=True)
    (left / "parts" / "x.tfrecord").write_bytes(b"\0" * 1000)
    extract.run(["--input", str(stills(tmp_path / "p")), "--output", str(data), "--size", "16x16", "--incremental"])
    assert not left.exists()


def _cadl(args, **kw):
    # Ctrl-C as at a terminal: a test run started in the background (``cmd &`` in a script) ignores SIGINT,
    # its children inherit that, and Python then leaves SIGINT ignored, as shells expect of background jobs.
    return subprocess.Popen([sys.executable, "-m", "jobs.cli"] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def _wait_for(path, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if [n for n in os.listdir(path) if n.startswith(extract.TMP_PREFIX)]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: the extract never started")


@pytest.fixture(scope="module")
def long_film(tmp_path_factory):
    """A minute of 640x360: several seconds of extraction on two cores, time to interrupt it (320x180 took
    1.3 s on a quiet machine: the signal could come after the dataset was published)."""
    return make_film(tmp_path_factory.mktemp("long") / "long.mp4", "testsrc2", seconds=60, size=(640, 360),
                     rate="25", audio=False)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_extract_is_a_line_and_a_clean_folder(tmp_path, long_film, sig):
    out = tmp_path / "data"
    out.mkdir()
    proc = _cadl(["extract", "--input", str(long_film), "--output", str(out), "--size", "64x64"])
    _wait_for(out)
    time.sleep(0.3)  # inside the pipeline
    assert proc.poll() is None, "the extract finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("cadl: interrupted") and "Traceback" not in err, err
    assert os.listdir(out) == [], os.listdir(out)  # no work folder, no lock, no half a dataset


def test_ctrl_c_during_start_up_is_a_line(data, tmp_path):
    proc = _cadl(["train", "--data", str(data), "--out", str(tmp_path / "run")])
    time.sleep(1.0)  # TensorFlow is still importing
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("cadl: interrupted"), err
    assert "Traceback" not in err, err
