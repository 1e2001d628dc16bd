"""Pictures of what the course's networks do: an autoencoder's reconstructions (clean or through its
masking noise) and a classifier's weights and filters."""
import os

import keras
import numpy as np

from models import classifiers
from pipelines import visual


def mask(pixels, rate, seed):
    """The same masking noise as training (seeded here for pictures and test figures): uint8 -> floats."""
    keep = np.random.default_rng(seed + 7).random(pixels.shape) >= rate
    return pixels.astype(np.float32) / 255.0 * keep


def reconstruct(model, images):
    return np.clip(keras.ops.convert_to_numpy(model(images, training=False)), 0.0, 1.0)


def montage(model, pixels, masked, rate):
    """[originals | masked | reconstructions] side by side, each an 8 x 8 montage."""
    clean = pixels.astype(np.float32) / 255.0
    panels = [clean]
    if masked is not None:
        panels += [masked, reconstruct(model, masked / (1.0 - rate))]  # scaled as in training
    else:
        panels.append(reconstruct(model, clean))
    tiles = [visual.montage(p) for p in panels]
    gap = np.full(tiles[0].shape[:1] + (4,) + tiles[0].shape[2:], 255, np.uint8)
    return np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1)


def montage_files(folder):
    return [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("epoch-") and n.endswith(".png")]


def denoising_error(model, pixels, rate, seed, batch_size=256):
    """Mean squared error per pixel between the reconstruction of masked test images and the clean ones."""
    total, count = 0.0, 0
    for start in range(0, len(pixels), batch_size):
        part = pixels[start:start + batch_size]
        clean = part.astype(np.float32) / 255.0
        recon = reconstruct(model, mask(part, rate, seed + start) / (1.0 - rate))
        total += float(np.square(recon - clean).sum())
        count += clean.size
    return total / max(count, 1)


def write_pictures(model, out, image_shape):
    """The linear layer's weight images (diverging colours) or the convolution layers' filter montages."""
    written = {}
    kernels = classifiers.conv_kernels(model)
    if not kernels:
        w = classifiers.linear_weights(model, image_shape)  # (classes, H, W, C)
        signed = w.sum(axis=-1)  # colour data: a pixel's weight summed over its channels
        # Each class's image on its own scale (as the lesson's per-image imshow), white = 0; the scale is the
        # 99th percentile of |w|, so a few large weights on never-lit border pixels do not wash the rest out.
        tiles = np.stack([visual.diverging(np.clip(image / max(np.percentile(np.abs(image), 99), 1e-8), -1, 1))
                          for image in signed])
        visual.write_png(os.path.join(out, "weights.png"), _enlarge(visual.montage(tiles), 4))
        written["weights"] = "weights.png"
        if w.shape[-1] == 3:
            scale = max(float(np.abs(w).max()), 1e-8)
            visual.write_png(os.path.join(out, "weights-rgb.png"),
                             _enlarge(visual.montage(0.5 + 0.5 * w / scale), 4))
            written["weights_rgb"] = "weights-rgb.png"
    for name, kernel in kernels:
        visual.write_png(os.path.join(out, f"filters-{name}.png"), _enlarge(visual.montage_filters(kernel), 4))
        written[f"filters_{name}"] = f"filters-{name}.png"
    return written


def _enlarge(image, factor):
    """Nearest-neighbour enlargement: 28x28 weight images and 5x5 filters are too small to look at."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
