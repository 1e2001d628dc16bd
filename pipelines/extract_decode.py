"""The extraction pipeline's decoders (Beam DoFns): inputs -> fitted, encoded pictures as records.

    films   SegmentFilm: probe, sampling, validation blocks, segments cut right after keyframes (work items)
            DecodeFilmSegment: ffmpeg decodes and scales one segment -> records
    stills  DecodeStills: a batch of images or a CelebA index range -> records

Each yields records (split, key, serialized ``tf.train.Example``) as its main output, and tagged "report"
(per-input facts, counts, skipped inputs, lost frames) and "moments" (per-pixel sums) outputs, which
``pipelines.extract_beam`` combines and writes for the driver (``pipelines.extract``) to finalize.

A long film becomes many segments (separate work items), so every worker decodes a piece of it, and memory
is one frame per worker whatever the film's length. A worker that probes or decodes a remote film (``gs://``,
``s3://``, ...) first copies it to a local file (``storage.films``: one copy per worker process, reused by its
later segments of that film), because ffmpeg seeks in the file; stills and CelebA's zip are read in place.

No worker imports TensorFlow (seconds and most of a gigabyte per process): records are written by
``schema.RecordEncoder``.
"""
import bisect
import dataclasses
import hashlib
import logging
import math
import os
import socket
import struct
import zipfile
import zlib
from fractions import Fraction

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.metrics import Metrics

from pipelines import geometry, media, storage
from pipelines.celeba import CelebA
from pipelines.errors import CadlError
from pipelines.schema import RecordEncoder

log = logging.getLogger("cadl.extract")
NAMESPACE = "cadl.extract"       # Beam metrics namespace


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a worker needs, fixed when the pipeline is built (pickled into the DoFns): the run's
    ``pipelines.extract.ExtractConfig`` (every knob, with its units and choices) and where this run's work
    goes. What workers need in another form than the config's is derived here, once."""
    config: object               # pipelines.extract.ExtractConfig
    tmp_dir: str = ""            # where parts, the report and the moments go before finalizing
    png_level: int = 1           # zlib level 0..9 (with the RLE strategy below the level matters little)
    decoder_threads: int = 1     # ffmpeg decoder threads per segment (parallelism comes from workers)
    workers: int = 0             # workers the runner decodes with (0: not known, e.g. a remote runner)

    @property
    def compression(self):
        """TFRecord's name of the shards' compression: "" | "GZIP"."""
        return "GZIP" if self.config.compression == "gzip" else ""

    @property
    def shard_bytes(self):
        """Target shard size in bytes when num_shards is 0."""
        return int(self.config.shard_mb * 2 ** 20)

    @property
    def suffix(self):
        return ".tfrecord.gz" if self.compression == "GZIP" else ".tfrecord"

# Films cut by work when config.segment_seconds is None (``segment_seconds``).
AUTO_SEGMENT_SECONDS = 10.0      # a work item is never shorter than this
SEGMENT_PIXELS = 2 ** 29         # decoded pixels per work item at least (1,200 frames of 768x576, 10 s of 1080p
#                                  at 25 fps), so ffmpeg's start and seek and Beam's bundle stay ~2% of its work
SEGMENTS_PER_WORKER = 2          # a long film gives each worker this many, so none waits long at the end


def segment_seconds(info, lo, hi, workers=0):
    """The least length in seconds of the work items frames lo..hi-1 of a film are cut into, sized by their
    work rather than by a fixed time: as many as hold ``SEGMENT_PIXELS`` decoded pixels each; with
    ``workers`` known, at most ``SEGMENTS_PER_WORKER`` per worker and a multiple of the workers (each extra
    item costs an ffmpeg start and a seek from its keyframe; an odd one leaves a worker idle at the end)."""
    span = float((info.pts[hi - 1] - info.pts[lo]) * info.time_base) + 1 / float(info.fps)
    pixels = max(1, info.coded_width * info.coded_height or info.width * info.height)
    count = max(1, (hi - lo) * pixels // SEGMENT_PIXELS)
    if workers > 0:
        count = min(count, SEGMENTS_PER_WORKER * workers)
        if count > workers:
            count -= count % workers
    return max(AUTO_SEGMENT_SECONDS, span / count)


def unit_hash(*parts):
    """A stable number in [0, 1) from ``parts`` (the same on every machine and Python run)."""
    digest = hashlib.md5("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def still_split(rel, fraction):
    """Split of a still from an image folder: a hash of its path relative to the folder given."""
    return "validation" if unit_hash("image", rel) < fraction else "train"


def validation_blocks(name, duration, block, fraction, timestamps=None):
    """Indices of the ``block``-second blocks of film ``name`` that go to validation.

    A block is chosen when the hash of (name, block) falls below ``fraction``; a film with two or more blocks
    and none chosen gives its lowest-hashed block, so every film of some length has validation frames; a
    film within a single block gives none (its only frames are for training).
    With ``timestamps`` (every frame's seconds from the first) only blocks that hold a frame are candidates:
    nothing here is sized by a duration a header merely claims.
    """
    if fraction <= 0 or block <= 0:
        return frozenset()
    if timestamps is not None:
        candidates = sorted({int(t // block) for t in timestamps})
    else:
        candidates = range(max(1, math.ceil(duration / block)))
    if len(candidates) < 2:
        return frozenset()  # a film within one block (a single frame, a short clip) is all for training
    hashes = {b: unit_hash("film", name, b) for b in candidates}
    chosen = {b for b, h in hashes.items() if h < fraction}
    if not chosen and len(hashes) >= 2:
        chosen = {min(hashes, key=hashes.get)}
    return frozenset(chosen)


# -- per-pixel statistics --------------------------------------------------------------------------------
class _Moments:
    """Exact per-pixel count, sum and sum of squares of RGB uint8 pictures.

    Accumulates in uint32 with in-place adds (faster than int64 temporaries) and folds into int64
    before a sum of squares could overflow (65025 * 66051 > 2**32).
    """

    _FOLD_EVERY = 60000

    def __init__(self, size):
        self.count, self.size, self._pending = 0, size, 0
        self.sum = self.sumsq = self._sum32 = self._sq32 = None

    def add(self, rgb):
        if self._sum32 is None:
            self._sum32 = np.zeros(rgb.shape, np.uint32)
            self._sq32 = np.zeros(rgb.shape, np.uint32)
            self.sum = np.zeros(rgb.shape, np.int64)
            self.sumsq = np.zeros(rgb.shape, np.int64)
        np.add(self._sum32, rgb, out=self._sum32, casting="unsafe")
        square = rgb.astype(np.uint16)
        square *= square
        np.add(self._sq32, square, out=self._sq32, casting="unsafe")
        self.count += 1
        self._pending += 1
        if self._pending >= self._FOLD_EVERY:
            self._fold()

    def _fold(self):
        if self._pending:
            self.sum += self._sum32
            self.sumsq += self._sq32
            self._sum32[...] = 0
            self._sq32[...] = 0
            self._pending = 0

    def value(self):
        self._fold()
        return (self.count, self.sum, self.sumsq)


# -- the DoFns ------------------------------------------------------------------------------------------
class _Encode:
    """The encoding shared by the decoders: an RGB picture -> PNG or JPEG bytes."""

    def __init__(self, settings):
        self.settings = settings
        self.png = settings.config.format == "png"
        self.params = [cv2.IMWRITE_JPEG_QUALITY, settings.config.quality]

    def __call__(self, rgb):
        if self.png:
            return encode_png(rgb, self.settings.png_level)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), self.params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {rgb.shape} picture as JPEG")
        return data.tobytes()


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = _png_chunk(b"IEND", b"")


def encode_png(rgb, level=1):
    """An (H, W, 3) uint8 RGB picture as an 8-bit RGB PNG: every row with the "up" filter, deflated with
    run-length zlib. Written here rather than by OpenCV's libpng, which takes BGR (a swap to make) and swaps it
    back: the same bytes for ~10% less CPU per picture (zlib is the rest; figures in benchmarks/extract_bench.py)."""
    h, w, channels = rgb.shape
    flat = rgb.reshape(h, w * channels)
    rows = np.empty((h, w * channels + 1), np.uint8)
    rows[:, 0] = 2                     # filter type "up": each byte minus the one above it (mod 256)
    rows[0, 1:] = flat[0]              # the row above the first is zeros
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])
    deflate = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = deflate.compress(rows) + deflate.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    return b"".join((_PNG_START, _png_chunk(b"IHDR", header), _png_chunk(b"IDAT", data), _PNG_END))


def _skip(counter, path, reason):
    counter.inc()
    log.warning("skipping %s: %s", path, reason)
    return beam.pvalue.TaggedOutput("report", ("skip", path, reason))


class SegmentFilm(beam.DoFn):
    """Film input -> its time segments (work items), plus a report of the film's facts."""

    def __init__(self, settings):
        self.settings = settings
        self.bad = Metrics.counter(NAMESPACE, "bad_inputs")
        self.segments = Metrics.counter(NAMESPACE, "film_segments")

    def process(self, item):
        if not storage.is_url(item.path):
            yield from self._plan(item, item.path)
            return
        # A remote film: probed and scanned for keyframes here, in a local copy that this worker's decoders
        # of the film's segments may reuse.
        try:
            local = storage.films.acquire(item.path, item.size)
        except OSError as e:
            yield _skip(self.bad, item.path, f"cannot read ({e})")
            return
        try:
            yield from self._plan(item, local)
        finally:
            storage.films.release(item.path, item.size)

    def _plan(self, item, local):
        """``local``: the film's path, or the path of its local copy."""
        c = self.settings.config
        if _is_text(local):
            # ffmpeg's "tty" demuxer would happily render a text file as a film of ANSI art.
            yield _skip(self.bad, item.path, "not media (a text file)")
            return
        try:
            info = media.probe(local, c.stall_seconds)
        except media.MediaError as e:
            yield _skip(self.bad, item.path, str(e).replace(f"{local}: ", "", 1))
            return
        tb = info.time_base
        # Frames lo..hi-1 lie in [start, end) seconds from the first frame.
        lo = bisect.bisect_left(info.pts, info.pts[0] + Fraction(str(c.start)) / tb) if c.start > 0 else 0
        hi = (bisect.bisect_left(info.pts, info.pts[0] + Fraction(str(c.end)) / tb)
              if c.end is not None else info.num_frames)
        facts = {"kind": "film", "size": item.size, "mtime": item.mtime, "num_frames": info.num_frames,
                 "fps": f"{info.fps.numerator}/{info.fps.denominator}", "vfr": info.vfr,
                 "duration": info.duration, "width": info.width, "height": info.height,
                 "video_codec": info.video_codec, "audio_codec": info.audio_codec,
                 "coded_size": [info.coded_width, info.coded_height], "sar": str(info.sar),
                 "rotation": info.rotation, "field_order": info.field_order, "pix_fmt": info.pix_fmt,
                 "start_time": info.start_time, "probe": info.probe_method,
                 "deinterlaced": info.interlaced and c.deinterlace == "auto"}
        if lo >= hi:
            yield beam.pvalue.TaggedOutput("report", ("facts", item.path, facts))
            yield _skip(self.bad, item.path, f"no frames between {c.start} s and {c.end} s")
            return
        blocks = validation_blocks(os.path.basename(item.path), info.duration, c.validation_block,
                                   c.validation_fraction, (float((p - info.pts[0]) * tb) for p in info.pts))
        seconds = segment_seconds(info, lo, hi, self.settings.workers) if c.segment_seconds is None else \
            c.segment_seconds
        ranges = media.keyframe_segments(info, info.keyframes, seconds, lo, hi)
        facts.update(keyframes=len(info.keyframes), segments=len(ranges))
        yield beam.pvalue.TaggedOutput("report", ("facts", item.path, facts))
        if info.gaps:
            # Frames the container itself lost (a damaged stretch the demuxer skipped): reported like the
            # frames a decoder cannot give.
            yield beam.pvalue.TaggedOutput("report", ("lost", item.path, {
                "frames": sum(g[2] for g in info.gaps), "from": round(info.gaps[0][0], 3),
                "to": round(info.gaps[-1][1], 3)}))
        log.info("%s: %d frames, %s fps, %.1f s: %d segment%s", item.path, info.num_frames, facts["fps"],
                 info.duration, len(ranges), "" if len(ranges) == 1 else "s")
        for number, (a, b) in enumerate(ranges, 1):
            # Ship only this segment's timestamps (and the one before, for seeking and --fps): memory per
            # work item stays small however long the film is.
            window = _PtsWindow(info.pts, max(0, a - 1), b)
            self.segments.inc()
            yield {"path": item.path, "size": item.size,
                   "info": dataclasses.replace(info, path=item.path, pts=window, keyframes=(), gaps=()),
                   "start": a, "stop": b, "first": lo, "blocks": blocks, "number": number, "of": len(ranges)}


def _is_text(path):
    """True when the file starts with a few KB of UTF-8 text and no NUL byte (no film container does)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # a multi-byte character cut at the end of the block
    return True


class _PtsWindow:
    """The timestamps ``pts[lo:hi]`` of a film (plus ``pts[0]``), indexed by absolute frame index: what
    ``media.read_frames`` needs to decode frames lo+1..hi-1 with their true indices."""

    def __init__(self, pts, lo, hi):
        self.n, self.lo, self.first, self.values = len(pts), lo, pts[0], tuple(pts[lo:hi])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(self.n)
            if start < self.lo or stop > self.lo + len(self.values):
                raise IndexError(f"frames {start}..{stop} are outside this segment's window")
            return self.values[start - self.lo:stop - self.lo:step]
        if i < 0:
            i += self.n
        if i == 0:
            return self.first
        if not self.lo <= i < self.lo + len(self.values):
            raise IndexError(f"frame {i} is outside this segment's window")
        return self.values[i - self.lo]


def _selected(segment, config):
    """Indices of the segment's frames that the sampling options keep."""
    info, first = segment["info"], segment["first"]
    indices = range(segment["start"], segment["stop"])
    if config.fps:
        rate, tb, origin = Fraction(str(config.fps)), info.time_base, info.pts[0]

        def tick(i):
            return math.floor((info.pts[i] - origin) * tb * rate)
        return {i for i in indices if i == first or tick(i) != tick(i - 1)}
    if config.every > 1:
        return {i for i in indices if (i - first) % config.every == 0}
    return None  # every frame


class DecodeFilmSegment(beam.DoFn):
    """One film segment -> records (split, key, serialized Example); reports its count and moments."""

    def __init__(self, settings):
        self.settings = settings
        self.records = Metrics.counter(NAMESPACE, "records")
        self.failed = Metrics.counter(NAMESPACE, "failed_segments")

    def setup(self):
        self.encoder = RecordEncoder(self.settings.config.size, self.settings.config.format)
        self.encode = _Encode(self.settings)

    def process(self, segment):
        path = segment["path"]
        if not storage.is_url(path):
            yield from self._decode(segment, segment["info"])
            return
        try:
            local = storage.films.acquire(path, segment.get("size"))
        except OSError as e:
            self.failed.inc()
            log.warning("%s: cannot read (%s)", path, e)
            yield beam.pvalue.TaggedOutput("report", ("segment_error", path, f"cannot read ({e})"))
            yield beam.pvalue.TaggedOutput("report", ("count", path, 0))
            return
        try:
            yield from self._decode(segment, dataclasses.replace(segment["info"], path=local))
        finally:
            storage.films.release(path, segment.get("size"))

    def _decode(self, segment, info):
        """``info.path``: the film, or its local copy; records name ``segment["path"]``."""
        s, c, path = self.settings, self.settings.config, segment["path"]
        keep = _selected(segment, c)
        prefixes = {split: self.encoder.prefix(path, split) for split in ("train", "validation")}
        blocks, moments, count = segment["blocks"], _Moments(c.size), 0
        decoded = []   # indices the decoder gave: what it could not give is reported as lost
        try:
            for index, timestamp, rgb in media.read_frames(info.path, c.size, c.fit, segment["start"],
                                                           segment["stop"], info=info, threads=s.decoder_threads,
                                                           deinterlace=c.deinterlace,
                                                           stall_seconds=c.stall_seconds):
                decoded.append(index)
                if keep is not None and index not in keep:
                    continue
                split = "validation" if blocks and int(timestamp // c.validation_block) in blocks else "train"
                image = self.encode(rgb)
                moments.add(rgb)
                count += 1
                yield split, f"{path}\t{index:010d}", RecordEncoder.encode(prefixes[split], image, index, timestamp)
        except media.MediaError as e:
            # A damaged stretch of film (truncated file, corrupt GOP): the rest of the film still counts.
            self.failed.inc()
            reason = str(e).replace(f"{info.path}: ", "", 1)
            log.warning("%s: %s", path, reason)
            yield beam.pvalue.TaggedOutput("report", ("segment_error", path, reason))
        lost = lost_frames(info, segment["start"], segment["stop"], decoded)
        if lost:
            yield beam.pvalue.TaggedOutput("report", ("lost", path, lost))
        self.records.inc(count)
        log.info("%s: segment %d/%d done (frames %d-%d, %d records)", os.path.basename(path), segment["number"],
                 segment["of"], segment["start"], segment["stop"] - 1, count)
        yield beam.pvalue.TaggedOutput("report", ("count", path, count))
        # Which worker process decoded it: the summary's "segments_per_worker" shows how the work spread.
        yield beam.pvalue.TaggedOutput("report", ("worker", f"{socket.gethostname()}:{os.getpid()}", 1))
        if count:
            yield beam.pvalue.TaggedOutput("moments", moments.value())


def lost_frames(info, start, stop, decoded):
    """{"frames": N, "from": seconds, "to": seconds} for the frames of [start, stop) the decoder did not give
    (``decoded``: the indices it gave, in order), or None when it gave them all."""
    if len(decoded) == stop - start:
        return None
    got = set(decoded)
    missing = [i for i in range(start, stop) if i not in got]
    return {"frames": len(missing), "from": round(info.timestamp(missing[0]), 3),
            "to": round(info.timestamp(missing[-1]), 3)}


def merge_lost(a, b):
    """One film's lost-frame reports from several segments, as one."""
    if not a:
        return b
    return {"frames": a["frames"] + b["frames"], "from": min(a["from"], b["from"]), "to": max(a["to"], b["to"])}


class DecodeStills(beam.DoFn):
    """A batch of stills -> records. Element: {"kind": "image", "items": [Input, ...]} or
    {"kind": "celeba", "root": path, "start": i, "stop": j, "total": n} (images i..j-1 of n, by name)."""

    def __init__(self, settings):
        self.settings = settings
        self.records = Metrics.counter(NAMESPACE, "records")
        self.bad = Metrics.counter(NAMESPACE, "bad_inputs")

    def setup(self):
        self.encoder = RecordEncoder(self.settings.config.size, self.settings.config.format)
        self.encode = _Encode(self.settings)
        self.stores = {}
        # A bad picture is reported once, as a skipped input; OpenCV's own warnings would only repeat it.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

    def teardown(self):
        for store in getattr(self, "stores", {}).values():
            store.close()

    def process(self, batch):
        c = self.settings.config
        moments, counts = _Moments(c.size), {}
        if batch["kind"] == "celeba":
            root = batch["root"]
            store = self.stores.get(root) or self.stores.setdefault(root, CelebA(root))
            if len(store.names) != batch["total"]:
                raise RuntimeError(f"{root}: CelebA changed while it was being extracted")
            factor = 0.8 if c.crop_factor is None else c.crop_factor
            work = [(f"{root}/{name}", name, root, split, attrs, lambda n=name: store.read(n))
                    for name, split, attrs in celeba_items(store, batch["start"], batch["stop"],
                                                           c.validation_fraction)]
        else:
            factor = 1.0 if c.crop_factor is None else c.crop_factor
            work = [(item.path, item.path, item.path, still_split(item.rel, c.validation_fraction), (),
                     lambda p=item.path: storage.read_bytes(p)) for item in batch["items"]]
        for where, source, owner, split, attrs, read in work:
            try:
                data = read()
            except OSError as e:
                yield _skip(self.bad, where, f"cannot read ({e.strerror or e})")
                continue
            except (CadlError, zipfile.BadZipFile, zlib.error, EOFError) as e:
                # A damaged member of CelebA's zip (bad CRC, broken deflate data) or a picture gone since the
                # listing: that picture is skipped, not the job.
                yield _skip(self.bad, where, f"cannot read ({e})")
                continue
            bgr, reason = decode_still(data)
            if bgr is None:
                yield _skip(self.bad, where, reason)
                continue
            if factor < 1:
                bgr = geometry.center_crop_factor(bgr, factor)
            bgr = np.ascontiguousarray(geometry.fit_image(bgr, c.size, c.fit))
            rgb = bgr[..., ::-1]
            moments.add(rgb)
            counts[owner] = counts.get(owner, 0) + 1
            yield split, f"{source}\t{0:010d}", RecordEncoder.encode(
                self.encoder.prefix(source, split, attrs), self.encode(rgb))
        log.info("stills: batch %s/%s done (%d records)", batch.get("number", "?"), batch.get("of", "?"),
                 sum(counts.values()))
        for owner, n in counts.items():
            self.records.inc(n)
            yield beam.pvalue.TaggedOutput("report", ("count", owner, n))
        if moments.count:
            yield beam.pvalue.TaggedOutput("moments", moments.value())


def decode_still(data):
    """Encoded picture -> (BGR uint8 array, None) or (None, reason it cannot be used)."""
    if not data:
        return None, "empty file"
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return None, "not a readable image"
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        # libjpeg fills a cut-off JPEG with grey and only warns: refuse it rather than train on the grey.
        return None, "truncated JPEG (no end-of-image marker)"
    return bgr, None


def celeba_items(dataset, start, stop, fraction):
    """(name, split, attributes) for images start..stop-1: the official partition when present, else a hash of
    the name like image folders."""
    partition, attributes = dataset.partition, dataset.attributes
    out = []
    for name in dataset.names[start:stop]:
        split = partition.get(name) if partition else None
        out.append((name, split or still_split(name, fraction), tuple(attributes.get(name, ()))))
    return out

