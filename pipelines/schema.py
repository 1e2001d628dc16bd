"""The record schema, declared once: the Beam writer and the tf.data reader both import it.

One ``tf.train.Example`` per image or video frame:

    image          bytes    the encoded picture (PNG by default, or JPEG), already at the dataset's size
    format         bytes    b"png" | b"jpeg"
    height, width  int64    pixels of the encoded picture
    channels       int64    3 (RGB) or 1 (grey)
    source         bytes    the input it came from (film path, CelebA file name, image path)
    frame_index    int64    0-based index of the frame in its film (0 for stills)
    timestamp      float    presentation time of the frame in seconds (0.0 for stills)
    split          bytes    b"train" | b"validation" | b"test"
    attributes     int64[]  CelebA's 40 attributes as -1/+1 (names in the manifest); empty elsewhere
    schema_version int64    SCHEMA_VERSION below; the reader refuses any other

A dataset folder holds shards named ``{split}-{shard:05d}-of-{n:05d}.tfrecord`` (``.tfrecord.gz`` when
GZIP-compressed, possibly with a run tag before the shard number for incremental additions) and a
``manifest.json`` that lists them, so the reader never globs.
"""

SCHEMA_VERSION = 1
SPLITS = ("train", "validation", "test")
IMAGE_FORMATS = ("png", "jpeg")
MANIFEST = "manifest.json"

# Feature name -> (TensorFlow dtype name, fixed length or None for variable length). The only place feature
# names live. ``FEATURES`` (with tf.dtypes) is built on first use, so importing this module does not import
# TensorFlow (~2 s, ~0.6 GB): the extraction driver and its Beam workers need only the names and version.
_FEATURE_TYPES = {
    "image": ("string", 1),
    "format": ("string", 1),
    "height": ("int64", 1),
    "width": ("int64", 1),
    "channels": ("int64", 1),
    "source": ("string", 1),
    "frame_index": ("int64", 1),
    "timestamp": ("float32", 1),
    "split": ("string", 1),
    "attributes": ("int64", None),
    "schema_version": ("int64", 1),
}
FEATURE_NAMES = tuple(_FEATURE_TYPES)


def __getattr__(name):
    # PEP 562: ``schema.FEATURES`` and ``schema.tf`` import TensorFlow only when first asked for.
    if name == "tf":
        import tensorflow

        return tensorflow
    if name == "FEATURES":
        return _features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _features():
    import tensorflow as tf  # on first use; a plain import, which AutoGraph traces without warnings
    return {k: (getattr(tf, dtype), length) for k, (dtype, length) in _FEATURE_TYPES.items()}


def _bytes(values):
    import tensorflow as tf
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    import tensorflow as tf
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
    import tensorflow as tf
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def encode_record(image, *, fmt, height, width, channels, source, frame_index=0, timestamp=0.0,
                  split="train", attributes=()):
    """Serialize one record. ``image`` is the encoded picture; returns the Example's bytes."""
    import tensorflow as tf
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, not {fmt!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    feature = {
        "image": _bytes([bytes(image)]),
        "format": _bytes([fmt.encode()]),
        "height": _ints([int(height)]),
        "width": _ints([int(width)]),
        "channels": _ints([int(channels)]),
        "source": _bytes([str(source).encode()]),
        "frame_index": _ints([int(frame_index)]),
        "timestamp": _floats([float(timestamp)]),
        "split": _bytes([split.encode()]),
        "attributes": _ints([int(a) for a in attributes]),
        "schema_version": _ints([SCHEMA_VERSION]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec():
    """The ``tf.io.parse_*example`` spec for FEATURES."""
    import tensorflow as tf
    spec = {}
    for name, (dtype, length) in _features().items():
        if length is None:
            spec[name] = tf.io.VarLenFeature(dtype)
        else:
            spec[name] = tf.io.FixedLenFeature([], dtype)
    return spec


def parse_records(serialized):
    """Parse a batch (or a scalar) of serialized records inside a tf.data pipeline; images stay encoded."""
    import tensorflow as tf
    parsed = tf.io.parse_example(serialized, feature_spec())
    parsed["attributes"] = tf.sparse.to_dense(parsed["attributes"])
    return parsed


def decode_record(serialized):
    """Parse one record in plain Python (tests, tools): a dict of Python values, image still encoded."""
    import tensorflow as tf
    example = tf.train.Example.FromString(serialized)
    out = {}
    for name, (dtype, length) in _features().items():
        feature = example.features.feature[name]
        if dtype == tf.string:
            values = list(feature.bytes_list.value)
        elif dtype == tf.int64:
            values = list(feature.int64_list.value)
        else:
            values = list(feature.float_list.value)
        if length is None:
            out[name] = values
        else:
            if len(values) != 1:
                raise ValueError(f"record has {len(values)} values for feature {name!r}, expected 1")
            value = values[0]
            out[name] = value.decode() if dtype == tf.string and name != "image" else value
    return out


def masked_crc32c(data):
    """The checksum of TFRecord framing: CRC32C of ``data``, rotated and offset as TensorFlow masks it."""
    import google_crc32c  # C implementation; Beam's own fallback (crcmod) is pure Python

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def shard_name(split, shard, num_shards, compressed=False, tag=""):
    """``train-00003-of-00012.tfrecord`` (``tag`` e.g. ``r0002-`` for an incremental addition)."""
    suffix = ".tfrecord.gz" if compressed else ".tfrecord"
    return f"{split}-{tag}{shard:05d}-of-{num_shards:05d}{suffix}"
