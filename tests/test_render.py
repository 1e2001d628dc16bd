"""cadl render end to end with a really trained tiny VAE: exactness, options, resume, Beam, bad input."""
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jobs
from jobs import render
from pipelines import atomic, geometry, media, render_engine, video_out
from pipelines import render as render_stage
from pipelines.render import RenderConfig
from pipelines.errors import CadlError
from pipelines.synthetic import make_film
from test_locks import holder  # noqa: F401 - a fixture: another live process holding a folder's lock


@pytest.fixture(scope="session")
def model(tiny_run):
    from pipelines import export
    return export.load_inference(tiny_run)


@pytest.fixture(scope="module")
def vfr_film(film_dir):
    return make_film(film_dir / "vfr_render.mp4", "testsrc2", seconds=2, size=(96, 64), rate="30",
                     extra_video_args=["-vf", r"select='not(eq(mod(n\,7)\,3))*not(eq(mod(n\,11)\,5))'",
                                       "-fps_mode", "passthrough"])


@pytest.fixture(scope="module")
def odd_film(film_dir):
    """Odd sides (81x45), 4:4:4 so H.264 accepts them: the output must still be legal 4:2:0."""
    return make_film(film_dir / "odd.mp4", "mandelbrot", seconds=1, size=(81, 45), rate="25",
                     extra_video_args=["-pix_fmt", "yuv444p"])


def _render(model_path, film, out, *extra):
    return render.run(["--model", model_path, "--input", str(film), "--output", str(out),
                       "--preset", "ultrafast", *extra])


def _frames(path):
    return [f for _, _, f in media.read_frames(path)]


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _relative_times(info):
    return [(p - info.pts[0]) * info.time_base for p in info.pts]


# ---- the geometry of a frame's path (no model needed) ----

@pytest.mark.parametrize("fit", geometry.FITS)
def test_fit_then_unfit_gives_back_the_picture_undistorted(fit):
    """With an identity 'model', from_model(fit_image(frame)) is the frame (where the model saw it)."""
    rng = np.random.default_rng(0)
    frame = cv2_smooth(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8))
    fmt = video_out.output_format("x.mp4")
    info = media.VideoInfo("x", 160, 90, None, (0,), None, False, 0.0, "h264", None, 0, 0)
    layout = geometry.make_layout(info, {"image_size": [32, 32], "fit": fit}, fmt)
    back = geometry.from_model(geometry.fit_image(frame, layout.model, layout.fit), layout)
    assert back.shape == frame.shape
    if fit == "crop":
        t, l, b, r = layout.region
        assert (t, b) == (0, 90) and 30 <= l < r <= 130 and r - l == 90  # the centre square
        assert not back[:, :l].any() and not back[:, r:].any()           # never seen: black
        assert _psnr(back[:, l:r], frame[:, l:r]) > 24
    else:
        assert _psnr(back, frame) > 22  # pad keeps everything; stretch is undone


def cv2_smooth(image):
    import cv2
    return cv2.GaussianBlur(image, (0, 0), 3)


def test_layout_sizes_are_even_and_undistorted():
    fmt = video_out.output_format("x.mp4")
    info = media.VideoInfo("x", 81, 45, None, (0,), None, False, 0.0, "h264", None, 0, 0)
    cfg = {"image_size": [16, 16], "fit": "crop"}
    assert geometry.make_layout(info, cfg, fmt).frame_size == (44, 80)
    assert geometry.make_layout(info, cfg, fmt, side_by_side=True).frame_size == (44, 160)
    assert geometry.make_layout(info, cfg, fmt, scale=2).frame_size == (90, 162)
    boxed = geometry.make_layout(info, cfg, fmt, output_size=(100, 100))
    assert boxed.frame_size == (100, 100) and boxed.picture == (56, 100)  # letterboxed, aspect kept
    png = video_out.output_format("frames")
    assert geometry.make_layout(info, cfg, png).frame_size == (45, 81)  # PNG takes odd sides


def test_latent_smoother_is_a_centred_mean_clipped_at_the_ends():
    zs = {i: np.array([float(i * i)]) for i in range(10)}
    s = render_engine.LatentSmoother(radius=2, emit_start=3, emit_stop=10, last_index=9)
    out = []
    for i in range(1, 10):  # frames 1, 2 are context for frame 3
        out += s.push(i, zs[i], f"frame{i}")
    assert [i for i, _, _ in out] == list(range(3, 10))
    got = {i: z[0] for i, z, _ in out}
    assert got[3] == pytest.approx(np.mean([1, 4, 9, 16, 25]))
    assert got[9] == pytest.approx(np.mean([49, 64, 81]))  # clipped at the film's end
    assert [f for _, _, f in out][0] == "frame3"


# ---- exactness ----

def test_mp4_same_frames_rate_duration_audio_and_content(tiny_run, model, short_film, tmp_path):
    out = tmp_path / "out.mp4"
    summary = _render(tiny_run, short_film, out, "--crf", "12")
    src, res = media.probe(short_film), media.probe(out)
    assert res.num_frames == src.num_frames == summary["frames"] == 75
    assert res.fps == src.fps and summary["fps"] == "25"
    assert res.duration == pytest.approx(src.duration, abs=1e-6)
    assert res.audio_codec == "aac" and summary["audio"] == "copy" and summary["audio_kept"]
    assert (res.width, res.height) == (160, 90)
    saved = atomic.read_json(str(out) + ".summary.json")
    assert saved["frames"] == 75 and set(saved["seconds"]) >= {"decode", "infer", "encode", "join", "total"}
    # CPU seconds of every thread and ffmpeg process, by stage (their values are benchmarks/render_bench.py's)
    assert set(saved["cpu_seconds"]) == {"load", "render", "join", "total"}
    assert all(isinstance(v, float) for v in saved["cpu_seconds"].values())
    assert not os.path.exists(str(out) + ".parts")
    # Each output frame is the model's reconstruction put back in place (up to H.264 at crf 12).
    layout = geometry.make_layout(src, model.config, video_out.output_format(out))
    inputs = _model_inputs(short_film, layout)
    for i in (0, 40, 74):
        want = geometry.compose(None, model.reconstruct(inputs[i][None])[0], layout)
        assert _psnr(_frames_at(out, i), want) > 33


def _model_inputs(path, layout):
    """What a render without --blend/--side-by-side feeds the model: frames fitted by ffmpeg's scaler."""
    return [f for _, _, f in media.read_frames(path, size=layout.model, fit=layout.fit)]


def _frames_at(path, i):
    return next(f for _, _, f in media.read_frames(path, start=i, stop=i + 1))


def test_ntsc_mkv_keeps_24000_1001_and_copies_vorbis(tiny_run, ntsc_film, tmp_path):
    out = tmp_path / "out.mkv"
    summary = _render(tiny_run, ntsc_film, out, "--segment-seconds", "0.5")
    src, res = media.probe(ntsc_film), media.probe(out)
    assert summary["segments"] >= 4
    assert res.fps == src.fps == media.Fraction(24000, 1001) and res.num_frames == src.num_frames
    assert res.duration == pytest.approx(src.duration, abs=0.0015)
    assert res.audio_codec == "vorbis" and summary["audio"] == "copy"


def test_silent_film_gives_silent_output(tiny_run, silent_film, tmp_path):
    summary = _render(tiny_run, silent_film, tmp_path / "out.mp4")
    assert media.probe(tmp_path / "out.mp4").audio_codec is None
    assert summary["audio_kept"] is False and summary["frames"] == media.probe(silent_film).num_frames


def test_variable_frame_rate_keeps_each_frame_time(tiny_run, vfr_film, tmp_path):
    out = tmp_path / "out.mp4"
    _render(tiny_run, vfr_film, out, "--segment-seconds", "0.5")
    src, res = media.probe(vfr_film), media.probe(out)
    assert src.vfr and res.vfr and res.num_frames == src.num_frames
    assert _relative_times(res) == _relative_times(src)
    assert res.duration == pytest.approx(src.duration, abs=1e-9)


# ---- options ----

def test_side_by_side_blend_and_sizes(tiny_run, odd_film, tmp_path):
    side = _render(tiny_run, odd_film, tmp_path / "side.mp4", "--side-by-side")
    assert (side["width"], side["height"]) == (160, 44)  # two 80x44 panels: 81x45 cut by a pixel
    res = media.probe(tmp_path / "side.mp4")
    assert (res.width, res.height) == (160, 44) and res.num_frames == 25
    scaled = _render(tiny_run, odd_film, tmp_path / "scaled.mp4", "--scale", "2")
    assert (scaled["width"], scaled["height"]) == (162, 90)
    # Lossless FFV1 takes odd sides: the left panel is the original exactly, the right one the plain
    # render's frame, --blend 0 is the original, --blend 0.5 is the mean of the two panels.
    _render(tiny_run, odd_film, tmp_path / "side.mkv", "--side-by-side", "--codec", "ffv1")
    _render(tiny_run, odd_film, tmp_path / "plain.mkv", "--codec", "ffv1")
    _render(tiny_run, odd_film, tmp_path / "blend0.mkv", "--blend", "0", "--codec", "ffv1")
    _render(tiny_run, odd_film, tmp_path / "blend5.mkv", "--blend", "0.5", "--codec", "ffv1")
    source = _frames(odd_film)[3]
    both = _frames_at(tmp_path / "side.mkv", 3)
    left, right = both[:, :81], both[:, 81:].astype(int)
    assert both.shape == (45, 162, 3) and np.array_equal(left, source)
    assert _psnr(right, source) < 30  # the reconstruction of a 16x16 tiny model is no copy
    assert np.array_equal(right, _frames_at(tmp_path / "plain.mkv", 3))  # the plain render's, exactly
    assert np.array_equal(_frames_at(tmp_path / "blend0.mkv", 3), source)
    half = _frames_at(tmp_path / "blend5.mkv", 3).astype(int)
    assert np.abs(half - (source.astype(int) + right) / 2).max() <= 1


def test_png_sequence_smoothing_matches_a_direct_computation(tiny_run, model, short_film, tmp_path):
    """--smooth 5 over segments of 0.4 s: each PNG is decode(mean of 5 neighbouring z) put in place."""
    out = tmp_path / "frames"
    summary = _render(tiny_run, short_film, out, "--smooth", "5", "--segment-seconds", "0.4",
                      "--batch-size", "8")
    assert summary["segments"] >= 7 and os.path.exists(out / "summary.json")
    names = sorted(n for n in os.listdir(out) if n.endswith(".png"))
    assert len(names) == 75 and os.path.exists(out / "audio.mka") and os.path.exists(out / "timestamps.txt")
    src = media.probe(short_film)
    layout = geometry.make_layout(src, model.config, video_out.output_format(out))
    z = model.encode(np.stack(_model_inputs(short_film, layout)))
    from PIL import Image
    for i in (0, 9, 10, 11, 37, 74):  # 10 starts a segment: its window reaches into the previous one
        mean = z[max(0, i - 2):i + 3].mean(axis=0)
        want = geometry.compose(None, model.decode(mean[None])[0], layout)
        got = np.asarray(Image.open(out / names[i]).convert("RGB"))
        assert np.abs(got.astype(int) - want).max() <= 2, i
    plain = _render(tiny_run, short_film, tmp_path / "plain", "--segment-seconds", "0.4")
    a = np.asarray(Image.open(tmp_path / "plain" / names[20]))
    b = np.asarray(Image.open(out / names[20]))
    assert plain["frames"] == 75 and not np.array_equal(a, b)  # smoothing changed the picture


class _Recording:
    """The real model, noting what it is fed (the frames, without the padding of the last batch)."""

    def __init__(self, model):
        self.model, self.inputs, self.config = model, [], model.config

    def reconstruct(self, x):
        self.inputs.append(np.array(x))
        return self.model.reconstruct(x)


@pytest.mark.parametrize("side_by_side", [False, True])
def test_the_model_is_fed_frames_fitted_as_extraction_fits_them(model, short_film, tmp_path, side_by_side):
    """The model gets exactly what ffmpeg's scaler gives (what extraction trained it on), also when the
    output shows the original next to the reconstruction."""
    info = media.probe(short_film)
    fmt = video_out.output_format(tmp_path / "o.mkv", codec="ffv1")
    layout = geometry.make_layout(info, model.config, fmt, side_by_side=side_by_side)
    plan = render_engine.SegmentPlan(info=info, layout=layout, fmt=fmt, parts=str(tmp_path),
                                     segments=tuple(info.segments(1.0)), batch_size=16)
    spy = _Recording(model)
    stats = render_engine.render_segments(plan, spy, list(range(len(plan.segments))))
    # Batches never span two segments: each segment of 25 frames is a batch of 16 and a padded one of 9.
    sizes = [min(16, e - i) for s, e in plan.segments for i in range(s, e, 16)]
    assert stats["frames"] == 75 and [len(b) for b in spy.inputs] == [16] * len(sizes)
    fed = np.concatenate([b[:k] for b, k in zip(spy.inputs, sizes)])
    want = _model_inputs(short_film, layout)
    assert fed.shape == (75,) + layout.model + (3,) and len(want) == 75
    assert all(np.array_equal(a, b) for a, b in zip(fed, want))


# ---- the library: render(RenderConfig) without a command line ----

def test_render_from_python_with_a_config_and_no_command_line(tiny_run, tmp_path, monkeypatch):
    """Another stage (a notebook, retrain, a worker) calls the function; no flags are parsed on the way."""
    import argparse

    def no_parser(*args, **kwargs):
        raise AssertionError("render(RenderConfig) built an argument parser")

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", no_parser)
    film = make_film(tmp_path / "lib.mp4", "testsrc2", seconds=1.2, size=(96, 54), rate="25")
    out = tmp_path / "out" / "lib.mkv"
    config = RenderConfig(model=tiny_run, input=str(film), output=str(out), codec="ffv1", smooth=2,
                          segment_seconds=0.5, batch_size=8, output_size=(60, 120), side_by_side=True)
    summary = render_stage.render(config)
    src, res = media.probe(film), media.probe(out)
    assert res.num_frames == src.num_frames == summary["frames"] == 30
    assert res.fps == src.fps and res.duration == pytest.approx(src.duration, abs=1e-6)
    assert (res.width, res.height) == (summary["width"], summary["height"]) == (240, 60)
    assert summary["segments"] == 3 and summary["options"]["smooth"] == 3  # rounded up to odd
    assert res.audio_codec is not None and summary["audio_kept"]
    assert atomic.read_json(str(out) + ".summary.json") == summary
    assert not os.path.exists(str(out) + ".parts")
    with pytest.raises(CadlError, match="--overwrite"):  # the same checks as the command's
        render_stage.render(config)
    silent = render_stage.render(dataclasses.replace(config, audio=False, overwrite=True))
    assert silent["audio_kept"] is False and media.probe(out).audio_codec is None


@pytest.mark.parametrize("knobs, message", [
    ({"blend": 1.5}, "--blend must be between 0 and 1"),
    ({"smooth": 0}, "--smooth must be at least 1"),
    ({"scale": 0}, "--scale must be positive"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
    ({"segment_seconds": 0}, "--segment-seconds must be positive"),
    ({"output_size": (0, 10)}, "--output-size: size must look like HxW"),
    ({"output_size": "72x128"}, "--output-size must be"),
    ({"deinterlace": "yes"}, "deinterlace must be one of auto, off"),
    ({"beam_args": ("--direct_num_workers", "2")}, "Beam options need a runner"),
])
def test_render_config_refuses_bad_knobs_in_one_line(knobs, message):
    with pytest.raises(CadlError, match=message) as e:
        RenderConfig(model="m", input="i.mp4", output="o.mp4", **knobs)
    assert "\n" not in str(e.value)


def test_render_config_is_frozen_and_defaults_are_the_commands():
    config = RenderConfig(model="m", input="i.mp4", output="o.mp4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.crf = 0
    args, beam_args = render.build_parser().parse_known_args(["--model", "m", "--input", "i.mp4", "--output", "o.mp4"])
    assert render.config_from_args(args, beam_args) == config
    args, beam_args = render.build_parser().parse_known_args(
        ["--model", "m", "--input", "i.mp4", "--output", "o.mp4", "--output-size", "72x128", "--no-audio",
         "--keep-fields", "--runner", "DirectRunner", "--direct_num_workers", "2"])
    assert render.config_from_args(args, beam_args) == dataclasses.replace(
        config, output_size=(72, 128), audio=False, deinterlace="off", runner="DirectRunner",
        beam_args=("--direct_num_workers", "2"))


# ---- resume and parallel rendering ----

def test_resume_after_a_crash_renders_each_frame_once(tiny_run, short_film, tmp_path, monkeypatch, caplog):
    clean = tmp_path / "clean.mp4"
    _render(tiny_run, short_film, clean, "--segment-seconds", "0.5")
    out = tmp_path / "out.mp4"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the join")

    monkeypatch.setattr(video_out, "join", crash)
    with pytest.raises(KeyboardInterrupt):
        _render(tiny_run, short_film, out, "--segment-seconds", "0.5")
    monkeypatch.undo()
    parts = str(out) + ".parts"
    segments = sorted(n for n in os.listdir(parts) if n.startswith("seg-"))
    assert len(segments) == 6 and not os.path.exists(out)
    for name in segments[3:]:  # as if the crash came during segment 3
        os.remove(os.path.join(parts, name))
    with caplog.at_level(logging.INFO, logger="cadl.render"):
        summary = _render(tiny_run, short_film, out, "--segment-seconds", "0.5")
    at = media.probe(short_film).segments(0.5)[3][0]
    assert at > 0 and f"resuming at frame {at} " in caplog.text
    assert summary["resumed_at_frame"] == at and summary["frames_rendered_now"] == 75 - at
    a, b = _frames(clean), _frames(out)
    assert len(a) == len(b) == 75 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not os.path.exists(parts)


def test_beam_direct_runner_gives_the_same_frames_as_local(tiny_run, short_film, tmp_path):
    local = _render(tiny_run, short_film, tmp_path / "local.mp4", "--segment-seconds", "1")
    beam = _render(tiny_run, short_film, tmp_path / "beam.mp4", "--segment-seconds", "1",
                   "--runner", "DirectRunner")
    assert beam["runner"] == "DirectRunner" and beam["frames"] == local["frames"] == 75
    a, b = _frames(tmp_path / "local.mp4"), _frames(tmp_path / "beam.mp4")
    assert len(a) == len(b) == 75 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert media.probe(tmp_path / "beam.mp4").audio_codec == "aac"


# ---- bad input ----

def test_bad_input_is_one_line_and_overwrites_nothing(tiny_run, short_film, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a film at all" * 100)
    with pytest.raises(CadlError, match="broken.mp4"):
        _render(tiny_run, broken, tmp_path / "o1.mp4")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CadlError, match="empty_run"):
        _render(str(tmp_path / "empty_run"), short_film, tmp_path / "o2.mp4")
    with pytest.raises(CadlError, match="output is the input"):
        _render(tiny_run, short_film, short_film, "--overwrite")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CadlError, match="cannot create the output folder"):
        _render(tiny_run, short_film, blocker / "out.mp4")
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"precious")
    with pytest.raises(CadlError, match="--overwrite"):
        _render(tiny_run, short_film, existing)
    assert existing.read_bytes() == b"precious"
    # The command line: exit status 2 and a single line on stderr.
    code = jobs.main(render.run, ["--model", tiny_run, "--input", str(broken), "--output", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("cadl: error:") and "broken.mp4" in err and "\n" not in err
    assert not os.path.exists(tmp_path / "o1.mp4") and not os.path.exists(tmp_path / "o.mp4")


def _tree(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def test_overwrite_never_replaces_the_input_a_model_or_a_folder_render_did_not_write(tiny_run, tmp_path):
    import shutil

    folder = tmp_path / "infold"
    folder.mkdir()
    film = make_film(folder / "t.mp4", "testsrc2", seconds=0.4, size=(64, 36), rate="25", audio=False)
    (folder / "notes.txt").write_text("mine")
    before = _tree(folder)
    with pytest.raises(CadlError, match="infold: .*not replacing"):
        _render(tiny_run, film, folder, "--overwrite")
    assert _tree(folder) == before
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_run, run_copy)
    before = _tree(run_copy)
    with pytest.raises(CadlError, match="run: .*not replacing"):
        _render(str(run_copy), film, run_copy, "--overwrite")
    assert _tree(run_copy) == before
    # A PNG sequence cadl render wrote is replaced; its replacement is again one render may replace.
    frames = tmp_path / "frames"
    _render(tiny_run, film, frames)
    _render(tiny_run, film, frames, "--overwrite")
    assert len([f for f in os.listdir(frames) if f.endswith(".png")]) == 10
    # A folder that merely sits where OUT.parts goes is not cadl's work folder: not emptied.
    (tmp_path / "o.mp4.parts").mkdir()
    (tmp_path / "o.mp4.parts" / "keep.txt").write_text("mine")
    with pytest.raises(CadlError, match="o.mp4.parts: .*not cadl"):
        _render(tiny_run, film, tmp_path / "o.mp4")
    assert (tmp_path / "o.mp4.parts" / "keep.txt").read_text() == "mine"


def test_an_output_path_with_a_quote_and_a_line_break_joins(tiny_run, tmp_path):
    film = make_film(tmp_path / "t.mp4", "testsrc2", seconds=1.2, size=(64, 36), rate="25", audio=False)
    out = tmp_path / "it's\nhere" / "o'k.mp4"
    summary = _render(tiny_run, film, out, "--segment-seconds", "0.4")
    assert summary["segments"] >= 2 and media.probe(str(out)).num_frames == 30
    assert not os.path.exists(str(out) + ".parts")


def test_a_second_render_exits_75_and_keeps_the_first_ones_segment(tiny_run, short_film, tmp_path, holder, capsys):
    from test_locks import command_line

    parts = tmp_path / "o.mp4.parts"
    pid = holder(parts, "parts")
    (parts / ".seg-00000.mp4").write_bytes(b"the first render's segment in progress")
    before = _tree(parts)
    code, err = command_line(render.run, ["--model", tiny_run, "--input", str(short_film), "--output",
                                          str(tmp_path / "o.mp4")], capsys)
    assert code == 75 and err.startswith("cadl: error: another render") and f"pid {pid}" in err, err
    assert _tree(parts) == before and not os.path.exists(tmp_path / "o.mp4")


def test_model_with_another_channel_count_is_refused(short_film, tmp_path):
    from models import vae
    grey = vae.VAE(vae.make_config(vae.TINY, channels=1)).build_all()
    grey.save(tmp_path / "grey.keras")
    with pytest.raises(CadlError, match="1-channel"):
        _render(str(tmp_path / "grey.keras"), short_film, tmp_path / "o.mp4")


# ---- slow: a real kill -9, and Beam with several worker processes ----

@pytest.mark.slow
def test_kill_minus_9_then_rerun_resumes_with_every_frame_once(tiny_run, tmp_path):
    film = make_film(tmp_path / "long.mp4", "mandelbrot", seconds=8, size=(160, 90), rate="25")
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "jobs.render", "--model", tiny_run, "--input", str(film), "--output", str(out),
           "--segment-seconds", "1", "--preset", "ultrafast"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = str(out) + ".parts"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = [n for n in os.listdir(parts) if n.startswith("seg-")] if os.path.isdir(parts) else []
        if len(done) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the render finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(out)
    rerun = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    assert "resuming at frame" in rerun.stdout
    resumed_at = int(rerun.stdout.split("resuming at frame ")[1].split()[0])
    assert resumed_at >= 75 and resumed_at % 25 == 0
    clean = tmp_path / "clean.mp4"
    subprocess.run(cmd[:8] + [str(clean)] + cmd[9:], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=400)
    a, b = _frames(clean), _frames(out)
    assert len(a) == len(b) == 200 and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_beam_multiprocess_workers_give_the_same_frames(tiny_run, ntsc_film, tmp_path):
    local = _render(tiny_run, ntsc_film, tmp_path / "local.mkv", "--segment-seconds", "0.5", "--codec", "ffv1")
    beam = _render(tiny_run, ntsc_film, tmp_path / "beam.mkv", "--segment-seconds", "0.5", "--codec", "ffv1",
                   "--runner", "DirectRunner", "--direct_num_workers", "2",
                   "--direct_running_mode", "multi_processing")
    assert beam["frames"] == local["frames"] == media.probe(ntsc_film).num_frames
    a, b = _frames(tmp_path / "local.mkv"), _frames(tmp_path / "beam.mkv")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert media.probe(tmp_path / "beam.mkv").fps == media.Fraction(24000, 1001)


def test_a_render_shares_the_cores_between_the_model_and_the_encoder(tiny_run, short_film, tmp_path):
    """A fresh ``cadl render`` on a machine without a GPU gives the model half the cores and the encoder the
    rest; ``--model-threads`` chooses the model's share."""
    import subprocess
    import sys

    cores = os.cpu_count()
    for flag, model_threads in (([], max(1, cores // 2)), (["--model-threads", "1"], 1)):
        out = tmp_path / f"out{len(flag)}.mp4"
        proc = subprocess.run([sys.executable, "-m", "jobs.cli", "render", "--model", tiny_run, "--input",
                               str(short_film), "--output", str(out), "--preset", "ultrafast", *flag],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        options = atomic.read_json(str(out) + ".summary.json")["options"]
        assert options["model_threads"] == model_threads
        assert options["encoder_threads"] == max(1, cores - model_threads)
        assert media.probe(out).num_frames == 75
