import numpy as np
import pytest
import tensorflow as tf

from pipelines import schema


def _record(**overrides):
    fields = dict(fmt="png", height=4, width=6, channels=3, source="film.mp4", frame_index=7,
                  timestamp=0.28, split="validation", attributes=[1, -1, 1])
    fields.update(overrides)
    image = tf.io.encode_png(np.full((4, 6, 3), 9, np.uint8)).numpy()
    return image, schema.encode_record(image, **fields)


def test_round_trip_in_python_and_in_tf():
    image, blob = _record()
    py = schema.decode_record(blob)
    assert py["image"] == image and py["source"] == "film.mp4" and py["split"] == "validation"
    assert py["frame_index"] == 7 and py["attributes"] == [1, -1, 1]
    assert py["schema_version"] == schema.SCHEMA_VERSION
    parsed = schema.parse_records(tf.constant([blob, _record(attributes=[])[1]]))
    assert parsed["frame_index"].numpy().tolist() == [7, 7]
    assert parsed["attributes"].numpy().tolist() == [[1, -1, 1], [0, 0, 0]]
    decoded = tf.io.decode_png(parsed["image"][0]).numpy()
    assert decoded.shape == (4, 6, 3) and (decoded == 9).all()


def test_rejects_unknown_split_and_format():
    with pytest.raises(ValueError, match="split"):
        _record(split="dev")
    with pytest.raises(ValueError, match="format"):
        _record(fmt="gif")


def test_shard_names():
    assert schema.shard_name("train", 3, 12) == "train-00003-of-00012.tfrecord"
    assert schema.shard_name("test", 0, 1, compressed=True, tag="r0002-") == "test-r0002-00000-of-00001.tfrecord.gz"
