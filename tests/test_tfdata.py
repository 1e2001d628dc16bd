"""The tf.data reader: manifest checks, decoding, shapes, determinism, flips, corrupt shards."""
import os

import numpy as np
import pytest
import tensorflow as tf

from pipelines import atomic, tfdata, schema
from pipelines.errors import CadlError
from train_data import frames, write_dataset


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("d16") / "data", {"train": 40, "validation": 12}, size=(16, 16))


def test_decode_image_alone_and_in_map():
    img = frames(1, (8, 12))[0]
    png = tf.io.encode_png(img)
    out = tfdata.decode_image(png, (8, 12, 3))
    assert out.dtype == tf.uint8 and np.array_equal(out.numpy(), img)
    mapped = tf.data.Dataset.from_tensors(png).map(lambda b: tfdata.decode_image(b, (8, 12, 3)))
    assert mapped.element_spec.shape == (8, 12, 3)
    assert np.array_equal(next(iter(mapped)).numpy(), img)


def test_random_flip_is_a_mirror_and_reproducible():
    img = tf.constant(frames(1, (8, 8))[0])
    outs = [tfdata.random_flip(img, tf.constant([0, i], tf.int64)).numpy() for i in range(16)]
    flipped = [np.array_equal(o, img.numpy()[:, ::-1]) for o in outs]
    same = [np.array_equal(o, img.numpy()) for o in outs]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    again = tfdata.random_flip(img, tf.constant([0, 3], tf.int64)).numpy()
    assert np.array_equal(again, outs[3])


@pytest.mark.parametrize("size,compression,fmt", [((16, 16), "", "png"), ((8, 24), "GZIP", "png"),
                                                 ((16, 32), "", "jpeg")])
def test_shapes_and_counts(tmp_path, size, compression, fmt):
    data = write_dataset(tmp_path / "d", {"train": 20, "validation": 7}, size=size, compression=compression,
                         fmt=fmt)
    batch = next(iter(tfdata.make_dataset(data, "train", 4)))
    assert batch.shape == (4,) + size + (3,) and batch.dtype == tf.uint8
    val = [b.numpy() for b in tfdata.make_dataset(data, "validation", 4, training=False)]
    assert [len(b) for b in val] == [4, 3]  # one ordered pass, last batch kept
    if fmt == "png":  # lossless: the records hold exactly the pictures written, in manifest order
        want = frames(7, size, seed=20)
        assert np.array_equal(np.concatenate(val), want)


def test_deterministic_mode_repeats_exactly(data16):
    def take(seed):
        ds = tfdata.make_dataset(data16, "train", 8, deterministic=True, seed=seed, augment=True)
        return np.stack([b.numpy() for b in ds.take(12)])  # 12 batches of 8 > 2 epochs of 40

    a, b, c = take(1), take(1), take(2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_training_stream_covers_every_image_per_epoch(data16):
    ds = tfdata.make_dataset(data16, "train", 8, deterministic=True, seed=0, cache=True)
    seen = np.concatenate([b.numpy() for b in ds.take(5)])  # exactly one epoch of 40
    want = frames(40, (16, 16), seed=0)
    key = lambda arr: sorted(x.tobytes() for x in arr)  # noqa: E731
    assert key(seen) == key(want)


def test_augment_flips_some_images(data16):
    plain = {x.tobytes() for x in frames(40, (16, 16), seed=0)}
    mirrored = {x[:, ::-1].tobytes() for x in frames(40, (16, 16), seed=0)}
    ds = tfdata.make_dataset(data16, "train", 8, augment=True, deterministic=True)
    got = [x.tobytes() for b in ds.take(10) for x in b.numpy()]
    assert all(g in plain or g in mirrored for g in got)
    assert any(g in mirrored and g not in plain for g in got) and any(g in plain for g in got)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(CadlError, match="no such data folder"):
        tfdata.load_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CadlError, match="no manifest.json"):
        tfdata.load_manifest(tmp_path / "empty")
    data = write_dataset(tmp_path / "d", {"train": 0, "validation": 4}, size=(8, 8), shards=1)
    manifest = tfdata.load_manifest(data)
    with pytest.raises(CadlError, match="no 'train' records"):
        tfdata.split_files(data, manifest, "train")


def test_other_schema_version_is_refused(tmp_path):
    data = write_dataset(tmp_path / "d", {"train": 4}, size=(8, 8), shards=1, schema_version=99)
    with pytest.raises(CadlError, match="schema version 99"):
        tfdata.load_manifest(data)


def test_records_of_other_schema_version_are_named(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "d", {"train": 8}, size=(8, 8), shards=2)
    manifest = atomic.read_json(os.path.join(data, schema.MANIFEST))
    bad = os.path.join(data, manifest["splits"]["train"]["files"][1])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)  # records written now say version 2
    write_dataset(tmp_path / "v2", {"train": 8}, size=(8, 8), shards=2)
    monkeypatch.undo()
    os.replace(os.path.join(tmp_path / "v2", manifest["splits"]["train"]["files"][1]), bad)
    with pytest.raises(tf.errors.InvalidArgumentError):
        for _ in tfdata.make_dataset(data, "train", 4, training=False):
            pass
    found = tfdata.find_corrupt([os.path.join(data, f) for f in manifest["splits"]["train"]["files"]],
                                 tfdata.load_manifest(data))
    assert [p for p, _ in found] == [bad] and "schema version" in found[0][1]


def test_find_corrupt_names_truncated_and_garbage_shards(tmp_path):
    data = write_dataset(tmp_path / "d", {"train": 12}, size=(8, 8), shards=3)
    manifest = tfdata.load_manifest(data)
    files = [os.path.join(data, f) for f in manifest["splits"]["train"]["files"]]
    with open(files[0], "r+b") as f:  # truncate in the middle of a record
        f.truncate(os.path.getsize(files[0]) - 7)
    with open(files[2], "r+b") as f:  # flip bytes inside the first record's payload: CRC mismatch
        f.seek(20)
        f.write(b"\xff" * 8)
    with pytest.raises(tf.errors.DataLossError):
        for _ in tfdata.make_dataset(data, "train", 4, training=False):
            pass
    bad = tfdata.find_corrupt(files, manifest)
    assert sorted(p for p, _ in bad) == sorted([files[0], files[2]])


def test_load_images_limit_and_order(data16):
    images = tfdata.load_images(data16, "validation", limit=5)
    assert images.shape == (5, 16, 16, 3)
    assert np.array_equal(images, frames(12, (16, 16), seed=40)[:5])
