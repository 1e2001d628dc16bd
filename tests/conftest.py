"""Shared fixtures: films generated with imageio-ffmpeg's ffmpeg, once per session."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from pipelines.synthetic import make_film  # noqa: E402


@pytest.fixture(scope="session")
def film_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("films")


@pytest.fixture(scope="session")
def short_film(film_dir):
    """3 s of testsrc2 at 25 fps (75 frames), 160x90, with a sine audio track, H.264/AAC mp4."""
    return make_film(film_dir / "short.mp4", "testsrc2", seconds=3, size=(160, 90), rate="25")


@pytest.fixture(scope="session")
def ntsc_film(film_dir):
    """2 s of mandelbrot at 24000/1001 fps, mkv with audio."""
    return make_film(film_dir / "ntsc.mkv", "mandelbrot", seconds=2, size=(128, 72), rate="24000/1001")


@pytest.fixture(scope="session")
def silent_film(film_dir):
    """2 s of testsrc2 without audio."""
    return make_film(film_dir / "silent.mp4", "testsrc2", seconds=2, size=(96, 64), rate="25", audio=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny VAE (16x16, preset tiny) trained for a few steps on frames extracted from a generated film."""
    from jobs import extract, train

    root = tmp_path_factory.mktemp("render_model")
    film = make_film(root / "train.mp4", "testsrc2", seconds=2, size=(128, 72), rate="25", audio=False)
    extract.run(["--input", str(film), "--output", str(root / "data"), "--size", "16x16"])
    train.run(["--data", str(root / "data"), "--out", str(root / "run"), "--preset", "tiny",
               "--max-steps", "12", "--no-progress"])
    return str(root / "run")
