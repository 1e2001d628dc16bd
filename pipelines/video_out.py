"""Films out: encode frames with the ffmpeg binary that imageio-ffmpeg ships, in segments, then join them.

A render writes its film as a run of *segment files* (``seg-00000.mp4``, ...), each encoded by its own
ffmpeg process fed raw RGB frames on a pipe, and committed by renaming a finished temporary file. The
segments are then joined losslessly with the concat demuxer (``-c copy``) and the source's audio is muxed
in at the same time, into a temporary file renamed onto the output: the film appears atomically.

Timing is exact:
  * constant rate: the encoder is told the exact rational rate (``-framerate 24000/1001``), so the output
    keeps it (an mp4 gets timescale 24000 and 1001 ticks per frame, never 23.98);
  * variable rate: every frame gets the source's own timestamp. Raw frames carry no timestamps, so the
    encoder's filter graph re-stamps them: ``settb`` switches to the source's time base and ``setpts``
    evaluates a piecewise-linear expression of the frame number (one term per run of equal frame
    durations) that gives each frame its source pts, relative to the segment's first frame. The raw input's
    nominal rate is set to 1 / (the segment's last frame duration) so that the last frame, whose duration
    no following timestamp defines, lasts exactly as long as in the source, and the concat demuxer, which
    places each segment after the previous one's duration, puts every frame at its source time.
Containers limit this: Matroska stores milliseconds, so an mkv output (or an mkv source) is exact to 1 ms;
mp4 and mov keep any rational time base.

Formats (``output_format``): H.264 in .mp4/.m4v/.mkv/.mov (``crf``, ``preset``, yuv420p by default),
ProRes in .mov/.mkv (profile hq by default, yuv422p10le), FFV1 in .mkv (lossless RGB), or a PNG frame
sequence (an output path without extension: a folder of ``frame_000000.png`` ..., ``timestamps.txt`` in
mkvmerge's "timestamp format v2" and the audio copied as ``audio.mka``).
"""
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from fractions import Fraction

from pipelines import atomic, media
from pipelines.errors import CadlError
from pipelines.media import ffmpeg_exe

CODECS = ("h264", "prores", "ffv1", "png")
# Codecs each container can hold, the first being the default for that extension.
CONTAINERS = {".mp4": ("h264",), ".m4v": ("h264",), ".mov": ("prores", "h264"),
              ".mkv": ("h264", "ffv1", "prores")}
_MUXER = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".nut": "nut"}
# Segments are written in a container with exact rational timestamps: Matroska's milliseconds would be
# rounded twice (in the segment, then in the output), so mkv outputs are assembled from NUT segments.
_SEGMENT_EXT = {".mkv": ".nut"}
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
PRORES_PROFILES = {"proxy": 0, "lt": 1, "standard": 2, "hq": 3, "4444": 4, "4444xq": 5}
# Audio codecs a container takes as they are and players understand; anything else is re-encoded.
_AUDIO_COPY = {"mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
               "mov": {"aac", "mp3", "ac3", "eac3", "alac"} | {f"pcm_{s}" for s in (
                   "s16le", "s16be", "s24le", "s24be", "s32le", "s32be", "f32le", "f32be", "u8")},
               "matroska": None}  # None: anything
_AUDIO_REENCODE = {"mp4": ["-c:a", "aac", "-b:a", "192k"], "mov": ["-c:a", "aac", "-b:a", "192k"],
                   "matroska": ["-c:a", "flac"]}
_AUDIO_REENCODE_PRORES = ["-c:a", "pcm_s16le"]  # editors expect uncompressed audio next to ProRes
FRAME_PATTERN = "frame_%06d.png"   # PNG sequences: frame files named by the source frame index


@dataclasses.dataclass(frozen=True)
class VideoFormat:
    """How frames are encoded: codec, container extension ("" for a PNG folder) and codec settings."""
    codec: str                  # one of CODECS
    ext: str                    # ".mp4" | ".m4v" | ".mov" | ".mkv" | "" (PNG sequence)
    crf: int = 18               # H.264 constant rate factor, 0 (lossless) .. 51; 18 looks transparent
    preset: str = "medium"      # H.264 speed/size trade-off, one of PRESETS
    pix_fmt: str = "yuv420p"    # pixel format of the encoded stream
    prores_profile: str = "hq"  # one of PRORES_PROFILES

    @property
    def is_sequence(self):
        return self.codec == "png"

    @property
    def muxer(self):
        return _MUXER.get(self.ext)

    @property
    def segment_ext(self):
        return _SEGMENT_EXT.get(self.ext, self.ext)

    @property
    def even_sides(self):
        """Chroma subsampling (4:2:0, 4:2:2) needs even sides; RGB and 4:4:4 take any size."""
        return self.pix_fmt.startswith(("yuv420", "yuv422", "yuva420", "yuva422", "nv12"))

    def encoder_args(self):
        if self.codec == "h264":
            return ["-c:v", "libx264", "-crf", str(self.crf), "-preset", self.preset, "-pix_fmt", self.pix_fmt]
        if self.codec == "prores":
            return ["-c:v", "prores_ks", "-profile:v", str(PRORES_PROFILES[self.prores_profile]),
                    "-vendor", "apl0", "-pix_fmt", self.pix_fmt]
        if self.codec == "ffv1":
            return ["-c:v", "ffv1", "-level", "3", "-g", "1", "-pix_fmt", self.pix_fmt]
        return ["-c:v", "png", "-pix_fmt", self.pix_fmt]

    def describe(self):
        settings = {"h264": f"crf {self.crf}, preset {self.preset}", "prores": f"profile {self.prores_profile}",
                    "ffv1": "lossless", "png": "lossless"}[self.codec]
        return f"{self.codec} ({settings}, {self.pix_fmt})"


def output_format(path, codec="auto", crf=18, preset="medium", pix_fmt=None, prores_profile="hq"):
    """The ``VideoFormat`` for writing ``path``; ``codec="auto"`` picks the extension's default.

    A path without extension (or ending in a separator) is a PNG frame sequence folder.
    Raises ``CadlError`` for combinations that cannot work (e.g. ProRes in .mp4).
    """
    path = os.fspath(path)
    ext = "" if path.endswith(os.sep) else os.path.splitext(path)[1].lower()
    if ext and ext not in CONTAINERS:
        raise CadlError(f"{path}: unsupported output type {ext!r} (use .mp4, .m4v, .mov, .mkv, "
                        f"or a path without extension for a PNG frame sequence)")
    if codec == "auto":
        codec = CONTAINERS[ext][0] if ext else "png"
    if codec not in CODECS:
        raise CadlError(f"{path}: unknown codec {codec!r} (choose from {', '.join(CODECS)})")
    if codec == "png" and ext:
        raise CadlError(f"{path}: a PNG frame sequence is written to a folder: give a path without extension")
    if codec != "png" and (not ext or codec not in CONTAINERS[ext]):
        raise CadlError(f"{path}: {codec} cannot be written to {ext or 'a folder'} "
                        f"(use {', '.join(e for e, cs in CONTAINERS.items() if codec in cs)})")
    if not 0 <= int(crf) <= 51:
        raise CadlError(f"{path}: --crf must be 0..51, not {crf}")
    if preset not in PRESETS:
        raise CadlError(f"{path}: --preset must be one of {', '.join(PRESETS)}, not {preset!r}")
    if prores_profile not in PRORES_PROFILES:
        raise CadlError(f"{path}: --prores-profile must be one of {', '.join(PRORES_PROFILES)}")
    default_pix = {"h264": "yuv420p", "ffv1": "bgr0", "png": "rgb24",
                   "prores": "yuv444p10le" if prores_profile.startswith("4444") else "yuv422p10le"}
    return VideoFormat(codec=codec, ext=ext, crf=int(crf), preset=preset,
                       pix_fmt=pix_fmt or default_pix[codec], prores_profile=prores_profile)


# ---- timing ----

@dataclasses.dataclass(frozen=True)
class Timing:
    """The timestamps frames [start, stop) of a film get in an encoded segment.

    ``rate`` is the nominal rate given to the encoder. Constant-rate films: the film's exact rate, and
    nothing else is needed. Variable-rate films: ``pts`` holds every frame's timestamp in ``time_base``
    ticks relative to the segment's first frame, and ``rate`` is 1 / the last frame's duration.
    """
    rate: Fraction
    time_base: Fraction = None
    pts: tuple = None

    @property
    def variable(self):
        return self.pts is not None


def last_frame_ticks(info):
    """Duration of a film's last frame in its time base ticks (what no following timestamp defines)."""
    total = round(Fraction(info.duration) / info.time_base)
    last = total - (info.pts[-1] - info.pts[0])
    if last <= 0:  # a probe without durations: one nominal frame
        last = max(1, round(1 / (info.fps * info.time_base)))
    return last


def segment_timing(info, start, stop):
    """``Timing`` for frames [start, stop) of the film ``info`` (a ``media.VideoInfo``)."""
    if not info.vfr:
        return Timing(rate=Fraction(info.fps))
    tb = info.time_base
    last = info.pts[stop] - info.pts[stop - 1] if stop < info.num_frames else last_frame_ticks(info)
    return Timing(rate=1 / (max(1, last) * tb), time_base=tb,
                  pts=tuple(p - info.pts[start] for p in info.pts[start:stop]))


def pts_expression(pts):
    """An ffmpeg expression of the frame number ``N`` giving ``pts[N]``: a sum of one term per run of
    frames with equal durations, so a constant-rate stretch of any length costs one term."""
    terms, i, n = [], 0, len(pts)
    while i < n:
        j = i
        step = pts[i + 1] - pts[i] if i + 1 < n else 0
        while j + 1 < n and pts[j + 1] - pts[j] == step:
            j += 1
        if j == i:
            terms.append(f"eq(N,{i})*{pts[i]}")
        else:
            terms.append(f"between(N,{i},{j})*({pts[i]}+(N-{i})*{step})")
        i = j + 1
    return "+".join(terms) or "0"


# ---- one segment: frames in, a committed file (or folder of PNGs) out ----

class SegmentWriter:
    """An ffmpeg process that encodes frames [start, stop) into ``path``, fed one RGB frame at a time.

    The segment is written to a temporary sibling and renamed onto ``path`` by ``commit()`` once ffmpeg
    has finished and the frame count is checked, so ``path`` existing means the segment is complete.
    """

    def __init__(self, path, fmt, size, timing, start=0, stop=None, threads=0):
        self.path, self.fmt, self.size, self.timing = os.fspath(path), fmt, tuple(size), timing
        self.start, self.expected = start, (None if stop is None else stop - start)
        self.count = 0
        folder = os.path.dirname(os.path.abspath(self.path))
        base = os.path.basename(self.path)
        if fmt.is_sequence:
            self.tmp = os.path.join(folder, f".{base}.partial")
            shutil.rmtree(self.tmp, ignore_errors=True)
            os.makedirs(self.tmp)
            target = os.path.join(self.tmp, FRAME_PATTERN)
        else:
            stem = os.path.splitext(base)[0]
            self.tmp = target = os.path.join(folder, f".{stem}.partial{fmt.segment_ext}")
        self.filter_file = None
        h, w = self.size
        rate = timing.rate
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "-"]
        if timing.variable and not fmt.is_sequence:
            tb = timing.time_base
            graph = f"settb={tb.numerator}/{tb.denominator},setpts='{pts_expression(timing.pts)}'"
            # The expression can be long (one term per run of equal durations): pass it as a file.
            fd, self.filter_file = tempfile.mkstemp(prefix=f".{base}.", suffix=".filter", dir=folder)
            with os.fdopen(fd, "w") as f:
                f.write(graph)
            cmd += ["-/vf", self.filter_file, "-enc_time_base:v", "filter"]
        cmd += ["-fps_mode", "passthrough", "-threads", str(threads)] + fmt.encoder_args() + ["-an"]
        if timing.variable and fmt.codec == "h264":
            # No B-frames: decode order = presentation order, so every sample's duration (mp4 stores
            # durations as decode-time steps) is its own frame's, the last one included.
            cmd += ["-bf", "0"]
        if fmt.is_sequence:
            cmd += ["-f", "image2", "-start_number", str(start), target]
        else:
            cmd += ["-f", _MUXER[fmt.segment_ext], target]
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        # An encoder that stops taking frames would block the render forever: each frame it takes is progress.
        self.watchdog = media.Watchdog(self.proc, media.STALL_SECONDS)

    def write(self, frame):
        """Append one (H, W, 3) uint8 frame."""
        if frame.shape != self.size + (3,):
            raise ValueError(f"frame of shape {frame.shape} written to a {self.size} segment")
        try:
            self.proc.stdin.write(memoryview(frame.tobytes() if not frame.flags.c_contiguous else frame))
        except BrokenPipeError:
            raise CadlError(f"{self.path}: the encoder stopped ({self._stopped()})") from None
        self.watchdog.touch()
        self.count += 1

    def _stopped(self):
        if self.watchdog.stalled:
            return f"stalled: no frame taken for {media.STALL_SECONDS:g} s"
        return self._error()

    def _error(self):
        self._log.seek(0)
        lines = [l.strip() for l in self._log.read().decode(errors="replace").splitlines() if l.strip()]
        return lines[-1] if lines else f"ffmpeg exit status {self.proc.poll()}"

    def commit(self):
        """Finish encoding, check the frame count and rename the segment into place. Returns the count."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.watchdog.stop()
        try:
            rc = self.proc.wait(timeout=media.STALL_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        try:
            if rc != 0:
                raise CadlError(f"{self.path}: encoding failed ({self._stopped() if rc < 0 else self._error()})")
            if self.expected is not None and self.count != self.expected:
                raise RuntimeError(f"{self.path}: {self.count} frames written, {self.expected} expected")
            got = segment_frames(self.tmp, self.fmt)
            if got != self.count:
                raise RuntimeError(f"{self.path}: the encoder wrote {got} frames of {self.count}")
            if os.path.isdir(self.path):
                shutil.rmtree(self.path)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        return self.count

    def abort(self):
        """Stop the encoder and remove what it wrote."""
        self.watchdog.stop()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)
        self._cleanup()

    def _cleanup(self):
        if self.filter_file and os.path.exists(self.filter_file):
            os.remove(self.filter_file)
        self._log.close()


def segment_frames(path, fmt):
    """The frames an encoded segment holds, as the demuxer counts them (a folder of pictures: its files)."""
    return len(os.listdir(path)) if fmt.is_sequence else media.probe(path).num_frames


def segment_name(index, fmt):
    """``seg-00003.mp4`` (``.nut`` for mkv outputs; the folder ``seg-00003`` for PNG sequences)."""
    return f"seg-{index:05d}{fmt.segment_ext}"


def segment_times(info, segments):
    """Exact start time in seconds (a Fraction) of each segment in the output, and the film's end.

    Constant rate: frame i is at i / fps. Variable rate: the source's own timestamps.
    """
    if info.vfr:
        starts = [(info.pts[a] - info.pts[0]) * info.time_base for a, _ in segments]
        end = (info.pts[-1] - info.pts[0] + last_frame_ticks(info)) * info.time_base
    else:
        starts = [Fraction(a) / info.fps for a, _ in segments]
        end = Fraction(info.num_frames) / info.fps
    return starts + [end]


# ---- joining ----

def _start_time(path):
    """The container's start time in seconds (what ffmpeg subtracts from every stream of an input)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=media.STALL_SECONDS)
    match = re.search(r"Duration: [^,]*, start: (-?[\d.]+)", proc.stderr.decode(errors="replace"))
    return float(match.group(1)) if match else 0.0


def audio_plan(fmt, source_info, keep_audio=True, audio_track=0):
    """"copy", "reencode" or None (no audio) for muxing audio track ``audio_track`` of ``source_info``
    into ``fmt``."""
    if not keep_audio or not source_info.has_audio:
        return None
    if fmt.is_sequence:
        return "copy"  # into audio.mka: Matroska takes any codec
    allowed = _AUDIO_COPY[fmt.muxer]
    return "copy" if allowed is None or _audio_codec(source_info, audio_track) in allowed else "reencode"


def _audio_codec(info, track):
    tracks = getattr(info, "audio_tracks", ())
    return tracks[track].codec if track < len(tracks) else info.audio_codec


def join(segment_paths, segments, output, fmt, source_info, keep_audio=True, audio_track=0):
    """Concatenate the encoded files of ``segments`` ([start, stop) frame ranges) losslessly into
    ``output`` with the source's audio.

    The concat demuxer places each file after the previous ones' durations, which it keeps in
    microseconds; each file's duration is given as the difference of the rounded exact start times, so
    rounding never accumulates over thousands of segments. The output appears atomically.
    Returns ``{"audio": "copy" | "reencode" | None, "audio_codec": ..., "info": VideoInfo}``.
    """
    output = os.fspath(output)
    folder = os.path.dirname(os.path.abspath(segment_paths[0]))
    listing = os.path.join(folder, "concat.txt")
    micros = [round(t * 1_000_000) for t in segment_times(source_info, segments)]
    with open(listing, "w") as f:
        f.write("ffconcat version 1.0\n")
        for k, p in enumerate(segment_paths):
            f.write(f"file {concat_quote(os.path.relpath(p, folder))}\nduration {micros[k + 1] - micros[k]}us\n")
    plan = audio_plan(fmt, source_info, keep_audio, audio_track)
    # The video starts where it starts in the source, relative to the source's earliest stream, so that
    # audio copied with its own timestamps stays in sync.
    offset = 0.0
    if plan:
        offset = float(source_info.pts[0] * source_info.time_base) - _start_time(source_info.path)
    for attempt in ([plan, "reencode"] if plan == "copy" else [plan]):
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
        if attempt and abs(offset) > 1e-6:
            cmd += ["-itsoffset", f"{offset:.6f}"]
        cmd += ["-f", "concat", "-safe", "0", "-i", listing]
        if attempt:
            cmd += ["-i", source_info.path, "-map", "0:v:0", "-map", f"1:a:{audio_track}"]
            cmd += ["-c:a", "copy"] if attempt == "copy" else (
                _AUDIO_REENCODE_PRORES if fmt.codec == "prores" and fmt.muxer == "mov" else _AUDIO_REENCODE[fmt.muxer])
        else:
            cmd += ["-map", "0:v:0"]
        cmd += ["-c:v", "copy"]
        if fmt.muxer in ("mp4", "mov"):
            cmd += ["-movflags", "+faststart"]
        try:
            with atomic.atomic_path(output) as tmp:
                returncode, tail = media.run_watched(cmd + ["-f", fmt.muxer, tmp])
                if returncode != 0:
                    raise _JoinFailed(tail[-1:])
                info = media.probe(tmp)
                if info.num_frames != source_info.num_frames:
                    raise RuntimeError(f"{output}: joined film has {info.num_frames} frames, "
                                       f"the source {source_info.num_frames}")
        except _JoinFailed as e:
            if attempt == "copy":
                continue  # the container refused the audio as it is: re-encode it
            raise CadlError(f"{output}: joining segments failed ({' '.join(e.args[0]) or 'ffmpeg failed'})")
        os.remove(listing)
        return {"audio": attempt, "audio_codec": info.audio_codec, "info": info}


def concat_quote(name):
    """``name`` as one token of an ffconcat file: single-quoted, a ``'`` written ``'\\''`` (ffmpeg's rules).

    The file is read line by line, so a name cannot hold a newline: the list names each segment relative to
    the list itself (``seg-00000.mp4``; ffmpeg resolves it from the list's folder), and the folder's own path,
    whatever characters it has, reaches ffmpeg only as a command-line argument.
    """
    if "\n" in name or "\r" in name:
        raise ValueError(f"{name!r}: a concat list cannot name a file with a line break")
    return "'" + name.replace("'", "'\\''") + "'"


class _JoinFailed(Exception):
    pass


def join_sequence(segment_dirs, staging, source_info, keep_audio=True, audio_track=0):
    """Gather PNG segment folders into the folder ``staging`` with ``timestamps.txt`` and ``audio.mka``.

    The caller adds its summary and renames ``staging`` onto the output (``publish``).
    Returns ``{"audio": "copy" | None, "audio_codec": ..., "frames": N}``.
    """
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    frames = 0
    for d in segment_dirs:
        for name in sorted(os.listdir(d)):
            os.replace(os.path.join(d, name), os.path.join(staging, name))
            frames += 1
    if frames != source_info.num_frames:
        raise RuntimeError(f"{staging}: {frames} frames gathered, the source has {source_info.num_frames}")
    # mkvmerge's timestamp format v2: one presentation time in milliseconds per frame.
    lines = ["# timestamp format v2"] + [f"{source_info.timestamp(i) * 1000:.6f}"
                                         for i in range(source_info.num_frames)]
    with open(os.path.join(staging, "timestamps.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    result = {"audio": None, "audio_codec": None, "frames": frames}
    if audio_plan(VideoFormat("png", ""), source_info, keep_audio, audio_track):
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", source_info.path,
               "-map", f"0:a:{audio_track}", "-c", "copy", "-f", "matroska", os.path.join(staging, "audio.mka")]
        returncode, tail = media.run_watched(cmd)
        if returncode != 0:
            raise CadlError(f"{source_info.path}: copying the audio failed ({' '.join(tail[-1:])})")
        result.update(audio="copy", audio_codec=_audio_codec(source_info, audio_track))
    return result


def publish(staging, output):
    """Rename the finished folder ``staging`` onto ``output``, replacing an existing output last."""
    output = os.fspath(output).rstrip(os.sep)
    old = None
    if os.path.lexists(output):
        old = f"{output}.old-{os.getpid()}"
        os.replace(output, old)
    os.replace(staging, output)
    if old:
        shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)
