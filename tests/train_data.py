"""Tiny dataset folders in the extraction contract (shards + manifest.json), made without ``cadl extract``.

Pictures have structure and motion (a gradient background, a moving disc and square), so a VAE has something
to learn, and they are made in milliseconds.
"""
import os

import numpy as np
import tensorflow as tf

from pipelines import atomic, schema


def frames(n, size=(16, 16), channels=3, seed=0):
    """``n`` uint8 (H, W, C) frames of a disc and a square moving over a colour gradient."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, channels), np.uint8)
    for i in range(n):
        t = i / max(n, 1) * 2 * np.pi
        img = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(t + xx / w * 3)], -1)[..., :channels]
        cy, cx = h / 2 + h / 3 * np.sin(t), w / 2 + w / 3 * np.cos(1.3 * t)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 5) ** 2] = 1.0
        sy, sx = int((h - h // 4) * (0.5 + 0.5 * np.cos(t))), int((w - w // 4) * (0.5 + 0.5 * np.sin(2 * t)))
        img[sy:sy + h // 4, sx:sx + w // 4] = 0.1
        img += rng.normal(0, 0.01, img.shape)
        out[i] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def write_dataset(folder, counts=None, size=(16, 16), channels=3, shards=2, compression="", seed=0,
                  schema_version=None, fmt="png"):
    """Write ``folder`` with ``counts`` {split: n} records split over ``shards`` files per split."""
    counts = counts or {"train": 64, "validation": 16}
    os.makedirs(folder, exist_ok=True)
    manifest = {"schema_version": schema.SCHEMA_VERSION if schema_version is None else schema_version,
                "image": {"height": size[0], "width": size[1], "channels": channels, "format": fmt,
                          "fit": "crop"},
                "compression": compression, "splits": {}, "sources": {}, "skipped": [],
                "attribute_names": [], "bytes": 0, "options": {}}
    options = tf.io.TFRecordOptions(compression_type=compression or None)
    start = 0
    for split, n in counts.items():
        images = frames(n, size, channels, seed=seed + start)
        names = []
        per = int(np.ceil(n / shards))
        for s in range(shards):
            name = schema.shard_name(split, s, shards, compressed=bool(compression))
            path = os.path.join(folder, name)
            with tf.io.TFRecordWriter(path, options) as writer:
                for i in range(s * per, min(n, (s + 1) * per)):
                    data = (tf.io.encode_png(images[i]) if fmt == "png" else tf.io.encode_jpeg(images[i])).numpy()
                    writer.write(schema.encode_record(data, fmt=fmt, height=size[0], width=size[1],
                                                      channels=channels, source="synthetic", frame_index=start + i,
                                                      timestamp=(start + i) / 25.0, split=split))
            names.append(name)
            manifest["bytes"] += os.path.getsize(path)
        manifest["splits"][split] = {"count": n, "files": names}
        start += n
    atomic.write_json(os.path.join(folder, schema.MANIFEST), manifest)
    return folder
