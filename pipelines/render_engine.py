"""The render's engine: frames of a film -> the model -> committed output segments.

Decoding (an ffmpeg process, two with the original, and a thread), inference (the caller's thread) and
encoding (a thread feeding an ffmpeg process per segment, another thread committing finished segments)
overlap through bounded queues, so a render runs at about the speed of its slowest stage and holds a few
batches of frames whatever the film's length. ``render_with_beam`` spreads segments over Beam workers
instead; each renders its segments with the same ``render_segments``, so the frames are identical.

Nothing here knows about command lines or the work folder: ``pipelines.render`` drives it.
"""
import bisect
import collections
import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time

import numpy as np

from pipelines import geometry, media, video_out

log = logging.getLogger("cadl.render")


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
class SegmentPlan:
    """Everything needed to render any segment of one film (picklable: Beam ships it to workers)."""
    info: media.VideoInfo
    layout: geometry.Layout
    fmt: video_out.VideoFormat
    parts: str                 # the work folder
    segments: tuple            # ((start, stop), ...) frame ranges
    smooth: int = 1            # frames averaged per latent: odd, 1 = off
    latent_shift: tuple = None  # added to every frame's z before decoding (--attribute), None = off
    batch_size: int = 16       # frames per model call
    model_threads: int = 0     # RenderConfig.model_threads: what a Beam worker gives its model (0 = automatic)
    encoder_threads: int = 0   # ffmpeg's encoder threads per segment; 0 = its own choice (every core)
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
    """Render and commit the segments ``seg_ids`` of ``plan`` with ``model`` (an ``export.Inference``).

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
                                                     video_out.segment_timing(info, start, stop), start, stop,
                                                     threads=plan.encoder_threads)
                writer.write(geometry.compose(frame, recon, layout))
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
        if radius == 0 and plan.latent_shift is None:
            images = run_model(model.reconstruct, inputs)
            for (index, _, frame), image in zip(batch, images):
                if emit[0] <= index < emit[1] and not put(out_q, (index, image, frame)):
                    return False
        else:
            zs = run_model(model.encode, inputs)
            if plan.latent_shift is not None:
                zs = zs + np.asarray(plan.latent_shift, zs.dtype)
            for (index, _, frame), z in zip(batch, zs):
                if smoother is not None:
                    pending.extend(smoother.push(index, z, frame))
                elif emit[0] <= index < emit[1]:
                    pending.append((index, z, frame))
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


# ---- Beam: segments in parallel ----

def _render_segment_fn():
    """The DoFn class, built on first use: Beam is imported only by renders that ask for it (its import is
    slow and a local render has no use for it). Beam's default pickler (cloudpickle) ships the class by value;
    a worker imports only ``pipelines`` modules for it, never a job's."""
    import apache_beam as beam

    class RenderSegmentFn(beam.DoFn):
        """Renders one segment per element; each worker loads the model once (``setup``)."""

        def __init__(self, plan, model_path):
            self.plan, self.model_path = plan, model_path
            self.frames = beam.metrics.Metrics.counter("render", "frames")
            self.segments = beam.metrics.Metrics.counter("render", "segments")

        def setup(self):
            from pipelines import export
            export.share_cpu_with_ffmpeg(self.plan.model_threads)
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

    from pipelines import dask_runner, extract_beam

    options, runner = dask_runner.pipeline_options_for(beam_args)  # DaskRunner: cadl's (pipelines.dask_runner)
    with extract_beam.make_pipeline(runner, options) as p:
        _ = (p
             | "Segments" >> beam.Create(pending)
             | "Spread" >> beam.Reshuffle()
             | "Render" >> beam.ParDo(_render_segment_fn()(plan, model_path)))
