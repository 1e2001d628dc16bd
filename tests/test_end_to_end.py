"""The loop a user runs: extract -> train -> render on tiny generated films, and ``cadl demo`` itself."""
import os
import subprocess
import sys

import pytest

from jobs import extract, render, train
from pipelines import media
from pipelines.synthetic import make_film

pytestmark = pytest.mark.slow


def test_extract_train_render(tmp_path):
    source = make_film(tmp_path / "source.mp4", "testsrc2", seconds=4, size=(160, 90), rate="25")
    target = make_film(tmp_path / "target.mkv", "mandelbrot", seconds=3, size=(160, 90), rate="24000/1001")

    extracted = extract.run(["--input", source, "--output", str(tmp_path / "data"), "--size", "32x32"])
    assert extracted["records_total"] == sum(extracted["splits"].values()) == 100  # 4 s at 25 fps

    trained = train.run(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                         "--max-steps", "60", "--batch-size", "16"])
    history = trained["history"]
    assert trained["step"] == 60
    assert history[-1]["loss"] < history[0]["loss"]  # it learned something

    out = tmp_path / "target-autoencoded.mkv"
    rendered = render.run(["--model", str(tmp_path / "run"), "--input", target, "--output", str(out)])
    src, dst = media.probe(target), media.probe(out)
    assert dst.num_frames == src.num_frames == rendered["frames"]
    assert dst.fps == src.fps
    assert dst.has_audio
    assert (dst.width, dst.height) == (src.width, src.height)
    assert dst.duration == pytest.approx(src.duration, abs=0.05)


def test_cadl_demo_command(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "demo", "--out", str(tmp_path / "demo"),
                           "--film-seconds", "4", "--train-seconds", "15"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    demo = tmp_path / "demo"
    for name in ("target-autoencoded.mp4", "target-side-by-side.mp4", "summary.json"):
        assert (demo / name).is_file(), name
    target = media.probe(demo / "films" / "target.mp4")
    rendered = media.probe(demo / "target-autoencoded.mp4")
    side = media.probe(demo / "target-side-by-side.mp4")
    assert rendered.num_frames == side.num_frames == target.num_frames == 100
    assert rendered.has_audio and side.has_audio
    assert side.width == 2 * target.width
    assert list((demo / "run" / "montages").glob("*.png"))
    assert "re-rendered film" in proc.stdout and str(demo / "target-autoencoded.mp4") in proc.stdout
