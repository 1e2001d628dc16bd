"""Writers of tiny course datasets in their published formats, generated in the tests (nothing downloaded).

``digits`` draws a synthetic 10-class "MNIST": the glyphs 0-9 in Pillow's bundled vector font, at random
sizes, positions, rotations and stroke widths, with pixel noise, so that a classifier has to learn shapes
that move (a linear model does clearly worse than a convolutional one, as on MNIST).
"""
import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def digits(n, size=28, seed=0, noise=0.15):
    """(n, size, size) uint8 images of the digits 0-9 and their (n,) labels, balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    fonts = {s: ImageFont.load_default(size=s) for s in range(int(size * 0.5), int(size * 0.85) + 1)}
    images = np.empty((n, size, size), np.uint8)
    for i, label in enumerate(labels):
        canvas = Image.new("L", (2 * size, 2 * size))
        draw = ImageDraw.Draw(canvas)
        font = fonts[int(rng.integers(min(fonts), max(fonts) + 1))]
        draw.text((size, size), str(label), font=font, fill=255, anchor="mm",
                  stroke_width=int(rng.integers(0, 2)), stroke_fill=255)
        canvas = canvas.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
        dx, dy = rng.integers(-size // 6, size // 6 + 1, size=2)
        box = (size // 2 - dx, size // 2 - dy, size // 2 - dx + size, size // 2 - dy + size)
        image = np.asarray(canvas.crop(box), np.float32) / 255.0
        image = np.clip(image + rng.normal(0, noise, image.shape), 0, 1)
        images[i] = np.rint(image * 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def write_idx(path, array):
    """Write ``array`` (uint8) as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, np.uint8)
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)
    return path


def write_mnist(folder, n_train=300, n_test=100, gz=True, seed=0):
    """The four MNIST IDX files in ``folder``; returns (x_train, y_train, x_test, y_test)."""
    os.makedirs(folder, exist_ok=True)
    x, y = digits(n_train + n_test, seed=seed)
    ext = ".gz" if gz else ""
    parts = {"train-images-idx3-ubyte": x[:n_train], "train-labels-idx1-ubyte": y[:n_train],
             "t10k-images-idx3-ubyte": x[n_train:], "t10k-labels-idx1-ubyte": y[n_train:]}
    for name, array in parts.items():
        write_idx(os.path.join(folder, name + ext), array)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def write_mnist_npz(path, n_train=300, n_test=100, seed=0):
    """Keras' ``mnist.npz`` layout (x_train, y_train, x_test, y_test)."""
    x, y = digits(n_train + n_test, seed=seed)
    np.savez_compressed(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def cifar_images(n, seed=0):
    """(n, 32, 32, 3) uint8 coloured digits on coloured backgrounds and their labels."""
    grey, labels = digits(n, size=32, seed=seed, noise=0.05)
    rng = np.random.default_rng(seed + 1)
    fg = rng.uniform(0.5, 1.0, (n, 1, 1, 3))
    bg = rng.uniform(0.0, 0.4, (n, 1, 1, 3))
    t = grey[..., None].astype(np.float32) / 255.0
    return np.rint((t * fg + (1 - t) * bg) * 255).astype(np.uint8), labels


def write_cifar10(folder, per_batch=40, tarball=False, seed=0):
    """CIFAR-10's python version (``cifar-10-batches-py/`` with five data batches, a test batch and
    ``batches.meta``), as a folder in ``folder`` or as ``cifar-10-python.tar.gz``. Returns (images, labels)
    in batch order (data_batch_1..5 then test_batch)."""
    os.makedirs(folder, exist_ok=True)
    images, labels = cifar_images(6 * per_batch, seed=seed)
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        part = images[i * per_batch:(i + 1) * per_batch]
        rows = part.transpose(0, 3, 1, 2).reshape(len(part), 3072)  # R plane, G plane, B plane
        batches[name] = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels[i * per_batch:
                                                                                             (i + 1) * per_batch]],
                         b"data": rows, b"filenames": [f"{name}_{j}.png".encode() for j in range(len(part))]}
    batches["batches.meta"] = {b"label_names": [n.encode() for n in (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")],
        b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    if tarball:
        path = os.path.join(folder, "cifar-10-python.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            for name, obj in batches.items():
                data = pickle.dumps(obj, protocol=2)
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        sub = os.path.join(folder, "cifar-10-batches-py")
        os.makedirs(sub, exist_ok=True)
        for name, obj in batches.items():
            with open(os.path.join(sub, name), "wb") as f:
                pickle.dump(obj, f, protocol=2)
    return images, labels


def write_image_folder(root, classes=("circles", "squares", "triangles"), per_class=12, size=(40, 48), seed=0):
    """``root/<class>/<i>.png`` (and some .jpg) pictures of filled shapes; returns the class names."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            h, w = size
            im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 80, 3)))
            draw = ImageDraw.Draw(im)
            cx, cy, r = rng.integers(w // 3, 2 * w // 3), rng.integers(h // 3, 2 * h // 3), rng.integers(6, 12)
            colour = tuple(int(v) for v in rng.integers(150, 256, 3))
            shape = k % 3
            if shape == 0:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
            elif shape == 1:
                draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            ext = ".jpg" if i % 4 == 3 else ".png"
            im.save(os.path.join(root, name, f"{i:03d}{ext}"))
    return list(classes)


def write_celeba(root, n=12, zipped=False, seed=0):
    """A tiny CelebA root: ``img_align_celeba/`` (or ``.zip``) of 178x218 JPEGs, the partition file
    (first half train, then validation, then test) and an attribute file with ``Smiling`` and ``Male``."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    blobs = {}
    for i, name in enumerate(names):
        im = Image.new("RGB", (178, 218), tuple(int(v) for v in rng.integers(0, 255, 3)))
        ImageDraw.Draw(im).ellipse((50, 60, 128, 160), fill=(230, 190, 160) if i % 2 else (120, 80, 60))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        blobs[name] = buf.getvalue()
    if zipped:
        with zipfile.ZipFile(os.path.join(root, "img_align_celeba.zip"), "w") as z:
            for name, data in blobs.items():
                z.writestr(f"img_align_celeba/{name}", data)
    else:
        os.makedirs(os.path.join(root, "img_align_celeba"), exist_ok=True)
        for name, data in blobs.items():
            with open(os.path.join(root, "img_align_celeba", name), "wb") as f:
                f.write(data)
    parts = [0] * (n // 2) + [1] * (n // 4) + [2] * (n - n // 2 - n // 4)
    with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
        f.writelines(f"{name} {p}\n" for name, p in zip(names, parts))
    with open(os.path.join(root, "list_attr_celeba.txt"), "w") as f:
        f.write(f"{n}\nSmiling Male\n")
        f.writelines(f"{name} {1 if i % 2 else -1} {1 if i % 3 == 0 else -1}\n" for i, name in enumerate(names))
    return names
