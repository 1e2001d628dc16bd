"""Real footage: each kind of film users bring (tests/footage.py) is probed and decoded the way ffmpeg itself
decodes it; damaged, stalled and fuzzed films end in frames or one line, never a hang."""
import faulthandler
import json
import os
import random
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import footage
from pipelines import media
from pipelines.extract_decode import validation_blocks

KINDS = sorted(footage.KINDS)


@pytest.fixture(scope="session")
def kinds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kinds")


@pytest.mark.parametrize("kind", KINDS)
def test_probe_and_frames_agree_with_what_ffmpeg_decodes(kind, kinds_dir):
    path = footage.make(kind, kinds_dir)
    expect = footage.KINDS[kind]
    info = media.probe(path)
    count, times = footage.decoded(path)
    frames = list(media.read_frames(path, info=info))
    assert info.num_frames == count == len(frames)
    assert [i for i, _, _ in frames] == list(range(count))
    # Each frame's own time, from the first frame, as ffmpeg stamps it.
    assert [t for _, t, _ in frames] == pytest.approx([t - times[0] for t in times], abs=1e-3)
    assert info.duration == pytest.approx(times[-1] - times[0] + 1 / float(info.fps), abs=1.5 / float(info.fps))
    # Upright, square pixels, the display aspect a player shows.
    assert (info.width, info.height) == expect.display
    assert all(f.shape == (expect.display[1], expect.display[0], 3) for _, _, f in frames)
    assert info.display_aspect == expect.aspect
    assert info.rotation == expect.rotation and info.interlaced == expect.interlaced
    assert len(info.audio_tracks) == expect.audio_tracks
    assert 0.5 <= float(info.fps) <= 1000


@pytest.mark.parametrize("kind", ["avi_no_pts", "avi_dropped", "hevc_edit_list", "interlaced_ts", "mkv_bframes"])
def test_decoding_to_learn_the_timestamps_gives_the_same_picture(kind, kinds_dir):
    path = footage.make(kind, kinds_dir)
    demuxed, decoded = media.probe(path), media.probe(path, decode=True)
    assert decoded.probe_method == "decode"
    assert [demuxed.timestamp(i) for i in range(demuxed.num_frames)] == \
        pytest.approx([decoded.timestamp(i) for i in range(decoded.num_frames)], abs=1e-6)
    assert (decoded.fps, decoded.vfr) == (demuxed.fps, demuxed.vfr)


@pytest.mark.parametrize("kind", ["avi_no_pts", "avi_xvid", "interlaced_ts", "hevc_edit_list", "damaged_middle"])
def test_segments_decoded_apart_are_the_whole_film(kind, kinds_dir):
    path = footage.make(kind, kinds_dir)
    info = media.probe(path)
    whole = [(i, t, f.tobytes()) for i, t, f in media.read_frames(path, (24, 32), info=info)]
    parts = []
    for start, stop in info.segments(0.15):
        parts += [(i, t, f.tobytes()) for i, t, f in media.read_frames(path, (24, 32), start=start, stop=stop,
                                                                        info=info)]
    assert len(info.segments(0.15)) > 2
    assert parts == whole  # every frame once, same pixels (the deinterlacer sees the frame before too)


def test_avi_without_pts_no_longer_lasts_forever(kinds_dir):
    info = media.probe(footage.make("avi_no_pts", kinds_dir))
    assert info.num_frames == 50 and info.fps == 25 and not info.vfr
    assert info.duration == pytest.approx(2.0, abs=1e-6)
    # What used to build one dict entry per 4 s of 3.8e17 s: blocks come from the frames' own times.
    timestamps = [info.timestamp(i) for i in range(info.num_frames)]
    assert validation_blocks("x.avi", 3.8e17, 4.0, 0.05, timestamps) <= {0}


def test_a_dropped_avi_frame_keeps_the_nominal_rate_and_each_frame_time(kinds_dir):
    info = media.probe(footage.make("avi_dropped", kinds_dir))
    assert info.fps == media.Fraction(24000, 1001)  # not 47 frames over 48 frame times
    assert info.vfr and info.num_frames == 47
    (start, end, missing), = info.gaps
    assert missing == 1 and end - start == pytest.approx(2 * 1001 / 24000, abs=1e-6)


def test_rotated_frames_come_out_upright(kinds_dir):
    rotated = footage.make("phone_rotated", kinds_dir)
    plain = footage.make("plain", kinds_dir)
    a = next(media.read_frames(rotated))[2].astype(int)
    b = next(media.read_frames(plain))[2]
    # -display_rotation 90 is counter-clockwise: what is shown is the stored picture turned left.
    assert np.abs(a - np.rot90(b, 1)).mean() < 2


def test_anamorphic_pictures_are_resampled_to_square_pixels(kinds_dir):
    info = media.probe(footage.make("anamorphic", kinds_dir))
    assert (info.coded_width, info.coded_height, info.sar) == (720, 480, media.Fraction(32, 27))
    frame = next(media.read_frames(info.path, info=info))[2]
    assert frame.shape == (480, 853, 3)


def test_interlaced_film_is_deinterlaced_unless_fields_are_kept(kinds_dir):
    info = media.probe(footage.make("interlaced_ts", kinds_dir))
    assert info.field_order == "tt" and info.start_time == pytest.approx(11.4, abs=0.1)
    assert info.timestamp(0) == 0.0
    woven = next(media.read_frames(info.path, info=info, deinterlace="off"))[2].astype(float)
    smooth = next(media.read_frames(info.path, info=info))[2].astype(float)

    def combing(frame):  # how much neighbouring lines differ: fields of a moving picture comb
        return np.abs(np.diff(frame, axis=0)).mean()

    assert combing(smooth) < 0.8 * combing(woven)


def test_damage_in_the_middle_keeps_the_rest_and_says_where(kinds_dir):
    path = footage.make("damaged_middle", kinds_dir)
    info = media.probe(path)
    count, _ = footage.decoded(path)
    assert info.num_frames == count < 100
    assert sum(g[2] for g in info.gaps) == 100 - count
    start, end, _ = info.gaps[0]
    assert 1.0 < start < end < 3.0


def test_audio_only_and_subtitle_only_inputs_are_one_line(kinds_dir, tmp_path):
    audio = tmp_path / "song.m4a"
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "sine",
                    "-t", "1", str(audio)], check=True)
    with pytest.raises(media.MediaError, match="no video stream") as err:
        media.probe(audio)
    assert str(err.value).startswith(str(audio)) and "\n" not in str(err.value)


def _children():
    pid = os.getpid()
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return kids


def test_a_stalled_ffmpeg_is_stopped_and_reported(kinds_dir):
    path = footage.make("mkv_bframes", kinds_dir)
    info = media.probe(path)
    frames = media.read_frames(path, info=info, stall_seconds=1.5)
    next(frames)
    for pid in _children():  # freeze the decoder: its output stops moving
        os.kill(pid, signal.SIGSTOP)
    faulthandler.dump_traceback_later(120, exit=True)  # without the watchdog this would never return
    try:
        with pytest.raises(media.MediaError, match="stalled") as err:
            for _ in frames:
                pass
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert str(err.value).startswith(path)


def test_cadl_info_describes_each_film(kinds_dir, tmp_path):
    films = [footage.make(k, kinds_dir) for k in ("phone_rotated", "anamorphic", "interlaced_ts", "many_streams")]
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "info", "--json", *films], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    described = {os.path.basename(d["path"]): d for d in json.loads(proc.stdout)}
    assert described["phone_rotated.mp4"]["size"] == [120, 160] and described["phone_rotated.mp4"]["rotation"] == 90
    assert described["anamorphic.mp4"]["display_aspect"] == "16/9" and described["anamorphic.mp4"]["sar"] == "32/27"
    assert described["interlaced_ts.ts"]["field_order"] == "tt" and described["interlaced_ts.ts"]["interlaced"]
    assert [a["index"] for a in described["many_streams.mp4"]["audio_tracks"]] == [0, 1]
    assert all(d["usable"] and d["decode_check"]["failed"] == [] for d in described.values())
    text = subprocess.run([sys.executable, "-m", "jobs.cli", "info", films[0], str(tmp_path / "missing.mp4")],
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 1
    assert "shown 120x160" in text.stdout and "can extract and render it" in text.stdout
    assert "missing.mp4: no such file" in text.stderr and "Traceback" not in text.stderr


def fuzzed_films(folder, kinds_dir, count=200, seed=11):
    """``count`` seeded random corruptions of a few real containers, as files in ``folder``."""
    sources = [footage.make(k, kinds_dir) for k in ("avi_no_pts", "mkv_bframes", "interlaced_ts", "plain",
                                                     "vp9_10bit_opus")]
    rng = random.Random(seed)
    paths = []
    for n in range(count):
        source = sources[n % len(sources)]
        data, how = footage.corrupt(open(source, "rb").read(), rng)
        path = os.path.join(folder, f"fuzz-{n:03d}-{how.replace('+', '-')}{os.path.splitext(source)[1]}")
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths


def test_fuzzed_films_give_frames_or_one_line(kinds_dir, tmp_path):
    faulthandler.dump_traceback_later(900, exit=True)  # a hang fails the run instead of blocking it
    try:
        outcomes = {"frames": 0, "refused": 0}
        before = {t.ident for t in threading.enumerate()}  # earlier tests' threads (a Dask client's) are theirs
        for path in fuzzed_films(tmp_path, kinds_dir):
            try:
                info = media.probe(path, stall_seconds=20)
                got = [i for i, _, _ in media.read_frames(path, (16, 16), info=info, stall_seconds=20)]
                assert got == sorted(set(got)) and all(0 <= i < info.num_frames for i in got)
                outcomes["frames"] += 1
            except media.MediaError as e:
                message = str(e)
                assert message.startswith(path) and "\n" not in message, message
                outcomes["refused"] += 1
            left = [t.name for t in threading.enumerate() if t.ident not in before]
            assert not left, left  # no reader or watchdog threads left behind
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert outcomes["frames"] + outcomes["refused"] == 200
    assert outcomes["frames"] > 50 and outcomes["refused"] > 5, outcomes
