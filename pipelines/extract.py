"""The extraction pipeline (Apache Beam): inputs -> decoded, fitted, encoded pictures -> TFRecord shards.

    films   Create -> PlanFilm (probe, sampling, validation blocks, segments cut after keyframes)
                   -> Reshuffle -> DecodeFilmSegment (ffmpeg decodes and scales one segment)
    stills  Create(batches of images / CelebA index ranges) -> DecodeStills
    both    -> WriteShards (rolling ~100 MB temp files per bundle, or exactly --num-shards via a shuffle)
            + "report" (per-input facts, skipped inputs, written parts) and "moments" (per-pixel sums)
              combined globally and written into the run's temp folder for the driver to finalize.

Create itself reshuffles several elements, so films and still batches spread over the workers. A long film
becomes many segments (separate work items), so every worker decodes a piece of it, and memory
is one frame per worker whatever the film's length: records never pass through a shuffle in the default
sharding, they are written by the worker that decoded them.

Inputs and the output may be URLs of any filesystem Beam knows (``gs://``, ``s3://``, ``hdfs://``): the
worker that plans or decodes a remote film first copies it to a local file (``storage.films``: one copy per
worker process, reused by its later segments of that film), because ffmpeg seeks in the file; stills and
CelebA's zip are read in place through ``FileSystems.open``; shards and the run's report are written with
``FileSystems.create``.

Neither the driver nor the workers import TensorFlow (2 s and ~0.6 GB per process): ``RecordEncoder`` writes
the ``tf.train.Example`` wire format of the schema's features directly (tests check it parses to the same
Example as ``schema.encode_record``), and ``TFRecordFile`` frames records with google-crc32c.
"""
import bisect
import dataclasses
import hashlib
import json
import logging
import math
import os
import struct
import threading
import uuid
import zipfile
import zlib
from fractions import Fraction

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from pipelines import geometry, media, schema, storage
from pipelines.celeba import CelebA
from pipelines.errors import CadlError

log = logging.getLogger("cadl.extract")

REPORT = "report.json"           # written into the run's temp folder by the pipeline, read by the driver
MOMENTS = "moments.npz"
STILLS_PER_ITEM = 64             # images per work item: amortizes per-element overhead, still spreads well
_NAMESPACE = "cadl.extract"      # Beam metrics namespace
# Set by a driver that was interrupted (Ctrl-C, SIGTERM): its in-process workers, still running their
# bundles, stop writing into the work folder the driver is removing.
CANCELLED = threading.Event()


class _Discard:
    """What a cancelled run's workers write into: nothing (no error either: the driver is already gone)."""
    count = bytes = 0
    path = first_key = None

    def write(self, key, record):
        pass

    def close(self):
        return {"path": None, "count": 0, "bytes": 0, "first_key": None}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a worker needs, fixed when the pipeline is built (pickled into the DoFns)."""
    size: tuple                  # (H, W) of every record's picture
    fit: str                     # geometry.FITS
    fmt: str                     # "png" | "jpeg"
    quality: int = 95            # JPEG quality 1..100
    png_level: int = 1           # zlib level 0..9 (with the RLE strategy below the level matters little)
    crop_factor: float | None = None  # central fraction kept before fitting stills; None: 0.8 CelebA, 1 others
    every: int = 1               # keep every Nth frame of a film
    fps: float | None = None     # or: keep the first frame of each 1/fps second (like ffmpeg -r)
    start: float = 0.0           # seconds into each film
    end: float | None = None     # seconds into each film (exclusive); None: to the end
    validation_fraction: float = 0.05
    validation_block: float = 4.0  # seconds: films go to validation in contiguous blocks this long
    segment_seconds: float = 10.0  # least seconds of film per work item (cut right after a keyframe)
    compression: str = ""        # "" | "GZIP"
    shard_bytes: int = 100 * 2 ** 20  # target shard size when num_shards is 0
    num_shards: int = 0          # > 0: exactly this many shards per split (at most; empty ones dropped)
    tmp_dir: str = ""            # where parts, the report and the moments go before finalizing
    decoder_threads: int = 1     # ffmpeg decoder threads per segment (parallelism comes from workers)
    deinterlace: str = "auto"    # media.DEINTERLACE: "auto" deinterlaces interlaced films, "off" keeps fields
    stall_seconds: float = media.STALL_SECONDS  # an ffmpeg process silent this long: the input is skipped

    @property
    def suffix(self):
        return ".tfrecord.gz" if self.compression == "GZIP" else ".tfrecord"


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


# -- records without TensorFlow --------------------------------------------------------------------------
def _varint(n):
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number, payload):
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(values):
    return _field(1, b"".join(_field(1, v) for v in values))


def _int_feature(values):
    packed = b"".join(_varint(int(v)) for v in values)
    return _field(3, _field(1, packed) if values else b"")


def _float_feature(values):
    return _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)) if values else b"")


def _entry(name, feature):
    """One ``map<string, Feature>`` entry of ``Features``."""
    return _field(1, _field(1, name.encode()) + _field(2, feature))


class RecordEncoder:
    """Serializes ``tf.train.Example`` records of the schema; the per-input part is encoded once."""

    _FIELDS = ("image", "format", "height", "width", "channels", "source", "frame_index", "timestamp", "split",
               "attributes", "schema_version")

    def __init__(self, settings, channels=3, feature_names=schema.FEATURE_NAMES):
        if set(feature_names) != set(self._FIELDS):
            raise ValueError(f"the record schema's features {sorted(feature_names)} are not the ones "
                             f"this encoder writes {sorted(self._FIELDS)}")
        h, w = settings.size
        self._static = (_entry("format", _bytes_feature([settings.fmt.encode()])) +
                        _entry("height", _int_feature([h])) + _entry("width", _int_feature([w])) +
                        _entry("channels", _int_feature([channels])) +
                        _entry("schema_version", _int_feature([schema.SCHEMA_VERSION])))

    def prefix(self, source, split, attributes=()):
        """The fields shared by every record of one input and split."""
        return (self._static + _entry("source", _bytes_feature([str(source).encode()])) +
                _entry("split", _bytes_feature([split.encode()])) +
                _entry("attributes", _int_feature(list(attributes))))

    @staticmethod
    def encode(prefix, image, frame_index=0, timestamp=0.0):
        body = (prefix + _entry("image", _bytes_feature([image])) +
                _entry("frame_index", _int_feature([frame_index])) +
                _entry("timestamp", _float_feature([timestamp])))
        return _field(1, body)


class TFRecordFile:
    """One shard being written: TFRecord framing (length, masked CRC32C of length, data, masked CRC32C)."""

    def __init__(self, path, compression=""):
        self.path, self.count, self.bytes, self.first_key = path, 0, 0, None
        kind = CompressionTypes.GZIP if compression == "GZIP" else CompressionTypes.UNCOMPRESSED
        self._file = FileSystems.create(path, mime_type="application/octet-stream", compression_type=kind)

    def write(self, key, record):
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", schema.masked_crc32c(header)) + record +
                         struct.pack("<I", schema.masked_crc32c(record)))
        self.count += 1
        self.bytes += len(record) + 16
        if self.first_key is None or key < self.first_key:
            self.first_key = key

    def close(self):
        self._file.close()
        return {"path": self.path, "count": self.count, "bytes": self.bytes, "first_key": self.first_key}


# -- per-pixel statistics --------------------------------------------------------------------------------
class _Moments:
    """Exact per-pixel count, sum and sum of squares of RGB uint8 pictures.

    Accumulates in uint32 with in-place adds (twice as fast as int64 temporaries) and folds into int64
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


class MomentsFn(beam.CombineFn):
    """Sums (count, sum, sumsq) triples; the empty result is count 0 with zero arrays."""

    def __init__(self, size, channels=3):
        self.shape = tuple(size) + (channels,)

    def create_accumulator(self):
        return (0, None, None)

    def add_input(self, acc, value):
        return self.merge_accumulators([acc, value])

    def merge_accumulators(self, accumulators):
        count, total, squares = 0, None, None
        for c, s, q in accumulators:
            if not c:
                continue
            count += c
            total = s.copy() if total is None else total + s
            squares = q.copy() if squares is None else squares + q
        return (count, total, squares)

    def extract_output(self, acc):
        count, total, squares = acc
        if total is None:
            total, squares = np.zeros(self.shape, np.int64), np.zeros(self.shape, np.int64)
        return (count, total, squares)


# -- the DoFns ------------------------------------------------------------------------------------------
class _Encode:
    """Fitting and encoding shared by the decoders (pictures arrive as BGR for OpenCV)."""

    def __init__(self, settings):
        self.settings = settings
        if settings.fmt == "png":
            # The "up" filter with run-length zlib: 2-2.5x faster than libpng's adaptive filters with
            # deflate, within a few % of their size (measured on testsrc2 and mandelbrot frames).
            self.ext, self.params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, settings.png_level,
                                             cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
                                             cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
        else:
            self.ext, self.params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, settings.quality]

    def __call__(self, bgr):
        ok, data = cv2.imencode(self.ext, bgr, self.params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {bgr.shape} picture as {self.ext}")
        return data.tobytes()


def _skip(counter, path, reason):
    counter.inc()
    log.warning("skipping %s: %s", path, reason)
    return beam.pvalue.TaggedOutput("report", ("skip", path, reason))


class PlanFilm(beam.DoFn):
    """Film input -> its time segments (work items), plus a report of the film's facts."""

    def __init__(self, settings):
        self.settings = settings
        self.bad = Metrics.counter(_NAMESPACE, "bad_inputs")
        self.segments = Metrics.counter(_NAMESPACE, "film_segments")

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
        s = self.settings
        if _is_text(local):
            # ffmpeg's "tty" demuxer would happily render a text file as a film of ANSI art.
            yield _skip(self.bad, item.path, "not media (a text file)")
            return
        try:
            info = media.probe(local, s.stall_seconds)
        except media.MediaError as e:
            yield _skip(self.bad, item.path, str(e).replace(f"{local}: ", "", 1))
            return
        tb = info.time_base
        # Frames lo..hi-1 lie in [start, end) seconds from the first frame.
        lo = bisect.bisect_left(info.pts, info.pts[0] + Fraction(str(s.start)) / tb) if s.start > 0 else 0
        hi = (bisect.bisect_left(info.pts, info.pts[0] + Fraction(str(s.end)) / tb)
              if s.end is not None else info.num_frames)
        facts = {"kind": "film", "size": item.size, "mtime": item.mtime, "num_frames": info.num_frames,
                 "fps": f"{info.fps.numerator}/{info.fps.denominator}", "vfr": info.vfr,
                 "duration": info.duration, "width": info.width, "height": info.height,
                 "video_codec": info.video_codec, "audio_codec": info.audio_codec,
                 "coded_size": [info.coded_width, info.coded_height], "sar": str(info.sar),
                 "rotation": info.rotation, "field_order": info.field_order, "pix_fmt": info.pix_fmt,
                 "start_time": info.start_time, "probe": info.probe_method,
                 "deinterlaced": info.interlaced and s.deinterlace == "auto"}
        if lo >= hi:
            yield beam.pvalue.TaggedOutput("report", ("facts", item.path, facts))
            yield _skip(self.bad, item.path, f"no frames between {s.start} s and {s.end} s")
            return
        blocks = validation_blocks(os.path.basename(item.path), info.duration, s.validation_block,
                                   s.validation_fraction, (float((p - info.pts[0]) * tb) for p in info.pts))
        ranges = media.keyframe_segments(info, info.keyframes, s.segment_seconds, lo, hi)
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


def _selected(segment, settings):
    """Indices of the segment's frames that the sampling options keep."""
    info, first = segment["info"], segment["first"]
    indices = range(segment["start"], segment["stop"])
    if settings.fps:
        rate, tb, origin = Fraction(str(settings.fps)), info.time_base, info.pts[0]

        def tick(i):
            return math.floor((info.pts[i] - origin) * tb * rate)
        return {i for i in indices if i == first or tick(i) != tick(i - 1)}
    if settings.every > 1:
        return {i for i in indices if (i - first) % settings.every == 0}
    return None  # every frame


class DecodeFilmSegment(beam.DoFn):
    """One film segment -> records (split, key, serialized Example); reports its count and moments."""

    def __init__(self, settings):
        self.settings = settings
        self.records = Metrics.counter(_NAMESPACE, "records")
        self.failed = Metrics.counter(_NAMESPACE, "failed_segments")

    def setup(self):
        self.encoder = RecordEncoder(self.settings)
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
        s, path = self.settings, segment["path"]
        keep = _selected(segment, s)
        prefixes = {split: self.encoder.prefix(path, split) for split in ("train", "validation")}
        blocks, moments, count = segment["blocks"], _Moments(s.size), 0
        decoded = []   # indices the decoder gave: what it could not give is reported as lost
        try:
            for index, timestamp, rgb in media.read_frames(info.path, s.size, s.fit, segment["start"],
                                                           segment["stop"], info=info, threads=s.decoder_threads,
                                                           deinterlace=s.deinterlace,
                                                           stall_seconds=s.stall_seconds):
                decoded.append(index)
                if keep is not None and index not in keep:
                    continue
                split = "validation" if blocks and int(timestamp // s.validation_block) in blocks else "train"
                image = self.encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
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
        self.records = Metrics.counter(_NAMESPACE, "records")
        self.bad = Metrics.counter(_NAMESPACE, "bad_inputs")

    def setup(self):
        self.encoder = RecordEncoder(self.settings)
        self.encode = _Encode(self.settings)
        self.stores = {}
        # A bad picture is reported once, as a skipped input; OpenCV's own warnings would only repeat it.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

    def teardown(self):
        for store in getattr(self, "stores", {}).values():
            store.close()

    def process(self, batch):
        s = self.settings
        moments, counts = _Moments(s.size), {}
        if batch["kind"] == "celeba":
            root = batch["root"]
            store = self.stores.get(root) or self.stores.setdefault(root, CelebA(root))
            if len(store.names) != batch["total"]:
                raise RuntimeError(f"{root}: CelebA changed while it was being extracted")
            factor = 0.8 if s.crop_factor is None else s.crop_factor
            work = [(f"{root}/{name}", name, root, split, attrs, lambda n=name: store.read(n))
                    for name, split, attrs in celeba_items(store, batch["start"], batch["stop"],
                                                           s.validation_fraction)]
        else:
            factor = 1.0 if s.crop_factor is None else s.crop_factor
            work = [(item.path, item.path, item.path, still_split(item.rel, s.validation_fraction), (),
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
            bgr = np.ascontiguousarray(geometry.fit_image(bgr, s.size, s.fit))
            moments.add(bgr[..., ::-1])
            counts[owner] = counts.get(owner, 0) + 1
            yield split, f"{source}\t{0:010d}", RecordEncoder.encode(
                self.encoder.prefix(source, split, attrs), self.encode(bgr))
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


class WriteShards(beam.DoFn):
    """Records -> temp shard files of about ``shard_bytes``, one open file per split per bundle; each closed
    file is reported as a "part" when its bundle finishes (so a retried bundle's files are never counted)."""

    def __init__(self, settings):
        self.settings = settings

    def start_bundle(self):
        self.open, self.parts = {}, []

    def process(self, element):
        split, key, record = element
        shard = self.open.get(split)
        if shard is not None and shard.bytes >= self.settings.shard_bytes:
            self.parts.append((split, shard.close()))
            shard = None
        if shard is None:
            shard = self.open[split] = _new_shard(self.settings, split)
        shard.write(key, record)

    def finish_bundle(self):
        for split, shard in self.open.items():
            self.parts.append((split, shard.close()))
        for split, part in self.parts:
            yield GlobalWindows.windowed_value(("part", split, part))
        self.open, self.parts = {}, []


def _new_shard(settings, split):
    if CANCELLED.is_set():
        return _Discard()
    return TFRecordFile(FileSystems.join(settings.tmp_dir, f"{split}-{uuid.uuid4().hex}{settings.suffix}"),
                        settings.compression)


class WriteShardGroup(beam.DoFn):
    """((split, shard), [(key, record), ...]) -> one temp shard, records sorted by key."""

    def __init__(self, settings):
        self.settings = settings

    def process(self, element):
        (split, shard_index), records = element
        shard = _new_shard(self.settings, split)
        for key, record in sorted(records):
            shard.write(key, record)
        part = shard.close()
        part["shard"] = shard_index
        yield "part", split, part


class WriteFile(beam.DoFn):
    """Writes its single input into ``path`` (JSON for the report, .npz for the moments)."""

    def __init__(self, path):
        self.path = path

    def process(self, value):
        if self.path.endswith(".npz"):
            import io
            buffer = io.BytesIO()
            count, total, squares = value
            np.savez(buffer, count=np.int64(count), sum=total, sumsq=squares)
            data = buffer.getvalue()
        else:
            data = json.dumps(value, sort_keys=True).encode()
        if CANCELLED.is_set():
            return
        with FileSystems.create(self.path) as f:
            f.write(data)


# -- the pipeline ----------------------------------------------------------------------------------------
class ExtractRecords(beam.PTransform):
    """PBegin -> (records, reports, moments) for the given inputs (``sources.Input``) and CelebA batches."""

    def __init__(self, settings, films=(), images=(), celeba_batches=()):
        super().__init__()
        self.settings, self.films, self.images, self.celeba_batches = settings, list(films), list(images), \
            list(celeba_batches)

    def expand(self, pbegin):
        s, records, reports, moments = self.settings, [], [], []
        if self.films:
            # Create already reshuffles its elements (when there are several), spreading films over workers.
            planned = (pbegin | "Films" >> beam.Create(self.films)
                       | "Plan segments" >> beam.ParDo(PlanFilm(s)).with_outputs("report", main="segments"))
            decoded = (planned.segments
                       | "Spread segments" >> beam.Reshuffle()
                       | "Decode segments" >> beam.ParDo(DecodeFilmSegment(s)).with_outputs(
                           "report", "moments", main="records"))
            records.append(decoded.records)
            reports += [planned.report, decoded.report]
            moments.append(decoded.moments)
        batches = [{"kind": "image", "items": self.images[i:i + STILLS_PER_ITEM]}
                   for i in range(0, len(self.images), STILLS_PER_ITEM)] + list(self.celeba_batches)
        batches = [dict(b, number=i, of=len(batches)) for i, b in enumerate(batches, 1)]
        if batches:
            stills = (pbegin | "Still batches" >> beam.Create(batches)
                      | "Decode stills" >> beam.ParDo(DecodeStills(s)).with_outputs("report", "moments",
                                                                                   main="records"))
            records.append(stills.records)
            reports.append(stills.report)
            moments.append(stills.moments)
        flat = lambda pcolls, label: pcolls[0] if len(pcolls) == 1 else tuple(pcolls) | label >> beam.Flatten()
        return flat(records, "All records"), flat(reports, "All reports"), flat(moments, "All moments")


class WriteDataset(beam.PTransform):
    """(records, reports, moments) -> temp shards + ``report.json`` + ``moments.npz`` in ``settings.tmp_dir``."""

    def __init__(self, settings):
        super().__init__()
        self.settings = settings

    def expand(self, pcolls):
        records, reports, moments = pcolls
        s = self.settings
        if s.num_shards > 0:
            n = s.num_shards
            parts = (records
                     | "Key by shard" >> beam.Map(lambda r: ((r[0], int(unit_hash(r[1]) * n)), (r[1], r[2])))
                     | "Group shards" >> beam.GroupByKey()
                     | "Write shards" >> beam.ParDo(WriteShardGroup(s)))
        else:
            parts = records | "Write shards" >> beam.ParDo(WriteShards(s))
        (((reports, parts) | "Reports and parts" >> beam.Flatten())
         | "Collect report" >> beam.combiners.ToList()
         | "Write report" >> beam.ParDo(WriteFile(FileSystems.join(s.tmp_dir, REPORT))))
        (moments
         | "Sum moments" >> beam.CombineGlobally(MomentsFn(s.size))
         | "Write moments" >> beam.ParDo(WriteFile(FileSystems.join(s.tmp_dir, MOMENTS))))
        return parts


def celeba_batches(dataset, per_item=256):
    """CelebA(root) -> work items of ``per_item`` images, as index ranges into ``dataset.names``: workers read
    the names, partition and attributes themselves, so the pipeline's graph stays small (no 200,000-row
    Create, which remote runners limit)."""
    n = len(dataset.names)
    return [{"kind": "celeba", "root": dataset.root, "start": i, "stop": min(n, i + per_item), "total": n}
            for i in range(0, n, per_item)]


def celeba_items(dataset, start, stop, fraction):
    """(name, split, attributes) for images start..stop-1: the official partition when present, else a hash of
    the name like image folders."""
    partition, attributes = dataset.partition, dataset.attributes
    out = []
    for name in dataset.names[start:stop]:
        split = partition.get(name) if partition else None
        out.append((name, split or still_split(name, fraction), tuple(attributes.get(name, ()))))
    return out


def read_results(tmp_dir, size):
    """The pipeline's report (list of tuples) and moments dict, read back by the driver."""
    with FileSystems.open(FileSystems.join(tmp_dir, REPORT)) as f:
        report = [tuple(r) for r in json.loads(f.read().decode())]
    import io
    with FileSystems.open(FileSystems.join(tmp_dir, MOMENTS)) as f:
        with np.load(io.BytesIO(f.read())) as z:
            moments = {"count": int(z["count"]), "sum": z["sum"], "sumsq": z["sumsq"]}
    return report, moments
