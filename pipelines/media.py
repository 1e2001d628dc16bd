"""Films in: probe a film and decode exact frames with the ffmpeg binary that imageio-ffmpeg ships.

``probe`` learns every frame's presentation timestamp. First by demuxing the video stream without decoding
it (``-c copy -f framecrc``: thousands of times real time), with ``+genpts`` so that containers which store
no presentation times (AVI: MPEG-4 ASP / XviD / DivX with B-frames) get them from the decode order, and
without the packets an edit list discards. Those timestamps are then checked against each other and against
the container's header (no missing or repeated stamps, no empty packets, a span that agrees with the stated
duration, a plausible rate); a film whose facts disagree is decoded once (``showinfo``) to learn them from
what the decoder really gives, and a film that still makes no sense is refused in one line. A frame's index
is its rank in the sorted list, so a segment of a film can be decoded on its own (``read_frames(start=,
stop=)``) and still give every frame its true index and timestamp: the decoder seeks just before the
segment's first frame and reports the timestamp of each frame it emits (``-stats_enc_pre``, one short
line per frame on a pipe of its own), which is looked up in the probe's list.

Frames come out upright and with square pixels whatever the file stores: ffmpeg applies a rotation
matrix (phone video) itself, ``normalize_filter`` resamples anamorphic pictures (DVD's 720x480 at SAR
32:27 becomes 853x480) and deinterlaces interlaced ones (``bwdif``, one frame per frame: the timestamps
stay the source's). ``VideoInfo.width``/``height`` are that upright, square-pixel size; the stored one is
``coded_width``/``coded_height``. They are then fitted (``geometry.ffmpeg_filter``) and leave as raw RGB on
a pipe: memory is one frame at a time whatever the film's length.

No input can hang a job: every ffmpeg process here runs under a ``Watchdog`` that kills it when its output
makes no progress for ``stall_seconds`` (default ``STALL_SECONDS``), which is reported as one line.
"""
import bisect
import collections
import contextlib
import dataclasses
import fcntl
import os
import queue
import re
import subprocess
import threading
import time
from fractions import Fraction

import imageio_ffmpeg
import numpy as np

from pipelines import geometry
from pipelines.errors import CadlError

FILM_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts",
                   ".wmv", ".flv", ".ogv", ".3gp", ".gif", ".m2ts", ".vob", ".divx", ".xvid", ".asf")
# Still pictures: what OpenCV (extraction) and Pillow (the course's loaders) both decode. A GIF is a film.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def ffmpeg_exe():
    """The ffmpeg binary bundled with imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    return imageio_ffmpeg.get_ffmpeg_exe()

# Rates that films really use; a measured rate within 0.1% of one of them is taken to be it, so a
# Matroska file's millisecond timestamps still give 24000/1001 rather than 23.98.
_STANDARD_RATES = [Fraction(r) for r in ("24000/1001", "30000/1001", "60000/1001", "120000/1001",
                                          "12", "15", "24", "25", "30", "48", "50", "60", "90", "100",
                                          "120")]
STALL_SECONDS = 120.0      # an ffmpeg process whose output makes no progress this long is stopped
NOPTS = -(2 ** 63)         # AV_NOPTS_VALUE, as framecrc prints a missing timestamp
_PKT_KEY, _PKT_DISCARD = 0x1, 0x4
_MAX_RATE, _MIN_RATE = Fraction(1000), Fraction(1, 600)   # plausible frames per second
DEINTERLACE = ("auto", "off")  # auto: deinterlace what the stream says is interlaced; off: keep fields


class MediaError(CadlError):
    """A film that cannot be read; the message starts with the file's path."""


@dataclasses.dataclass(frozen=True)
class AudioTrack:
    index: int                  # among the file's audio streams (what ``--audio-track`` counts)
    codec: str
    sample_rate: int | None
    channels: str | None        # ffmpeg's layout name: mono, stereo, 5.1, ...
    language: str | None


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int                  # the picture as it is shown: upright, square pixels
    height: int
    time_base: Fraction         # seconds per pts unit of the video stream
    pts: tuple                  # every frame's presentation timestamp, sorted, in time_base units
    fps: Fraction               # exact nominal rate (24000/1001 stays 24000/1001)
    vfr: bool                   # frame durations vary (or frames were dropped): keep each frame's own time
    duration: float             # seconds from the first frame's start to the last frame's end
    video_codec: str
    audio_codec: str | None     # the first audio track's codec; None when the film has no audio
    size_bytes: int
    mtime: float
    coded_width: int = 0        # the picture as stored (0: same as width/height)
    coded_height: int = 0
    sar: Fraction = Fraction(1)  # stored pixel aspect ratio
    rotation: int = 0           # degrees (counter-clockwise) the stored picture is turned to be shown
    field_order: str = "progressive"  # progressive | tt | bb | tb | bt | unknown
    pix_fmt: str = ""
    bit_depth: int = 8
    container: str = ""
    start_time: float = 0.0     # the first frame's presentation time in the file, seconds
    container_start: float = 0.0  # the container's start time (its earliest stream's), what -ss counts from
    keyframes: tuple = ()       # frame indices of the keyframes (presentation order)
    audio_tracks: tuple = ()    # AudioTrack, in file order
    probe_method: str = "demux"  # demux | decode: how the timestamps were learned
    gaps: tuple = ()            # (from s, to s, frames missing) where a constant-rate film's timestamps jump

    @property
    def num_frames(self):
        return len(self.pts)

    @property
    def has_audio(self):
        return self.audio_codec is not None

    @property
    def interlaced(self):
        return self.field_order in ("tt", "bb", "tb", "bt")

    @property
    def display_aspect(self):
        """Width / height as a player shows the picture (exact, from the stored size and pixel aspect)."""
        if not (self.coded_width and self.coded_height):
            return Fraction(self.width, self.height)
        aspect = Fraction(self.coded_width, self.coded_height) * self.sar
        return 1 / aspect if self.rotation % 180 == 90 else aspect

    def timestamp(self, index):
        """Seconds from the film's first frame to frame ``index``."""
        return float((self.pts[index] - self.pts[0]) * self.time_base)

    def frame_ticks(self):
        """One nominal frame in time-base ticks."""
        return max(1, round(1 / (self.fps * self.time_base)))

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


# ---- running ffmpeg without ever hanging ----

class Watchdog:
    """Kills ``proc`` when ``touch()`` has not been called for ``seconds`` (its output stopped moving)."""

    def __init__(self, proc, seconds):
        self.proc, self.seconds = proc, float(seconds)
        self.stalled, self._last, self._done = False, time.monotonic(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="ffmpeg-watchdog")
        self._thread.start()

    def touch(self):
        self._last = time.monotonic()

    def _watch(self):
        while not self._done.wait(min(1.0, self.seconds / 4)):
            if time.monotonic() - self._last > self.seconds:
                self.stalled = True
                if self.proc.poll() is None:
                    self.proc.kill()
                return

    def stop(self):
        self._done.set()
        if self._thread is not threading.current_thread():
            self._thread.join()  # at once: the wait it sleeps in returns when _done is set


class _StderrReader(threading.Thread):
    """Reads an ffmpeg process's stderr: its first lines (the input's header), ``showinfo``'s frames in
    order (pts, key flag), and the last lines of anything else. Memory stays bounded on any input."""

    _FRAME = re.compile(r"Parsed_showinfo.*?\bn:\s*\d+\s+pts:\s*(-?\d+).*?\biskey:\s*(\d)")
    HEAD_LINES, TAIL_LINES = 2000, 8   # the header of a file with many streams and tags fits

    def __init__(self, stream, watchdog=None, frames=True):
        super().__init__(daemon=True)
        self.stream, self.watchdog, self.want_frames = stream, watchdog, frames
        self.frames, self.head, self.tail = queue.Queue(), [], collections.deque(maxlen=self.TAIL_LINES)

    def run(self):
        try:
            for raw in iter(self.stream.readline, b""):
                line = raw[:4096].decode(errors="replace").rstrip()
                match = self._FRAME.search(line) if self.want_frames and "Parsed_showinfo" in line else None
                if match:
                    self.frames.put((int(match.group(1)), match.group(2) == "1"))
                    if self.watchdog:
                        self.watchdog.touch()
                elif "Parsed_showinfo" not in line or "config in" in line:
                    if len(self.head) < self.HEAD_LINES:
                        self.head.append(line)
                    self.tail.append(line.strip())
        finally:
            self.frames.put(None)

    def text(self):
        return "\n".join(self.head)

    def error_line(self):
        return last_error_line(self.tail)


def last_error_line(lines):
    """The most specific thing ffmpeg said went wrong, e.g. "moov atom not found"."""
    lines = [re.sub(r"^(\[[^]]*\]\s*)+", "", l.strip()) for l in lines]
    for line in reversed(lines):
        if re.search(r"error|invalid|corrupt|not found|failed|truncated|missing", line, re.IGNORECASE) and \
                not line.startswith(("Error opening input", "Conversion failed")):
            return line
    lines = [l for l in lines if l and not l.startswith(("Error opening input file", "Error opening input files"))]
    for line in lines:
        if not line.startswith(("Error opening input", "Input #", "Stream", "Duration", "Metadata", "Press [q]",
                                "frame=", "video:", "[out#")):
            return line
    return lines[-1].split(": ", 1)[-1] if lines else "ffmpeg could not read it"


def _popen(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _finish(proc, watchdog, reader):
    watchdog.stop()
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    reader.join(timeout=5)


def run_watched(cmd, stall_seconds=None):
    """Run an ffmpeg command to completion under a ``Watchdog``: ffmpeg reports its progress on stdout
    (``-progress pipe:1``) and is stopped when that report stops moving for ``stall_seconds``.
    Returns ``(returncode, last lines of stderr)``; raises ``MediaError`` when it stalled."""
    stall = STALL_SECONDS if stall_seconds is None else float(stall_seconds)
    proc = _popen(cmd[:1] + ["-progress", "pipe:1", "-nostats"] + cmd[1:])
    watchdog = Watchdog(proc, stall)
    reader = _StderrReader(proc.stderr, frames=False)
    reader.start()
    try:
        for _ in iter(proc.stdout.readline, b""):
            watchdog.touch()
    finally:
        _finish(proc, watchdog, reader)
    if watchdog.stalled:
        raise MediaError(f"{cmd[-1]}: ffmpeg stalled (no progress for {stall:g} s)")
    return proc.returncode, list(reader.tail)


# ---- the container's header, as ffmpeg prints it ----

@dataclasses.dataclass
class _Header:
    container: str = ""
    duration: float | None = None   # the container's stated duration, seconds
    start: float = 0.0              # the container's start time, seconds
    video: dict = None              # the first video stream that is not cover art
    audio: list = dataclasses.field(default_factory=list)


_STREAM = re.compile(r"^\s*Stream #0:(\d+)(?:\[[^]]*\])?(?:\(([^)]*)\))?: "
                     r"(Video|Audio|Subtitle|Data|Attachment): (.*)$")
_FIELD_ORDERS = {"top first": "tt", "bottom first": "bb", "top coded first (swapped)": "tb",
                 "bottom coded first (swapped)": "bt", "progressive": "progressive"}


def _split_top(text):
    """Split at commas that are not inside parentheses or brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return parts


def _parse_rate(text):
    match = re.search(r"([\d.]+)(k?) (?:fps|tbr)\b", text)
    if not match:
        return None
    value = float(match.group(1)) * (1000 if match.group(2) else 1)
    return Fraction(value).limit_denominator(1001) if value > 0 else None


def parse_header(text):
    """The container and stream facts from ffmpeg's description of input #0."""
    header, current = _Header(), None
    for line in text.splitlines():
        match = re.match(r"^Input #0, (.+?), from ", line)
        if match:
            header.container = match.group(1)
            continue
        match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", line)
        if match and header.duration is None:
            h, m, s = match.groups()
            header.duration = int(h) * 3600 + int(m) * 60 + float(s)
        match = re.search(r"Duration: [^,]*, start: (-?\d+(?:\.\d+)?)", line)
        if match:
            header.start = float(match.group(1))
            continue
        match = _STREAM.match(line)
        if match:
            current = None
            language, kind, desc = match.group(2), match.group(3), match.group(4)
            parts = _split_top(desc)
            codec = parts[0].split()[0] if parts and parts[0] else "unknown"
            if kind == "Video" and header.video is None and "(attached pic)" not in desc:
                video = {"codec": codec, "pix_fmt": "", "field_order": "unknown", "width": 0, "height": 0,
                         "sar": Fraction(1), "rate": _parse_rate(desc), "rotation": 0}
                for part in parts[1:]:
                    size = re.match(r"^(\d+)x(\d+)", part)
                    if size and not video["width"]:
                        video["width"], video["height"] = int(size.group(1)), int(size.group(2))
                    sar = re.search(r"SAR (\d+):(\d+)", part)
                    if sar and int(sar.group(1)) > 0 and int(sar.group(2)) > 0:
                        video["sar"] = Fraction(int(sar.group(1)), int(sar.group(2)))
                    fmt = re.match(r"^([a-z0-9_]+)(?:\((.*)\))?$", part)
                    if fmt and not video["pix_fmt"] and not re.match(r"^\d", part):
                        video["pix_fmt"] = fmt.group(1)
                        for token in (fmt.group(2) or "").split(", "):
                            if token in _FIELD_ORDERS:
                                video["field_order"] = _FIELD_ORDERS[token]
                header.video = current = video
            elif kind == "Audio":
                rate = re.search(r"(\d+) Hz", desc)
                layout = parts[2] if len(parts) > 2 and rate else None
                header.audio.append(AudioTrack(index=len(header.audio), codec=codec,
                                               sample_rate=int(rate.group(1)) if rate else None,
                                               channels=layout, language=language))
            continue
        match = re.search(r"rotation of (-?[\d.]+) degrees", line, re.IGNORECASE)
        if match and current is not None:
            current["rotation"] = round(float(match.group(1))) % 360
    return header


# ---- probing ----

def probe(path, stall_seconds=None, decode=False):
    """Read a film's facts and every frame timestamp. Raises ``MediaError`` naming the file.

    ``decode=True`` learns the timestamps by decoding even when the demuxed ones look sound.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    stat = os.stat(path)
    if stat.st_size == 0:
        raise MediaError(f"{path}: empty file")
    stall = STALL_SECONDS if stall_seconds is None else float(stall_seconds)
    header, packets, problem = _demux(path, stall)
    frames, keys, method = None, None, "demux"
    if problem is None and not decode:
        frames, keys, problem = _from_packets(packets, header)
    if frames is not None:
        # The decoder has the last word: its first frames must carry the timestamps the demux gave them
        # (an elementary stream's generated pts can be a frame off what the decoder stamps).
        problem = _check_head(path, stall, frames)
        if problem:
            frames = None
    if frames is None:
        # The demuxed timestamps are missing or disagree with each other: ask the decoder.
        frames, keys, why = _decode_scan(path, stall)
        if why:
            raise MediaError(f"{path}: {why}" + (f" (demux: {problem})" if problem else ""))
        method = "decode"
    tb, pts, durations = frames
    fps, vfr = frame_rate(pts, tb, header.video.get("rate"))
    if fps is None:
        raise MediaError(f"{path}: frame timestamps give no plausible frame rate")
    last = durations[-1] if durations and durations[-1] > 0 else max(1, round(1 / (fps * tb)))
    duration = float((pts[-1] - pts[0] + last) * tb)
    v = header.video
    w, h, sar, rotation = v["width"], v["height"], v["sar"], v["rotation"]
    if not (w and h):
        raise MediaError(f"{path}: the video stream has no picture size")
    if rotation % 180 == 90:   # shown turned a quarter: the sides swap, and so does the pixel shape
        w, h, sar = h, w, 1 / sar
    width, height = display_size(w, h, sar)
    depth = re.search(r"p(\d+)(?:le|be)?$", v["pix_fmt"])
    holes = gaps(pts, tb, fps) if vfr else ()
    index = {p: i for i, p in enumerate(pts)}
    keyframes = tuple(sorted(index[p] for p in keys if p in index))
    return VideoInfo(path=path, width=width, height=height, time_base=tb, pts=tuple(pts), fps=fps, vfr=vfr,
                     duration=duration, video_codec=v["codec"],
                     audio_codec=header.audio[0].codec if header.audio else None, size_bytes=stat.st_size,
                     mtime=stat.st_mtime, coded_width=v["width"], coded_height=v["height"], sar=v["sar"],
                     rotation=rotation, field_order=v["field_order"], pix_fmt=v["pix_fmt"],
                     bit_depth=int(depth.group(1)) if depth else 8, container=header.container,
                     start_time=float(pts[0] * tb), container_start=header.start, keyframes=keyframes,
                     audio_tracks=tuple(header.audio),
                     probe_method=method, gaps=holes)


def display_size(width, height, sar):
    """(W, H) in square pixels of a ``width`` x ``height`` picture whose pixels are ``sar`` wide."""
    if sar == 1:
        return width, height
    if sar > 1:
        return max(1, round(width * sar)), height
    return width, max(1, round(height / sar))


def _demux(path, stall):
    """(header, packets, problem): every video packet's (pts, duration, size, flags) from a demux."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-copyts", "-fflags", "+genpts", "-i", path,
           "-map", "0:V:0", "-c", "copy", "-f", "framecrc", "-"]
    proc = _popen(cmd)
    watchdog = Watchdog(proc, stall)
    reader = _StderrReader(proc.stderr, frames=False)
    reader.start()
    tb, packets = None, []
    try:
        for raw in iter(proc.stdout.readline, b""):
            watchdog.touch()
            line = raw.decode(errors="replace")
            if line.startswith("#tb 0:"):
                try:
                    tb = Fraction(line.split(":", 1)[1].strip())
                except (ValueError, ZeroDivisionError):
                    tb = None
            elif line and not line.startswith("#"):
                fields = [f.strip() for f in line.split(",")]
                if len(fields) < 6 or fields[0] != "0":
                    continue
                try:
                    pts, duration, size = int(fields[2]), int(fields[3]), int(fields[4])
                except ValueError:
                    continue
                flags = next((int(f[2:], 16) for f in fields[6:] if f.startswith("F=0x")), _PKT_KEY)
                packets.append((pts, duration, size, flags))
    finally:
        _finish(proc, watchdog, reader)
    header = parse_header(reader.text())
    if watchdog.stalled:
        raise MediaError(f"{path}: ffmpeg stalled (no progress for {stall:g} s) while reading the file")
    if header.video is None:
        if proc.returncode != 0 and not header.audio:
            raise MediaError(f"{path}: not a readable film ({reader.error_line()})")
        raise MediaError(f"{path}: no video stream" + (" (an audio-only file)" if header.audio else ""))
    if tb is None or tb <= 0:
        return header, packets, "no time base"
    if not packets:
        return header, packets, "no video packets"
    return header, (tb, packets), None


def _from_packets(demuxed, header):
    """((tb, pts, durations), keyframe pts, problem) from demuxed packets; frames None when they cannot be
    trusted (the caller then decodes)."""
    tb, packets = demuxed
    kept = [p for p in packets if not p[3] & _PKT_DISCARD]   # an edit list drops these before display
    if not kept:
        return None, None, "every packet is discarded"
    if any(p[0] == NOPTS for p in kept):
        return None, None, "packets without timestamps"
    if any(p[2] == 0 for p in kept):
        return None, None, "empty (dropped-frame) packets"
    kept.sort(key=lambda p: p[0])
    pts = [p[0] for p in kept]
    if any(a == b for a, b in zip(pts, pts[1:])):
        return None, None, "repeated timestamps"
    span = float((pts[-1] - pts[0]) * tb)
    if header.duration is not None and span > header.duration + max(10.0, header.duration):
        return None, None, f"timestamps span {span:.0f} s, the header says {header.duration:.0f} s"
    if span > 10 ** 6:
        return None, None, f"timestamps span {span:.0f} s"
    if len(pts) > 1 and not _MIN_RATE <= Fraction(len(pts) - 1) / ((pts[-1] - pts[0]) * tb) <= _MAX_RATE:
        return None, None, "implausible frame rate"
    keys = [p[0] for p in kept if p[3] & _PKT_KEY]
    return (tb, pts, [max(0, p[1]) for p in kept]), keys, None


def _decode_scan(path, stall, limit=None):
    """((tb, pts, durations), keyframe pts, None) from decoding every frame (the first ``limit`` frames),
    or (None, None, reason)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "info", "-copyts", "-noautorotate",
           "-i", path, "-map", "0:V:0", "-an", "-sn", "-dn", "-vf", "showinfo=checksum=0",
           "-fps_mode", "passthrough"] + (["-frames:v", str(limit)] if limit else []) + ["-f", "null", "-"]
    proc = _popen(cmd)
    watchdog = Watchdog(proc, stall)
    reader = _StderrReader(proc.stderr, watchdog)
    reader.start()
    pts, keys = [], []
    try:
        while True:
            item = reader.frames.get()
            if item is None:
                break
            if item[0] != NOPTS:
                pts.append(item[0])
                if item[1]:
                    keys.append(item[0])
    finally:
        _finish(proc, watchdog, reader)
    if watchdog.stalled:
        return None, None, f"ffmpeg stalled (no frame for {stall:g} s) while decoding the file"
    tb = _showinfo_time_base(reader.text())
    if not pts:
        return None, None, f"no frame could be decoded ({reader.error_line()})"
    if tb is None:
        return None, None, "the decoder reported no time base"
    pts = sorted(set(pts))
    if len(pts) > 1 and not _MIN_RATE <= Fraction(len(pts) - 1) / ((pts[-1] - pts[0]) * tb) <= _MAX_RATE:
        return None, None, "decoded frame timestamps give no plausible frame rate"
    return (tb, pts, []), keys, None


def _check_head(path, stall, frames, count=8):
    """None when the first ``count`` decoded frames have the demuxed timestamps, else what differs."""
    tb, pts, _ = frames
    head, _, why = _decode_scan(path, stall, limit=count)
    if why:
        return None  # the full decode would say no better; a damaged start is found while decoding
    dtb, dpts, _ = head
    got = sorted(p * dtb for p in dpts)[:count]
    want = [p * tb for p in pts[:len(got)]]
    if got != want:
        return (f"the decoder stamps the first frames {[float(g) for g in got[:3]]} s, the demuxer "
                f"{[float(w) for w in want[:3]]} s")
    return None


def _showinfo_time_base(text):
    match = re.search(r"Parsed_showinfo.*config in time_base: (\d+)/(\d+)", text)
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        return None
    return Fraction(int(match.group(1)), int(match.group(2)))


def frame_rate(pts, tb, nominal=None):
    """(exact nominal rate, variable?) from sorted timestamps; (None, False) when no rate is plausible.

    The nominal rate is that of the most common frame duration (the durations one tick either side of it
    too, when a tick is much finer than a frame: Matroska's milliseconds give 41, 42, 42 ms at 23.976), so a
    dropped frame in an AVI leaves 24000/1001 at 24000/1001. The film is variable-rate when any frame's
    duration is not that one: each frame then keeps its own timestamp.
    """
    if len(pts) < 2:
        rate = nominal if nominal and _MIN_RATE <= nominal <= _MAX_RATE else Fraction(25)
        return _snap(rate), False
    deltas = np.diff(np.asarray(pts, np.int64))
    values, counts = np.unique(deltas, return_counts=True)
    mode = int(values[np.argmax(counts)])
    tolerance = 1 if mode >= 10 else 0
    regular = deltas[np.abs(deltas - mode) <= tolerance]
    if len(regular) * 2 >= len(deltas):
        rate = Fraction(len(regular)) / (int(regular.sum()) * tb)
    else:
        rate = Fraction(len(pts) - 1) / ((pts[-1] - pts[0]) * tb)
    if not _MIN_RATE <= rate <= _MAX_RATE:
        return None, False
    vfr = len(regular) != len(deltas)
    return _snap(rate), vfr


def gaps(pts, tb, fps, limit=1000):
    """Where a constant-rate film lost frames: ((from s, to s, frames missing), ...) for each jump of more
    than one and a half nominal frames, when at least 90% of the frames keep the nominal duration (a film
    that is variable by design has no gaps to report). At most ``limit`` entries."""
    frame = 1 / (fps * tb)
    deltas = np.diff(np.asarray(pts, np.int64))
    regular = np.abs(deltas - float(frame)) <= max(1.0, float(frame) / 20)
    if len(deltas) == 0 or regular.mean() < 0.9:
        return ()
    out = []
    for k in np.nonzero(deltas > 1.5 * float(frame))[0][:limit]:
        out.append((float((pts[k] - pts[0]) * tb), float((pts[k + 1] - pts[0]) * tb),
                    int(round(deltas[k] / float(frame))) - 1))
    return tuple(out)


def _snap(rate):
    for standard in _STANDARD_RATES:
        if abs(rate - standard) <= standard / 1000:
            return standard
    return rate.limit_denominator(1001)


def keyframe_segments(info, keyframes, seconds, lo, hi):
    """Cut frames lo..hi-1 into [start, stop) ranges of at least ``seconds`` where decoding is cheap.

    A segment is decoded by seeking just before its first frame, and ffmpeg then starts at the keyframe
    before that point. Starting segments on the frame right after a keyframe costs one wasted frame; a cut
    by time alone can cost a whole GOP per segment (250 frames with x264's defaults). Without keyframe
    information (an empty list) the cut is by time, as ``VideoInfo.segments`` does.
    """
    if lo >= hi:
        return []
    if not keyframes:
        ranges = [(max(a, lo), min(b, hi)) for a, b in info.segments(seconds)]
        return [(a, b) for a, b in ranges if a < b]
    step = Fraction(str(seconds)) / info.time_base
    candidates = [k + 1 for k in keyframes if lo < k + 1 < hi]
    bounds = [lo]
    for c in candidates:
        if info.pts[c] - info.pts[bounds[-1]] >= step:
            bounds.append(c)
    bounds.append(hi)
    return list(zip(bounds[:-1], bounds[1:]))


# ---- decoding ----

def normalize_filter(info, deinterlace="auto"):
    """The filters that make a decoded frame what ``info.width`` x ``info.height`` describes: progressive
    (``bwdif``, one output frame per input frame, so timestamps stay) and square pixels. '' when none."""
    if deinterlace not in DEINTERLACE:
        raise ValueError(f"deinterlace must be one of {DEINTERLACE}, not {deinterlace!r}")
    chain = []
    if deinterlace == "auto" and info.interlaced:
        chain.append("bwdif=mode=send_frame:parity=auto:deint=all")
    coded = (info.coded_width, info.coded_height)
    if info.rotation % 180 == 90:
        coded = coded[::-1]
    if coded[0] and (info.width, info.height) != coded:
        chain.append(f"scale={info.width}:{info.height}:flags=bicubic,setsar=1")
    return ",".join(chain)


def read_frames(path, size=None, fit="crop", start=0, stop=None, info=None, threads=0, deinterlace="auto",
                stall_seconds=None):
    """Yield ``(index, timestamp_seconds, frame)`` for frames ``start <= index < stop`` of a film.

    ``frame`` is an (H, W, 3) uint8 RGB array at ``size`` (H, W) fitted with ``fit``, or at the film's
    upright, square-pixel size (``info.height``, ``info.width``) when ``size`` is None. Frames that a
    damaged film cannot give are missing from the output (their indices are skipped); when nothing at all
    could be decoded, or ffmpeg stalls, ``MediaError`` is raised. ``threads`` is ffmpeg's decoder thread
    count, and its filters' (0: ffmpeg's choice).
    """
    info = info or probe(path, stall_seconds)
    stall = STALL_SECONDS if stall_seconds is None else float(stall_seconds)
    stop = info.num_frames if stop is None else min(stop, info.num_frames)
    if start >= stop:
        return
    h, w = size if size is not None else (info.height, info.width)
    window = list(info.pts[start:stop])
    index_of = {p: i for i, p in enumerate(window, start)}
    tolerance = info.frame_ticks() // 2
    chain = [normalize_filter(info, deinterlace)]
    if size is not None:
        chain.append(geometry.ffmpeg_filter(size, fit))
    args = ["-i", info.path, "-map", "0:V:0", "-an", "-sn", "-dn", "-vf",
            ",".join([c for c in chain if c] + ["format=rgb24"]), "-fps_mode", "passthrough",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    # Accurate seek: ffmpeg decodes from the keyframe before the point and drops the frames earlier than
    # it; the point lies half a frame before the segment's first frame. Some demuxers (MPEG-TS: by byte
    # position, no index) land on a keyframe *after* the point: then the segment's first frames would be
    # missing, so the seek is retried from further back (frames before the segment are dropped here).
    # A deinterlacer looks at the frames either side: it gets the frame before the segment too, so a
    # segment's frames are the same pixels as in a decode of the whole film.
    first = start - 1 if deinterlace == "auto" and info.interlaced else start
    point = (info.pts[first] - Fraction(info.pts[first] - info.pts[first - 1], 2)) * info.time_base \
        if first > 0 else None
    margins = (0.0, 2.0, 8.0, 30.0) if point is not None else (0.0,)
    lead = info.pts[first]
    last, status = start - 1, {}
    for attempt, margin in enumerate(margins):
        seek = None if point is None else float(point) - margin - info.container_start
        if seek is not None and seek <= 0:
            seek, margin = None, None  # from the beginning: nothing earlier to retry
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info", "-copyts",
               "-threads", str(threads)]
        if threads > 0:
            # The filters' threads too (by default one per core): on a 768x576 film scaled to 64x64 their
            # hand-overs cost 10-20% of the decoder's CPU, for the same pixels.
            cmd[1:1] = ["-filter_threads", str(threads)]
        if seek is not None:
            cmd += ["-ss", f"{seek:.6f}"]  # -ss counts from the container's start time
        retry = False
        frames = _decode(cmd + args, h * w * 3, info.time_base, stall, status)
        try:
            for pts, data in frames:
                index = _index(pts, index_of, window, start, tolerance)
                missed = last < start and pts > lead + tolerance  # the first frame needed went by
                if missed and seek is not None and attempt + 1 < len(margins):
                    retry = True
                    break
                if index is None or index <= last:
                    if pts > window[-1] + tolerance:
                        break  # past the segment
                    continue   # before the segment (the seek's keyframe run-in) or not in the probe
                yield index, info.timestamp(index), np.frombuffer(data, np.uint8).reshape(h, w, 3)
                last = index
                if index == stop - 1:
                    break
        finally:
            frames.close()
        if status.get("stalled"):
            raise MediaError(f"{info.path}: ffmpeg stalled (no frame for {stall:g} s) in frames "
                             f"{start}..{stop - 1}")
        if last < start and seek is not None and attempt + 1 < len(margins):
            retry = True  # nothing at all after the seek point: it landed past the end, try from earlier
        if not retry:
            break
    if last < start:
        raise MediaError(f"{info.path}: no frame could be decoded in frames {start}..{stop - 1} "
                         f"({status.get('error') or 'ffmpeg gave none'})")


# What ffmpeg reports of each frame it hands to the output (``-stats_enc_pre``), on a pipe of its own: the
# frame's time base and pts, one short line per frame, written before the frame's pixels.
_STATS_FORMAT = "{tb} {pts}"
_PIPE_BYTES = 1 << 20    # stdout pipe capacity asked for: ffmpeg runs further ahead, fewer switches between them


def _decode(cmd, frame_bytes, time_base, stall, status):
    """Run an ffmpeg decoder (``cmd`` ends with its output, "-"); yield ``(pts in time_base units, raw frame
    bytes)`` for each frame it outputs. The pts is the one ffmpeg itself gives the frame as it leaves the
    filters (what ``showinfo`` would print, without its log line of ~300 characters to format, write and parse
    per frame). Needs ffmpeg 6.1 or later (imageio-ffmpeg's is). Sets ``status["stalled"]`` when the watchdog
    stopped it and ``status["error"]`` to ffmpeg's complaint."""
    read_end, write_end = os.pipe()
    try:
        # The encoder's time base is the filters' (the stream's: no filter here changes it), not 1/rate.
        cmd = cmd[:-1] + ["-enc_time_base:v", "filter", "-stats_enc_pre", f"pipe:{write_end}",
                          "-stats_enc_pre_fmt", _STATS_FORMAT, cmd[-1]]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                pass_fds=(write_end,), bufsize=max(frame_bytes, _PIPE_BYTES))
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    with contextlib.suppress(AttributeError, OSError):  # Linux only; a smaller pipe only costs switches
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    stats = open(read_end, "rb")
    watchdog = Watchdog(proc, stall)
    log = _StderrReader(proc.stderr, watchdog, frames=False)
    log.start()
    scales = {}
    try:
        for line in stats:
            watchdog.touch()
            try:
                tb, pts = line.split()
                pts = int(pts)
            except ValueError:
                continue  # not a frame's line (ffmpeg prints nothing else there)
            data = _read_exact(proc.stdout, frame_bytes, watchdog)
            if data is None:
                break
            if tb not in scales:
                scales[tb] = _scale(tb, time_base)
            if scales[tb] is not None and pts != NOPTS:
                pts = round(pts * scales[tb]) if scales[tb] != 1 else pts
            yield pts, data
    finally:
        _finish(proc, watchdog, log)
        stats.close()
        status["stalled"] = status.get("stalled") or watchdog.stalled
        status["error"] = log.error_line()


def _scale(text, time_base):
    """How many ``time_base`` units one tick of ffmpeg's time base ``text`` ("1/25") is; None if unreadable."""
    try:
        return Fraction(text.decode()) / time_base
    except (ValueError, ZeroDivisionError):
        return None


def _index(pts, index_of, window, start, tolerance):
    """The frame index of a decoded frame's pts: exact, else the nearest probed frame within half a frame
    (a decoder may stamp a frame a tick away from its packet)."""
    index = index_of.get(pts)
    if index is not None or tolerance == 0:
        return index
    k = bisect.bisect_left(window, pts)
    best = min((j for j in (k - 1, k) if 0 <= j < len(window)), key=lambda j: abs(window[j] - pts), default=None)
    if best is not None and abs(window[best] - pts) <= tolerance:
        return start + best
    return None


def _read_exact(stream, n, watchdog=None):
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        if watchdog:
            watchdog.touch()
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
