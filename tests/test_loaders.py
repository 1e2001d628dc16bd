"""Local course datasets: MNIST (IDX, gz, npz), CIFAR-10 (folder, tarball), CelebA, image folders; the lesson's
interface (X, Y, one-hot, splits, next_batch, mean/std); and the messages when files are missing."""
import os
import pickle

import numpy as np
import pytest

from fixtures_course import (write_celeba, write_cifar10, write_idx, write_image_folder, write_mnist,
                             write_mnist_npz)
from pipelines import loaders
from pipelines.errors import CadlError


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    arrays = write_mnist(folder, n_train=300, n_test=100)
    return folder, arrays


def test_one_hot_round_trip():
    labels = np.array([3, 0, 9, 9, 1])
    rows = loaders.one_hot(labels, 10)
    assert rows.shape == (5, 10) and rows.dtype == np.float32 and (rows.sum(1) == 1).all()
    np.testing.assert_array_equal(loaders.from_one_hot(rows), labels)
    with pytest.raises(ValueError):
        loaders.one_hot([10], 10)


def test_idx_files_round_trip_gzipped_or_not(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        np.testing.assert_array_equal(loaders.read_idx(write_idx(tmp_path / name, array)), array)
    (tmp_path / "bad").write_bytes(b"\x08\x00\x08\x01\x00\x00\x00\x03abc")
    with pytest.raises(CadlError, match="bad: not an IDX file"):
        loaders.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(CadlError, match=r"short: IDX header says \(9,\)"):
        loaders.read_idx(tmp_path / "short")


def test_mnist_from_idx_files_has_the_lessons_interface(mnist_dir):
    folder, (x_train, y_train, x_test, y_test) = mnist_dir
    ds = loaders.MNIST(folder, split=[0.8, 0.1, 0.1])
    assert ds.X.shape == (400, 784) and ds.X.dtype == np.float32 and 0 <= ds.X.min() and ds.X.max() <= 1
    # The rows are the files' images in order (train file, then test file), scaled to [0, 1].
    np.testing.assert_allclose(ds.X[:300], x_train.reshape(300, -1) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.Y, np.concatenate([y_train, y_test]))
    assert ds.image_shape == (28, 28, 1) and ds.n_classes == 10
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (320, 40, 40)
    assert ds.train.images.shape == (320, 784) and ds.test.labels.shape == (40,)
    # The three splits partition everything.
    assert sorted(np.concatenate(ds.indices).tolist()) == list(range(400))


def test_one_hot_labels_and_official_split(mnist_dir):
    folder, (_, y_train, _, y_test) = mnist_dir
    ds = loaders.MNIST(folder, one_hot=True, split="official")
    assert ds.Y.shape == (400, 10)
    np.testing.assert_array_equal(loaders.from_one_hot(ds.Y), np.concatenate([y_train, y_test]))
    # Official: the test file is the test split; the last tenth of the training file validates.
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (270, 30, 100)
    np.testing.assert_array_equal(loaders.from_one_hot(ds.test.labels), y_test)


def test_next_batch_is_one_shuffled_epoch(mnist_dir):
    ds = loaders.MNIST(mnist_dir[0], one_hot=True)
    seen = []
    sizes = []
    for images, labels in ds.train.next_batch(64):
        assert images.shape[1] == 784 and labels.shape == (len(images), 10)
        sizes.append(len(images))
        seen.extend(map(bytes, (images * 255).round().astype(np.uint8)))
    assert sizes == [64] * 5  # 320 = 5 x 64
    assert sorted(seen) == sorted(map(bytes, ds.train.pixels.reshape(320, -1)))
    first = [b[1].argmax(1).tolist() for b in ds.train.next_batch(64)]
    second = [b[1].argmax(1).tolist() for b in ds.train.next_batch(64)]
    assert first != second  # a new order every epoch


def test_mean_and_std_images_are_the_training_splits(mnist_dir):
    ds = loaders.MNIST(mnist_dir[0])
    train = ds.train.images
    np.testing.assert_allclose(ds.mean(), train.mean(0), atol=1e-6)
    np.testing.assert_allclose(ds.std(), train.std(0), atol=1e-5)
    assert ds.mean_image().shape == (28, 28, 1) == ds.std_image().shape


def test_mnist_unzipped_and_keras_npz(tmp_path):
    x_train, y_train, x_test, y_test = write_mnist(tmp_path / "plain", 50, 20, gz=False)
    assert len(loaders.MNIST(tmp_path / "plain")) == 70
    write_mnist_npz(tmp_path / "mnist.npz", 40, 10)
    for where in (tmp_path, tmp_path / "mnist.npz"):  # the folder holding it, or the file itself
        ds = loaders.MNIST(where, split="official")
        assert len(ds) == 50 and len(ds.test) == 10


def test_missing_mnist_says_what_to_put_where(tmp_path):
    with pytest.raises(CadlError) as e:
        loaders.MNIST(tmp_path)
    message = str(e.value)
    assert str(tmp_path) in message and "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "mnist.npz" in message and "https://" in message and "downloads nothing" in message
    assert "\n" not in message
    write_mnist(tmp_path, 10, 10)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(CadlError, match="incomplete MNIST: missing t10k-labels-idx1-ubyte.gz"):
        loaders.MNIST(tmp_path)


@pytest.mark.parametrize("tarball", [False, True])
def test_cifar10_python_version(tmp_path, tarball):
    images, labels = write_cifar10(tmp_path, per_batch=20, tarball=tarball)
    ds = loaders.CIFAR10(tmp_path, split="official")
    assert ds.image_shape == (32, 32, 3) and len(ds) == 120 and len(ds.test) == 20
    # Channel planes were unpacked correctly: the pictures are the ones written.
    np.testing.assert_array_equal(ds.pixels, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names[:2] == ["airplane", "automobile"]
    assert ds.X.shape == (120, 3072)


def test_cifar10_missing_or_hostile(tmp_path):
    with pytest.raises(CadlError, match="cifar-10-python.tar.gz.*https://www.cs.toronto.edu"):
        loaders.CIFAR10(tmp_path)
    write_cifar10(tmp_path, per_batch=4)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps(os.system, protocol=2))  # a pickle that would call a function
    with pytest.raises(CadlError, match="data_batch_3: not a CIFAR-10 python batch.*refusing"):
        loaders.CIFAR10(tmp_path)
    os.remove(batch)
    with pytest.raises(CadlError, match="data_batch_3: missing"):
        loaders.CIFAR10(tmp_path)


def test_image_folder_labels_from_sub_folders(tmp_path):
    classes = write_image_folder(tmp_path / "shapes", per_class=10)
    (tmp_path / "shapes" / "loose.png").write_bytes((tmp_path / "shapes" / "circles" / "000.png").read_bytes())
    (tmp_path / "shapes" / "squares" / "broken.jpg").write_bytes(b"not a picture")
    ds = loaders.ImageFolder(tmp_path / "shapes", size=(24, 32), split=[0.5, 0.25, 0.25])
    assert ds.class_names == sorted(classes) and ds.n_classes == 3
    assert ds.image_shape == (24, 32, 3) and len(ds) == 30
    assert np.bincount(ds.labels).tolist() == [10, 10, 10]
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (15, 8, 7)
    reasons = dict((os.path.basename(p), r) for p, r in ds.skipped)
    assert set(reasons) == {"loose.png", "broken.jpg"} and "not a readable image" in reasons["broken.jpg"]
    grey = loaders.ImageFolder(tmp_path / "shapes" / "circles", size=(16, 16), channels=1, limit=4)
    assert grey.labels is None and grey.image_shape == (16, 16, 1) and len(grey) == 4


def test_image_folder_missing_or_empty(tmp_path):
    with pytest.raises(CadlError, match="no such folder"):
        loaders.ImageFolder(tmp_path / "nope")
    with pytest.raises(CadlError, match="no images"):
        loaders.ImageFolder(tmp_path)


@pytest.mark.parametrize("zipped", [False, True])
def test_celeba_official_partition_and_attributes(tmp_path, zipped):
    names = write_celeba(tmp_path, n=12, zipped=zipped)
    ds = loaders.CELEB(tmp_path, size=(32, 32), split="official", attribute="Smiling")
    assert len(ds) == 12 and ds.image_shape == (32, 32, 3)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (6, 3, 3)
    assert ds.labels.tolist() == [i % 2 for i in range(len(names))]
    assert ds.class_names == ["not Smiling", "Smiling"]
    with pytest.raises(CadlError, match="no attribute 'Bald'"):
        loaders.CELEB(tmp_path, size=(32, 32), attribute="Bald")


def test_missing_celeba_names_the_files_and_where_they_are_published(tmp_path):
    with pytest.raises(CadlError, match="img_align_celeba.*mmlab.ie.cuhk.edu.hk.*downloads nothing"):
        loaders.CELEB(tmp_path)


def test_dataset_from_the_lessons_float_rows():
    rng = np.random.default_rng(0)
    X = rng.random((50, 12)).astype(np.float32)
    ds = loaders.Dataset(X, rng.integers(0, 3, 50), split=[0.6, 0.2, 0.2], one_hot=True, image_shape=(3, 4, 1))
    assert ds.X.shape == (50, 12) and np.abs(ds.X - X).max() <= 0.5 / 255 + 1e-7  # stored as 8 bits
    assert ds.Y.shape == (50, 3) and (len(ds.train), len(ds.valid), len(ds.test)) == (30, 10, 10)
    with pytest.raises(ValueError, match="summing to 1"):
        loaders.Dataset(X, split=[0.5, 0.1, 0.1], image_shape=(3, 4, 1))
    assert loaders.parse_split("0.8,0.1,0.1") == [0.8, 0.1, 0.1]
    assert loaders.parse_split("official") == "official"
    with pytest.raises(ValueError):
        loaders.parse_split("0.8,0.3")


def test_limit_keeps_every_partition(mnist_dir):
    ds = loaders.MNIST(mnist_dir[0], split="official", limit=40)
    assert len(ds) == 40 and len(ds.test) > 0 and len(ds.valid) > 0
