"""Pictures of what a network does: montages of images and filters, PNGs and GIFs.

One module shared by the film training job and the course's autoencoder and classifier jobs.
"""
import math

import imageio.v2 as imageio
import numpy as np
from PIL import Image

from pipelines import atomic


def to_uint8(images):
    """Floats in [0, 1] (or uint8 already) -> uint8, clipped."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def montage(images, cols=None, pad=1, background=255):
    """Tile ``images`` (N, H, W[, C]) into one (rows*(H+pad)+pad, cols*(W+pad)+pad[, C]) uint8 image.

    As in the course's ``utils.montage``: a near-square grid with a ``pad``-pixel border between tiles.
    """
    images = to_uint8(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    n, h, w = images.shape[:3]
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    shape = (rows * (h + pad) + pad, cols * (w + pad) + pad) + images.shape[3:]
    out = np.full(shape, background, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = image
    return out


def montage_filters(kernels, pad=1):
    """Tile conv kernels (kh, kw, in, out) into one grey image, each filter scaled to its own range.

    Every (in, out) pair becomes one kh x kw tile, as in the course's ``montage_filters``.
    """
    kernels = np.asarray(kernels, np.float32)
    if kernels.ndim == 2:  # a dense layer's (features, units): nothing to tile spatially
        raise ValueError("montage_filters needs (kh, kw, in, out) kernels")
    kh, kw, cin, cout = kernels.shape
    tiles = kernels.transpose(2, 3, 0, 1).reshape(cin * cout, kh, kw)
    lo = tiles.min(axis=(1, 2), keepdims=True)
    hi = tiles.max(axis=(1, 2), keepdims=True)
    tiles = (tiles - lo) / np.maximum(hi - lo, 1e-8)
    return montage(tiles, pad=pad, background=0)


def diverging(weights):
    """Map signed values to a blue-white-red picture (negative blue, zero white, positive red), uint8 RGB."""
    w = np.asarray(weights, np.float32)
    scale = max(float(np.abs(w).max()), 1e-8)
    t = np.clip(w / scale, -1.0, 1.0)[..., None]
    white = np.array([1.0, 1.0, 1.0])
    red, blue = np.array([0.70, 0.09, 0.17]), np.array([0.13, 0.40, 0.67])
    rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
    return to_uint8(rgb)


def write_png(path, image):
    """Atomically write a uint8 (or [0, 1] float) image as PNG."""
    image = to_uint8(image)
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_gif(path, frames, fps=4, loop=0):
    """Atomically write a list of same-sized images as an animated GIF (the course's ``ae.gif``)."""
    frames = [to_uint8(f) for f in frames]
    if not frames:
        raise ValueError(f"{path}: no frames for the GIF")
    with atomic.atomic_path(path) as tmp:
        imageio.mimsave(tmp, frames, format="GIF", duration=1000.0 / fps, loop=loop)
