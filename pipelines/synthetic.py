"""Films made on the spot with the ffmpeg binary that imageio-ffmpeg ships: no downloads, real codecs.

Used by ``cadl demo``, the tests and the benchmarks. lavfi sources give structure and motion
(``testsrc2``, ``mandelbrot``, ``life``, ``smptehdbars``...) and ``sine`` gives an audio track.
"""
import os
import subprocess

from pipelines import atomic
from pipelines.media import ffmpeg_exe

# Video codec per container, chosen so every file plays everywhere and encodes quickly.
_VIDEO_CODEC = {".mp4": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
                ".mkv": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
                ".mov": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
                ".avi": ["-c:v", "mpeg4", "-q:v", "3"],
                ".webm": ["-c:v", "libvpx", "-b:v", "1M", "-deadline", "realtime", "-cpu-used", "8"]}
_AUDIO_CODEC = {".mp4": ["-c:a", "aac"], ".mkv": ["-c:a", "libvorbis"], ".mov": ["-c:a", "aac"],
                ".avi": ["-c:a", "mp3"], ".webm": ["-c:a", "libvorbis"]}


def make_film(path, source="testsrc2", seconds=4.0, size=(320, 180), rate="25", audio=True,
              frequency=440, extra_video_args=()):
    """Write a film of ``seconds`` from a lavfi ``source`` at ``size`` (width, height) and ``rate``
    (an ffmpeg rate: "25", "24000/1001", ...), with a sine tone when ``audio``. Returns ``path``.

    The file appears atomically; an existing one is replaced.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    w, h = size
    if source == "mandelbrot":
        video = f"mandelbrot=size={w}x{h}:rate={rate}"
    elif source == "life":
        video = f"life=size={w}x{h}:rate={rate}:mold=10:ratio=0.1:death_color=#C83232:life_color=#00ff00,format=yuv420p"
    else:
        video = f"{source}=size={w}x{h}:rate={rate}"
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", video]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=44100"]
    cmd += ["-t", f"{seconds}", "-map", "0:v"]
    if audio:
        cmd += ["-map", "1:a"] + _AUDIO_CODEC.get(ext, ["-c:a", "aac"])
    cmd += list(_VIDEO_CODEC.get(ext, [])) + list(extra_video_args)
    with atomic.atomic_path(path) as tmp:
        subprocess.run(cmd + [tmp], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return path
