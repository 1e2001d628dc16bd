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


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_a_perfect_render_scores_as_its_source(fit, tmp_path):
    """The model's input itself, rendered (enlarged into the film's geometry, H.264) and scored as ``cadl render
    --score`` scores: all its detail comes back; brought back by a downscaling filter it would not."""
    import imageio

    from pipelines import geometry, video_out

    film = make_film(tmp_path / "film.mp4", "testsrc2", seconds=1.2, size=(320, 180), audio=False)
    info = media.probe(film)
    layout = geometry.make_layout(info, {"image_size": [64, 64], "fit": fit}, video_out.output_format("x.mp4"))
    seen = [f for _, _, f in media.read_frames(film, size=layout.model, fit=fit)]  # what a model is fed
    rendered = str(tmp_path / "perfect.mp4")
    with imageio.get_writer(rendered, fps=25, codec="libx264", macro_block_size=1, pixelformat="yuv444p",
                            ffmpeg_params=["-qp", "0"]) as writer:
        for f in seen:
            writer.append_data(geometry.compose(None, f, layout))  # a perfect model's output frame
    s = metrics.score_films(film, rendered, layout)
    assert s["frames"] == len(seen) == 30 and s["size"] == [64, 64]
    assert s["psnr"] > 35 and s["ssim"] > 0.98
    assert 0.9 < s["laplacian_ratio"] < 1.05 and 0.95 < s["flicker_ratio"] < 1.05
    downscaled = [f for _, _, f in media.read_frames(rendered, size=layout.model, fit=fit)]
    assert metrics.score(np.stack(seen), np.stack(downscaled))["laplacian_ratio"] < 0.75  # blurred twice


def test_to_model_inverts_the_enlargement_exactly():
    from pipelines import geometry, video_out

    rng = np.random.default_rng(0)
    recon = cv2.GaussianBlur(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), (0, 0), 0.7)  # no overshoot
    info = media.VideoInfo("x", 160, 90, None, (0,), None, False, 0.0, "h264", None, 0, 0)
    for fit in ("crop", "pad", "stretch"):
        layout = geometry.make_layout(info, {"image_size": [32, 32], "fit": fit}, video_out.output_format("x.mp4"))
        back = geometry.to_model(geometry.compose(None, recon, layout), layout)
        assert back.shape == recon.shape and back.dtype == np.float32
        if fit == "pad":  # only the part the output shows comes back; the rest is black
            t, l, b, r = layout.inner
            back, expected = back[t:b, l:r], recon[t:b, l:r]
        else:
            expected = recon
        assert np.abs(back - expected).mean() < 0.6  # the output's rounding to whole levels, no blur
