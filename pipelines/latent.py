"""The latent space of a trained film VAE as data: pictures in, encodings of a dataset (cached), nearest
neighbours, attribute vectors, paths, and films out. ``pipelines.explore`` (``cadl explore``) and
``pipelines.render`` (``--attribute``) build on it.

    RUN/explore/encodings-<slot>-<key>.npz   a dataset split's latent means and record facts; ``key`` hashes
                                             the model file's bytes and the dataset's manifest, so a retrained
                                             model or a re-extracted dataset is encoded again (and the old
                                             entry for that dataset and split removed)
    RUN/explore/attributes.json              attribute vectors (mean z with minus mean z without), for the
                                             model file whose sha256 it names; ``cadl render --attribute``
                                             reads them

A model file outside a run folder keeps them in ``explore/`` next to itself.
"""
import bisect
import hashlib
import io
import json
import logging
import os
import re
import subprocess
from fractions import Fraction

import numpy as np

from pipelines import atomic, geometry, media, schema, video_out
from pipelines.errors import CadlError

log = logging.getLogger("cadl.explore")
BATCH = 256          # images per model call and per tf.data batch
SEARCH_CHUNK = 8192  # dataset encodings per distance block: a block is queries x SEARCH_CHUNK floats


# ---- the model ----

def load(path):
    """``(export.Inference, model file)`` for the model at ``path``; one line when it cannot encode."""
    from pipelines import export  # TensorFlow loads here, after the cheap checks
    model_file = export.resolve_model_path(path)
    return export.load_inference(path), model_file


def model_digest(model_file):
    """sha256 of the model file's bytes: what cached encodings and attribute vectors belong to."""
    h = hashlib.sha256()
    with open(model_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def explore_folder(model_file):
    """``RUN/explore`` for ``RUN/export/model.keras``; ``explore/`` next to any other model file."""
    folder = os.path.dirname(os.path.realpath(model_file))
    if os.path.basename(folder) == "export":
        folder = os.path.dirname(folder)
    return os.path.join(folder, "explore")


# ---- pictures in ----

def parse_time_spec(spec):
    """``"FILM@SECONDS"`` -> (FILM, seconds); anything else -> (spec, None)."""
    path, at, seconds = str(spec).rpartition("@")
    if at and path and re.fullmatch(r"\d+(\.\d*)?|\.\d+", seconds.strip()):
        return path, float(seconds)
    return str(spec), None


def read_picture(spec, size, fit="crop", channels=3):
    """An image file or ``FILM@SECONDS`` -> uint8 (H, W, C) fitted to ``size`` the way extraction fits it
    (a film frame by ffmpeg's scaler, a still by ``geometry.fit_image``)."""
    path, seconds = parse_time_spec(spec)
    if seconds is not None:
        info = media.probe(path)
        if seconds >= info.duration:
            raise CadlError(f"{path}: {seconds:g} s is past the end of the film ({info.duration:.3f} s long)")
        index = film_index(info, seconds)
        frames = list(media.read_frames(path, size=tuple(size), fit=fit, info=info, start=index, stop=index + 1))
        if not frames:
            raise CadlError(f"{path}: frame {index} (at {seconds:g} s) cannot be decoded")
        frame = frames[0][2]
        return frame if channels == 3 else frame.mean(-1, keepdims=True).round().astype(np.uint8)
    from PIL import Image, UnidentifiedImageError
    if not os.path.isfile(path):
        raise CadlError(f"{path}: no such image (give an image file or FILM@SECONDS)")
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise CadlError(f"{path}: not a readable image ({str(e).splitlines()[0]})") from None
    return geometry.fit_image(image, tuple(size), fit).reshape(tuple(size) + (channels,))


def film_index(info, seconds, before=False):
    """The frame shown at ``seconds`` from the film's first frame (``before``: the last one before it)."""
    times = [info.timestamp(i) for i in range(info.num_frames)]
    at = bisect.bisect_left(times, seconds - 1e-9) if before else bisect.bisect_right(times, seconds + 1e-9)
    return max(0, at - 1)


# ---- a dataset's encodings, cached in the run folder ----

class Encodings:
    """Latent means of one dataset split and what each record is: ``z`` (N, latent) float32, ``source``,
    ``frame_index``, ``timestamp`` (N,), ``attributes`` (N, A) int8 (-1/+1; A = 0 without attributes)."""

    def __init__(self, data, split, manifest, z, source, frame_index, timestamp, attributes):
        self.data, self.split, self.manifest = data, split, manifest
        self.z, self.source, self.frame_index = z, source, frame_index
        self.timestamp, self.attributes = timestamp, attributes

    def __len__(self):
        return len(self.z)

    def describe(self, i):
        return {"index": int(i), "source": str(self.source[i]), "frame_index": int(self.frame_index[i]),
                "timestamp": round(float(self.timestamp[i]), 6)}

    def images(self, indices):
        """{index: uint8 (H, W, C)} for the records ``indices``: one ordered pass, holding only those."""
        wanted, out, at = set(int(i) for i in indices), {}, 0
        for images, *_ in read_records(self.data, self.split, self.manifest):
            for k in sorted(i for i in wanted if at <= i < at + len(images)):
                out[k] = images[k - at]
            at += len(images)
            if len(out) == len(wanted):
                break
        return out

    def film_source(self):
        """The manifest's facts of the one film these records came from, or None (stills, several films)."""
        films = {s: f for s, f in (self.manifest.get("sources") or {}).items() if f.get("kind") == "film"}
        return next(iter(films.values())) if len(films) == 1 else None


def read_records(data, split, manifest):
    """Batches ``(images uint8 (B, H, W, C), source, frame_index, timestamp, attributes)`` of ``split``,
    in manifest order (numpy)."""
    import tensorflow as tf

    from pipelines import tfdata
    shape = tfdata.image_shape(manifest)
    files = tfdata.split_files(data, manifest, split)

    def parse(serialized):
        p = schema.parse_records(serialized)
        return (tfdata.decode_image(p["image"], shape), p["source"], p["frame_index"], p["timestamp"],
                tf.cast(p["attributes"], tf.int8))

    ds = tf.data.TFRecordDataset(files, compression_type=tfdata.compression_type(manifest))
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for batch in ds.padded_batch(BATCH).prefetch(2):
        images, source, frame_index, timestamp, attributes = (t.numpy() for t in batch)
        yield images, source.astype(str), frame_index, timestamp, attributes


def encode_dataset(model, model_file, data, split="train"):
    """``Encodings`` of ``data``'s ``split`` through ``model``, from the run folder's cache when the model
    file and the dataset's manifest are the ones it was made from; otherwise encoded (in batches) and cached."""
    from pipelines import tfdata
    manifest = tfdata.load_manifest(data)
    _check_shape(model, manifest, data)
    tfdata.split_files(data, manifest, split)  # an empty split: one line before any work
    folder = explore_folder(model_file)
    slot = hashlib.sha256(f"{os.path.abspath(os.fspath(data))}\0{split}".encode()).hexdigest()[:12]
    key = hashlib.sha256(json.dumps([model_digest(model_file), manifest, split], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    cache = os.path.join(folder, f"encodings-{slot}-{key}.npz")
    if os.path.isfile(cache):
        with np.load(cache) as f:
            parts = {k: f[k] for k in f.files}
        log.info("encodings of %s (%s) from %s", data, split, cache)
        return Encodings(data, split, manifest, **parts)
    log.info("encoding %s (%s) through %s", data, split, model_file)
    chunks = {k: [] for k in ("z", "source", "frame_index", "timestamp", "attributes")}
    for images, source, frame_index, timestamp, attributes in read_records(data, split, manifest):
        chunks["z"].append(model.encode(images))
        for name, value in (("source", source), ("frame_index", frame_index), ("timestamp", timestamp),
                            ("attributes", attributes)):
            chunks[name].append(value)
    parts = {k: np.concatenate(v) for k, v in chunks.items()}
    try:
        buffer = io.BytesIO()
        np.savez(buffer, **parts)
        atomic.write_bytes(cache, buffer.getvalue())
        for name in os.listdir(folder):  # the same dataset and split under an older model or manifest
            if name.startswith(f"encodings-{slot}-") and name != os.path.basename(cache):
                os.remove(os.path.join(folder, name))
    except OSError as e:  # a read-only run folder: explore still works, without the cache
        log.warning("%s: not cached (%s)", cache, e.strerror)
    return Encodings(data, split, manifest, **parts)


def _check_shape(model, manifest, data):
    h, w = model.config["image_size"]
    image = manifest["image"]
    if (int(image["height"]), int(image["width"]), int(image["channels"])) != (h, w, model.config["channels"]):
        raise CadlError(f"{data}: records are {image['height']}x{image['width']}x{image['channels']}, the model "
                        f"takes {h}x{w}x{model.config['channels']}: explore a dataset extracted at the model's size")


# ---- searching and moving in the latent space ----

def nearest(queries, base, k, chunk=SEARCH_CHUNK):
    """Exact k nearest rows of ``base`` (N, L) for each of ``queries`` (M, L) by Euclidean distance:
    ``(indices (M, k), distances (M, k))``, nearest first. Blocks of ``chunk`` rows at a time, so memory is
    M x (chunk + k) distances whatever N is."""
    # float64: |q|^2 - 2 q.b + |b|^2 cancels to the small distances that matter (a frame and itself)
    queries = np.asarray(queries, np.float64)
    k = min(int(k), len(base))
    best_d = np.full((len(queries), 0), np.inf)
    best_i = np.zeros((len(queries), 0), np.int64)
    q2 = (queries ** 2).sum(1, keepdims=True)
    for start in range(0, len(base), chunk):
        block = np.asarray(base[start:start + chunk], np.float64)
        d = q2 - 2.0 * (queries @ block.T) + (block ** 2).sum(1)[None]
        d = np.concatenate([best_d, np.maximum(d, 0)], 1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(block)), (len(queries), len(block)))], 1)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return best_i, np.sqrt(best_d)


def slerp(a, b, t):
    """Spherical interpolation from ``a`` (t = 0) to ``b`` (t = 1) for each t; linear when they are parallel."""
    a, b, t = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(t, np.float64)[:, None]
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if omega < 1e-4:
        return lerp(a, b, t[:, 0])
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def lerp(a, b, t):
    t = np.asarray(t, np.float64)[:, None]
    return (1 - t) * np.asarray(a, np.float64) + t * np.asarray(b, np.float64)


def decode_batched(model, zs):
    """Yield uint8 frames for latents ``zs`` (n, L), decoded ``BATCH`` at a time."""
    for start in range(0, len(zs), BATCH):
        yield from model.decode(np.asarray(zs[start:start + BATCH], np.float32))


# ---- attribute vectors ----

def parse_attribute(text):
    """``"Smiling=1.5"`` -> ("Smiling", 1.5)."""
    name, eq, amount = str(text).partition("=")
    try:
        value = float(amount)
    except ValueError:
        value = None
    if not eq or not name.strip() or value is None or not np.isfinite(value):
        raise CadlError(f"--attribute {text}: expected NAME=AMOUNT, e.g. Smiling=1.5")
    return name.strip(), value


def check_attribute(data, manifest, name):
    """The column of attribute ``name`` in ``data``'s records; one line when the dataset has no such attribute."""
    names = list(manifest.get("attribute_names") or [])
    if name not in names:
        has = f"it has: {', '.join(names)}" if names else "it has no attributes: extract CelebA with list_attr_celeba.txt"
        raise CadlError(f"{os.path.join(os.fspath(data), schema.MANIFEST)}: no attribute {name!r} in this dataset "
                        f"({has})")
    return names.index(name)


def attribute_vector(encodings, name):
    """Mean z of the records with attribute ``name`` minus mean z of those without, and the two counts."""
    where = os.path.join(os.fspath(encodings.data), schema.MANIFEST)
    column = encodings.attributes[:, check_attribute(encodings.data, encodings.manifest, name)]
    on, off = column > 0, column < 0
    if not on.any() or not off.any():
        raise CadlError(f"{where}: every {encodings.split!r} record {'has' if on.any() else 'lacks'} {name!r}: "
                        f"no difference to take")
    vector = encodings.z[on].mean(0) - encodings.z[off].mean(0)
    return vector.astype(np.float32), int(on.sum()), int(off.sum())


def save_attribute(model_file, name, vector, facts):
    """Record ``name``'s vector in ``RUN/explore/attributes.json`` for this model file."""
    path = os.path.join(explore_folder(model_file), "attributes.json")
    digest = model_digest(model_file)
    saved = _read_attributes(path)
    if saved.get("model_sha256") != digest:
        saved = {"model_sha256": digest, "vectors": {}}
    saved["vectors"][name] = dict(facts, vector=[round(float(v), 7) for v in vector])
    try:
        atomic.write_json(path, saved)
    except OSError as e:
        log.warning("%s: attribute vector not saved (%s)", path, e.strerror)
    return path


def _read_attributes(path):
    try:
        return atomic.read_json(path)
    except (OSError, ValueError):
        return {}


def attribute_shift(model, model_file, attributes, data=None, split="train"):
    """The latent offset sum(amount x vector) for ``attributes`` ((name, amount), ...): vectors computed
    from ``data`` (and saved), else the ones ``cadl explore attribute`` saved for this model file."""
    shift = np.zeros(int(model.config["latent"]), np.float32)
    if data is not None:
        from pipelines import tfdata
        manifest = tfdata.load_manifest(data)
        for name, _ in attributes:  # before encoding anything
            check_attribute(data, manifest, name)
        encodings = encode_dataset(model, model_file, data, split)
    else:
        path = os.path.join(explore_folder(model_file), "attributes.json")
        saved = _read_attributes(path)
        same = saved.get("model_sha256") == model_digest(model_file)
    for name, amount in attributes:
        if data is not None:
            vector, n_on, n_off = attribute_vector(encodings, name)
            save_attribute(model_file, name, vector, {"data": os.path.abspath(data), "split": split,
                                                      "with": n_on, "without": n_off})
        elif same and name in saved.get("vectors", {}):
            vector = np.asarray(saved["vectors"][name]["vector"], np.float32)
        else:
            why = "was saved for another model file" if saved and not same else f"has no {name!r} vector"
            raise CadlError(f"{path}: {why}: pass --attribute-data CELEBA_DATA (or run cadl explore attribute "
                            f"--attribute {name} first)")
        shift += amount * vector
    return shift


# ---- films out ----

def output_size(model_size, size=None, film=None, even=True):
    """(H, W) of written frames: ``size``, else the model's picture enlarged to the film's height (``film``:
    manifest facts with ``height``) or the model's own size; even sides for 4:2:0 video."""
    h, w = model_size
    if size is None and film and film.get("height"):
        f = int(film["height"]) / h
        size = (int(film["height"]), max(1, round(w * f)))
    size = tuple(size or (h, w))
    return geometry.even_size(size) if even else size


def fit_frame(frame, size):
    """A decoded picture at the output's size (letterboxed when the aspect differs), RGB."""
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, -1)
    return frame if frame.shape[:2] == tuple(size) else geometry.fit_image(frame, tuple(size), "pad")


def parse_rate(text):
    """``"25"``, ``"24000/1001"``, ``"29.97"`` -> an exact Fraction > 0."""
    try:
        rate = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        rate = Fraction(0)
    if not 0 < rate <= 1000:
        raise CadlError(f"--fps {text}: a frame rate such as 25, 30000/1001 or 29.97 (0 < fps <= 1000)")
    return rate


def video_format(path, codec="auto", crf=18, preset="medium"):
    fmt = video_out.output_format(path, codec, crf, preset)
    if fmt.is_sequence:
        raise CadlError(f"{path}: give a film file name (.mp4, .m4v, .mov or .mkv)")
    return fmt


def write_video(path, frames, count, size, rate, fmt, audio=None, timing=None):
    """Encode ``count`` frames (an iterable of uint8 (H, W, 3) at ``size``) into the film ``path`` at the exact
    ``rate`` (or ``timing``: a ``video_out.Timing``), atomically; with ``audio`` (a file), its first audio track
    cut to the video's length. Returns ``media.probe`` of the result."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    timing = timing or video_out.Timing(rate=Fraction(rate))
    target = path if audio is None else os.path.join(os.path.dirname(os.path.abspath(path)),
                                                     f".{os.path.basename(path)}.video{fmt.segment_ext}")
    writer = video_out.SegmentWriter(target, fmt, size, timing, 0, count)
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame))
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    if audio is not None:
        try:
            _mux_audio(target, audio, path, fmt, count / Fraction(rate))
        finally:
            if os.path.exists(target):
                os.remove(target)
    return media.probe(path)


def _mux_audio(video, audio, output, fmt, seconds):
    if not os.path.isfile(audio):
        raise CadlError(f"{audio}: no such audio file")
    codec = ["-c:a", "pcm_s16le"] if fmt.codec == "prores" else ["-c:a", "aac", "-b:a", "192k"]
    cmd = [media.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", video,
           "-t", f"{float(seconds):.6f}", "-i", audio, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"] + codec
    if fmt.muxer in ("mp4", "mov"):
        cmd += ["-movflags", "+faststart"]
    with atomic.atomic_path(output) as tmp:
        proc = subprocess.run(cmd + ["-f", fmt.muxer, tmp], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=media.STALL_SECONDS * 10)
        if proc.returncode != 0:
            lines = [l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()]
            raise CadlError(f"{audio}: cannot take its audio ({lines[-1].strip() if lines else 'ffmpeg failed'})")
