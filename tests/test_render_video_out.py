"""The encoder and joiner alone (no model): exact frame counts, rates, timestamps and audio handling."""
import os
from fractions import Fraction

import numpy as np
import pytest

from pipelines import media, video_out
from pipelines.errors import CadlError
from pipelines.synthetic import make_film


@pytest.fixture(scope="module")
def vfr_film(film_dir):
    """3 s at 30 fps with frames dropped irregularly (every 7th and 11th): variable frame rate."""
    return make_film(film_dir / "vfr_out.mp4", "testsrc2", seconds=3, size=(96, 64), rate="30",
                     extra_video_args=["-vf", r"select='not(eq(mod(n\,7)\,3))*not(eq(mod(n\,11)\,5))'",
                                       "-fps_mode", "passthrough"])


def _relative_times(info):
    return [(p - info.pts[0]) * info.time_base for p in info.pts]


def _encode_segments(info, folder, fmt, segments, size=None, transform=None):
    """Decode the film and write it back through SegmentWriter, one file per segment."""
    frames = [f for _, _, f in media.read_frames(info.path, info=info)]
    size = size or (info.height, info.width)
    paths = []
    for k, (a, b) in enumerate(segments):
        path = os.path.join(folder, video_out.segment_name(k, fmt))
        writer = video_out.SegmentWriter(path, fmt, size, video_out.segment_timing(info, a, b), a, b)
        for f in frames[a:b]:
            writer.write(transform(f) if transform else f)
        assert writer.commit() == b - a
        paths.append(path)
    return paths, frames, segments


def test_output_format_choices_and_errors(tmp_path):
    assert video_out.output_format(tmp_path / "a.mp4").codec == "h264"
    assert video_out.output_format(tmp_path / "a.mov").codec == "prores"
    assert video_out.output_format(tmp_path / "a.mov").pix_fmt == "yuv422p10le"
    assert video_out.output_format(tmp_path / "a.mkv", codec="ffv1").even_sides is False
    assert video_out.output_format(tmp_path / "frames").is_sequence
    assert video_out.output_format(tmp_path / "a.mp4").even_sides
    for path, codec in [("a.mp4", "prores"), ("a.avi", "auto"), ("a.mp4", "png"), ("frames", "h264")]:
        with pytest.raises(CadlError, match=os.path.basename(path)):
            video_out.output_format(tmp_path / path, codec=codec)
    with pytest.raises(CadlError, match="crf"):
        video_out.output_format(tmp_path / "a.mp4", crf=60)


def test_pts_expression_gives_every_frame_its_pts():
    """The setpts expression, evaluated with ffmpeg's meaning of between() and eq(), gives each pts back."""
    rng = np.random.default_rng(0)
    funcs = {"between": lambda x, a, b: int(a <= x <= b), "eq": lambda a, b: int(a == b)}
    for pts in ([0], [0, 512, 1024, 2048, 3072, 3584, 3585],
                np.cumsum(rng.choice([1001, 1001, 1001, 2002, 500], size=200)).tolist()):
        expr = video_out.pts_expression(pts)
        assert [eval(expr, dict(funcs, N=n)) for n in range(len(pts))] == list(pts)
    # A constant-rate stretch of any length is one term.
    assert video_out.pts_expression(list(range(0, 10**6, 40))).count("between") == 1


def test_cfr_ntsc_segments_join_to_exact_rate_and_reencoded_audio(ntsc_film, tmp_path):
    """24000/1001 stays 24000/1001 through segments and the lossless join; Vorbis (mkv) becomes AAC in mp4."""
    info = media.probe(ntsc_film)
    fmt = video_out.output_format(tmp_path / "out.mp4", preset="veryfast")
    segs = info.segments(0.7)
    assert len(segs) >= 3
    paths, _, segs = _encode_segments(info, tmp_path, fmt, segs)
    result = video_out.join(paths, segs, tmp_path / "out.mp4", fmt, info)
    out = media.probe(tmp_path / "out.mp4")
    assert out.num_frames == info.num_frames
    assert out.fps == Fraction(24000, 1001) and not out.vfr
    assert out.pts[1] - out.pts[0] == 1001 and out.time_base == Fraction(1, 24000)
    assert out.duration == pytest.approx(info.num_frames * 1001 / 24000, abs=1e-9)
    assert info.audio_codec == "vorbis" and result["audio"] == "reencode" and out.audio_codec == "aac"
    assert not os.path.exists(tmp_path / "concat.txt")


def test_audio_copied_into_mkv_and_mp4(short_film, ntsc_film, tmp_path):
    for source, name, codec in [(ntsc_film, "a.mkv", "vorbis"), (short_film, "b.mp4", "aac")]:
        info = media.probe(source)
        fmt = video_out.output_format(tmp_path / name, preset="ultrafast")
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        paths, _, segs = _encode_segments(info, folder, fmt, info.segments(1.0))
        result = video_out.join(paths, segs, tmp_path / name, fmt, info)
        out = media.probe(tmp_path / name)
        assert result["audio"] == "copy" and out.audio_codec == codec
        assert out.num_frames == info.num_frames and out.fps == info.fps


def test_silent_source_gives_silent_output(silent_film, tmp_path):
    info = media.probe(silent_film)
    fmt = video_out.output_format(tmp_path / "out.mp4", preset="ultrafast")
    paths, _, segs = _encode_segments(info, tmp_path, fmt, info.segments(10))
    result = video_out.join(paths, segs, tmp_path / "out.mp4", fmt, info)
    assert result["audio"] is None and media.probe(tmp_path / "out.mp4").audio_codec is None


@pytest.mark.parametrize("name", ["out.mp4", "out.mov"])
def test_vfr_keeps_every_frame_timestamp(vfr_film, tmp_path, name):
    """Every frame of a variable-rate film keeps its own timestamp across segment joins (mp4/mov: exact)."""
    info = media.probe(vfr_film)
    assert info.vfr
    fmt = video_out.output_format(tmp_path / name, preset="ultrafast")
    segs = info.segments(0.8)
    paths, _, segs = _encode_segments(info, tmp_path, fmt, segs)
    for (a, b), path in zip(segs, paths):
        seg = media.probe(path)
        assert [(p - seg.pts[0]) * seg.time_base for p in seg.pts] == \
            [(p - info.pts[a]) * info.time_base for p in info.pts[a:b]]
    video_out.join(paths, segs, tmp_path / name, fmt, info)
    out = media.probe(tmp_path / name)
    assert out.num_frames == info.num_frames and out.vfr
    assert _relative_times(out) == _relative_times(info)
    assert out.duration == pytest.approx(info.duration, abs=1e-9)


def test_vfr_into_matroska_is_exact_to_the_millisecond(vfr_film, tmp_path):
    info = media.probe(vfr_film)
    fmt = video_out.output_format(tmp_path / "out.mkv", preset="ultrafast")
    paths, _, segs = _encode_segments(info, tmp_path, fmt, info.segments(0.3))
    assert len(segs) >= 8 and paths[0].endswith(".nut")
    video_out.join(paths, segs, tmp_path / "out.mkv", fmt, info)
    out = media.probe(tmp_path / "out.mkv")
    assert out.num_frames == info.num_frames
    errors = [abs(float(a - b)) for a, b in zip(_relative_times(out), _relative_times(info))]
    assert max(errors) <= 0.0005 + 1e-9  # Matroska stores milliseconds: one rounding, never drift


def test_lossless_ffv1_round_trip_is_bit_exact(short_film, tmp_path):
    info = media.probe(short_film)
    fmt = video_out.output_format(tmp_path / "out.mkv", codec="ffv1")
    paths, frames, segs = _encode_segments(info, tmp_path, fmt, info.segments(1.0), size=(90, 160))
    video_out.join(paths, segs, tmp_path / "out.mkv", fmt, info)
    back = [f for _, _, f in media.read_frames(tmp_path / "out.mkv")]
    assert len(back) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(frames, back))


def test_png_sequence_with_timestamps_and_audio(ntsc_film, tmp_path):
    info = media.probe(ntsc_film)
    fmt = video_out.output_format(tmp_path / "frames")
    parts = tmp_path / "parts"
    parts.mkdir()
    paths, frames, segs = _encode_segments(info, parts, fmt, info.segments(0.5))
    staging = parts / "final"
    result = video_out.join_sequence(paths, str(staging), info)
    video_out.publish(str(staging), tmp_path / "frames")
    names = sorted(os.listdir(tmp_path / "frames"))
    pngs = [n for n in names if n.endswith(".png")]
    assert pngs[0] == "frame_000000.png" and len(pngs) == info.num_frames == result["frames"]
    assert result["audio"] == "copy" and os.path.getsize(tmp_path / "frames" / "audio.mka") > 1000
    stamps = open(tmp_path / "frames" / "timestamps.txt").read().splitlines()
    assert stamps[0] == "# timestamp format v2" and len(stamps) == info.num_frames + 1
    assert float(stamps[2]) == pytest.approx(info.timestamp(1) * 1000, abs=1e-6)
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(tmp_path / "frames" / pngs[5]).convert("RGB")), frames[5])


def test_segment_writer_checks_counts_and_cleans_up(short_film, tmp_path):
    info = media.probe(short_film)
    fmt = video_out.output_format(tmp_path / "x.mp4", preset="ultrafast")
    path = tmp_path / "seg-00000.mp4"
    writer = video_out.SegmentWriter(path, fmt, (90, 160), video_out.segment_timing(info, 0, 10), 0, 10)
    with pytest.raises(ValueError):
        writer.write(np.zeros((90, 161, 3), np.uint8))
    for _ in range(9):
        writer.write(np.zeros((90, 160, 3), np.uint8))
    with pytest.raises(RuntimeError, match="9 frames written, 10 expected"):
        writer.commit()
    assert not os.path.exists(path)
    assert [n for n in os.listdir(tmp_path)] == []


def test_prores_mov_for_editing_gets_uncompressed_audio(ntsc_film, tmp_path):
    info = media.probe(ntsc_film)
    fmt = video_out.output_format(tmp_path / "edit.mov")
    paths, _, segs = _encode_segments(info, tmp_path, fmt, info.segments(1.0))
    result = video_out.join(paths, segs, tmp_path / "edit.mov", fmt, info)
    out = media.probe(tmp_path / "edit.mov")
    assert out.video_codec == "prores" and out.fps == Fraction(24000, 1001) and out.num_frames == info.num_frames
    assert result["audio"] == "reencode" and out.audio_codec == "pcm_s16le"  # Vorbis has no place in a mov


def _first_time(path, stream):
    import subprocess
    from pipelines.media import ffmpeg_exe
    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-copyts", "-i", str(path), "-map", f"0:{stream}:0", "-c",
                          "copy", "-f", "framecrc", "-"], capture_output=True, text=True, check=True).stdout
    tb = Fraction(next(l for l in out.splitlines() if l.startswith("#tb 0:")).split(":", 1)[1].strip())
    return min(int(l.split(",")[2]) for l in out.splitlines() if l and not l.startswith("#")) * tb


def test_audio_stays_in_sync_when_the_video_starts_late(tmp_path):
    """A source whose picture starts 0.5 s after its sound keeps that offset in the output."""
    import subprocess
    from pipelines.media import ffmpeg_exe
    source = tmp_path / "late.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-itsoffset", "0.5", "-f", "lavfi", "-i",
                    "testsrc2=size=96x64:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                    "-t", "2", "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(source)], check=True)
    info = media.probe(source)
    fmt = video_out.output_format(tmp_path / "out.mp4", preset="ultrafast")
    folder = tmp_path / "parts"
    folder.mkdir()
    paths, _, segs = _encode_segments(info, folder, fmt, info.segments(0.5))
    video_out.join(paths, segs, tmp_path / "out.mp4", fmt, info)
    offset = _first_time(source, "v") - _first_time(source, "a")
    assert offset > Fraction(1, 2)
    assert _first_time(tmp_path / "out.mp4", "v") - _first_time(tmp_path / "out.mp4", "a") == offset
