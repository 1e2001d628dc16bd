"""The ffmpeg layer: exact frame counts, indices, timestamps and rates, segments, bad files."""
from fractions import Fraction

import numpy as np
import pytest

from pipelines import media
from pipelines.synthetic import make_film


def test_probe_counts_every_frame_and_keeps_exact_rate(short_film, ntsc_film):
    info = media.probe(short_film)
    assert (info.width, info.height, info.num_frames) == (160, 90, 75)
    assert info.fps == Fraction(25) and not info.vfr
    assert info.duration == pytest.approx(3.0, abs=1e-3)
    assert info.has_audio
    ntsc = media.probe(ntsc_film)
    assert ntsc.fps == Fraction(24000, 1001)  # Matroska stores milliseconds; the rate stays exact
    assert ntsc.num_frames == 48


def test_silent_film_has_no_audio(silent_film):
    assert media.probe(silent_film).audio_codec is None


def test_read_frames_gives_indices_and_timestamps_in_order(short_film):
    frames = list(media.read_frames(short_film, size=(32, 48)))
    assert [i for i, _, _ in frames] == list(range(75))
    assert [t for _, t, _ in frames] == pytest.approx([i / 25 for i in range(75)], abs=1e-6)
    assert all(f.shape == (32, 48, 3) and f.dtype == np.uint8 for _, _, f in frames)


@pytest.mark.parametrize("seconds", [0.37, 1.0])
def test_segments_together_equal_the_whole_film(ntsc_film, seconds):
    info = media.probe(ntsc_film)
    whole = [(i, t, f.tobytes()) for i, t, f in media.read_frames(ntsc_film, (24, 40), info=info)]
    parts = []
    for start, stop in info.segments(seconds):
        parts += [(i, t, f.tobytes()) for i, t, f in
                  media.read_frames(ntsc_film, (24, 40), start=start, stop=stop, info=info)]
    assert len(info.segments(seconds)) > 1
    assert parts == whole  # every frame once, same pixels, same index and timestamp


def test_native_size_and_variable_frame_rate(film_dir):
    # Frames 30.. are pushed half a second later: a real VFR film.
    path = make_film(film_dir / "vfr.mkv", "testsrc2", seconds=2, size=(64, 48),
                     extra_video_args=["-vf", "setpts='PTS+if(gte(N,30),0.5/TB,0)'"])
    info = media.probe(path)
    assert info.vfr
    frames = list(media.read_frames(path, info=info))
    assert frames[0][2].shape == (48, 64, 3)
    stamps = [t for _, t, _ in frames]
    gaps = np.diff(stamps)
    assert gaps.max() > 0.4 and gaps.min() == pytest.approx(0.04, abs=0.002)
    assert stamps == [info.timestamp(i) for i, _, _ in frames]


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"this is not a film\n" * 50, "not a readable film"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(media.MediaError, match=reason) as err:
        media.probe(path)
    assert str(err.value).startswith(str(path))
    assert "\n" not in str(err.value)


def test_missing_and_truncated_files(tmp_path, short_film):
    with pytest.raises(media.MediaError, match="no such file"):
        media.probe(tmp_path / "nope.mp4")
    data = open(short_film, "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # mp4 index lost with the tail
    with pytest.raises(media.MediaError, match="moov atom not found"):
        media.probe(tmp_path / "cut.mp4")


def test_truncated_stream_gives_the_frames_it_has(tmp_path):
    full = make_film(tmp_path / "full.mkv", "testsrc2", seconds=3, size=(64, 48), audio=False)
    data = open(full, "rb").read()
    (tmp_path / "cut.mkv").write_bytes(data[: int(len(data) * 0.6)])
    frames = list(media.read_frames(tmp_path / "cut.mkv", (16, 16)))
    assert 10 < len(frames) < 75
    assert [i for i, _, _ in frames] == list(range(len(frames)))
