"""Films in: probe a film and decode exact frames with the ffmpeg binary that imageio-ffmpeg ships.

``probe`` demuxes the video stream without decoding it (``-c copy -f framecrc``: thousands of times real
time) to learn every frame's presentation timestamp. A frame's index is its rank in that sorted list, so a
segment of a film can be decoded on its own (``read_frames(start=, stop=)``) and still give every frame its
true index and timestamp: the decoder seeks just before the segment's first frame and ``showinfo`` reports
the timestamp of each frame it emits, which is looked up in the probe's list.

Frames come out of ffmpeg already scaled (``geometry.ffmpeg_filter``), as raw RGB on a pipe: memory is
one frame at a time whatever the film's length.
"""
import bisect
import dataclasses
import os
import queue
import re
import subprocess
import threading
from fractions import Fraction

import numpy as np

from pipelines import geometry
from pipelines.errors import CadlError
from pipelines.synthetic import ffmpeg_exe

FILM_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts",
                   ".wmv", ".flv", ".ogv", ".3gp", ".gif")

# Rates that films really use; a measured rate within 0.1% of one of them is taken to be it, so a
# Matroska file's millisecond timestamps still give 24000/1001 rather than 23.98.
_STANDARD_RATES = [Fraction(r) for r in ("24000/1001", "30000/1001", "60000/1001", "120000/1001",
                                          "12", "15", "24", "25", "30", "48", "50", "60", "90", "100",
                                          "120")]


class MediaError(CadlError):
    """A film that cannot be read; the message starts with the file's path."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int                  # stored size of the picture, pixels
    height: int
    time_base: Fraction         # seconds per pts unit of the video stream
    pts: tuple                  # every frame's presentation timestamp, sorted, in time_base units
    fps: Fraction               # exact nominal rate (24000/1001 stays 24000/1001)
    vfr: bool                   # frame durations vary: keep each frame's own timestamp
    duration: float             # seconds from the first frame's start to the last frame's end
    video_codec: str
    audio_codec: str | None     # None when the film has no audio stream
    size_bytes: int
    mtime: float

    @property
    def num_frames(self):
        return len(self.pts)

    @property
    def has_audio(self):
        return self.audio_codec is not None

    def timestamp(self, index):
        """Seconds from the film's first frame to frame ``index``."""
        return float((self.pts[index] - self.pts[0]) * self.time_base)

    def segments(self, seconds=10.0):
        """Split the film into [start, stop) frame ranges of about ``seconds`` each (at least one frame)."""
        n = self.num_frames
        if n == 0:
            return []
        step = max(1, int(self.time_base.denominator * seconds / self.time_base.numerator))
        bounds, t = [0], self.pts[0] + step
        while True:
            i = bisect.bisect_left(self.pts, t, lo=bounds[-1] + 1)
            if i >= n:
                break
            bounds.append(i)
            t = self.pts[i] + step
        bounds.append(n)
        return list(zip(bounds[:-1], bounds[1:]))


def _run(cmd):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _last_error_line(stderr, path):
    """The most specific thing ffmpeg said went wrong, e.g. "moov atom not found"."""
    lines = [re.sub(r"^\[[^]]*\]\s*", "", l.strip()) for l in stderr.decode(errors="replace").splitlines()]
    lines = [l for l in lines if l and not l.startswith("Error opening input file")]
    for line in lines:
        if not line.startswith(("Error opening input", "Input #", "Stream", "Duration", "Metadata")):
            return line
    return lines[-1].split(": ", 1)[-1] if lines else "ffmpeg could not read it"


def probe(path):
    """Read a film's stream facts and every frame timestamp. Raises ``MediaError`` naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    stat = os.stat(path)
    if stat.st_size == 0:
        raise MediaError(f"{path}: empty file")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-copyts", "-i", path, "-map", "0:v:0",
           "-c", "copy", "-f", "framecrc", "-"]
    proc = _run(cmd)
    err = proc.stderr.decode(errors="replace")
    video = re.search(r"Stream #0:\d+[^:]*: Video: (\w+).*?, (\d{2,5})x(\d{2,5})", err)
    if proc.returncode != 0 and not video:
        raise MediaError(f"{path}: not a readable film ({_last_error_line(proc.stderr, path)})")
    if not video:
        raise MediaError(f"{path}: no video stream")
    audio = re.search(r"Stream #0:\d+[^:]*: Audio: (\w+)", err)
    tb, pts, durations = None, [], []
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("#tb 0:"):
            tb = Fraction(line.split(":", 1)[1].strip())
        elif line and not line.startswith("#"):
            fields = [f.strip() for f in line.split(",")]
            if len(fields) >= 4 and fields[0] == "0" and fields[2].lstrip("-").isdigit():
                pts.append(int(fields[2]))
                durations.append(int(fields[3]) if fields[3].isdigit() else 0)
    if tb is None or not pts:
        raise MediaError(f"{path}: no video frames")
    order = sorted(range(len(pts)), key=pts.__getitem__)
    pts = [pts[i] for i in order]
    durations = [durations[i] for i in order]
    fps, vfr = _frame_rate(pts, tb)
    last = durations[-1] if durations[-1] > 0 else (1 / (fps * tb) if fps else 0)
    duration = float((pts[-1] - pts[0] + last) * tb)
    return VideoInfo(path=path, width=int(video.group(2)), height=int(video.group(3)), time_base=tb,
                     pts=tuple(pts), fps=fps, vfr=vfr, duration=duration, video_codec=video.group(1),
                     audio_codec=audio.group(1) if audio else None, size_bytes=stat.st_size,
                     mtime=stat.st_mtime)


def _frame_rate(pts, tb):
    """(exact nominal rate, variable?) from sorted timestamps."""
    if len(pts) < 2:
        return Fraction(25), False
    deltas = np.diff(np.asarray(pts, np.int64))
    lo, hi = int(deltas.min()), int(deltas.max())
    if lo <= 0:
        lo = 1
    # Container rounding makes CFR deltas differ by one tick (41/42 ms); real VFR differs by more.
    vfr = hi - lo > 1 and hi > 1.2 * lo
    if lo == hi:
        rate = 1 / (lo * tb)
    else:
        rate = Fraction(len(pts) - 1) / ((pts[-1] - pts[0]) * tb)
    for standard in _STANDARD_RATES:
        if abs(rate - standard) <= standard / 1000:
            return standard, vfr
    return rate.limit_denominator(1001), vfr


class _StderrReader(threading.Thread):
    """Collects ``showinfo``'s pts lines (in order) and keeps the last lines of other output."""

    _PTS = re.compile(r"Parsed_showinfo.*?\bn:\s*\d+\s+pts:\s*(-?\d+)")

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.pts, self.tail = stream, queue.Queue(), []

    def run(self):
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace")
            match = self._PTS.search(line)
            if match:
                self.pts.put(int(match.group(1)))
            elif "Parsed_showinfo" not in line:
                self.tail = (self.tail + [line.strip()])[-5:]
        self.pts.put(None)


def read_frames(path, size=None, fit="crop", start=0, stop=None, info=None, threads=0):
    """Yield ``(index, timestamp_seconds, frame)`` for frames ``start <= index < stop`` of a film.

    ``frame`` is an (H, W, 3) uint8 RGB array at ``size`` (H, W) fitted with ``fit``, or at the stored
    size when ``size`` is None. Frames that a damaged film cannot give are missing from the output
    (their indices are skipped); when nothing at all could be decoded, ``MediaError`` is raised.
    ``threads`` is ffmpeg's decoder thread count (0: ffmpeg's choice).
    """
    info = info or probe(path)
    stop = info.num_frames if stop is None else min(stop, info.num_frames)
    if start >= stop:
        return
    h, w = size if size is not None else (info.height, info.width)
    index_of = {p: i for i, p in enumerate(info.pts[start:stop], start)}
    # checksum=0: showinfo would otherwise checksum every full-size frame (~30% of ffmpeg's CPU time here).
    chain = "showinfo=checksum=0" + ("," + geometry.ffmpeg_filter(size, fit) if size is not None else "")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "info", "-copyts",
           "-threads", str(threads)]
    if start > 0:
        # Accurate seek: ffmpeg decodes from the keyframe before and drops frames earlier than this
        # point, which lies half a frame before the segment's first frame.
        seek = (info.pts[start] - Fraction(info.pts[start] - info.pts[start - 1], 2)) * info.time_base
        cmd += ["-ss", f"{float(seek):.6f}"]
    cmd += ["-i", info.path, "-map", "0:v:0", "-vf", chain + ",format=rgb24", "-fps_mode", "passthrough",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            bufsize=0)
    log = _StderrReader(proc.stderr)
    log.start()
    frame_bytes = h * w * 3
    emitted = 0
    try:
        while True:
            data = _read_exact(proc.stdout, frame_bytes)
            if data is None:
                break
            pts = log.pts.get(timeout=60)
            if pts is None:
                break
            index = index_of.get(pts)
            if index is None:
                if pts > info.pts[stop - 1]:
                    break  # past the segment
                continue   # before the segment (the seek's keyframe run-in) or not in the probe
            yield index, info.timestamp(index), np.frombuffer(data, np.uint8).reshape(h, w, 3)
            emitted += 1
            if index == stop - 1:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.join(timeout=5)
    if emitted == 0:
        raise MediaError(f"{info.path}: no frame could be decoded in frames {start}..{stop - 1} "
                         f"({' '.join(log.tail[-1:]) or 'ffmpeg failed'})")


def _read_exact(stream, n):
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
