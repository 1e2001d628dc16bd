"""``cadl render``: push a film through a trained VAE and write the reconstructed film.

    cadl render --model RUN_OR_MODEL --input FILM --output OUT [options] [--runner R  Beam options]

The path of a frame: decode and fit to the model's input with the policy the model was trained with (its
config's ``fit``), inside ffmpeg by the scaler extraction used (``media.read_frames(size=...)``; a second
decoder gives the frame at its own size when the output shows the original) -> z = the encoder's mean ->
decoder -> back into the source picture's geometry at the output size (the inverse of the fit: a crop's
reconstruction lands on the region the model saw, black around it; a pad's bars are cut off; a stretch is
undone) -> optional blend with the original and side-by-side -> the encoder (``pipelines.video_out``).

Decoding (an ffmpeg process, two with the original, and a thread), inference (the main thread) and encoding
(a thread feeding an ffmpeg process per segment, another thread committing finished segments) overlap through
bounded queues, so the render runs at about the speed of its slowest stage and holds a few batches of frames
whatever the film's length.

Work is committed in segments of ``--segment-seconds`` in ``OUT.parts/`` (``seg-00000.mp4``, ... and
``state.json``); a rerun of the same command resumes at the first unfinished segment ("resuming at frame
N"), and the segments are joined losslessly with the source's audio into ``OUT``, which appears atomically.
With ``--runner`` the missing segments are rendered in parallel by an Apache Beam pipeline (one element per
segment; each worker loads the model once) and joined the same way; the parts folder must then be on a
filesystem every worker sees.

The summary is written next to the output as ``OUT.summary.json`` (for a PNG sequence folder:
``OUT/summary.json``) and returned by ``run``.
"""
import argparse
import bisect
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

import jobs
from pipelines import atomic, geometry, media, owned, video_out
from pipelines.errors import CadlError
from pipelines.geometry import Layout, compose, from_model, make_layout  # noqa: F401 - the layout lives in geometry now
from pipelines.lock import LOCK_NAME, folder_lock

log = logging.getLogger("cadl.render")
STATE = "state.json"


def build_parser():
    p = argparse.ArgumentParser(
        prog="cadl render",
        description="Re-render a film through a trained VAE: same frames, exact frame rate and timing, "
                    "audio kept. Resumable (rerun the same command after a crash); --runner renders segments "
                    "in parallel with Apache Beam. Extra arguments after --runner are Beam pipeline options.",
        epilog="Writes OUT (atomically, when complete) and OUT.summary.json (for a PNG sequence: OUT/summary.json, "
               "with OUT/timestamps.txt and OUT/audio.mka); work in progress lives in OUT.parts/. The model's "
               "picture lands where the model saw it: with a crop-trained model on a film of another aspect "
               "ratio, the parts the model never saw stay black.")
    p.add_argument("--model", required=True,
                   help="trained model: a run folder, its export/ folder, a .keras file or a symlink to one "
                        "(e.g. WORKDIR/models/LATEST)")
    p.add_argument("--input", required=True, help="the film to render (anything ffmpeg reads)")
    p.add_argument("--output", required=True,
                   help="output film: .mp4/.m4v (H.264), .mov (ProRes), .mkv (H.264, or --codec ffv1|prores), "
                        "or a path without extension for a PNG frame sequence folder")
    p.add_argument("--codec", default="auto", choices=("auto",) + video_out.CODECS,
                   help="video codec (default: auto = h264 for .mp4/.m4v/.mkv, prores for .mov, png for a "
                        "folder); ffv1 (.mkv only) is lossless")
    p.add_argument("--crf", type=int, default=18,
                   help="H.264 quality: constant rate factor 0 (lossless) .. 51, lower is better (default: 18)")
    p.add_argument("--preset", default="medium", choices=video_out.PRESETS,
                   help="H.264 speed/size trade-off (default: medium)")
    p.add_argument("--pix-fmt", default=None,
                   help="encoded pixel format (default: yuv420p for H.264, which every player plays; "
                        "yuv422p10le for ProRes; bgr0 for FFV1; rgb24 for PNG)")
    p.add_argument("--prores-profile", default="hq", choices=tuple(video_out.PRORES_PROFILES),
                   help="ProRes profile (default: hq)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--output-size", default=None,
                      help="output frame size HxW in pixels (default: the film's own size); a different "
                           "aspect ratio is letterboxed, never stretched")
    size.add_argument("--scale", type=float, default=None,
                      help="output size as a factor of the film's size, e.g. 0.5 (default: 1)")
    p.add_argument("--side-by-side", action="store_true",
                   help="write the original and the reconstruction next to each other (twice as wide)")
    p.add_argument("--blend", type=float, default=None, metavar="ALPHA",
                   help="mix: ALPHA x reconstruction + (1 - ALPHA) x original, ALPHA in [0, 1] "
                        "(default: 1, the reconstruction alone)")
    p.add_argument("--smooth", type=int, default=1, metavar="K",
                   help="average each frame's latent z over the K frames centred on it (K rounded up to "
                        "odd) before decoding, to reduce flicker (default: 1 = off)")
    p.add_argument("--no-audio", action="store_true", help="leave the source's audio out")
    p.add_argument("--audio-track", type=int, default=0, metavar="N",
                   help="which of the source's audio tracks to keep, counted from 0 (default: 0, the first; "
                        "`cadl info FILM` lists them)")
    p.add_argument("--keep-fields", action="store_true",
                   help="interlaced films: do not deinterlace (default: deinterlace, as extraction does)")
    p.add_argument("--stall-seconds", type=float, default=media.STALL_SECONDS, metavar="SECONDS",
                   help="give up on an ffmpeg process whose output has not moved for SECONDS (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per model call (default: 16)")
    p.add_argument("--segment-seconds", type=float, default=10.0,
                   help="length of the committed segments in seconds of film: what a crash can lose and "
                        "the unit of parallel work (default: 10)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--runner", default=None,
                   help="render segments with an Apache Beam pipeline on this runner (DirectRunner, "
                        "FlinkRunner, ...); further Beam options follow, e.g. --direct_num_workers 2 "
                        "--direct_running_mode multi_processing (default: local streaming, no Beam)")
    return p


# ---- smoothing the latent trajectory ----

class LatentSmoother:
    """Centred moving average of z over ``2 * radius + 1`` frames, clipped at the film's ends.

    Frames come in index order (``push``); a frame is released once the frames ``radius`` after it have
    arrived. Frames before ``emit_start`` are context only: their z counts, they are not released.
    Memory: ``2 * radius + 1`` latents and the frames waiting for their future neighbours.
    """

    def __init__(self, radius, emit_start, emit_stop, last_index):
        self.radius, self.emit_start, self.emit_stop, self.last = radius, emit_start, emit_stop, last_index
        self.window = collections.deque()   # (index, z, frame or None)
        self.next = emit_start

    def push(self, index, z, frame):
        keep = frame if self.emit_start <= index < self.emit_stop else None
        self.window.append((index, z, keep))
        return self._release(index)

    def _release(self, newest):
        ready = []
        while self.next < self.emit_stop and newest >= min(self.next + self.radius, self.last):
            zs = [z for i, z, _ in self.window if abs(i - self.next) <= self.radius]
            frame = next(f for i, _, f in self.window if i == self.next)
            ready.append((self.next, np.mean(zs, axis=0), frame))
            self.next += 1
            while self.window and self.window[0][0] < self.next - self.radius:
                self.window.popleft()
        return ready


# ---- the streaming engine ----

@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything needed to render any segment of one film (picklable: Beam ships it to workers)."""
    info: media.VideoInfo
    layout: Layout
    fmt: video_out.VideoFormat
    parts: str                 # the work folder
    segments: tuple            # ((start, stop), ...) frame ranges
    smooth: int = 1
    batch_size: int = 16
    deinterlace: str = "auto"  # media.DEINTERLACE
    stall_seconds: float = media.STALL_SECONDS

    def segment_path(self, k):
        return os.path.join(self.parts, video_out.segment_name(k, self.fmt))

    def segment_of(self, index):
        return bisect.bisect_right([s for s, _ in self.segments], index) - 1


_END = object()


def decode_frames(info, layout, start, stop, deinterlace="auto", stall_seconds=None):
    """Yield ``(index, model input, source frame or None)`` for frames [start, stop) of the film.

    The model's input comes out of ffmpeg already fitted, by the scaler extraction fitted the training
    frames with (``media.read_frames(size=...)``; it works on the decoded YUV planes, so Python's
    ``fit_image`` on RGB would feed the model something else). When the output shows the original
    (``layout.needs_source``), a second decoder gives it at its own size, in step, so a side-by-side or a
    blend shows the same reconstruction as a plain render. A frame only one decoder could give is skipped
    (the caller counts it missing)."""
    fitted = media.read_frames(info.path, size=layout.model, fit=layout.fit, info=info, start=start, stop=stop,
                               deinterlace=deinterlace, stall_seconds=stall_seconds)
    if not layout.needs_source:
        with contextlib.closing(fitted):
            for index, _, frame in fitted:
                yield index, frame, None
        return
    full = media.read_frames(info.path, info=info, start=start, stop=stop, deinterlace=deinterlace,
                             stall_seconds=stall_seconds)
    with contextlib.closing(fitted), contextlib.closing(full):
        a, b = next(fitted, None), next(full, None)
        while a is not None and b is not None:
            if a[0] == b[0]:
                yield a[0], a[2], b[2]
                a, b = next(fitted, None), next(full, None)
            elif a[0] < b[0]:
                a = next(fitted, None)
            else:
                b = next(full, None)


def _contiguous(ids):
    runs = []
    for k in sorted(ids):
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def render_segments(plan, model, seg_ids, progress=None, on_commit=None):
    """Render and commit the segments ``seg_ids`` of ``plan`` with ``model`` (a ``vae.Inference``).

    Contiguous segments share one decoder; frames are batched within a segment (padded to a fixed batch
    size), so a segment's frames are identical whichever way the work is split. Returns statistics.
    """
    info, layout, B = plan.info, plan.layout, plan.batch_size
    n, radius = info.num_frames, plan.smooth // 2
    starts = [s for s, _ in plan.segments]
    stop_event = threading.Event()
    errors = []
    # Bounded queues: about three batches in flight whatever the film's length. Frames travel fitted to
    # the model's size; the full-size source frame only when the output shows it.
    frames_q = queue.Queue(maxsize=B)
    out_q = queue.Queue(maxsize=B)
    commit_q = queue.Queue(maxsize=1)
    stats = {"frames": 0, "missing_source_frames": 0, "seconds": collections.Counter()}

    # Time each stage spends blocked on its neighbours ("infer_waits_for_output": the encoder is slower).
    waits = {(id(frames_q), "put"): "decode_waits_for_infer", (id(frames_q), "get"): "infer_waits_for_input",
             (id(out_q), "put"): "infer_waits_for_output", (id(out_q), "get"): "encode_waits_for_input"}

    def put(q, item):
        t = time.perf_counter()
        try:
            while not stop_event.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False
        finally:
            if (id(q), "put") in waits:
                stats["seconds"][waits[id(q), "put"]] += time.perf_counter() - t

    def get(q):
        t = time.perf_counter()
        try:
            while True:
                try:
                    return q.get(timeout=0.1)
                except queue.Empty:
                    if stop_event.is_set():
                        return _END
        finally:
            if (id(q), "get") in waits:
                stats["seconds"][waits[id(q), "get"]] += time.perf_counter() - t

    def stage(fn):
        def body():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                errors.append(e)
                stop_event.set()
        return threading.Thread(target=body, daemon=True, name=fn.__name__)

    def decode():
        for run in _contiguous(seg_ids):
            first, last = plan.segments[run[0]][0], plan.segments[run[-1]][1]
            lo, hi = max(0, first - radius), min(n, last + radius)
            put(frames_q, ("run", first, last, lo, hi))
            expected, previous = lo, None
            t = time.perf_counter()
            with contextlib.closing(decode_frames(info, layout, lo, hi, plan.deinterlace,
                                                  plan.stall_seconds)) as frames:
                for index, x, frame in frames:
                    stats["seconds"]["decode"] += time.perf_counter() - t
                    item = (x, frame)
                    previous = item if previous is None else previous
                    while expected < index:  # a damaged frame: repeat the last good one, keep the count
                        stats["missing_source_frames"] += 1
                        if not put(frames_q, (expected,) + previous):
                            return
                        expected += 1
                    if not put(frames_q, (index,) + item):
                        return
                    previous, expected = item, index + 1
                    t = time.perf_counter()
            while expected < hi:
                stats["missing_source_frames"] += 1
                if not put(frames_q, (expected,) + previous):
                    return
                expected += 1
        put(frames_q, _END)

    def write():
        writer, k = None, None
        try:
            while True:
                item = get(out_q)
                if item is _END:
                    break
                index, recon, frame = item
                t = time.perf_counter()
                if writer is None:
                    k = plan.segment_of(index)
                    start, stop = plan.segments[k]
                    if index != start:
                        raise RuntimeError(f"segment {k} starts at frame {index}, expected {start}")
                    writer = video_out.SegmentWriter(plan.segment_path(k), plan.fmt, layout.frame_size,
                                                     video_out.segment_timing(info, start, stop), start, stop)
                writer.write(compose(frame, recon, layout))
                stats["seconds"]["encode"] += time.perf_counter() - t
                stats["frames"] += 1
                if progress:
                    progress(1)
                if index == plan.segments[k][1] - 1:
                    if not put(commit_q, (k, writer)):
                        break
                    writer = None
        finally:
            if writer is not None:
                writer.abort()
            put(commit_q, _END)

    def commit():
        while True:
            item = get(commit_q)
            if item is _END:
                return
            k, writer = item
            t = time.perf_counter()
            try:
                writer.commit()
            finally:
                stats["seconds"]["encode_flush"] += time.perf_counter() - t
            if on_commit:
                on_commit(k)

    threads = [stage(decode), stage(write), stage(commit)]
    for thread in threads:
        thread.start()
    try:
        _infer(plan, model, get, put, frames_q, out_q, starts, radius, stats)
    except BaseException as e:
        errors.append(e)
        stop_event.set()
    for thread in threads:
        thread.join()
    # A committer that stopped early leaves writers in its queue: stop their encoders.
    while True:
        try:
            item = commit_q.get_nowait()
        except queue.Empty:
            break
        if item is not _END:
            item[1].abort()
    if errors:
        raise errors[0]
    stats["seconds"] = dict(stats["seconds"])
    return stats


def _infer(plan, model, get, put, frames_q, out_q, starts, radius, stats):
    """The main thread's stage: batches of (index, model input, source frame or None) -> model ->
    (index, reconstruction, source frame or None), in order."""
    B = plan.batch_size
    batch, smoother, emit = [], None, (0, 0)
    pending = []  # smoothed latents waiting to be decoded: (index, z, frame)

    def run_model(fn, inputs):
        t = time.perf_counter()
        x = np.stack(inputs)
        if len(x) < B:  # a fixed batch shape: one traced graph, and results independent of the split
            x = np.concatenate([x, np.zeros((B - len(x),) + x.shape[1:], x.dtype)])
        y = fn(x)[:len(inputs)]
        seconds = time.perf_counter() - t
        stats["seconds"]["infer"] += seconds
        if "infer_first_call" not in stats["seconds"]:  # tracing the graph: a fixed cost, counted in infer
            stats["seconds"]["infer_first_call"] = seconds
        return y

    def decode_pending(force=False):
        while pending and (force or len(pending) >= B):
            chunk, pending[:] = pending[:B], pending[B:]
            images = run_model(model.decode, [z for _, z, _ in chunk])
            for (index, _, frame), image in zip(chunk, images):
                if not put(out_q, (index, image, frame)):
                    return False
        return True

    def flush():
        if not batch:
            return True
        inputs = [x for _, x, _ in batch]
        if radius == 0:
            images = run_model(model.reconstruct, inputs)
            for (index, _, frame), image in zip(batch, images):
                if emit[0] <= index < emit[1] and not put(out_q, (index, image, frame)):
                    return False
        else:
            zs = run_model(model.encode, inputs)
            for (index, _, frame), z in zip(batch, zs):
                pending.extend(smoother.push(index, z, frame))
            if not decode_pending():
                return False
        batch.clear()
        return True

    while True:
        item = get(frames_q)
        if item is _END:
            break
        if item[0] == "run":
            if not flush() or not decode_pending(force=True):
                return
            _, first, last, lo, hi = item
            emit = (first, last)
            smoother = LatentSmoother(radius, first, last, hi - 1) if radius else None
            continue
        index = item[0]
        if batch and (len(batch) == B or bisect.bisect_right(starts, index) !=
                      bisect.bisect_right(starts, batch[-1][0])):
            if not flush():
                return
        batch.append(item)
    if flush() and decode_pending(force=True):
        put(out_q, _END)


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


def _fingerprint(args, info, model_file, plan):
    stat = os.stat(model_file)
    what = {"input": [os.path.abspath(info.path), info.size_bytes, info.mtime],
            "model": [os.path.realpath(model_file), stat.st_size, stat.st_mtime],
            "layout": dataclasses.asdict(plan.layout), "format": dataclasses.asdict(plan.fmt),
            "smooth": plan.smooth, "batch_size": plan.batch_size, "deinterlace": plan.deinterlace}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


# ---- Beam: segments in parallel ----

def _render_segment_fn():
    """The DoFn class, built on first use: Beam is imported only by renders that ask for it (a local render
    starts a second sooner). Beam's default pickler (cloudpickle) ships the class by value."""
    import apache_beam as beam

    class RenderSegmentFn(beam.DoFn):
        """Renders one segment per element; each worker loads the model once (``setup``)."""

        def __init__(self, plan, model_path):
            self.plan, self.model_path = plan, model_path
            self.frames = beam.metrics.Metrics.counter("render", "frames")
            self.segments = beam.metrics.Metrics.counter("render", "segments")

        def setup(self):
            from pipelines import export
            self.model = export.load_inference(self.model_path)

        def process(self, k):
            stats = render_segments(self.plan, self.model, [k])
            self.frames.inc(stats["frames"])
            self.segments.inc()
            log.info("segment %d: frames %d..%d rendered", k, *self.plan.segments[k])
            yield k

    return RenderSegmentFn


def render_with_beam(plan, model_path, pending, beam_args):
    """Render the segments ``pending`` in parallel: one element per segment, spread over the workers."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        _ = (p
             | "Segments" >> beam.Create(pending)
             | "Spread" >> beam.Reshuffle()
             | "Render" >> beam.ParDo(_render_segment_fn()(plan, model_path)))


# ---- the job ----

def _check_paths(args, fmt):
    src = os.path.abspath(args.input)
    out = os.path.abspath(args.output).rstrip(os.sep)
    if os.path.realpath(out) == os.path.realpath(src) or (
            os.path.exists(out) and os.path.exists(src) and os.path.samefile(out, src)):
        raise CadlError(f"{args.output}: the output is the input film; choose another output path")
    if os.path.lexists(out) and not args.overwrite:
        raise CadlError(f"{args.output}: already exists (pass --overwrite to replace it)")
    if os.path.isdir(out) and not fmt.is_sequence:
        raise CadlError(f"{args.output}: is a folder; give a film file name")
    check_replaceable(out, args.input, args.model)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise CadlError(f"{args.output}: cannot create the output folder ({e.strerror})") from None
    try:  # really try: permissions, read-only filesystems, full quotas
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise CadlError(f"{args.output}: the folder {parent} is not writable ({e.strerror})") from None
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


def _check_options(args):
    if args.blend is not None and not 0.0 <= args.blend <= 1.0:
        raise CadlError(f"--blend must be between 0 and 1, not {args.blend}")
    if args.smooth < 1:
        raise CadlError(f"--smooth must be at least 1 (1 = off), not {args.smooth}")
    if args.scale is not None and not args.scale > 0:
        raise CadlError(f"--scale must be positive, not {args.scale}")
    if args.batch_size < 1:
        raise CadlError(f"--batch-size must be at least 1, not {args.batch_size}")
    if not args.segment_seconds > 0:
        raise CadlError(f"--segment-seconds must be positive, not {args.segment_seconds}")
    if args.output_size is None:
        return None
    try:
        return geometry.parse_size(args.output_size)
    except ValueError as e:
        raise CadlError(f"--output-size: {e}") from None


def _load_model(path):
    from pipelines import export  # TensorFlow loads here, after the cheap checks
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
    return model, model_file


def run(argv=None):
    with contextlib.ExitStack() as held:  # the output's lock, from where it is taken to the end
        return _run(argv, held)


def _run(argv, held):
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.runner:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam options need --runner)")
    started = time.time()
    output_size = _check_options(args)
    fmt = video_out.output_format(args.output, args.codec, args.crf, args.preset, args.pix_fmt,
                                  args.prores_profile)
    out = _check_paths(args, fmt)
    info = media.probe(args.input, args.stall_seconds)
    if not args.no_audio and info.audio_tracks and not 0 <= args.audio_track < len(info.audio_tracks):
        raise CadlError(f"{args.input}: --audio-track {args.audio_track}: the film has "
                        f"{len(info.audio_tracks)} audio track{'s' if len(info.audio_tracks) != 1 else ''} "
                        f"(0..{len(info.audio_tracks) - 1})")
    t = time.time()
    model, model_file = _load_model(args.model)
    load_seconds = time.time() - t
    layout = make_layout(info, model.config, fmt, output_size, args.scale, args.side_by_side, args.blend)
    work = WorkFolder(out)
    held.enter_context(work.locked())  # before the first write: a second render exits 75 here
    plan = Plan(info=info, layout=layout, fmt=fmt, parts=work.path,
                segments=tuple(info.segments(args.segment_seconds)),
                smooth=args.smooth + (1 - args.smooth % 2), batch_size=args.batch_size,
                deinterlace="off" if args.keep_fields else "auto", stall_seconds=args.stall_seconds)
    done = work.open(_fingerprint(args, info, model_file, plan), plan.segments, fmt)
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
    t = time.time()
    if pending and args.runner:
        # Workers load the resolved .keras file: a LATEST symlink switched meanwhile cannot mix models.
        render_with_beam(plan, os.path.abspath(model_file), pending, ["--runner", args.runner] + beam_args)
        for k in pending:
            if not os.path.exists(plan.segment_path(k)):
                raise CadlError(f"{plan.segment_path(k)}: the Beam pipeline did not produce this segment")
            work.mark(k)
        stats["frames"] = sum(plan.segments[k][1] - plan.segments[k][0] for k in pending)
    elif pending:
        stats = _render_locally(plan, model, pending, work, done, out)
    render_seconds = time.time() - t
    stats["seconds"] = dict(stats["seconds"], load=load_seconds)  # the model's, before any frame

    t = time.time()
    seg_paths = [plan.segment_path(k) for k in range(len(plan.segments))]
    summary = {
        "input": os.path.abspath(info.path), "output": out, "model": os.path.abspath(args.model),
        "model_file": model_file, "runner": args.runner or "local", "format": fmt.describe(),
        "codec": fmt.codec, "source_frames": info.num_frames, "fps": _rate(info.fps), "vfr": info.vfr,
        "source_duration": info.duration, "width": layout.frame_size[1], "height": layout.frame_size[0],
        "model_size": list(layout.model), "fit": layout.fit, "segments": len(plan.segments),
        "resumed_at_frame": resumed_at if done else None, "frames_rendered_now": stats["frames"],
        "missing_source_frames": stats["missing_source_frames"],
        "source_display": {"width": info.width, "height": info.height, "rotation": info.rotation,
                           "sar": str(info.sar), "field_order": info.field_order,
                           "deinterlaced": info.interlaced and plan.deinterlace == "auto"},
        "audio_track": args.audio_track if info.audio_tracks and not args.no_audio else None,
        "options": {"side_by_side": args.side_by_side, "blend": args.blend, "smooth": plan.smooth,
                    "batch_size": args.batch_size, "segment_seconds": args.segment_seconds,
                    "crf": args.crf if fmt.codec == "h264" else None,
                    "preset": args.preset if fmt.codec == "h264" else None, "pix_fmt": fmt.pix_fmt},
    }
    if fmt.is_sequence:
        staging = os.path.join(work.path, "final")
        joined = video_out.join_sequence(seg_paths, staging, info, keep_audio=not args.no_audio,
                                         audio_track=args.audio_track)
        summary.update(frames=joined["frames"], duration=info.duration, audio=joined["audio"],
                       audio_codec=joined["audio_codec"], audio_kept=joined["audio"] is not None)
        _finish_summary(summary, stats, render_seconds, time.time() - t, started)
        atomic.write_json(os.path.join(staging, "summary.json"), summary)
        owned.mark(staging, "frames")
        check_replaceable(out, args.input, args.model)  # again: the folder may have changed meanwhile
        video_out.publish(staging, out)
        summary_path = os.path.join(out, "summary.json")
    else:
        joined = video_out.join(seg_paths, plan.segments, out, fmt, info, keep_audio=not args.no_audio,
                                audio_track=args.audio_track)
        result = joined["info"]
        summary.update(frames=result.num_frames, duration=result.duration, audio=joined["audio"],
                       audio_codec=joined["audio_codec"], audio_kept=joined["audio"] is not None)
        _finish_summary(summary, stats, render_seconds, time.time() - t, started)
        summary_path = out + ".summary.json"
        atomic.write_json(summary_path, summary)
    work.remove()
    log.info("wrote %s: %d frames, %s fps, %.3f s, audio %s (%.1f s; summary %s)", out, summary["frames"],
             summary["fps"], summary["duration"], summary["audio"] or "none", summary["seconds"]["total"],
             summary_path)
    return summary


def _finish_summary(summary, stats, render_seconds, join_seconds, started):
    seconds = {k: round(v, 3) for k, v in stats["seconds"].items()}
    seconds.update(render=round(render_seconds, 3), join=round(join_seconds, 3),
                   total=round(time.time() - started, 3))
    summary["seconds"] = seconds
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


def _rate(fps):
    return f"{fps.numerator}/{fps.denominator}" if fps.denominator != 1 else str(fps.numerator)


if __name__ == "__main__":
    sys.exit(jobs.main(run))
