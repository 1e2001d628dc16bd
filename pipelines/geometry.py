"""Image size conventions shared by extraction, training and rendering.

Sizes are always (height, width), written ``HxW`` on the command line (``64x64``, ``72x128``).
``fit`` says how a picture of another aspect ratio is made to fit:
    crop     scale to cover, then centre-crop (nothing distorted, edges lost)   [default]
    pad      scale to fit inside, then pad with black (nothing lost)
    stretch  scale each side independently (distorts)

``fit_box`` computes where the fitted picture lands; ``fit_image`` (stills) and ``make_layout`` (a render
putting the model's picture back into the film's geometry, the inverse of the fit) both use it.
"""
import dataclasses
import functools

import cv2
import numpy as np

from pipelines.errors import CadlError

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


def fit_box(source, size, fit="crop"):
    """Where a ``source`` (h, w) picture lands when fitted to ``size`` (H, W): ``((sh, sw), (y, x))``.

    The one computation of the fitted box, shared by ``fit_image`` (forward) and ``make_layout`` (the
    render's inverse), so the two cannot drift apart:
        crop     scaled to cover, (sh, sw) >= (H, W); (y, x) is the top left of the kept H x W window in it
        pad      scaled to fit inside, (sh, sw) <= (H, W); (y, x) is where it sits on the black H x W frame
        stretch  (H, W) at (0, 0)
    """
    th, tw = size
    h, w = source
    if fit == "stretch":
        return (th, tw), (0, 0)
    if fit == "crop":
        scale = max(th / h, tw / w)
        sh, sw = max(th, round(h * scale)), max(tw, round(w * scale))
        return (sh, sw), ((sh - th) // 2, (sw - tw) // 2)
    if fit == "pad":
        scale = min(th / h, tw / w)
        sh, sw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
        return (sh, sw), ((th - sh) // 2, (tw - sw) // 2)
    raise ValueError(f"fit must be one of {FITS}, not {fit!r}")


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
    (sh, sw), (y, x) = fit_box((h, w), size, fit)
    scaled = _resize(image, sh, sw)
    if fit == "pad":
        out = np.zeros((th, tw) + image.shape[2:], image.dtype)
        out[y:y + sh, x:x + sw] = scaled
        return out
    return scaled[y:y + th, x:x + tw]  # crop (stretch: the whole of it)


def _resize(image, h, w):
    # INTER_AREA when shrinking (no aliasing), cubic when enlarging.
    shrinking = h * w < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return out.reshape((h, w) + image.shape[2:])


def even_size(size):
    """Round (H, W) down to even sides, as H.264 with yuv420p requires."""
    h, w = size
    return (max(2, h - h % 2), max(2, w - w % 2))


# ---- a render's output frame: the inverse of the fit ----

@dataclasses.dataclass(frozen=True)
class Layout:
    """Sizes (H, W) along a frame's path and how the model's picture maps back onto the output."""
    source: tuple        # the film's stored frame size
    model: tuple         # the model's input size
    fit: str             # how frames were fitted to the model (from the model's config)
    picture: tuple       # the film's picture scaled to the output, undistorted
    canvas: tuple        # one output panel: the picture centred (letterboxed or cropped by a pixel)
    region: tuple        # crop fit: (top, left, bottom, right) of the picture the model sees
    inner: tuple         # pad fit: (top, left, bottom, right) of the model picture that is not padding
    side_by_side: bool = False
    blend: float = None  # weight of the reconstruction, None = 1

    @property
    def frame_size(self):
        h, w = self.canvas
        return (h, 2 * w) if self.side_by_side else (h, w)

    @property
    def needs_source(self):
        """Whether output frames show the original (blend, side by side), so it must travel with them."""
        return self.blend is not None or self.side_by_side


def make_layout(info, model_config, fmt, output_size=None, scale=None, side_by_side=False, blend=None):
    """The layout of a render of the film ``info`` (its ``height``, ``width``) through a model (its config's
    ``image_size`` and ``fit``) into the format ``fmt`` (its ``even_sides``): ``output_size`` (H, W) boxes
    the picture (letterboxed, never stretched), else ``scale`` (default 1) sizes it."""
    source = (info.height, info.width)
    model = tuple(int(v) for v in model_config["image_size"])
    fit = model_config.get("fit", "crop")
    if fit not in FITS:
        raise CadlError(f"model config: unknown fit {fit!r}")
    if output_size is not None:
        box = tuple(output_size)
        picture, _ = fit_box(source, box, "pad")  # the whole picture, undistorted, inside the box
    else:
        f = 1.0 if scale is None else scale
        picture = box = (max(1, round(source[0] * f)), max(1, round(source[1] * f)))
    canvas = even_size(box) if fmt.even_sides else box
    # The inverse of the fit the model's frames had: the same box, seen from the output's side.
    (sh, sw), (y, x) = fit_box(source, model, fit)
    region = inner = None
    if fit == "crop":  # the model saw its H x W window at (y, x) of the film scaled to (sh, sw): scale it back
        th, tw = model
        fy, fx = picture[0] / sh, picture[1] / sw
        region = (round(y * fy), round(x * fx), round((y + th) * fy), round((x + tw) * fx))
    elif fit == "pad":  # the film sits at (y, x) inside the model's picture, black around it
        inner = (y, x, y + sh, x + sw)
    return Layout(source=source, model=model, fit=fit, picture=picture, canvas=canvas, region=region,
                  inner=inner, side_by_side=side_by_side, blend=blend)


def _stretch(image, size):
    return fit_image(image, size, "stretch")


def from_model(recon, layout):
    """The model's output -> the picture at the output size, in the source picture's geometry."""
    if layout.fit == "stretch":
        return _stretch(recon, layout.picture)
    if layout.fit == "pad":
        t, l, b, r = layout.inner
        return _stretch(recon[t:b, l:r], layout.picture)
    t, l, b, r = layout.region
    if (t, l, b, r) == (0, 0) + layout.picture:
        return _stretch(recon, layout.picture)
    out = np.zeros(layout.picture + recon.shape[2:], np.uint8)  # what the model never saw stays black
    out[t:b, l:r] = _stretch(recon, (b - t, r - l))
    return out


def to_model(frame, layout):
    """A plain render's output frame -> the model's picture it was made from, float32 (H, W, C) at the model's
    size: the inverse of ``compose`` (without blend or side by side), for scoring a render at the model's pixels.

    Where ``from_model`` enlarged the model's picture (cubic), this undoes the enlargement exactly: per axis,
    the least-squares inverse of OpenCV's cubic interpolation, so a perfect model's render comes back as the
    model's input (up to the codec). Bringing it back with a downscaling filter instead (ffmpeg's area) would
    blur it a second time: a perfect render's Laplacian ratio came out 0.55 that way, at 64x64 from 180x180.
    Where it shrank the picture (an output smaller than the model), the detail is gone and a cubic
    enlargement brings back what is left. Pad fit: the padding, which the output does not show, is black."""
    picture = _place(frame, layout.picture)  # the canvas's odd pixel, cut or added back
    if layout.fit == "stretch":
        return _unstretch(picture, layout.model)
    if layout.fit == "crop":
        t, l, b, r = layout.region
        return _unstretch(picture[t:b, l:r], layout.model)
    t, l, b, r = layout.inner
    out = np.zeros(tuple(layout.model) + frame.shape[2:], np.float32)
    out[t:b, l:r] = _unstretch(picture, (b - t, r - l))
    return out


def _unstretch(image, size):
    """The (h, w) picture that ``_stretch`` turned into ``image``, float32 (see ``to_model``)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image.astype(np.float32)
    if h * w >= image.shape[0] * image.shape[1]:  # _resize shrank it: the detail is gone
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32).reshape(
            (h, w) + image.shape[2:])
    # _resize enlarged it (cubic) and the 8-bit output clipped the interpolation's overshoot at hard edges
    # (0.83 of a perfect render's detail came back at 64x64 -> 180x320 without the second step): the
    # least-squares inverse, then projections that bring back what the clipping cut, until they stop moving
    # (none where nothing reached 0 or 255; codec noise is outside the interpolation's range, so it never moves
    # them)
    rows, cols = _cubic_inverse(h, image.shape[0]), _cubic_inverse(w, image.shape[1])
    seen = image.astype(np.float32).reshape(image.shape[0], image.shape[1], -1)
    x = _apply(rows, cols, seen)
    clipped = seen.min() <= 0 or seen.max() >= 255
    for _ in range(UNCLIP_STEPS if clipped else 0):
        again = cv2.resize(x, (seen.shape[1], seen.shape[0]), interpolation=cv2.INTER_CUBIC)
        step = _apply(rows, cols, seen - np.clip(again.reshape(seen.shape), 0, 255))
        x += step
        if np.abs(step).max() < 0.5:  # below the rounding to whole levels
            break
    return x.reshape((h, w) + image.shape[2:])


UNCLIP_STEPS = 10  # at most; 10 brought a perfect render of testsrc2's saturated bars back to 0.9999


def _apply(rows, cols, image):
    """rows @ image @ cols.T per channel: (H', W', C) -> (h, w, C), float32."""
    # OpenCV's gemm, not numpy's matmul: OpenBLAS's threads, beside the two decoders of a score, took 0.13 s
    # a product that takes 1 ms alone
    H, W, C = image.shape
    x = cv2.gemm(rows, np.ascontiguousarray(image).reshape(H, W * C), 1.0, None, 0.0)  # (h, W' C): the costly
    h = x.shape[0]                                                                      # product first
    x = np.ascontiguousarray(x.reshape(h, W, C).transpose(0, 2, 1)).reshape(h * C, W)
    x = cv2.gemm(x, cols, 1.0, None, 0.0, flags=cv2.GEMM_2_T)  # (h C, w)
    return np.ascontiguousarray(x.reshape(h, C, -1).transpose(0, 2, 1))


@functools.lru_cache(maxsize=16)
def _cubic_inverse(n, m):
    """(n, m) float32: the least-squares inverse of OpenCV's cubic resize of a length-n axis to length m."""
    # Resizing the identity along one axis (the other keeps its length: cubic weights at whole pixels are
    # exactly 1 and 0) gives the interpolation matrix, one resized basis vector a row.
    forward = cv2.resize(np.eye(n, dtype=np.float32), (m, n), interpolation=cv2.INTER_CUBIC).T  # (m, n)
    return np.linalg.pinv(forward.astype(np.float64)).astype(np.float32)


def _place(picture, canvas):
    """Centre ``picture`` on a black ``canvas`` (H, W), cutting what overhangs (an odd pixel)."""
    if picture.shape[:2] == tuple(canvas):
        return picture
    out = np.zeros(tuple(canvas) + picture.shape[2:], np.uint8)
    src, dst = [], []
    for p, c in zip(picture.shape[:2], canvas):
        if p >= c:
            o = (p - c) // 2
            src.append(slice(o, o + c))
            dst.append(slice(0, c))
        else:
            o = (c - p) // 2
            src.append(slice(0, p))
            dst.append(slice(o, o + p))
    out[dst[0], dst[1]] = picture[src[0], src[1]]
    return out


def compose(frame, recon, layout):
    """One output frame from the model's reconstruction and the source frame (used only when
    ``layout.needs_source``; may be None otherwise)."""
    picture = from_model(recon, layout)
    original = None
    if layout.blend is not None or layout.side_by_side:
        original = frame if frame.shape[:2] == layout.picture else _stretch(frame, layout.picture)
    if layout.blend is not None:
        picture = cv2.addWeighted(picture, layout.blend, original, 1.0 - layout.blend, 0.0)
    out = _place(picture, layout.canvas)
    if layout.side_by_side:
        out = np.concatenate([_place(original, layout.canvas), out], axis=1)
    return np.ascontiguousarray(out)
