"""The tf.data reader: a dataset folder written by ``cadl extract`` -> batches of uint8 images.

One straight function, ``make_dataset``: list files from the manifest -> interleave -> parallel parse/decode
-> (cache) -> shuffle -> batch -> prefetch. Paths go through ``tf.io.gfile``, so ``gs://...`` (and any other
filesystem TensorFlow reads) works like a local folder. Batches stay uint8 (4x less to cache, shuffle and
copy to the device); the model turns them into floats in [0, 1].

Bad input: ``load_manifest`` refuses a missing or empty folder and another schema version with one line;
``find_corrupt`` names the shard(s) that broke a running pipeline so the caller can stop or skip them.
"""
import json
import os

import tensorflow as tf

from pipelines import manifest as mf
from pipelines import schema
from pipelines.errors import CadlError

AUTOTUNE = tf.data.AUTOTUNE
# The shuffle buffer holds decoded images: size it in bytes so 144x256 frames do not take 10x the memory.
SHUFFLE_BYTES = 256 * 2**20
# --cache auto keeps the decoded split in memory when it is at most this big (the demo's films always are).
CACHE_AUTO_BYTES = 1 * 2**30


def load_manifest(data_dir):
    """Read and check ``DIR/manifest.json`` through TensorFlow's filesystems (gs://, ...); every problem is a
    one-line ``CadlError`` naming the path (see ``manifest.load``)."""
    return mf.load(data_dir, _GFILE)


class _GFILE:
    """``manifest.load``'s file operations, done by tf.io.gfile (what reads the shards reads the manifest)."""
    join = staticmethod(tf.io.gfile.join)
    exists = staticmethod(tf.io.gfile.exists)

    @staticmethod
    def read_json(path):
        try:
            with tf.io.gfile.GFile(path, "r") as f:
                return json.load(f)
        except tf.errors.OpError as e:
            raise OSError(str(e).splitlines()[0]) from None

    @staticmethod
    def size(path):
        return tf.io.gfile.stat(path).length


def image_shape(manifest):
    """(H, W, C) of the dataset's pictures."""
    image = manifest["image"]
    return int(image["height"]), int(image["width"]), int(image["channels"])


def split_files(data_dir, manifest, split, require=True):
    """Full paths of ``split``'s shards, in manifest order. ``require``: an empty split is an error."""
    entry = (manifest.get("splits") or {}).get(split) or {}
    files = [tf.io.gfile.join(os.fspath(data_dir), name) for name in entry.get("files", [])]
    if require and (not files or int(entry.get("count", 0)) <= 0):
        raise CadlError(f"{tf.io.gfile.join(os.fspath(data_dir), schema.MANIFEST)}: no {split!r} records "
                        f"in this dataset folder (empty extraction?)")
    return files


def compression_type(manifest):
    return "GZIP" if (manifest.get("compression") or "").upper() == "GZIP" else ""


# ---- small named preprocessing functions (tested alone and inside Dataset.map) ----

def decode_image(encoded, shape):
    """PNG or JPEG bytes -> uint8 (H, W, C); fails (InvalidArgument) on bytes that are no such picture."""
    height, width, channels = shape
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    return tf.ensure_shape(image, (height, width, channels))


@tf.autograph.experimental.do_not_convert  # straight-line code; spares AutoGraph schema's lazy imports
def parse_and_decode(serialized, shape):
    """One serialized record -> its uint8 image; a record of another schema version fails loudly."""
    parsed = schema.parse_records(serialized)
    tf.debugging.assert_equal(parsed["schema_version"], tf.constant(schema.SCHEMA_VERSION, tf.int64),
                              message="record of another schema version")
    return decode_image(parsed["image"], shape)


def random_flip(image, seed):
    """Mirror left-right with probability 1/2; ``seed`` is a shape-(2,) int tensor (stateless: reproducible)."""
    return tf.image.stateless_random_flip_left_right(image, seed)


# ---- the pipeline ----

def make_dataset(data_dir, split="train", batch_size=32, *, manifest=None, files=None, training=True,
                 augment=False, cache="auto", shuffle_buffer=0, deterministic=False, seed=0,
                 drop_remainder=None, prefetch_device=None):
    """Batches of uint8 images (B, H, W, C) from ``data_dir``'s ``split``.

    training: shuffle and repeat forever (the caller counts steps); otherwise one ordered pass.
    augment: random horizontal flips (training only). cache: True | False | "auto" (decoded split in memory
    when it fits in CACHE_AUTO_BYTES). shuffle_buffer: images, 0 = about SHUFFLE_BYTES worth.
    deterministic: same batches in the same order on every run with the same seed (tests, exact resume).
    files: override the manifest's list (e.g. with corrupt shards left out).
    prefetch_device: e.g. "/gpu:0" to stage the next batches on the accelerator.
    """
    manifest = manifest or load_manifest(data_dir)
    shape = image_shape(manifest)
    files = list(files) if files is not None else split_files(data_dir, manifest, split)
    if not files:
        raise CadlError(f"{data_dir}: no readable {split!r} shards left")
    count = mf.split_count(manifest, split)
    image_bytes = shape[0] * shape[1] * shape[2]
    if drop_remainder is None:
        drop_remainder = training  # fixed batch shapes in training (one trace, XLA-friendly); keep all to eval

    # List files: shuffled per run from the seed so each epoch does not start on the same shard.
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
    # Interleave: read several shards at once so one slow file (or remote object) does not stall the rest;
    # an evaluation pass reads them one after the other, so it sees the records in manifest order.
    cycle = min(len(files), 8) if training else 1
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type=compression_type(manifest)),
                       cycle_length=cycle, block_length=1, num_parallel_calls=AUTOTUNE if cycle > 1 else None,
                       deterministic=(deterministic or not training) if cycle > 1 else None)
    # Parse + decode in parallel: PNG decoding is the expensive step of the whole input pipeline.
    ds = ds.map(lambda s: parse_and_decode(s, shape), num_parallel_calls=AUTOTUNE,
                deterministic=deterministic or not training)
    # Cache decoded pictures when they fit: later epochs skip reading and decoding entirely.
    if cache == "auto":
        cache = training and count * image_bytes <= CACHE_AUTO_BYTES
    if cache:
        ds = ds.cache()
    if training:
        # Shuffle after the cache so each epoch gets a new order; buffer bounded in bytes, not images.
        buffer = shuffle_buffer or max(64, SHUFFLE_BYTES // image_bytes)
        buffer = min(buffer, max(count, 64))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
        if augment:
            # Flip with a stateless seed per element (a counter), so deterministic mode stays reproducible.
            counter = tf.data.Dataset.counter()
            ds = tf.data.Dataset.zip(ds, counter).map(
                lambda image, i: random_flip(image, tf.stack([tf.cast(seed, tf.int64), i])),
                num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    # Batch after the per-image work; fixed-size batches in training.
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = bool(deterministic or not training)
    ds = ds.with_options(options)
    # Prefetch: decode batch n+1 while the model trains on batch n (onto the accelerator when there is one).
    if prefetch_device:
        return ds.apply(tf.data.experimental.prefetch_to_device(prefetch_device))
    return ds.prefetch(AUTOTUNE)


def find_corrupt(files, manifest):
    """Scan shards one by one; return [(path, reason)] for those that cannot be read, parsed or decoded.

    Used only after a pipeline failed (the happy path never pays for it), to name the culprit.
    """
    shape = image_shape(manifest)
    bad = []
    for path in files:
        ds = tf.data.TFRecordDataset(path, compression_type=compression_type(manifest))
        ds = ds.map(lambda s: parse_and_decode(s, shape), num_parallel_calls=AUTOTUNE)
        try:
            for _ in ds.batch(256):
                pass
        except (tf.errors.OpError, ValueError) as e:
            reason = str(getattr(e, "message", e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            bad.append((path, f"{type(e).__name__}: {reason}"[:300]))
    return bad


def load_images(data_dir, split="validation", limit=None, manifest=None, files=None):
    """The first ``limit`` images of ``split`` in manifest order, as one uint8 numpy array (N, H, W, C)."""
    import numpy as np

    ds = make_dataset(data_dir, split, batch_size=256, manifest=manifest, files=files, training=False)
    if limit is not None:
        ds = ds.unbatch().take(limit).batch(256)
    chunks = [b.numpy() for b in ds]
    if not chunks:
        shape = image_shape(manifest or load_manifest(data_dir))
        return np.zeros((0,) + shape, np.uint8)
    return np.concatenate(chunks)
