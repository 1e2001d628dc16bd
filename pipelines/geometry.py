"""Image size conventions shared by extraction, training and rendering.

Sizes are always (height, width), written ``HxW`` on the command line (``64x64``, ``72x128``).
``fit`` says how a picture of another aspect ratio is made to fit:
    crop     scale to cover, then centre-crop (nothing distorted, edges lost)   [default]
    pad      scale to fit inside, then pad with black (nothing lost)
    stretch  scale each side independently (distorts)
"""
import cv2
import numpy as np

FITS = ("crop", "pad", "stretch")


# The largest side a picture size may have, in pixels: 8K film frames (4320x7680) fit; 100000x100000 would
# only end in a MemoryError (the per-pixel statistics alone are 24 bytes a pixel).
MAX_SIDE = 8192


def parse_size(text):
    """``"72x128"`` -> (72, 128); ``"64"`` -> (64, 64). Sides are 1..``MAX_SIDE``."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        raise ValueError(f"size must look like HxW (e.g. 64x64 or 72x128), not {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"size must look like HxW (e.g. 64x64 or 72x128), not {text!r}")
    if max(parts) > MAX_SIDE:
        raise ValueError(f"{text}: sides of at most {MAX_SIDE} pixels")
    return tuple(parts)


def format_size(size):
    return f"{size[0]}x{size[1]}"


def ffmpeg_filter(size, fit="crop"):
    """The ffmpeg ``-vf`` chain that fits a frame to ``size`` (H, W) inside the decoder."""
    h, w = size
    if fit == "stretch":
        return f"scale={w}:{h}:flags=area"
    if fit == "crop":
        return f"scale={w}:{h}:force_original_aspect_ratio=increase:flags=area,crop={w}:{h}"
    if fit == "pad":
        return (f"scale={w}:{h}:force_original_aspect_ratio=decrease:flags=area,"
                f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2")
    raise ValueError(f"fit must be one of {FITS}, not {fit!r}")


def center_crop_factor(image, factor):
    """Keep the central ``factor`` of each side (the course crops CelebA by 0.8 before resizing)."""
    if not 0 < factor <= 1:
        raise ValueError(f"crop factor must be in (0, 1], not {factor}")
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * factor)), max(1, round(w * factor))
    y, x = (h - ch) // 2, (w - cw) // 2
    return image[y:y + ch, x:x + cw]


def fit_image(image, size, fit="crop"):
    """Fit an (h, w[, c]) uint8 image to ``size`` (H, W) with the same policy as ``ffmpeg_filter``.

    Same geometry (crop/pad/stretch, centred), but OpenCV's resampling: pixel values differ from ffmpeg's
    by a few levels, so film frames are fitted by ffmpeg in both extraction and rendering and this
    function serves stills.
    """
    th, tw = size
    h, w = image.shape[:2]
    if (h, w) == (th, tw):
        return image
    if fit == "stretch":
        return _resize(image, th, tw)
    if fit == "crop":
        scale = max(th / h, tw / w)
        sh, sw = max(th, round(h * scale)), max(tw, round(w * scale))
        scaled = _resize(image, sh, sw)
        y, x = (sh - th) // 2, (sw - tw) // 2
        return scaled[y:y + th, x:x + tw]
    if fit == "pad":
        scale = min(th / h, tw / w)
        sh, sw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
        scaled = _resize(image, sh, sw)
        out = np.zeros((th, tw) + image.shape[2:], image.dtype)
        y, x = (th - sh) // 2, (tw - sw) // 2
        out[y:y + sh, x:x + sw] = scaled
        return out
    raise ValueError(f"fit must be one of {FITS}, not {fit!r}")


def _resize(image, h, w):
    # INTER_AREA when shrinking (no aliasing), cubic when enlarging.
    shrinking = h * w < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return out.reshape((h, w) + image.shape[2:])


def even_size(size):
    """Round (H, W) down to even sides, as H.264 with yuv420p requires."""
    h, w = size
    return (max(2, h - h % 2), max(2, w - w % 2))
