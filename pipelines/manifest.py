"""``DIR/manifest.json``: what a dataset folder holds (the contract between extract and train), and its merging.

    {"schema_version": 1,
     "image": {"height": H, "width": W, "channels": 3, "format": "png", "fit": "crop"},
     "compression": "" | "GZIP",
     "splits": {"train": {"count": N, "files": [...]}, ...},      only the splits that have records
     "sources": {"<absolute input path>": {"kind": ..., "size": bytes, "mtime": float, "count": N, ...}},
     "skipped": [{"input": path, "reason": "..."}],
     "attribute_names": [...], "bytes": N,
     "mean_image": "mean.png", "std_image": "std.png", "options": {...},
     "moments": "moments.npz", "runs": [{"tag": "", "inputs": N, "records": N}, ...]}

``moments.npz`` keeps the exact per-pixel count / sum / sum of squares (int64) so that an incremental run can
update ``mean.png`` and ``std.png`` without reading the old shards again.

A dataset folder may be a URL of any filesystem Apache Beam knows (``gs://bucket/data``): every file here is
read and written through ``pipelines.storage`` (atomically: a temp file, then a rename).
"""
import gzip
import io
import struct

import cv2
import numpy as np

from pipelines import schema, storage
from pipelines.errors import CadlError

MEAN_IMAGE = "mean.png"
STD_IMAGE = "std.png"
MOMENTS = "moments.npz"
# What must agree between the existing dataset and an --incremental addition.
_COMPATIBLE = ("schema_version", "image", "compression")


def path(folder):
    return storage.join(folder, schema.MANIFEST)


def read(folder):
    """The manifest of ``folder``, or None when there is none. Raises ``CadlError`` when it is unusable."""
    file = path(folder)
    if not storage.exists(file):
        return None
    try:
        manifest = storage.read_json(file)
    except (OSError, ValueError) as e:
        raise CadlError(f"{file}: not a readable manifest ({e})") from None
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise CadlError(f"{file}: schema version {manifest.get('schema_version')} is not "
                        f"{schema.SCHEMA_VERSION}; extract again into a new folder")
    return manifest


def write(folder, manifest):
    storage.write_json(path(folder), manifest)


def already_extracted(manifest, inputs):
    """Split ``inputs`` (``sources.Input``) into (new, done, changed): done ones are in the manifest with the
    same size and modification time; changed ones (also in ``new``) are in it with another size or time."""
    known = (manifest or {}).get("sources", {})
    new, done, changed = [], [], []
    for item in inputs:
        entry = known.get(item.path)
        if entry and entry.get("size") == item.size and entry.get("mtime") == item.mtime:
            done.append(item)
        else:
            new.append(item)
            if entry:
                changed.append(item)
    return new, done, changed


def run_tag(manifest):
    """Shard-name tag for the next run into a folder: "" for the first, then "r0002-", "r0003-", ..."""
    if not manifest:
        return ""
    return f"r{len(manifest.get('runs', [])) + 1:04d}-"


def check_compatible(old, new, folder):
    for key in _COMPATIBLE:
        if old.get(key) != new.get(key):
            raise CadlError(f"{path(folder)}: the dataset has {key} {old.get(key)!r} but this run makes "
                            f"{new.get(key)!r}; use the same options, or extract into a new folder")
    a, b = old.get("attribute_names") or [], new.get("attribute_names") or []
    if a and b and a != b:
        raise CadlError(f"{path(folder)}: the dataset's attribute names differ from this CelebA's")


def merge(old, new):
    """The manifest after adding run ``new`` to dataset ``old`` (both manifests; ``new`` has only its files)."""
    out = dict(new)
    splits = {}
    for split in schema.SPLITS:
        a, b = old.get("splits", {}).get(split), new.get("splits", {}).get(split)
        if a or b:
            splits[split] = {"count": (a or {}).get("count", 0) + (b or {}).get("count", 0),
                             "files": list((a or {}).get("files", [])) + list((b or {}).get("files", []))}
    out["splits"] = splits
    out["sources"] = {**old.get("sources", {}), **new.get("sources", {})}
    # An input that failed before and worked now is no longer skipped; a new failure replaces an old one.
    skipped = {s["input"]: s for s in old.get("skipped", []) if s["input"] not in new.get("sources", {})}
    skipped.update({s["input"]: s for s in new.get("skipped", [])})
    out["skipped"] = [skipped[k] for k in sorted(skipped)]
    out["attribute_names"] = old.get("attribute_names") or new.get("attribute_names") or []
    out["bytes"] = old.get("bytes", 0) + new.get("bytes", 0)
    out["runs"] = list(old.get("runs", [])) + list(new.get("runs", []))
    out["options"] = new.get("options", {})
    return out


def listed_files(manifest):
    """Every shard file a manifest lists (names relative to its folder)."""
    return [f for split in (manifest or {}).get("splits", {}).values() for f in split.get("files", [])]


# -- mean and standard-deviation images ----------------------------------------------------------------
def empty_moments(height, width, channels=3):
    return {"count": 0, "sum": np.zeros((height, width, channels), np.int64),
            "sumsq": np.zeros((height, width, channels), np.int64)}


def add_moments(a, b):
    return {"count": a["count"] + b["count"], "sum": a["sum"] + b["sum"], "sumsq": a["sumsq"] + b["sumsq"]}


def read_moments(folder, height, width, channels=3):
    file = storage.join(folder, MOMENTS)
    if not storage.exists(file):
        return empty_moments(height, width, channels)
    with np.load(io.BytesIO(storage.read_bytes(file)) if storage.is_url(file) else file) as z:
        return {"count": int(z["count"]), "sum": z["sum"].astype(np.int64), "sumsq": z["sumsq"].astype(np.int64)}


def write_moments(folder, moments):
    """Write ``moments.npz``, ``mean.png`` and ``std.png`` (uint8 RGB at the dataset's size)."""
    buffer = io.BytesIO()
    np.savez(buffer, count=np.int64(moments["count"]), sum=moments["sum"], sumsq=moments["sumsq"])
    storage.write_bytes(storage.join(folder, MOMENTS), buffer.getvalue())
    mean, std = mean_std(moments)
    for name, image in ((MEAN_IMAGE, mean), (STD_IMAGE, std)):
        rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        storage.write_bytes(storage.join(folder, name), png.tobytes())


def mean_std(moments):
    """Per-pixel mean and (population) standard deviation, float64, in 0..255."""
    n = max(1, moments["count"])
    mean = moments["sum"] / n
    var = np.maximum(moments["sumsq"] / n - mean * mean, 0.0)
    return mean, np.sqrt(var)


def read_records(folder, split=None):
    """Every record of a dataset folder (or of one split) as ``schema.decode_record`` dicts, in shard order.

    For tests and tools; training reads the shards with tf.data instead. A URL's shards are read through
    Beam's FileSystems (so any filesystem Beam knows works, not only those TensorFlow knows).
    """
    manifest = read(folder)
    if manifest is None:
        raise CadlError(f"{path(folder)}: no manifest")
    out = []
    for name in schema.SPLITS if split is None else [split]:
        files = [storage.join(folder, f) for f in manifest["splits"].get(name, {}).get("files", [])]
        if files and storage.is_url(folder):
            for file in files:
                data = storage.read_bytes(file)
                data = gzip.decompress(data) if manifest["compression"] == "GZIP" else data
                out += [schema.decode_record(raw) for raw in tfrecords(data)]
        elif files:
            import tensorflow as tf

            for raw in tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or None):
                out.append(schema.decode_record(raw.numpy()))
    return out


def tfrecords(data):
    """The records of an uncompressed TFRecord file's bytes: (length, masked CRC32C of the length, data, masked
    CRC32C of the data) each; raises ``ValueError`` at a cut-off record or a wrong checksum."""
    at = 0
    while at < len(data):
        if at + 12 > len(data):
            raise ValueError(f"a TFRecord header is cut off at byte {at}")
        (length,) = struct.unpack_from("<Q", data, at)
        (length_crc,) = struct.unpack_from("<I", data, at + 8)
        start, at = at + 12, at + 12 + length + 4
        if at > len(data):
            raise ValueError(f"a TFRecord of {length} bytes is cut off at byte {start}")
        record = data[start:start + length]
        (record_crc,) = struct.unpack_from("<I", data, at - 4)
        if schema.masked_crc32c(data[start - 12:start - 4]) != length_crc or schema.masked_crc32c(record) != record_crc:
            raise ValueError(f"the TFRecord at byte {start - 12} fails its checksum")
        yield record
