"""The course's datasets, from local files only: MNIST, CIFAR-10, CelebA and any folder of labelled images.

The interface is the lesson's (``libs/datasets.py`` and ``libs/dataset_utils.py`` of "Creative Applications
of Deep Learning")::

    ds = MNIST("data/mnist", one_hot=True, split=[0.8, 0.1, 0.1])
    ds.X                    # (n_observations, n_features) float32 in [0, 1], one flattened image per row
    ds.Y                    # (n_observations,) int labels, or (n_observations, n_classes) one-hot
    ds.train / ds.valid / ds.test
        .images             # that split's rows of X
        .labels             # that split's rows of Y
        .next_batch(100)    # a generator over one freshly shuffled epoch of (images, labels) batches
    ds.mean(), ds.std()     # flattened mean and standard-deviation images (of the training split)
    ds.mean_image(), ds.std_image()   # the same as (H, W, C) arrays

``split`` is a list of three fractions (train, validation, test) applied to a seeded shuffle of everything,
as in the lesson, or ``"official"`` for the published partition (MNIST and CIFAR-10: their test files, and
the last 5,000 training images for validation; CelebA: ``list_eval_partition.txt``).

Pixels are kept as uint8 (N, H, W, C) in ``ds.pixels`` (4x less memory than floats: CIFAR-10 is 184 MB);
``X`` and the splits' ``images`` are converted to floats when asked for. Nothing is downloaded: a missing
file is a ``CadlError`` that says which files are expected, where to put them and where they are published.
"""
import gzip
import io
import os
import pickle
import tarfile

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines import geometry
from pipelines.errors import CadlError
from pipelines.media import IMAGE_EXTENSIONS

SPLIT_NAMES = ("train", "validation", "test")

MNIST_FILES = {  # part -> the file name as published (each also accepted gzipped, and with '.idx' spelling)
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/) "
              "or Keras' https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz")
CIFAR_FOLDER, CIFAR_TARBALL = "cifar-10-batches-py", "cifar-10-python.tar.gz"
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html (the 'CIFAR-10 python version', cifar-10-python.tar.gz)"
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (img_align_celeba.zip, list_eval_partition.txt)"
OFFICIAL_VALIDATION = 5000  # MNIST / CIFAR-10: the last 5,000 training images validate under split="official"


# -- labels -----------------------------------------------------------------------------------------------
def one_hot(labels, n_classes=None):
    """Integer labels (n,) -> float32 one-hot rows (n, n_classes)."""
    labels = np.asarray(labels, np.int64)
    n_classes = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got [{labels.min()}, {labels.max()}]")
    out = np.zeros((labels.shape[0], n_classes), np.float32)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def from_one_hot(rows):
    """One-hot (or probability) rows -> integer labels: the arg-max of each row."""
    return np.argmax(np.asarray(rows), axis=-1).astype(np.int64)


# -- the lesson's Dataset ---------------------------------------------------------------------------------
class DatasetSplit:
    """One split: ``images`` (float rows), ``labels``, ``next_batch``; ``pixels`` keeps the uint8 images."""

    def __init__(self, pixels, labels, seed=0):
        self.pixels = pixels
        self.labels = labels
        self.num_examples = len(pixels)
        self._rng = np.random.default_rng(seed)

    def __len__(self):
        return self.num_examples

    @property
    def images(self):
        """(n, H*W*C) float32 in [0, 1], the lesson's flattened rows."""
        return _to_rows(self.pixels)

    def next_batch(self, batch_size=100):
        """Yield (images, labels) batches over one epoch in a fresh (seeded) shuffled order, as the lesson's
        ``for batch_xs, batch_ys in ds.train.next_batch(): ...``; labels are None for unlabelled data."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        order = self._rng.permutation(self.num_examples)
        for start in range(0, self.num_examples, batch_size):
            idx = np.sort(order[start:start + batch_size])  # sorted: cheaper gathers, same batch content
            labels = None if self.labels is None else self.labels[idx]
            yield _to_rows(self.pixels[idx]), labels


class Dataset:
    """The lesson's ``Dataset(Xs, ys, split=[...], one_hot=...)`` over images kept as uint8.

    ``images``: uint8 (N, H, W, C), or floats in [0, 1] with ``image_shape`` (rows of X are accepted).
    ``labels``: ints (N,) or None. ``split``: three fractions, or "official" with ``partition`` giving each
    example's split name ("train" / "validation" / "test").
    """

    def __init__(self, images, labels=None, split=(1.0, 0.0, 0.0), one_hot=False, n_classes=None,
                 image_shape=None, class_names=None, partition=None, seed=0, name="dataset", skipped=()):
        images = np.asarray(images)
        if image_shape is not None:
            images = images.reshape((len(images),) + tuple(image_shape))
        if images.ndim == 3:  # (N, H, W) grey
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C) or rows with image_shape, got {images.shape}")
        if images.dtype != np.uint8:
            images = np.clip(np.rint(images.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        self.pixels = images
        self.image_shape = tuple(images.shape[1:])
        self.name = name
        self.skipped = list(skipped)  # (path, reason) of inputs that could not be read
        self.one_hot = bool(one_hot)
        self.class_names = list(class_names) if class_names is not None else None
        if labels is not None:
            labels = np.asarray(labels, np.int64)
            if labels.shape != (len(images),):
                raise ValueError(f"{len(images)} images but labels of shape {labels.shape}")
            n = n_classes or (len(self.class_names) if self.class_names else int(labels.max()) + 1)
            self.n_classes = int(n)
        else:
            self.n_classes = None
        self.labels = labels  # always the integer labels
        self.indices = _split_indices(len(images), split, partition, seed)
        self.split = split
        parts = [DatasetSplit(images[idx], self._labels_for(idx), seed=seed + i)
                 for i, idx in enumerate(self.indices)]
        self.train, self.valid, self.test = parts
        self._stats = None

    def _labels_for(self, idx):
        if self.labels is None:
            return None
        labels = self.labels[idx]
        return one_hot(labels, self.n_classes) if self.one_hot else labels

    def __len__(self):
        return len(self.pixels)

    @property
    def X(self):
        return _to_rows(self.pixels)

    @property
    def Y(self):
        if self.labels is None:
            return None
        return one_hot(self.labels, self.n_classes) if self.one_hot else self.labels

    @property
    def counts(self):
        return {"train": len(self.train), "validation": len(self.valid), "test": len(self.test)}

    def _statistics(self):
        # Over the training split (what a model may learn from), in float64 chunks to bound memory.
        if self._stats is None:
            pixels = self.train.pixels if len(self.train) else self.pixels
            total = np.zeros(self.image_shape, np.float64)
            squares = np.zeros(self.image_shape, np.float64)
            for start in range(0, len(pixels), 4096):
                chunk = pixels[start:start + 4096].astype(np.float64) / 255.0
                total += chunk.sum(0)
                squares += (chunk ** 2).sum(0)
            n = max(len(pixels), 1)
            mean = total / n
            std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
            self._stats = mean.astype(np.float32), std.astype(np.float32)
        return self._stats

    def mean_image(self):
        """(H, W, C) float32 mean of the training split, in [0, 1]."""
        return self._statistics()[0]

    def std_image(self):
        """(H, W, C) float32 per-pixel standard deviation of the training split."""
        return self._statistics()[1]

    def mean(self):
        """The lesson's ``ds.mean()``: the mean image as one flattened row."""
        return self.mean_image().reshape(-1)

    def std(self):
        """The lesson's ``ds.std()``: the standard-deviation image as one flattened row."""
        return self.std_image().reshape(-1)


def _to_rows(pixels):
    return pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0


def _split_indices(n, split, partition, seed):
    if isinstance(split, str):
        if split != "official":
            raise ValueError(f"split must be three fractions or 'official', not {split!r}")
        if partition is None:
            raise CadlError("this dataset has no official partition: give split fractions such as 0.8,0.1,0.1")
        partition = np.asarray(partition)
        return tuple(np.flatnonzero(partition == name) for name in SPLIT_NAMES)
    fractions = np.asarray(split, np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions summing to 1, not {list(split)}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_valid = min(int(round(fractions[1] * n)), n - n_train)
    return (np.sort(order[:n_train]), np.sort(order[n_train:n_train + n_valid]),
            np.sort(order[n_train + n_valid:]))


def parse_split(text):
    """``"0.8,0.1,0.1"`` -> [0.8, 0.1, 0.1]; ``"official"`` stays as it is (the jobs' ``--split``)."""
    if text == "official":
        return text
    try:
        parts = [float(p) for p in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
        raise ValueError(f"split must be 'official' or three fractions summing to 1 like 0.8,0.1,0.1, "
                         f"not {text!r}")
    return parts


def _subset(n, limit):
    """Indices of at most ``limit`` examples spread evenly over all ``n`` (so every partition keeps some)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max(int(limit), 1)).round().astype(np.int64))


# -- MNIST ------------------------------------------------------------------------------------------------
def read_idx(path):
    """One IDX file (the MNIST format: magic, dimensions, raw big-endian data), gzipped or not -> array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise CadlError(f"{path}: cannot read this IDX file ({e})") from None
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in dtypes:
        raise CadlError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CadlError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(dtypes[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise CadlError(f"{path}: IDX header says {shape} ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_mnist_files(folder):
    found, missing = {}, []
    for part, stem in MNIST_FILES.items():
        dotted = stem.replace("-idx", ".idx")  # "train-images.idx3-ubyte", as some unpackers name them
        candidates = [os.path.join(folder, s + ext) for s in (stem, dotted) for ext in ("", ".gz")]
        path = next((c for c in candidates if os.path.isfile(c)), None)
        if path is None:
            missing.append(stem + ".gz")
        else:
            found[part] = path
    return found, missing


def load_mnist_arrays(data_dir):
    """(train_images, train_labels, test_images, test_labels) uint8 arrays from IDX files or ``mnist.npz``."""
    data_dir = os.fspath(data_dir)
    npz = data_dir if data_dir.endswith(".npz") else os.path.join(data_dir, "mnist.npz")
    found, missing = ({}, list(MNIST_FILES.values())) if data_dir.endswith(".npz") else \
        _find_mnist_files(data_dir)
    if not missing:
        arrays = [read_idx(found[p]) for p in MNIST_FILES]
        for (part, path), array in zip(found.items(), arrays):
            want = 3 if part.endswith("images") else 1
            if array.ndim != want or array.dtype != np.uint8:
                raise CadlError(f"{path}: expected {want}-D unsigned bytes for MNIST {part}, got "
                                f"{array.ndim}-D {array.dtype}")
    elif os.path.isfile(npz):
        try:
            with np.load(npz, allow_pickle=False) as f:
                arrays = [np.asarray(f[k]) for k in ("x_train", "y_train", "x_test", "y_test")]
        except (KeyError, ValueError, OSError) as e:
            raise CadlError(f"{npz}: not Keras' mnist.npz (needs x_train, y_train, x_test, y_test: {e})") from None
    elif found:
        raise CadlError(f"{data_dir}: incomplete MNIST: missing {', '.join(missing)} (unzipped also accepted); "
                        f"published at {MNIST_URLS}")
    else:
        raise CadlError(f"{data_dir}: no MNIST here: put {', '.join(MNIST_FILES.values())} (gzipped or not) "
                        f"or Keras' mnist.npz in this folder; they are published at {MNIST_URLS}; "
                        "cadl downloads nothing")
    x_train, y_train, x_test, y_test = arrays
    for x, y, what in ((x_train, y_train, "training"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise CadlError(f"{data_dir}: MNIST {what} images ({len(x)}) and labels ({len(y)}) differ in number")
    return x_train.astype(np.uint8), y_train.astype(np.int64), x_test.astype(np.uint8), y_test.astype(np.int64)


def MNIST(data_dir, one_hot=False, split=(0.8, 0.1, 0.1), limit=None, seed=0):
    """MNIST (70,000 28x28 grey digits, 10 classes) from local files; see ``load_mnist_arrays``."""
    x_train, y_train, x_test, y_test = load_mnist_arrays(data_dir)
    return _train_test_dataset("mnist", x_train, y_train, x_test, y_test, one_hot, split, limit, seed,
                               class_names=[str(i) for i in range(10)])


def _train_test_dataset(name, x_train, y_train, x_test, y_test, one_hot, split, limit, seed, class_names):
    images = np.concatenate([x_train, x_test])
    labels = np.concatenate([y_train, y_test])
    n_valid = min(OFFICIAL_VALIDATION, len(x_train) // 10)
    partition = np.array(["train"] * (len(x_train) - n_valid) + ["validation"] * n_valid + ["test"] * len(x_test))
    keep = _subset(len(images), limit)
    return Dataset(images[keep], labels[keep], split=split, one_hot=one_hot, n_classes=len(class_names),
                   class_names=class_names, partition=partition[keep], seed=seed, name=name)


# -- CIFAR-10 ---------------------------------------------------------------------------------------------
class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10 ships as pickles; unpickling may run code, so allow only what its batches contain."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("copyreg", "_reconstructor"),
               ("builtins", "object")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle(data, where):
    try:
        return _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a damaged or foreign pickle: one line naming the file
        raise CadlError(f"{where}: not a CIFAR-10 python batch ({e})") from None


def _cifar_batch(raw, where):
    batch = _unpickle(raw, where)
    if not isinstance(batch, dict):
        raise CadlError(f"{where}: not a CIFAR-10 python batch (expected a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    try:
        data = np.asarray(batch["data"], np.uint8)
        labels = np.asarray(batch["labels"], np.int64)
    except KeyError as e:
        raise CadlError(f"{where}: CIFAR-10 batch without {e}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise CadlError(f"{where}: expected (n, 3072) bytes and n labels, got {data.shape} and {len(labels)}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: -> (n, 32, 32, 3).
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10_arrays(data_dir):
    """(train_images, train_labels, test_images, test_labels, class_names) from the python version."""
    data_dir = os.fspath(data_dir)
    raw = {}
    folder = data_dir if os.path.basename(data_dir.rstrip(os.sep)) == CIFAR_FOLDER else \
        os.path.join(data_dir, CIFAR_FOLDER)
    tarball = data_dir if data_dir.endswith((".tar.gz", ".tgz")) else os.path.join(data_dir, CIFAR_TARBALL)
    if os.path.isdir(folder):
        for name in CIFAR_BATCHES + ("batches.meta",):
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                if name == "batches.meta":
                    continue
                raise CadlError(f"{path}: missing; {folder} should hold {', '.join(CIFAR_BATCHES)} "
                                f"(the unpacked {CIFAR_TARBALL}, published at {CIFAR_URL})")
            with open(path, "rb") as f:
                raw[name] = (f.read(), path)
    elif os.path.isfile(tarball):
        try:
            with tarfile.open(tarball, "r:*") as tar:
                for member in tar.getmembers():  # read in memory, never extracted
                    base = os.path.basename(member.name)
                    if member.isfile() and base in CIFAR_BATCHES + ("batches.meta",):
                        raw[base] = (tar.extractfile(member).read(), f"{tarball}:{member.name}")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise CadlError(f"{tarball}: not a readable tarball ({e})") from None
        missing = [b for b in CIFAR_BATCHES if b not in raw]
        if missing:
            raise CadlError(f"{tarball}: no {', '.join(missing)} inside: not the CIFAR-10 python version "
                            f"(published at {CIFAR_URL})")
    else:
        raise CadlError(f"{data_dir}: no CIFAR-10 here: put {CIFAR_TARBALL} or its unpacked {CIFAR_FOLDER}/ "
                        f"folder in this folder; published at {CIFAR_URL}; cadl downloads nothing")
    parts = [_cifar_batch(*raw[name]) for name in CIFAR_BATCHES]
    x_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if "batches.meta" in raw:
        meta = _unpickle(*raw["batches.meta"])
        names = meta.get(b"label_names") if isinstance(meta, dict) else None
        if names:
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return x_train, y_train, parts[5][0], parts[5][1], class_names


def CIFAR10(data_dir, one_hot=False, split=(0.8, 0.1, 0.1), limit=None, seed=0):
    """CIFAR-10 (60,000 32x32 colour images, 10 classes) from its python-version folder or tarball."""
    x_train, y_train, x_test, y_test, class_names = load_cifar10_arrays(data_dir)
    return _train_test_dataset("cifar10", x_train, y_train, x_test, y_test, one_hot, split, limit, seed,
                               class_names)


# -- CelebA and image folders -----------------------------------------------------------------------------
def _decode(data, where, size, fit, crop_factor, channels):
    """Encoded bytes -> (H, W, channels) uint8 fitted to ``size``; CadlError naming ``where`` if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            image = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise CadlError(f"{where}: not a readable image ({e})") from None
    if crop_factor and crop_factor < 1:
        image = geometry.center_crop_factor(image, crop_factor)
    image = geometry.fit_image(image, size, fit)
    return image.reshape(tuple(size) + (channels,))


def CELEB(data_dir, size=(64, 64), crop_factor=0.8, fit="crop", split=(0.8, 0.1, 0.1), limit=None,
          attribute=None, one_hot=False, seed=0, channels=3):
    """CelebA's aligned faces (folder or zip, see ``pipelines.celeba``), cropped by ``crop_factor`` as in the
    course and fitted to ``size``. ``attribute`` (e.g. "Smiling") makes binary labels (1 where +1);
    ``split="official"`` uses ``list_eval_partition.txt``. Unreadable images are skipped and listed."""
    from pipelines.celeba import CelebA

    data_dir = os.fspath(data_dir)
    if not os.path.exists(data_dir):
        raise CadlError(f"{data_dir}: no such folder: put CelebA's img_align_celeba.zip (or the unpacked "
                        f"img_align_celeba/ folder) and list_eval_partition.txt there; published at {CELEBA_URL}; "
                        "cadl downloads nothing")
    try:
        celeb = CelebA(data_dir)
    except CadlError as e:
        raise CadlError(f"{e}; published at {CELEBA_URL}; cadl downloads nothing") from None
    names = celeb.names
    if not names:
        raise CadlError(f"{celeb.store}: no CelebA images inside")
    names = [names[i] for i in _subset(len(names), limit)]
    labels = None
    if attribute is not None:
        if attribute not in celeb.attribute_names:
            raise CadlError(f"{data_dir}: no attribute {attribute!r} in list_attr_celeba.txt "
                            f"(have: {', '.join(celeb.attribute_names) or 'no attribute file'})")
        column = celeb.attribute_names.index(attribute)
    images, kept, skipped = [], [], []
    for name in names:
        try:
            images.append(_decode(celeb.read(name), f"{celeb.store}:{name}", size, fit, crop_factor, channels))
            kept.append(name)
        except CadlError as e:
            skipped.append((name, str(e)))
    celeb.close()
    if not images:
        raise CadlError(f"{celeb.store}: none of {len(names)} images could be read")
    if attribute is not None:
        missing = [n for n in kept if n not in celeb.attributes]
        if missing:
            raise CadlError(f"{data_dir}: list_attr_celeba.txt has no line for {missing[0]}")
        labels = np.array([int(celeb.attributes[n][column] > 0) for n in kept])
    partition = None
    if celeb.partition is not None:
        partition = [celeb.partition.get(n, "train") for n in kept]
    elif split == "official":
        raise CadlError(f"{data_dir}: split 'official' needs list_eval_partition.txt beside the images")
    return Dataset(np.stack(images), labels, split=split, one_hot=one_hot, partition=partition, seed=seed,
                   class_names=None if attribute is None else [f"not {attribute}", attribute],
                   name="celeba", skipped=skipped)


def ImageFolder(data_dir, size=(64, 64), fit="crop", split=(0.8, 0.1, 0.1), limit=None, one_hot=False,
                seed=0, channels=3):
    """Every image under ``data_dir`` (recursive), fitted to ``size`` (H, W).

    Labels come from the first-level sub-folder names (sorted: ``cats/`` = 0, ``dogs/`` = 1, ...). When no
    sub-folder holds images, the folder is unlabelled (fine for autoencoders) and ``labels`` is None; when
    some do, images lying directly in ``data_dir`` are skipped and listed in ``ds.skipped``, as are
    unreadable files.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise CadlError(f"{data_dir}: no such folder: expected a folder of images ({', '.join(IMAGE_EXTENSIONS)}),"
                        " one sub-folder per class for classifiers")
    files = []
    for folder, dirs, names in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, data_dir)
        files += [(rel, name) for name in sorted(names)
                  if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")]
    if not files:
        raise CadlError(f"{data_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below")
    top = lambda rel: rel.split(os.sep)[0]  # noqa: E731
    class_names = sorted({top(rel) for rel, _ in files if rel != "."})
    skipped = []
    if class_names:
        skipped += [(os.path.join(data_dir, n), "not in a class sub-folder") for rel, n in files if rel == "."]
        files = [(rel, n) for rel, n in files if rel != "."]
    files = [files[i] for i in _subset(len(files), limit)]
    images, labels = [], []
    for rel, name in files:
        path = os.path.normpath(os.path.join(data_dir, rel, name))
        try:
            with open(path, "rb") as f:
                images.append(_decode(f.read(), path, size, fit, None, channels))
        except (CadlError, OSError) as e:
            skipped.append((path, str(e)))
            continue
        if class_names:
            labels.append(class_names.index(top(rel)))
    if not images:
        raise CadlError(f"{data_dir}: none of {len(files)} images could be read (first: {skipped[0][1]})")
    return Dataset(np.stack(images), np.array(labels) if class_names else None, split=split, one_hot=one_hot,
                   n_classes=len(class_names) or None, class_names=class_names or None, seed=seed,
                   name="folder", skipped=skipped)


DATASETS = ("mnist", "cifar10", "celeba", "folder")


def load(kind, data_dir, one_hot=False, split=(0.8, 0.1, 0.1), limit=None, size=None, fit="crop", seed=0,
         channels=3, crop_factor=0.8, attribute=None):
    """The jobs' one entry point: ``kind`` is one of DATASETS; ``size`` (H, W) applies to celeba and folder
    (default 64x64), whose pictures come in any size; MNIST and CIFAR-10 keep their 28x28 and 32x32."""
    if kind == "mnist":
        return MNIST(data_dir, one_hot=one_hot, split=split, limit=limit, seed=seed)
    if kind == "cifar10":
        return CIFAR10(data_dir, one_hot=one_hot, split=split, limit=limit, seed=seed)
    size = tuple(size or (64, 64))
    if kind == "celeba":
        return CELEB(data_dir, size=size, crop_factor=crop_factor, fit=fit, split=split, limit=limit,
                     attribute=attribute, one_hot=one_hot, seed=seed, channels=channels)
    if kind == "folder":
        return ImageFolder(data_dir, size=size, fit=fit, split=split, limit=limit, one_hot=one_hot, seed=seed,
                           channels=channels)
    raise ValueError(f"dataset must be one of {DATASETS}, not {kind!r}")
