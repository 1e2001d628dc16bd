"""A CelebA-layout folder whose attribute is a known colour change, for the latent-space tools' tests.

``Smiling`` faces have a warm (red) disc, the others a cool (blue) one; ``Young`` is random. Everything else
(the disc's place and size, the background) varies per picture, so a VAE must learn the colour as one of
several factors. Written as the real download is laid out: img_align_celeba/*.jpg, list_eval_partition.txt,
list_attr_celeba.txt.
"""
import os

import cv2
import numpy as np

ATTRIBUTES = ["Smiling", "Young"]
WARM, COOL = (235, 60, 50), (50, 70, 235)  # RGB of the disc with and without the attribute


def face(rng, smiling, size=(40, 32)):
    """One (H, W, 3) uint8 RGB 'face': a disc on a random gradient."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 200, 3)                       # (3,) a colour per picture
    ramp = rng.uniform(-40, 40) * (yy / h) + rng.uniform(-40, 40) * (xx / w)
    img = base + ramp[..., None]                          # (H, W, 3)
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    r = rng.uniform(0.22, 0.32) * w
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = WARM if smiling else COOL
    return np.clip(img, 0, 255).astype(np.uint8)


def write_celeba(root, n=160, seed=0):
    """Write the folder (``n`` pictures: 3/4 train, 1/8 validation, 1/8 test); returns ``root``."""
    rng = np.random.default_rng(seed)
    images = os.path.join(root, "img_align_celeba")
    os.makedirs(images, exist_ok=True)
    partition, attributes = [], []
    for i in range(1, n + 1):
        name = f"{i:06d}.jpg"
        smiling, young = bool(rng.integers(2)), bool(rng.integers(2))
        bgr = cv2.cvtColor(face(rng, smiling), cv2.COLOR_RGB2BGR)
        cv2.imwrite(os.path.join(images, name), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        part = 0 if i <= n * 3 // 4 else 1 if i <= n * 7 // 8 else 2
        partition.append(f"{name} {part}")
        attributes.append(f"{name}  " + "  ".join(f"{1 if v else -1:2d}" for v in (smiling, young)))
    with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
        f.write("\n".join(partition) + "\n")
    with open(os.path.join(root, "list_attr_celeba.txt"), "w") as f:
        f.write("\n".join([str(n), " ".join(ATTRIBUTES)] + attributes) + "\n")
    return root
