"""``DIR/manifest.json``: what a dataset folder holds (the contract between extract and train), and its merging.

    {"schema_version": 1,
     "image": {"height": H, "width": W, "channels": 3, "format": "png", "fit": "crop"},
     "compression": "" | "GZIP",
     "splits": {"train": {"count": N, "files": [...]}, ...},      only the splits that have records
     "sources": {"<absolute input path>": {"kind": ..., "size": bytes, "mtime": float, "count": N, ...}},
     "skipped": [{"input": path, "reason": "..."}],
     "attribute_names": [...], "bytes": N,
     "mean_image": "mean.png", "std_image": "std.png", "options": {...},
     "moments": "moments.npz", "runs": [{"tag": "", "inputs": N, "records": N}, ...],
     "shards": {"<file>": {"count": N, "bytes": N}, ...}}            every listed file's records and size

``moments.npz`` keeps the exact per-pixel count / sum / sum of squares (int64) so that an incremental run can
update ``mean.png`` and ``std.png`` without reading the old shards again.

A dataset is published as one unit: a run writes its shards and its moments under names no earlier file has
(``train-r0003-00000-of-00001.tfrecord``, ``r0003-mean.png``; the first run into a folder has no tag), then
replaces ``manifest.json`` (one atomic rename): that is the only step that changes what the folder holds.
Until then the old manifest still describes the old files, untouched; after it, the files only the old
manifest named are deleted. Readers find every file through the manifest, never by a fixed name.

A dataset folder may be a URL of any filesystem Apache Beam knows (``gs://bucket/data``): every file here is
read and written through ``pipelines.storage`` (atomically: a temp file, then a rename).
"""
import gzip
import io
import json
import logging

import cv2
import numpy as np

from pipelines import owned, schema, storage
from pipelines.errors import CadlError

log = logging.getLogger("cadl.manifest")
tfrecords = schema.tfrecords  # TFRecord framing's home is the schema; the name stays here for its callers
MEAN_IMAGE = "mean.png"
STD_IMAGE = "std.png"
MOMENTS = "moments.npz"
# What must agree between the existing dataset and an --incremental addition.
_COMPATIBLE = ("schema_version", "image", "compression")


def path(folder):
    return storage.join(folder, schema.MANIFEST)


def read(folder, files=storage):
    """The manifest of ``folder``, or None when there is none. Raises ``CadlError`` when it is unusable.

    ``files``: the file operations (``join``, ``exists``, ``read_json``): ``storage`` (local paths and every
    filesystem Beam knows) or TensorFlow's (``tfdata``, which reads the shards with them too)."""
    file = files.join(folder, schema.MANIFEST)
    if not files.exists(file):
        return None
    try:
        manifest = files.read_json(file)
    except (OSError, ValueError) as e:
        raise CadlError(f"{file}: not a readable manifest ({e})") from None
    return validate(manifest, file)


def load(folder, files=storage):
    """The manifest of a dataset to read records from: it exists, names a picture size, and every shard it
    lists is there with the size and record count it records (a manifest left over other shards is refused
    instead of trained on). Every problem is one line naming the path."""
    folder = str(folder)
    if not files.exists(folder):
        raise CadlError(f"{folder}: no such data folder (write one with 'cadl extract')")
    file = files.join(folder, schema.MANIFEST)
    manifest = read(folder, files)
    if manifest is None:
        raise CadlError(f"{folder}: no {schema.MANIFEST} here; not a dataset folder written by 'cadl extract'")
    image = manifest.get("image") or {}
    if not all(isinstance(image.get(k), int) and image[k] > 0 for k in ("height", "width", "channels")):
        raise CadlError(f"{file}: manifest has no valid image height/width/channels")
    shards = manifest.get("shards")
    for split, entry in (manifest.get("splits") or {}).items():
        for name in entry.get("files", []):
            shard = files.join(folder, name)
            if not files.exists(shard):
                raise CadlError(f"{file}: lists {name}, which is not there; extract the dataset again")
            if shards is None:
                continue
            recorded, size = shards.get(name), files.size(shard)
            if recorded is None or size != recorded["bytes"]:
                raise CadlError(f"{file}: its counts disagree with its shards ({name}: {size} bytes, the manifest "
                                f"says {(recorded or {}).get('bytes', 'nothing')}); extract the dataset again")
        held = sum(shards[n]["count"] for n in entry.get("files", [])) if shards is not None else None
        if held is not None and held != entry.get("count", 0):
            raise CadlError(f"{file}: split {split!r} says {entry.get('count', 0)} records but its shards hold "
                            f"{held}; extract the dataset again")
    return manifest


def split_count(manifest, split):
    """Records in ``split`` (0 when the dataset has none)."""
    return int(((manifest.get("splits") or {}).get(split) or {}).get("count", 0))


def counts(manifest):
    """Records per split and their ``total``; ``{"total": 0}`` for no manifest."""
    result = {name: split_count(manifest, name) for name in (manifest or {}).get("splits") or {}}
    result["total"] = sum(result.values())
    return result


def validate(manifest, file):
    """``manifest`` when its shape is what ``cadl extract`` writes; otherwise one line naming ``file`` and the
    first problem (a manifest is data: it may come from anywhere)."""
    if not isinstance(manifest, dict):
        raise CadlError(f"{file}: not a manifest (a JSON {type(manifest).__name__}, not an object)")
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise CadlError(f"{file}: schema version {manifest.get('schema_version')} is not "
                        f"{schema.SCHEMA_VERSION}; extract again into a new folder")
    splits = manifest.get("splits", {})
    if not isinstance(splits, dict):
        raise CadlError(f"{file}: \"splits\" is not an object")
    for name, split in splits.items():
        if not (isinstance(split, dict) and _count(split.get("count")) and isinstance(split.get("files", []), list)
                and all(isinstance(f, str) and f for f in split.get("files", []))):
            raise CadlError(f"{file}: split {name!r} needs a whole \"count\" >= 0 and a list of file names, "
                            f"not {json.dumps(split)[:80]}")
    shards = manifest.get("shards", {})
    if not (isinstance(shards, dict) and all(isinstance(v, dict) and _count(v.get("count")) and
                                             _count(v.get("bytes")) for v in shards.values())):
        raise CadlError(f"{file}: \"shards\" must map file names to whole counts and byte sizes")
    for key in ("mean_image", "std_image", "moments"):
        if key in manifest and member_name(manifest[key]) is None:
            raise CadlError(f"{file}: {key} {manifest[key]!r} is not a file name inside the dataset folder")
    return manifest


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def member_name(name):
    """``name`` when it is a plain relative file name (no "/", "..", scheme), else None."""
    ok = isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0:")
    return name if ok else None


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


def run_tag(manifest, taken=()):
    """Name tag for the next run's files: "" for the first into a folder, then "r0002-", "r0003-", ...; never
    the prefix of a file the manifest names or of a name in ``taken`` (after a rebuild the counting restarts)."""
    if not manifest:
        return ""
    names = set(listed_files(manifest)) | set(moment_files(manifest)) | set(taken)
    n = len(manifest.get("runs", [])) + 1
    while any(_tagged(name, f"r{n:04d}-") for name in names):
        n += 1
    return f"r{n:04d}-"


def _tagged(name, tag):
    return name.startswith(tag) or f"-{tag}" in name


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
    out["shards"] = {**old.get("shards", {}), **new.get("shards", {})}
    out["options"] = new.get("options", {})
    return out


def build(header, files, sources, skipped, attribute_names, options, tag, inputs):
    """The manifest of one run's files (``merge`` adds it to an existing dataset's): ``header`` holds
    schema_version, image and compression; ``files`` the shards it wrote ([{"name", "split", "count", "bytes"}],
    in shard order); ``sources`` the inputs that gave records (see ``source_entry``); ``skipped`` [{"input",
    "reason"}]; ``options`` what shaped the records; ``tag`` the run's name tag; ``inputs`` how many it read."""
    splits = {}
    for split in schema.SPLITS:
        names = [f["name"] for f in files if f["split"] == split]
        if names:
            splits[split] = {"count": sum(f["count"] for f in files if f["split"] == split), "files": names}
    manifest = dict(header)
    manifest.update(splits=splits, sources=sources, skipped=sorted(skipped, key=lambda s: s["input"]),
                    attribute_names=attribute_names, bytes=sum(f["bytes"] for f in files), options=options,
                    runs=[{"tag": tag, "inputs": inputs, "records": sum(f["count"] for f in files)}],
                    shards={f["name"]: {"count": f["count"], "bytes": f["bytes"]} for f in files})
    return manifest


def source_entry(item, count, facts=None):
    """The manifest's entry for input ``item`` (``sources.Input``) that gave ``count`` records: its kind, size
    and modification time (what --incremental compares) and the facts its workers reported (a film's probe)."""
    entry = {"kind": item.kind, "size": item.size, "mtime": item.mtime, "count": count}
    entry.update({k: v for k, v in (facts or {}).items() if k not in entry})
    return entry


def delete_unlisted(folder, old, manifest):
    """Delete the files only the old manifest names, each only when it lies inside the dataset folder: a
    manifest is data (a folder may come from someone else) and must not be able to delete anything else."""
    keep = set(listed_files(manifest)) | set(moment_files(manifest))
    for name in listed_files(old) + moment_files(old):
        if name in keep:
            continue
        file = owned.member(folder, name)
        if file is None:
            log.warning("%s: not deleting %r, which the old manifest lists: it is not a file inside the dataset "
                        "folder", path(folder), name)
        elif storage.isfile(file):
            storage.delete(file)


def listed_files(manifest):
    """Every shard file a manifest lists (names relative to its folder)."""
    return [f for split in (manifest or {}).get("splits", {}).values() for f in split.get("files", [])]


def moment_files(manifest):
    """The moments file and the mean and standard-deviation images a manifest names."""
    return [manifest[k] for k in ("moments", "mean_image", "std_image") if (manifest or {}).get(k)]


# -- mean and standard-deviation images ----------------------------------------------------------------
def empty_moments(height, width, channels=3):
    return {"count": 0, "sum": np.zeros((height, width, channels), np.int64),
            "sumsq": np.zeros((height, width, channels), np.int64)}


def add_moments(a, b):
    return {"count": a["count"] + b["count"], "sum": a["sum"] + b["sum"], "sumsq": a["sumsq"] + b["sumsq"]}


def read_moments(folder, height, width, channels=3, manifest=None):
    """The moments ``manifest`` (default: the folder's) names; empty ones when there are none."""
    manifest = read(folder) if manifest is None else manifest
    file = storage.join(folder, (manifest or {}).get("moments") or MOMENTS)
    if not storage.exists(file):
        return empty_moments(height, width, channels)
    with np.load(io.BytesIO(storage.read_bytes(file)) if storage.is_url(file) else file) as z:
        return {"count": int(z["count"]), "sum": z["sum"].astype(np.int64), "sumsq": z["sumsq"].astype(np.int64)}


def write_moments(folder, moments, tag="", written=None):
    """Write ``{tag}moments.npz``, ``{tag}mean.png`` and ``{tag}std.png`` (uint8 RGB at the dataset's size).
    Returns the manifest's fields naming them; appends each path to ``written`` once it exists."""
    buffer = io.BytesIO()
    np.savez(buffer, count=np.int64(moments["count"]), sum=moments["sum"], sumsq=moments["sumsq"])
    mean, std = mean_std(moments)
    files = [(MOMENTS, buffer.getvalue())]
    for name, image in ((MEAN_IMAGE, mean), (STD_IMAGE, std)):
        rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        files.append((name, png.tobytes()))
    for name, data in files:
        storage.write_bytes(storage.join(folder, tag + name), data)
        if written is not None:
            written.append(storage.join(folder, tag + name))
    return {"moments": tag + MOMENTS, "mean_image": tag + MEAN_IMAGE, "std_image": tag + STD_IMAGE}


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
                out += [schema.decode_record(raw) for raw in schema.tfrecords(data)]
        elif files:
            import tensorflow as tf

            for raw in tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or None):
                out.append(schema.decode_record(raw.numpy()))
    return out

