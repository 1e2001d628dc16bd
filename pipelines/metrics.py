"""Image and film quality figures of a render against its source: PSNR, SSIM, MS-SSIM, sharpness and flicker.

    scorer = Scorer()
    for source_batch, render_batch in pairs:   # uint8 (B, H, W, C) batches, in film order
        scorer.update(source_batch, render_batch)
    scorer.result()  # {"psnr", "ssim", "ms_ssim", "laplacian_ratio", "flicker_ratio", "frames", "size"}

Every figure is a streaming accumulator over batches of frames: a long film never sits in memory (the scorer
keeps running sums and the last frame of each stream, for the frame-to-frame change).

- ``psnr``: dB, the mean over frames of each frame's PSNR (peak 255), as training reports it.
- ``ssim``: the mean over frames of SSIM (11x11 Gaussian window, sigma 1.5; TensorFlow's ``tf.image.ssim``).
- ``ms_ssim``: multi-scale SSIM over the scales that fit the size (each scale's side >= the 11-pixel window:
  3 scales at 64x64, 5 from 176 pixels), the standard weights renormalised; None below 2 scales.
- ``laplacian_ratio``: sum over frames of the variance of the Laplacian of the render's luma, over the same
  for the source: the fine detail kept (1 = as much as the source; a Gaussian blur of sigma 1 gives ~0.1).
- ``flicker_ratio``: mean absolute frame-to-frame change of the render over the source's (1 = moves as much
  as the source; above 1 the render shimmers).
"""
import numpy as np

# MS-SSIM's scale weights (Wang et al. 2003; TensorFlow's defaults), finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW = 11  # pixels: the Gaussian window of SSIM
LUMA = np.array([0.299, 0.587, 0.114], np.float64)  # Rec. 601 weights: the Laplacian's grey


def ms_ssim_scales(size):
    """How many MS-SSIM scales fit an (H, W) image: each scale's shorter side at least the SSIM window."""
    side, scales = min(size), 0
    while scales < len(MS_SSIM_WEIGHTS) and side >= SSIM_WINDOW:
        scales, side = scales + 1, side // 2
    return scales


def luma(frames):
    """uint8 (B, H, W, C) -> float64 (B, H, W) grey in 0..255 (one channel passes through)."""
    frames = np.asarray(frames, np.float64)
    return frames[..., 0] if frames.shape[-1] == 1 else frames[..., :3] @ LUMA


def laplacian_variance(frames):
    """Per-frame variance of the 4-neighbour Laplacian of the luma: (B,) float64 (the border is left out)."""
    y = luma(frames)
    lap = (y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4.0 * y[:, 1:-1, 1:-1])
    return lap.reshape(len(lap), -1).var(axis=1)


def psnr(reference, test):
    """Per-frame PSNR in dB (peak 255) of uint8 batches: (B,) float64 (identical frames: capped at 100 dB)."""
    err = np.asarray(reference, np.float64) - np.asarray(test, np.float64)
    mse = np.square(err).reshape(len(err), -1).mean(axis=1)
    return 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 255.0 ** 2 * 1e-10))


def ssim(reference, test, multiscale=False):
    """Per-frame SSIM (or MS-SSIM over the scales that fit) of uint8 batches: (B,) float64; None when
    MS-SSIM has fewer than 2 scales at this size."""
    import tensorflow as tf

    a, b = tf.constant(np.asarray(reference)), tf.constant(np.asarray(test))
    if not multiscale:
        return tf.image.ssim(a, b, max_val=255, filter_size=SSIM_WINDOW).numpy().astype(np.float64)
    scales = ms_ssim_scales(a.shape[1:3])
    if scales < 2:
        return None
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    weights = tuple(float(w) for w in weights / weights.sum())
    value = tf.image.ssim_multiscale(tf.cast(a, tf.float32), tf.cast(b, tf.float32), max_val=255,
                                     power_factors=weights, filter_size=SSIM_WINDOW)
    return value.numpy().astype(np.float64)


class Scorer:
    """Running figures of a render against its source over batches of frames given in film order."""

    def __init__(self):
        self.frames = 0
        self.size = None
        self.sums = {"psnr": 0.0, "ssim": 0.0, "ms_ssim": 0.0, "lap_render": 0.0, "lap_source": 0.0,
                     "change_render": 0.0, "change_source": 0.0, "pairs": 0}
        self.ms_ssim = True
        self.last = None  # (source frame, render frame) of the previous batch, for the change across batches

    def update(self, reference, test):
        """Add a batch: ``reference`` (the source) and ``test`` (the render), uint8 (B, H, W, C) alike."""
        reference, test = np.asarray(reference), np.asarray(test)
        if reference.shape != test.shape or reference.ndim != 4:
            raise ValueError(f"score: source frames {reference.shape} and render frames {test.shape} differ")
        if not len(reference):
            return self
        if self.size is None:
            self.size = list(reference.shape[1:3])
            self.ms_ssim = ms_ssim_scales(self.size) >= 2
        s = self.sums
        s["psnr"] += float(psnr(reference, test).sum())
        s["ssim"] += float(ssim(reference, test).sum())
        if self.ms_ssim:
            s["ms_ssim"] += float(ssim(reference, test, multiscale=True).sum())
        s["lap_source"] += float(laplacian_variance(reference).sum())
        s["lap_render"] += float(laplacian_variance(test).sum())
        src, ren = reference.astype(np.int16), test.astype(np.int16)
        if self.last is not None:  # the change from the previous batch's last frame to this one's first
            src, ren = np.concatenate([self.last[0], src]), np.concatenate([self.last[1], ren])
        if len(src) > 1:
            s["change_source"] += float(np.abs(np.diff(src, axis=0)).mean(axis=(1, 2, 3)).sum())
            s["change_render"] += float(np.abs(np.diff(ren, axis=0)).mean(axis=(1, 2, 3)).sum())
            s["pairs"] += len(src) - 1
        self.last = (src[-1:], ren[-1:])
        self.frames += len(reference)
        return self

    def result(self):
        """The figures so far (see the module docstring); ratios are None when their denominator is 0."""
        s, n = self.sums, max(self.frames, 1)
        return {
            "psnr": s["psnr"] / n if self.frames else None,
            "ssim": s["ssim"] / n if self.frames else None,
            "ms_ssim": s["ms_ssim"] / n if self.frames and self.ms_ssim else None,
            "laplacian_ratio": s["lap_render"] / s["lap_source"] if s["lap_source"] > 0 else None,
            "flicker_ratio": s["change_render"] / s["change_source"] if s["change_source"] > 0 else None,
            "frames": self.frames,
            "size": self.size,
        }


def score(reference, test, batch_size=64):
    """The figures of two whole uint8 (N, H, W, C) arrays (or iterables of batches), through ``Scorer``."""
    scorer = Scorer()
    if isinstance(reference, np.ndarray):
        for i in range(0, len(reference), batch_size):
            scorer.update(reference[i:i + batch_size], test[i:i + batch_size])
    else:
        for a, b in zip(reference, test):
            scorer.update(a, b)
    return scorer.result()


def read_render(rendered, layout, stall_seconds=None):
    """Yield ``(index, frame)``: the plain render ``rendered`` decoded at its own size and brought back to the
    model's pixels (``geometry.to_model``), uint8 (H, W, C) at ``layout.model``."""
    from pipelines import geometry, media

    frames = media.read_frames(rendered, deinterlace="off", stall_seconds=stall_seconds)
    try:
        for index, _, frame in frames:
            yield index, np.clip(np.rint(geometry.to_model(frame, layout)), 0, 255).astype(np.uint8)
    finally:
        frames.close()


def score_films(source, rendered, layout, batch_size=64, deinterlace="auto", stall_seconds=None):
    """The figures of the plain render ``rendered`` against film ``source``, frame i against frame i, at the
    model's pixels: the source decoded by ffmpeg at ``layout.model`` with ``layout.fit`` (as the model saw
    it), the written output (codec losses included) decoded at its own size and brought back to the model's
    picture by ``geometry.to_model``, the exact inverse of the render's enlargement. (A downscaling filter
    would blur the render a second time: a perfect one scored a Laplacian ratio of 0.55.) Streams
    ``batch_size`` frames at a time."""
    from pipelines import media

    scorer = Scorer()
    a = media.read_frames(source, size=layout.model, fit=layout.fit, deinterlace=deinterlace,
                          stall_seconds=stall_seconds)
    b = read_render(rendered, layout, stall_seconds=stall_seconds)
    refs, tests = [], []
    for (_, _, ref), (_, test) in zip(a, b):
        refs.append(ref)
        tests.append(test)
        if len(refs) == batch_size:
            scorer.update(np.stack(refs), np.stack(tests))
            refs, tests = [], []
    if refs:
        scorer.update(np.stack(refs), np.stack(tests))
    a.close()
    b.close()
    return scorer.result()
