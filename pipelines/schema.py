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

The record format has this one home: the feature table, ``encode_record`` / ``decode_record`` (TensorFlow's
protobufs, for the reader and the tests), ``RecordEncoder`` (the same ``tf.train.Example`` wire format written
directly, so the extraction driver and its Beam workers never import TensorFlow; tests check both give the
same Example), and TFRecord framing with its masked CRC32C (``TFRecordFile`` writes it, ``tfrecords`` reads it).
"""
import struct

SCHEMA_VERSION = 1
SPLITS = ("train", "validation", "test")
IMAGE_FORMATS = ("png", "jpeg")
MANIFEST = "manifest.json"

# Feature name -> (TensorFlow dtype name, fixed length or None for variable length). The only place feature
# names live. ``FEATURES`` (with tf.dtypes) is built on first use, so importing this module does not import
# TensorFlow (seconds and most of a gigabyte per process): the extraction driver and its Beam workers need
# only the names and version.
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
        if masked_crc32c(data[start - 12:start - 4]) != length_crc or masked_crc32c(record) != record_crc:
            raise ValueError(f"the TFRecord at byte {start - 12} fails its checksum")
        yield record


class TFRecordFile:
    """One shard being written: TFRecord framing (length, masked CRC32C of length, data, masked CRC32C), through
    Beam's FileSystems (any filesystem Beam knows; ``compression`` "" or "GZIP")."""

    def __init__(self, path, compression=""):
        from apache_beam.io.filesystem import CompressionTypes  # on first use: the reader does not need Beam
        from apache_beam.io.filesystems import FileSystems

        self.path, self.count, self.bytes, self.first_key, self.sources = path, 0, 0, None, {}
        kind = CompressionTypes.GZIP if compression == "GZIP" else CompressionTypes.UNCOMPRESSED
        self._file = FileSystems.create(path, mime_type="application/octet-stream", compression_type=kind)

    def write(self, key, record):
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + record +
                         struct.pack("<I", masked_crc32c(record)))
        self.count += 1
        self.bytes += len(record) + 16
        source = key.split("\t", 1)[0]  # keys are "<source>\t<frame index>"
        self.sources[source] = self.sources.get(source, 0) + 1
        if self.first_key is None or key < self.first_key:
            self.first_key = key

    def close(self):
        self._file.close()
        return {"path": self.path, "count": self.count, "bytes": self.bytes, "first_key": self.first_key,
                "sources": self.sources}


def count_tfrecords(path, compression=""):
    """The number of records in the TFRecord file at ``path`` (any Beam filesystem; ``compression`` "" or
    "GZIP"), read in full with both checksums of every record checked; raises ``ValueError`` at a cut-off
    record or a wrong checksum. How a finished pipeline's shards are verified before they are published."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    kind = CompressionTypes.GZIP if compression == "GZIP" else CompressionTypes.UNCOMPRESSED
    count = 0
    with FileSystems.open(path, mime_type="application/octet-stream", compression_type=kind) as f:
        while True:
            header = f.read(12)
            if not header:
                return count
            if len(header) < 12:
                raise ValueError(f"record {count}'s header is cut off")
            (length,) = struct.unpack_from("<Q", header)
            body = f.read(length + 4)
            if len(body) < length + 4:
                raise ValueError(f"record {count} ({length} bytes) is cut off")
            if (masked_crc32c(header[:8]) != struct.unpack_from("<I", header, 8)[0] or
                    masked_crc32c(body[:length]) != struct.unpack_from("<I", body, length)[0]):
                raise ValueError(f"record {count} fails its checksum")
            count += 1


def shard_name(split, shard, num_shards, compressed=False, tag=""):
    """``train-00003-of-00012.tfrecord`` (``tag`` e.g. ``r0002-`` for an incremental addition)."""
    suffix = ".tfrecord.gz" if compressed else ".tfrecord"
    return f"{split}-{tag}{shard:05d}-of-{num_shards:05d}{suffix}"


# -- the Example wire format without TensorFlow ------------------------------------------------------------
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
    """Serializes ``tf.train.Example`` records of the schema (the bytes ``encode_record`` gives, without
    TensorFlow); the per-dataset and per-input parts are encoded once.

    ``size``: (H, W) of every picture; ``fmt``: one of IMAGE_FORMATS."""

    _FIELDS = ("image", "format", "height", "width", "channels", "source", "frame_index", "timestamp", "split",
               "attributes", "schema_version")

    def __init__(self, size, fmt, channels=3, feature_names=FEATURE_NAMES):
        if set(feature_names) != set(self._FIELDS):
            raise ValueError(f"the record schema's features {sorted(feature_names)} are not the ones "
                             f"this encoder writes {sorted(self._FIELDS)}")
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"image format must be one of {IMAGE_FORMATS}, not {fmt!r}")
        h, w = size
        self._static = (_entry("format", _bytes_feature([fmt.encode()])) +
                        _entry("height", _int_feature([h])) + _entry("width", _int_feature([w])) +
                        _entry("channels", _int_feature([channels])) +
                        _entry("schema_version", _int_feature([SCHEMA_VERSION])))

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
