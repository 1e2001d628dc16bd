"""The offline quality figures on known pairs: identical, blurred, shuffled, noisy frames of a real film."""
import cv2
import numpy as np
import pytest

from pipelines import media, metrics
from pipelines.synthetic import make_film


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """40 frames of ffmpeg's testsrc2 at 64x64 (structure, text and motion), decoded as render decodes them."""
    film = make_film(tmp_path_factory.mktemp("metrics") / "film.mp4", "testsrc2", seconds=1.6, size=(128, 128),
                     audio=False)
    return np.stack([f for _, _, f in media.read_frames(film, size=(64, 64), fit="crop")])


def test_identical_frames(frames):
    s = metrics.score(frames, frames, batch_size=7)  # batches that do not divide the film: the streaming sums
    assert s["frames"] == len(frames) and s["size"] == [64, 64]
    assert s["laplacian_ratio"] == pytest.approx(1.0) and s["flicker_ratio"] == pytest.approx(1.0)
    assert s["ssim"] == pytest.approx(1.0) and s["ms_ssim"] == pytest.approx(1.0) and s["psnr"] >= 99


def test_blurred_frames_keep_little_detail(frames):
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in frames])
    s = metrics.score(frames, blurred)
    assert s["laplacian_ratio"] < 0.2
    assert s["ssim"] < 0.95 and 15 < s["psnr"] < 40
    assert s["flicker_ratio"] < 1.0  # blur also smooths the frame-to-frame change


def test_shuffled_frames_flicker(frames):
    order = np.random.default_rng(0).permutation(len(frames))
    s = metrics.score(frames, frames[order], batch_size=16)
    assert s["flicker_ratio"] > 1.0
    assert s["laplacian_ratio"] == pytest.approx(1.0)  # the same pictures: the same detail


def test_noise_adds_detail_and_lowers_psnr(frames):
    noisy = np.clip(frames + np.random.default_rng(1).normal(0, 12, frames.shape), 0, 255).astype(np.uint8)
    s = metrics.score(frames, noisy)
    assert s["laplacian_ratio"] > 1.05 and s["psnr"] < 30


def test_batches_give_the_whole_arrays_figures(frames):
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.0) for f in frames])
    whole, parts = metrics.score(frames, blurred, batch_size=len(frames)), metrics.score(frames, blurred, 5)
    for key in ("psnr", "ssim", "ms_ssim", "laplacian_ratio", "flicker_ratio"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-6)


def test_ms_ssim_scales_fit_the_size():
    assert metrics.ms_ssim_scales((64, 64)) == 3 and metrics.ms_ssim_scales((176, 320)) == 5
    assert metrics.ms_ssim_scales((16, 16)) == 1
    tiny = np.zeros((2, 16, 16, 3), np.uint8)
    assert metrics.score(tiny, tiny)["ms_ssim"] is None


def test_mismatched_batches_are_refused():
    with pytest.raises(ValueError, match="differ"):
        metrics.Scorer().update(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 9, 3), np.uint8))
