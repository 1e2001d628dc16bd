"""The render stage: push a film through a trained VAE and write the reconstructed film.

    from pipelines.render import render, RenderConfig
    summary = render(RenderConfig(model="runs/films", input="film.mp4", output="out.mp4"))

The path of a frame: decode and fit to the model's input with the policy the model was trained with (its
config's ``fit``), inside ffmpeg by the scaler extraction used (``media.read_frames(size=...)``; a second
decoder gives the frame at its own size when the output shows the original) -> z = the encoder's mean ->
decoder -> back into the source picture's geometry at the output size (the inverse of the fit,
``geometry.make_layout``: a crop's reconstruction lands on the region the model saw, black around it; a
pad's bars are cut off; a stretch is undone) -> optional blend with the original and side-by-side -> the
encoder (``pipelines.video_out``). The streaming engine that overlaps these is ``pipelines.render_engine``.

Work is committed in segments of ``segment_seconds`` in ``OUT.parts/`` (``seg-00000.mp4``, ... and
``state.json``); a rerun of the same render resumes at the first unfinished segment ("resuming at frame
N"), and the segments are joined losslessly with the source's audio into ``OUT``, which appears atomically.
With a ``runner`` the missing segments are rendered in parallel by an Apache Beam pipeline (one element per
segment; each worker loads the model once) and joined the same way; the parts folder must then be on a
filesystem every worker sees.

The summary is written next to the output as ``OUT.summary.json`` (for a PNG sequence folder:
``OUT/summary.json``) and returned by ``render``. Messages name the ``cadl render`` flag of a bad knob.
"""
import contextlib
import dataclasses
import hashlib
import json
import logging
import operator
import os
import resource
import shutil
import tempfile
import time

from pipelines import atomic, geometry, media, owned, video_out
from pipelines.errors import CadlError
from pipelines.lock import LOCK_NAME, folder_lock
from pipelines.render_engine import SegmentPlan, render_segments, render_with_beam

log = logging.getLogger("cadl.render")
STATE = "state.json"


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Every knob of a render; the defaults are ``cadl render``'s.

    ``score``: the summary gets ``"score"``, the written film against its source (``pipelines.metrics``), at
    the model's input size (the source as the model saw it; the output, codec losses included, brought back
    to the model's pixels by the exact inverse of the render's enlargement), streamed: {"psnr": dB, "ssim",
    "ms_ssim" (None when the size holds fewer than 2 scales), "laplacian_ratio" (detail kept: render / source), "flicker_ratio"
    (frame-to-frame change: render / source), "frames", "size": [H, W], "reference": the source's path,
    "resolution": "model"}. Not with ``side_by_side`` or a PNG sequence output."""
    model: str                     # a run folder, its export/ folder, a .keras file or a symlink to one
    input: str                     # the film to render (anything ffmpeg reads)
    output: str                    # .mp4/.m4v, .mov, .mkv, or a path without extension: a PNG sequence folder
    codec: str = "auto"            # "auto" (by extension) or one of video_out.CODECS
    crf: int = 18                  # H.264 constant rate factor, 0 (lossless) .. 51; lower is better
    preset: str = "medium"         # H.264 speed/size trade-off, one of video_out.PRESETS
    pix_fmt: str = None            # encoded pixel format; None = the codec's default (yuv420p for H.264, ...)
    prores_profile: str = "hq"     # one of video_out.PRORES_PROFILES
    output_size: tuple = None      # (H, W) pixels of the output frame; None = the film's; letterboxed, not stretched
    scale: float = None            # output size as a factor of the film's (> 0); None = 1; not with output_size
    side_by_side: bool = False     # the original and the reconstruction next to each other (twice as wide)
    blend: float = None            # ALPHA in [0, 1]: ALPHA x reconstruction + (1 - ALPHA) x original; None = 1
    smooth: int = 1                # frames K (>= 1, rounded up to odd) over which each latent z is averaged
    attribute: tuple = ()          # ((NAME, AMOUNT), ...): add AMOUNT x that attribute's vector to every z
    attribute_data: str = None     # dataset the vectors come from; None = those saved in RUN/explore/
    audio: bool = True             # keep the source's audio
    audio_track: int = 0           # which of the source's audio tracks, counted from 0
    deinterlace: str = "auto"      # media.DEINTERLACE: "auto" deinterlaces interlaced films, "off" keeps fields
    stall_seconds: float = media.STALL_SECONDS  # give up on an ffmpeg process stuck this many seconds
    batch_size: int = 16           # frames per model call (>= 1)
    model_threads: int = 0         # CPU threads per model op (>= 0); 0 = half the cores without a GPU
    segment_seconds: float = 30.0  # seconds of film per committed segment (> 0): what a crash can lose
    overwrite: bool = False        # replace an existing output (only a file or a folder a render wrote)
    runner: str = None             # Apache Beam runner for the segments (DirectRunner, ...); None = local
    beam_args: tuple = ()          # further Beam pipeline options ("--direct_num_workers", "2", ...); needs runner
    score: bool = False            # add the render's quality figures against its source to the summary
    settings: dict = dataclasses.field(default=None, compare=False)  # {"job", "argv", "config_file",
    # "flags"}: how the command was asked for (jobs.config_file), recorded in the summary so it can be repeated

    def __post_init__(self):
        if self.blend is not None and not 0.0 <= self.blend <= 1.0:
            raise CadlError(f"--blend must be between 0 and 1, not {self.blend}")
        if self.smooth < 1:
            raise CadlError(f"--smooth must be at least 1 (1 = off), not {self.smooth}")
        if self.scale is not None and not self.scale > 0:
            raise CadlError(f"--scale must be positive, not {self.scale}")
        if self.batch_size < 1:
            raise CadlError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.model_threads < 0:
            raise CadlError(f"--model-threads must be 0 (automatic) or more, not {self.model_threads}")
        if not self.segment_seconds > 0:
            raise CadlError(f"--segment-seconds must be positive, not {self.segment_seconds}")
        if self.output_size is not None:
            if self.scale is not None:
                raise CadlError("--output-size and --scale: give one of them, not both")
            try:
                h, w = (operator.index(v) for v in self.output_size)
            except (TypeError, ValueError):
                raise CadlError(f"--output-size must be (H, W) in pixels, not {self.output_size!r}") from None
            try:
                size = geometry.parse_size(f"{h}x{w}")
            except ValueError as e:
                raise CadlError(f"--output-size: {e}") from None
            object.__setattr__(self, "output_size", size)
        if self.deinterlace not in media.DEINTERLACE:
            raise CadlError(f"deinterlace must be one of {', '.join(media.DEINTERLACE)}, not {self.deinterlace!r}")
        if self.score and self.side_by_side:
            raise CadlError("--score compares the render with its source: not with --side-by-side")
        object.__setattr__(self, "beam_args", tuple(self.beam_args))
        if self.beam_args and not self.runner:
            raise CadlError(f"Beam options need a runner: {' '.join(self.beam_args)}")

    @property
    def smooth_frames(self):
        """``smooth`` rounded up to odd: a window centred on its frame."""
        return self.smooth + (1 - self.smooth % 2)


def render(config):
    """Render ``config.input`` through ``config.model`` into ``config.output``; returns the summary."""
    with contextlib.ExitStack() as held:  # the output's lock, from where it is taken to the end
        return _render(config, held)


def _render(c, held):
    """``render``'s body; ``c`` is the config, ``held`` holds the output's lock until the render ends."""
    started, cpu = time.time(), {"start": _cpu_seconds()}
    fmt = video_out.output_format(c.output, c.codec, c.crf, c.preset, c.pix_fmt, c.prores_profile)
    if c.score and fmt.is_sequence:
        raise CadlError(f"{c.output}: --score needs a film output (.mp4, .mov, .mkv), not a PNG sequence")
    out = _check_paths(c, fmt)
    info = media.probe(c.input, c.stall_seconds)
    if c.audio and info.audio_tracks and not 0 <= c.audio_track < len(info.audio_tracks):
        raise CadlError(f"{c.input}: --audio-track {c.audio_track}: the film has "
                        f"{len(info.audio_tracks)} audio track{'s' if len(info.audio_tracks) != 1 else ''} "
                        f"(0..{len(info.audio_tracks) - 1})")
    t, cpu["before_load"] = time.time(), _cpu_seconds()
    model, model_file, model_threads = _load_model(c.model, c.model_threads)
    load_seconds, cpu["load"] = time.time() - t, _cpu_seconds() - cpu["before_load"]
    shift = _attribute_shift(c, model, model_file)
    layout = geometry.make_layout(info, model.config, fmt, c.output_size, c.scale, c.side_by_side, c.blend)
    work = WorkFolder(out)
    held.enter_context(work.locked())  # before the first write: a second render exits 75 here
    plan = SegmentPlan(info=info, layout=layout, fmt=fmt, parts=work.path,
                       segments=tuple(info.segments(c.segment_seconds)), smooth=c.smooth_frames,
                       batch_size=c.batch_size, deinterlace=c.deinterlace, stall_seconds=c.stall_seconds,
                       latent_shift=shift, model_threads=c.model_threads,
                       encoder_threads=_encoder_threads(model_threads))
    done = work.open(_fingerprint(info, model_file, plan), plan.segments, fmt)
    pending = [k for k in range(len(plan.segments)) if k not in done]
    resumed_at = plan.segments[pending[0]][0] if done and pending else (info.num_frames if done else 0)
    if done:
        log.info("resuming at frame %d (%d of %d segments already rendered in %s)", resumed_at, len(done),
                 len(plan.segments), work.path)
    # Film sizes as video tools write them (width x height); the model's as cadl's --size does (H x W).
    log.info("rendering %s (%d frames, %s fps%s, %dx%d) through %s (input HxW %dx%d, fit %s) -> %s [%s, %dx%d]",
             info.path, info.num_frames, _rate(info.fps), ", variable rate" if info.vfr else "", info.width,
             info.height, model_file, layout.model[0], layout.model[1], layout.fit, out, fmt.describe(),
             layout.frame_size[1], layout.frame_size[0])

    stats = {"frames": 0, "missing_source_frames": 0, "seconds": {}}
    t, cpu["before_render"] = time.time(), _cpu_seconds()
    if pending and c.runner:
        # Workers load the resolved .keras file: a LATEST symlink switched meanwhile cannot mix models.
        render_with_beam(plan, os.path.abspath(model_file), pending, ["--runner", c.runner] + list(c.beam_args))
        for k in pending:  # never trust the runner's "done": every segment there, with all its frames
            path, (first, stop) = plan.segment_path(k), plan.segments[k]
            if not os.path.exists(path):
                raise CadlError(f"{path}: the Beam pipeline did not produce this segment")
            got = video_out.segment_frames(path, fmt)
            if got != stop - first:
                raise CadlError(f"{path}: the Beam pipeline left {got} frames of this segment's {stop - first}")
            work.mark(k)
        stats["frames"] = sum(plan.segments[k][1] - plan.segments[k][0] for k in pending)
    elif pending:
        stats = _render_locally(plan, model, pending, work, done, out)
    render_seconds, cpu["render"] = time.time() - t, _cpu_seconds() - cpu["before_render"]
    stats["seconds"] = dict(stats["seconds"], load=load_seconds)  # the model's, before any frame

    t, cpu["before_join"] = time.time(), _cpu_seconds()
    seg_paths = [plan.segment_path(k) for k in range(len(plan.segments))]
    summary = {
        "input": os.path.abspath(info.path), "output": out, "model": os.path.abspath(c.model),
        "model_file": model_file, "runner": c.runner or "local", "format": fmt.describe(),
        "codec": fmt.codec, "source_frames": info.num_frames, "fps": _rate(info.fps), "vfr": info.vfr,
        "source_duration": info.duration, "width": layout.frame_size[1], "height": layout.frame_size[0],
        "model_size": list(layout.model), "fit": layout.fit, "segments": len(plan.segments),
        "resumed_at_frame": resumed_at if done else None, "frames_rendered_now": stats["frames"],
        "missing_source_frames": stats["missing_source_frames"],
        "source_display": {"width": info.width, "height": info.height, "rotation": info.rotation,
                           "sar": str(info.sar), "field_order": info.field_order,
                           "deinterlaced": info.interlaced and plan.deinterlace == "auto"},
        "audio_track": c.audio_track if info.audio_tracks and c.audio else None,
        "options": {"side_by_side": c.side_by_side, "blend": c.blend, "smooth": plan.smooth,
                    "batch_size": c.batch_size, "segment_seconds": c.segment_seconds,
                    "model_threads": model_threads, "encoder_threads": plan.encoder_threads,
                    "crf": c.crf if fmt.codec == "h264" else None,
                    "preset": c.preset if fmt.codec == "h264" else None, "pix_fmt": fmt.pix_fmt},
        "settings": c.settings,
    }
    if c.attribute:
        summary["attribute"] = {"amounts": dict(c.attribute), "data": c.attribute_data}
    if fmt.is_sequence:
        staging = os.path.join(work.path, "final")
        joined = video_out.join_sequence(seg_paths, staging, info, keep_audio=c.audio, audio_track=c.audio_track)
        summary.update(frames=joined["frames"], duration=info.duration, audio=joined["audio"],
                       audio_codec=joined["audio_codec"], audio_kept=joined["audio"] is not None)
        _finish_summary(summary, stats, render_seconds, time.time() - t, started, cpu)
        atomic.write_json(os.path.join(staging, "summary.json"), summary)
        owned.mark(staging, "frames")
        check_replaceable(out, c.input, c.model)  # again: the folder may have changed meanwhile
        video_out.publish(staging, out)
        summary_path = os.path.join(out, "summary.json")
    else:
        joined = video_out.join(seg_paths, plan.segments, out, fmt, info, keep_audio=c.audio,
                                audio_track=c.audio_track)
        result = joined["info"]
        summary.update(frames=result.num_frames, duration=result.duration, audio=joined["audio"],
                       audio_codec=joined["audio_codec"], audio_kept=joined["audio"] is not None)
        if c.score:
            summary["score"] = _score(c, info, layout, out)
        _finish_summary(summary, stats, render_seconds, time.time() - t, started, cpu)
        if c.score:  # the page beside the film: the figures and a strip of source over render
            summary["report"] = _score_page(out, summary, info, dataclasses.replace(result, path=out))
        summary_path = out + ".summary.json"
        atomic.write_json(summary_path, summary)
    work.remove()
    log.info("wrote %s: %d frames, %s fps, %.3f s, audio %s (%.1f s; summary %s)", out, summary["frames"],
             summary["fps"], summary["duration"], summary["audio"] or "none", summary["seconds"]["total"],
             summary_path)
    return summary


# ---- checks before any work ----

def _check_paths(c, fmt):
    """Refuse an output that is the input, exists (without ``overwrite``) or cannot be written; returns it absolute."""
    src = os.path.abspath(c.input)
    out = os.path.abspath(c.output).rstrip(os.sep)
    if os.path.realpath(out) == os.path.realpath(src) or (
            os.path.exists(out) and os.path.exists(src) and os.path.samefile(out, src)):
        raise CadlError(f"{c.output}: the output is the input film; choose another output path")
    if os.path.lexists(out) and not c.overwrite:
        raise CadlError(f"{c.output}: already exists (pass --overwrite to replace it)")
    if os.path.isdir(out) and not fmt.is_sequence:
        raise CadlError(f"{c.output}: is a folder; give a film file name")
    check_replaceable(out, c.input, c.model)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise CadlError(f"{c.output}: cannot create the output folder ({e.strerror})") from None
    try:  # really try: permissions, read-only filesystems, full quotas
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise CadlError(f"{c.output}: the folder {parent} is not writable ({e.strerror})") from None
    return out


def check_replaceable(out, input_path, model_path):
    """Raise unless ``out`` is absent, a file, or a PNG-sequence folder that cadl render wrote (its marker
    says so) holding neither the input nor the model: ``--overwrite`` replaces only a render's output."""
    if not os.path.isdir(out):
        return
    for what, path in (("the input film", input_path), ("the model", model_path)):
        if owned.within(path, out):
            raise CadlError(f"{out}: not replacing this folder: it holds {what} ({path})")
    if owned.kind_of(out) != "frames":
        raise CadlError(f"{out}: not replacing this folder: cadl render did not write it (no {owned.MARKER} "
                        f"marker of a PNG sequence); remove it yourself or choose another output")


def _load_model(path, threads=0):
    """(``export.Inference``, its .keras file, the CPU threads per op it was given or None)."""
    from pipelines import export  # TensorFlow loads here, after the cheap checks
    threads = export.share_cpu_with_ffmpeg(threads)
    try:
        model_file = export.resolve_model_path(path)
        model = export.load_inference(path)
    except CadlError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a broken model folder raises: one line naming it
        raise CadlError(f"{path}: cannot load the model ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    channels = int(model.config.get("channels", 3))
    if channels != 3:
        raise CadlError(f"{path}: the model was trained on {channels}-channel images; films are rendered "
                        f"in colour (3 channels): train on colour frames")
    return model, model_file, threads


def _encoder_threads(model_threads):
    """The encoder's share of the cores when the model computes on some of them (``model_threads``; None: on
    a GPU, or with TensorFlow's own pool): the rest, so that neither spins against the other; else ffmpeg's
    choice. On 2 cores, x264 on one thread takes 2.5 CPU s for what its default three take 3.0 to encode."""
    if model_threads is None:
        return 0
    return max(1, (os.cpu_count() or 1) - model_threads)


def _attribute_shift(c, model, model_file):
    """``--attribute``: the latent offset added to every frame's z (a tuple, picklable for Beam), or None."""
    if not c.attribute:
        return None
    from pipelines import latent
    return tuple(float(v) for v in latent.attribute_shift(model, model_file, c.attribute, c.attribute_data))


# ---- the work folder: committed segments and the state that says what they belong to ----

class WorkFolder:
    """``OUT.parts/``: committed segments and ``state.json`` (the command's fingerprint and progress)."""

    def __init__(self, output):
        self.path = os.path.abspath(os.fspath(output)).rstrip(os.sep) + ".parts"
        self.state_file = os.path.join(self.path, STATE)

    def check(self):
        """Raise unless ``OUT.parts`` is absent or a render's work folder (its marker, or an older render's
        ``state.json``): a folder of the user's that happens to sit there is never emptied."""
        if os.path.lexists(self.path) and not (
                os.path.isdir(self.path) and (owned.kind_of(self.path) == "parts" or
                                              os.path.isfile(self.state_file))):
            raise CadlError(f"{self.path}: is in the way of the render's work folder and is not cadl's "
                            f"(no {owned.MARKER} marker); move it or choose another output")

    def open(self, fingerprint, segments, fmt):
        """Prepare for rendering; returns the ids of segments already committed by an earlier run."""
        self.check()
        if os.path.isdir(self.path):
            try:
                state = atomic.read_json(self.state_file)
            except (OSError, ValueError):
                state = {}
            if state.get("fingerprint") != fingerprint or state.get("segments") != [list(s) for s in segments]:
                log.info("%s: left by a different command; starting over", self.path)
                self._clear()
        os.makedirs(self.path, exist_ok=True)
        owned.mark(self.path, "parts")
        for name in os.listdir(self.path):  # what a crash left half-written
            if name.startswith(".seg-"):
                full = os.path.join(self.path, name)
                shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
        self.fingerprint, self.segments = fingerprint, [list(s) for s in segments]
        self.done = {k for k in range(len(segments))
                     if os.path.exists(os.path.join(self.path, video_out.segment_name(k, fmt)))}
        self._save()
        return sorted(self.done)

    def mark(self, k):
        self.done.add(k)
        self._save()

    def _save(self):
        atomic.write_json(self.state_file, {"fingerprint": self.fingerprint, "segments": self.segments,
                                            "done": sorted(self.done), "updated": time.time()})

    @contextlib.contextmanager
    def locked(self):
        """Hold ``OUT.parts/.cadl-lock`` for the render: a second render to the same output exits 75 before
        it touches a segment. On leaving, a finished render's folder (or one with no work in it) is removed."""
        self.check()
        os.makedirs(self.path, exist_ok=True)
        owned.mark(self.path, "parts")
        lock = folder_lock(self.path, "render to this output").acquire()
        self.finished = False
        try:
            yield self
        finally:
            if self.finished or not os.path.exists(self.state_file):
                self._clear()
            lock.release()
            if self.finished or not os.path.exists(self.state_file):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.path, owned.MARKER))
                    os.rmdir(self.path)  # fails, rightly, if another render has just taken the folder

    def _clear(self):
        """Remove everything in the folder but its lock and marker."""
        for name in os.listdir(self.path):
            if not name.startswith((LOCK_NAME, owned.MARKER)):
                full = os.path.join(self.path, name)
                shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.remove(full)

    def remove(self):
        """The render is complete: the folder goes when the lock is released."""
        self.finished = True


def _fingerprint(info, model_file, plan):
    """What a resumed render must share with the one that left the segments: same film, model, layout, format."""
    stat = os.stat(model_file)
    what = {"input": [os.path.abspath(info.path), info.size_bytes, info.mtime],
            "model": [os.path.realpath(model_file), stat.st_size, stat.st_mtime],
            "layout": dataclasses.asdict(plan.layout), "format": dataclasses.asdict(plan.fmt),
            "smooth": plan.smooth, "batch_size": plan.batch_size, "deinterlace": plan.deinterlace,
            "latent_shift": plan.latent_shift}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


# ---- helpers of the render ----

def _cpu_seconds():
    """CPU seconds (user + system) of this process's threads and of its finished children (ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _finish_summary(summary, stats, render_seconds, join_seconds, started, cpu):
    seconds = {k: round(v, 3) for k, v in stats["seconds"].items()}
    seconds.update(render=round(render_seconds, 3), join=round(join_seconds, 3),
                   total=round(time.time() - started, 3))
    summary["seconds"] = seconds
    # CPU seconds of every thread and ffmpeg process, by stage: a render on a shared machine moves its wall
    # time more than these. "render" is the frames' part: decoding, the model, encoding the segments.
    now = _cpu_seconds()
    summary["cpu_seconds"] = {"load": round(cpu["load"], 3), "render": round(cpu["render"], 3),
                              "join": round(now - cpu["before_join"], 3), "total": round(now - cpu["start"], 3)}
    summary["render_fps"] = round(stats["frames"] / render_seconds, 2) if render_seconds > 0 else None


def _render_locally(plan, model, pending, work, done, out):
    from tqdm import tqdm

    total = plan.info.num_frames
    initial = sum(plan.segments[k][1] - plan.segments[k][0] for k in done)
    bar = tqdm(total=total, initial=initial, unit="frame", desc=os.path.basename(out), disable=None,
               mininterval=0.5, dynamic_ncols=True)

    def committed(k):
        work.mark(k)
        if bar.disable:
            log.info("segment %d/%d committed (frames %d..%d)", k + 1, len(plan.segments),
                     plan.segments[k][0], plan.segments[k][1] - 1)

    try:
        return render_segments(plan, model, pending, progress=bar.update, on_commit=committed)
    finally:
        bar.close()


def _score(c, info, layout, out):
    """The written film against its source at the model's input size (``RenderConfig`` says the keys)."""
    from pipelines import metrics

    t = time.time()
    figures = metrics.score_films(info.path, out, layout, deinterlace=c.deinterlace,
                                  stall_seconds=c.stall_seconds)
    log.info("score of %s against %s at %dx%d: PSNR %.2f dB, SSIM %.3f, Laplacian ratio %.2f, flicker ratio "
             "%.2f (%.1f s)", out, info.path, layout.model[0], layout.model[1], figures["psnr"] or 0.0,
             figures["ssim"] or 0.0, figures["laplacian_ratio"] or 0.0, figures["flicker_ratio"] or 0.0,
             time.time() - t)
    return dict(figures, reference=os.path.abspath(info.path), resolution="model")


def _score_page(out, summary, source, rendered, height=144):
    """``OUT.report.html`` (``pipelines.report.render_report``) with a strip of ``report.STRIP_FRAMES`` frames
    evenly spaced through the film, each read from the source and from the output at ``height`` pixels."""
    from pipelines import report

    n = min(source.num_frames, rendered.num_frames)
    picks = sorted({round(i * (n - 1) / max(report.STRIP_FRAMES - 1, 1)) for i in range(report.STRIP_FRAMES)})
    h = min(height, rendered.height)
    size = (h, max(2, round(h * rendered.width / rendered.height)))

    def frames(info):
        got = []
        for i in picks:
            got += [f for _, _, f in media.read_frames(info.path, size, "stretch", i, i + 1, info=info)]
        return got

    return report.render_report(out, summary, frames(source), frames(rendered))


def _rate(fps):
    return f"{fps.numerator}/{fps.denominator}" if fps.denominator != 1 else str(fps.numerator)
