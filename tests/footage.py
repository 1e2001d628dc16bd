"""Films the way users have them, each made in a few lines with the ffmpeg that imageio-ffmpeg ships (one
sample per quirk, as FFmpeg's FATE suite does), and what ffmpeg itself decodes from them.

``make(kind, folder)`` writes the kind's file (once per folder) and returns its path; ``KINDS`` names each
kind with the facts a player shows for it (display size, rotation, fields, audio tracks).
"""
import dataclasses
import os
import random
import subprocess
from fractions import Fraction

from pipelines.media import ffmpeg_exe

_Q = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]


def _video(size="160x120", rate="25"):
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"]


def _tone(frequency=440):
    return ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=44100"]


@dataclasses.dataclass(frozen=True)
class Kind:
    what: str
    args: tuple                 # ffmpeg arguments before the output path (inputs, codecs, -t)
    ext: str
    display: tuple              # (W, H) a player shows, square pixels
    aspect: Fraction            # display aspect ratio
    audio_tracks: int = 0
    rotation: int = 0
    interlaced: bool = False
    derive: str = None          # another kind this one is made from (by copying or damaging it)


KINDS = {
    "avi_no_pts": Kind("MPEG-4 ASP with B-frames and AC-3 in AVI: packets carry no pts",
                       tuple(_video() + _tone() + ["-t", "2", "-c:v", "mpeg4", "-bf", "2", "-q:v", "4",
                                                   "-c:a", "ac3"]), ".avi", (160, 120), Fraction(4, 3), 1),
    "avi_xvid": Kind("XviD (libxvid) with B-frames at 24000/1001 in AVI",
                     tuple(_video(rate="24000/1001") + _tone() + ["-t", "2", "-c:v", "libxvid", "-bf", "2",
                                                                  "-c:a", "mp3"]),
                     ".avi", (160, 120), Fraction(4, 3), 1),
    "avi_dropped": Kind("24000/1001 AVI with one dropped frame (a hole in a constant-rate container)",
                        tuple(_video(rate="24000/1001") + _tone() + [
                            "-t", "2", "-vf", r"select='not(eq(n\,20))'", "-fps_mode", "passthrough",
                            "-c:v", "mpeg4", "-bf", "2", "-c:a", "mp3"]), ".avi", (160, 120), Fraction(4, 3), 1),
    "phone_rotated": Kind("phone video: H.264 stored 160x120 with a 90 degree display matrix",
                          ("-display_rotation", "90", "-i", "{plain}", "-c", "copy"), ".mp4", (120, 160),
                          Fraction(3, 4), 1, rotation=90, derive="plain"),
    "anamorphic": Kind("DVD-style 720x480 at SAR 32:27 (shown 16:9)",
                       tuple(_video("720x480", "30000/1001") + _tone() + [
                           "-t", "1", "-vf", "setsar=32/27", "-c:v", "libx264", "-preset", "ultrafast",
                           "-c:a", "aac"]), ".mp4", (853, 480), Fraction(16, 9), 1),
    "interlaced_ts": Kind("interlaced MPEG-2 (top field first) in MPEG-TS starting at 10 s, MP2 audio",
                          tuple(_video("352x288", "50") + _tone() + [
                              "-t", "2", "-vf", "tinterlace=interleave_top,setfield=tff", "-c:v", "mpeg2video",
                              "-flags", "+ilme+ildct", "-alternate_scan", "1", "-q:v", "4", "-c:a", "mp2",
                              "-output_ts_offset", "10"]), ".ts", (352, 288), Fraction(11, 9), 1, interlaced=True),
    "vp9_10bit_opus": Kind("VP9 profile 2 (yuv420p10le) WebM with Opus audio",
                           tuple(_video() + _tone() + ["-t", "1", "-pix_fmt", "yuv420p10le", "-c:v", "libvpx-vp9",
                                                       "-profile:v", "2", "-b:v", "500k", "-deadline", "realtime",
                                                       "-cpu-used", "8", "-c:a", "libopus"]),
                           ".webm", (160, 120), Fraction(4, 3), 1),
    "hevc_10bit": Kind("HEVC Main10 in MP4 with AAC",
                       tuple(_video() + _tone() + ["-t", "1", "-pix_fmt", "yuv420p10le", "-c:v", "libx265",
                                                   "-preset", "ultrafast", "-x265-params", "log-level=error",
                                                   "-c:a", "aac"]), ".mp4", (160, 120), Fraction(4, 3), 1),
    "hevc_edit_list": Kind("HEVC in MP4 cut mid-GOP by stream copy: an edit list hides the first frames",
                           ("-ss", "0.5", "-i", "{hevc_10bit}", "-c", "copy"), ".mp4", (160, 120), Fraction(4, 3), 1,
                           derive="hevc_10bit"),
    "yuv444": Kind("H.264 4:4:4", tuple(_video() + ["-t", "1", "-pix_fmt", "yuv444p", "-c:v", "libx264",
                                                   "-preset", "ultrafast"]), ".mp4", (160, 120), Fraction(4, 3)),
    "odd_size": Kind("321x181 (odd sides) H.264 4:4:4 in Matroska",
                     tuple(_video("320x180") + ["-t", "1", "-vf", "scale=321:181,setsar=1", "-pix_fmt", "yuv444p",
                                                "-c:v", "libx264", "-preset", "ultrafast"]), ".mkv", (321, 181),
                     Fraction(321, 181)),
    "mkv_bframes": Kind("Matroska, H.264 with 3 B-frames, Vorbis audio",
                        tuple(_video() + _tone() + ["-t", "2", "-c:v", "libx264", "-bf", "3", "-preset", "fast",
                                                    "-c:a", "libvorbis"]), ".mkv", (160, 120), Fraction(4, 3), 1),
    "many_streams": Kind("two audio tracks, a subtitle track and a timecode data track in MP4",
                         tuple(_video() + _tone(440) + _tone(880) + ["-i", "{subtitles}", "-t", "2", "-map", "0",
                                                                     "-map", "1", "-map", "2", "-map", "3",
                                                                     "-c:v", "libx264", "-preset", "ultrafast",
                                                                     "-c:a", "aac", "-c:s", "mov_text",
                                                                     "-timecode", "00:00:00:00"]),
                         ".mp4", (160, 120), Fraction(4, 3), 2),
    "one_frame": Kind("a film of one frame", tuple(_video() + ["-frames:v", "1", "-c:v", "libx264"]), ".mp4",
                      (160, 120), Fraction(4, 3)),
    "damaged_middle": Kind("MPEG-2 in MPEG-TS with the video packets of its middle tenth overwritten",
                           (), ".ts", (160, 120), Fraction(4, 3), 1, derive="ts_source"),
}

# Made only to derive other kinds from.
_SOURCES = {
    "plain": (tuple(_video() + _tone() + ["-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]),
              ".mp4"),
    "ts_source": (tuple(_video() + _tone() + ["-t", "4", "-c:v", "mpeg2video", "-g", "12", "-c:a", "mp2"]), ".ts"),
}


def make(kind, folder):
    """The file of ``kind`` in ``folder`` (made on first use)."""
    folder = os.fspath(folder)
    if kind in _SOURCES:
        args, ext = _SOURCES[kind]
    elif kind == "subtitles":
        path = os.path.join(folder, "subtitles.srt")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:01,000 --> 00:00:02,000\nworld\n")
        return path
    else:
        args, ext = KINDS[kind].args, KINDS[kind].ext
    path = os.path.join(folder, kind + ext)
    if os.path.exists(path):
        return path
    if kind == "damaged_middle":
        damage_ts(make("ts_source", folder), path)
        return path
    args = [a.format(**{k: make(k, folder) for k in ("plain", "hevc_10bit", "subtitles") if "{" + k + "}" in a})
            for a in args]
    tmp = path + ".partial" + ext
    subprocess.run([ffmpeg_exe()] + _Q + args + [tmp], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    os.replace(tmp, path)
    return path


def damage_ts(source, path, seed=3, fraction=(0.45, 0.55)):
    """Overwrite the payload of the video's TS packets in a middle stretch of ``source`` with noise."""
    data = bytearray(open(source, "rb").read())
    rng = random.Random(seed)
    lo, hi = (int(len(data) * f) // 188 * 188 for f in fraction)
    for p in range(lo, hi, 188):
        if data[p] == 0x47 and ((data[p + 1] & 0x1F) << 8 | data[p + 2]) == 0x100:
            data[p + 4:p + 188] = bytes(rng.randrange(256) for _ in range(184))
    with open(path, "wb") as f:
        f.write(data)


def _frames(args):
    """(time base, [fields of each packet or frame line]) of an ffmpeg command writing framecrc/framemd5."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"] + args + ["-"],
                         capture_output=True, check=True).stdout.decode()
    tb, rows = Fraction(1), []
    for line in out.splitlines():
        if line.startswith("#tb 0:"):
            tb = Fraction(line.split(":", 1)[1].strip())
        elif line and not line.startswith("#"):
            rows.append([f.strip() for f in line.split(",")])
    return tb, rows


def decoded(path):
    """What ffmpeg itself decodes from the first video stream: (frame count, [pts in seconds, ...]), with
    ffmpeg's own timestamps (framemd5 after decoding, every frame passed through)."""
    tb, rows = _frames(["-i", path, "-map", "0:V:0", "-fps_mode", "passthrough", "-f", "framemd5"])
    return len(rows), [float(int(r[2]) * tb) for r in rows]


def corrupt(data, rng):
    """One seeded random damage of a container's bytes: flips, a zeroed run, a cut, or both."""
    data = bytearray(data)
    how = rng.choice(("flips", "run", "truncate", "flips+truncate", "header"))
    if "flips" in how:
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    if how == "run":
        a, n = rng.randrange(len(data)), rng.randint(16, 4096)
        data[a:a + n] = bytes(len(data[a:a + n]))
    if how == "header":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(min(len(data), 512))] = rng.randrange(256)
    if "truncate" in how:
        data = data[:rng.randint(1, len(data))]
    return bytes(data), how


def first_time(path, stream):
    """Seconds of the first shown packet of ``stream`` ("V:0", "a:0") in the file's own timeline."""
    tb, rows = _frames(["-copyts", "-fflags", "+genpts", "-i", path, "-map", f"0:{stream}", "-c", "copy",
                        "-f", "framecrc"])
    times = [int(r[2]) * tb for r in rows
             if not next((int(f[2:], 16) for f in r[6:] if f.startswith("F=0x")), 1) & 0x4
             and int(r[2]) != -(2 ** 63)]
    return float(min(times))
