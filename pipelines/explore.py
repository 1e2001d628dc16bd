"""What the encoding lets you do (``cadl explore``): one frozen config and one function per subcommand, each
returning the summary it writes to ``OUT.summary.json`` next to its output.

    interpolate(InterpolateConfig)  A and B (images or FILM@SECONDS) -> their latent means -> slerp (or lerp)
                                    -> decoded film; the first and last frames are A's and B's reconstructions
    walk(WalkConfig)                a smooth seeded path through the prior, or through a dataset's own
                                    encoded frames, decoded into a film at an exact rate, audio optional
    neighbours(NeighboursConfig)    frames of a film (or a picture) beside their nearest training frames in
                                    latent space: a side-by-side film or a PNG montage; exact search in blocks
    attribute(AttributeConfig)      a CelebA attribute's vector (mean z with minus mean z without) added in
                                    steps to validation faces: a PNG montage; the vector is saved for render
    map_dataset(MapConfig)          PCA of a sample's latent means to 2-D, one thumbnail per sampled record

Encodings of a dataset and attribute vectors are cached in the run folder (``pipelines.latent``).
"""
import dataclasses
import logging
import os
from fractions import Fraction
from typing import Optional

import numpy as np

from pipelines import atomic, latent, media, video_out, visual
from pipelines.errors import CadlError

log = logging.getLogger("cadl.explore")
DEFAULT_FPS = Fraction(25)


def _summary_path(output):
    return os.path.abspath(os.fspath(output)) + ".summary.json"


def _finish(summary, output, settings=None):
    summary["settings"] = settings
    atomic.write_json(_summary_path(output), summary)
    log.info("wrote %s (summary %s)", output, _summary_path(output))
    return summary


def _check_png(path):
    if os.path.splitext(os.fspath(path))[1].lower() != ".png":
        raise CadlError(f"{path}: this output is a picture: give a .png file name")


def _zoom(image, zoom):
    """Enlarge by an integer factor, nearest neighbour: tiny models' pixels stay crisp."""
    return image if zoom == 1 else np.repeat(np.repeat(image, zoom, 0), zoom, 1)


def _even(image, background=255):
    """Pad to even sides (4:2:0 video) at the bottom and right."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=background)


def _rgb(images):
    images = np.asarray(images)
    return np.repeat(images, 3, -1) if images.shape[-1] == 1 else images


# ---- interpolate ----

@dataclasses.dataclass(frozen=True)
class InterpolateConfig:
    model: str                   # run folder, export folder or .keras file of a cadl VAE
    start: str                   # A: an image file or FILM@SECONDS
    end: str                     # B: likewise
    output: str                  # .mp4 / .m4v / .mov / .mkv
    frames: int = 120            # frames from A to B, both included (>= 2)
    fps: str = "25"              # exact rate: 25, 30000/1001, 29.97
    linear: bool = False         # straight line instead of the great circle (slerp)
    gif: bool = False            # also OUT with .gif, the same frames
    size: Optional[tuple] = None  # (H, W) of the film's frames (default: the model's), letterboxed
    codec: str = "auto"          # video_out.CODECS: auto = h264 for .mp4/.mkv, prores for .mov; ffv1 lossless
    crf: int = 18                # H.264 quality 0..51
    settings: Optional[dict] = dataclasses.field(default=None, compare=False)  # what the command resolved
                                 # (cadl's --config: {"job", "argv", "config_file", "flags"}), into the summary


def interpolate(c):
    if c.frames < 2:
        raise CadlError(f"--frames must be at least 2 (A and B), not {c.frames}")
    fmt, rate = latent.video_format(c.output, c.codec, c.crf), latent.parse_rate(c.fps)
    model, model_file = latent.load(c.model)
    cfg = model.config
    a, b = (latent.read_picture(s, cfg["image_size"], cfg.get("fit", "crop"), cfg["channels"]) for s in (c.start, c.end))
    za, zb = model.encode(np.stack([a, b]))
    t = np.linspace(0.0, 1.0, c.frames)
    zs = (latent.lerp if c.linear else latent.slerp)(za, zb, t)
    size = latent.output_size(cfg["image_size"], c.size, even=fmt.even_sides)
    frames = [latent.fit_frame(f, size) for f in latent.decode_batched(model, zs)]
    info = latent.write_video(c.output, frames, len(frames), size, rate, fmt)
    summary = {"command": "interpolate", "model": os.path.abspath(c.model), "model_file": model_file,
               "from": c.start, "to": c.end, "path": "linear" if c.linear else "slerp", "output":
               os.path.abspath(c.output), "frames": info.num_frames, "fps": str(rate), "duration": info.duration,
               "width": size[1], "height": size[0], "format": fmt.describe(),
               "latent_distance": {"from_to": float(np.linalg.norm(za - zb)),
                                   "to_from_along_path": [round(float(d), 5) for d in np.linalg.norm(zs - za, axis=1)]}}
    if c.gif:
        gif = os.path.splitext(os.path.abspath(c.output))[0] + ".gif"
        visual.write_gif(gif, frames, fps=min(50.0, float(rate)))
        summary["gif"] = gif
    return _finish(summary, c.output, c.settings)


# ---- walk ----

@dataclasses.dataclass(frozen=True)
class WalkConfig:
    model: str
    output: str                  # .mp4 / .m4v / .mov / .mkv
    seconds: float = 10.0        # length of the film
    fps: Optional[str] = None    # exact rate (default: the dataset's film's rate with data, else 25)
    seed: int = 0                # the path's randomness
    smoothness: float = 2.0      # seconds: prior: width of the Gaussian smoothing (2 sigma); data: between
                                 # the dataset frames the path passes through
    temperature: float = 1.0     # prior: scale of z (below 1: closer to the mean face/frame)
    data: Optional[str] = None   # walk through this dataset's encoded frames instead of the prior
    split: str = "train"         # which of the dataset's splits
    audio: Optional[str] = None  # an audio (or film) file: its first audio track, cut to the walk's length
    size: Optional[tuple] = None  # (H, W) (default: the model's, or the dataset's film's height)
    codec: str = "auto"
    crf: int = 18
    settings: Optional[dict] = dataclasses.field(default=None, compare=False)  # what the command resolved
                                 # (cadl's --config: {"job", "argv", "config_file", "flags"}), into the summary


def prior_path(n, latent_size, frames_per_sigma, seed=0, temperature=1.0):
    """(n, latent) z whose every frame is N(0, temperature^2 I) and whose neighbours are correlated: white
    noise smoothed by a Gaussian of ``frames_per_sigma`` frames, rescaled to unit variance."""
    rng = np.random.default_rng(seed)
    sigma = max(float(frames_per_sigma), 1e-3)
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= np.sqrt((kernel ** 2).sum())  # sum of squares 1: the smoothed noise keeps unit variance
    noise = rng.standard_normal((n + 2 * radius, latent_size))
    out = np.stack([np.convolve(noise[:, j], kernel, mode="valid") for j in range(latent_size)], 1)
    return (temperature * out[:n]).astype(np.float32)


def knot_path(knots, n, frames_per_knot):
    """(n, latent) z through ``knots`` (K, latent), one every ``frames_per_knot`` frames (Catmull-Rom: smooth,
    and exactly at each knot on its frame)."""
    knots = np.asarray(knots, np.float64)
    u = np.arange(n) / max(frames_per_knot, 1e-9)
    i = np.minimum(np.floor(u).astype(int), len(knots) - 2)
    s = (u - i)[:, None]
    p0, p1 = knots[np.maximum(i - 1, 0)], knots[i]
    p2, p3 = knots[i + 1], knots[np.minimum(i + 2, len(knots) - 1)]
    z = 0.5 * (2 * p1 + (p2 - p0) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s ** 2 + (3 * p1 - p0 - 3 * p2 + p3) * s ** 3)
    return z.astype(np.float32)


def walk(c):
    if not c.seconds > 0 or not c.smoothness > 0:
        raise CadlError(f"--seconds and --smoothness must be positive (got {c.seconds}, {c.smoothness})")
    fmt = latent.video_format(c.output, c.codec, c.crf)
    if c.audio is not None and not os.path.isfile(c.audio):
        raise CadlError(f"{c.audio}: no such audio file")
    model, model_file = latent.load(c.model)
    cfg = model.config
    film, through = None, "prior"
    if c.data is not None:
        encodings = latent.encode_dataset(model, model_file, c.data, c.split)
        film, through = encodings.film_source(), os.path.abspath(c.data)
    rate = latent.parse_rate(c.fps or (film or {}).get("fps") or DEFAULT_FPS)
    n = max(1, round(c.seconds * rate))
    per = float(c.smoothness * rate)
    if c.data is None:
        zs = prior_path(n, int(cfg["latent"]), per / 2, c.seed, c.temperature)
        visited = []
    else:
        rng = np.random.default_rng(c.seed)
        count = int(np.ceil(n / per)) + 2
        visited = [int(v) for v in rng.integers(0, len(encodings), count)]
        zs = knot_path(encodings.z[visited], n, per)
    size = latent.output_size(cfg["image_size"], c.size, film, even=fmt.even_sides)
    frames = (latent.fit_frame(f, size) for f in latent.decode_batched(model, zs))
    info = latent.write_video(c.output, frames, n, size, rate, fmt, audio=c.audio)
    summary = {"command": "walk", "model": os.path.abspath(c.model), "model_file": model_file,
               "through": through, "output": os.path.abspath(c.output), "frames": info.num_frames,
               "fps": str(rate), "duration": info.duration, "width": size[1], "height": size[0],
               "seed": c.seed, "smoothness": c.smoothness, "temperature": c.temperature if c.data is None else None,
               "audio": os.path.abspath(c.audio) if c.audio else None, "audio_codec": info.audio_codec,
               "format": fmt.describe(),
               "visited": [encodings.describe(v) for v in visited[:int(np.ceil(n / per)) + 1]] if visited else []}
    return _finish(summary, c.output, c.settings)


# ---- neighbours ----

@dataclasses.dataclass(frozen=True)
class NeighboursConfig:
    model: str
    data: str                    # the dataset searched (the model's training data, usually)
    input: str                   # a film, an image or FILM@SECONDS
    output: str                  # .png: a montage (one row per sampled frame); .mp4/...: every frame
    k: int = 4                   # neighbours shown per frame
    split: str = "train"         # which split is searched
    samples: int = 8             # film input, .png output: rows, at evenly spaced times
    start: float = 0.0           # film input: seconds from the first frame
    end: Optional[float] = None  # film input: up to this time (default: the end)
    zoom: int = 1                # enlarge tiles this many times (nearest neighbour)
    codec: str = "auto"
    crf: int = 18
    settings: Optional[dict] = dataclasses.field(default=None, compare=False)  # what the command resolved
                                 # (cadl's --config: {"job", "argv", "config_file", "flags"}), into the summary


def neighbours(c):
    if c.k < 1 or c.samples < 1 or c.zoom < 1:
        raise CadlError(f"--k, --samples and --zoom must be at least 1 (got {c.k}, {c.samples}, {c.zoom})")
    picture = os.path.splitext(c.output)[1].lower() == ".png"
    fmt = None if picture else latent.video_format(c.output, c.codec, c.crf)
    path, at = latent.parse_time_spec(c.input)
    still = at is not None or os.path.splitext(path)[1].lower() in media.IMAGE_EXTENSIONS
    if still and not picture:
        raise CadlError(f"{c.output}: one picture in ({c.input}) gives one row: write a .png montage")
    model, model_file = latent.load(c.model)
    cfg = model.config
    size, fit = tuple(cfg["image_size"]), cfg.get("fit", "crop")
    if still:
        queries, rows = latent.read_picture(c.input, size, fit, cfg["channels"])[None], [{"input": c.input}]
    else:  # the film's range is checked before the dataset is encoded
        info = media.probe(c.input)
        lo = latent.film_index(info, c.start)
        hi = info.num_frames if c.end is None else max(lo + 1, latent.film_index(info, c.end, before=True) + 1)
        if c.start >= info.duration:
            raise CadlError(f"{c.input}: {c.start:g} s is past the end of the film ({info.duration:.3f} s long)")
        if picture:
            picks = sorted(set(np.linspace(lo, hi - 1, min(c.samples, hi - lo)).round().astype(int).tolist()))
            # one short decode per row (a seek each), not the whole film for eight frames
            queries = [f for i in picks for _, _, f in media.read_frames(c.input, size=size, fit=fit, info=info,
                                                                         start=i, stop=i + 1)]
            if len(queries) != len(picks):
                raise CadlError(f"{c.input}: some of frames {picks} cannot be decoded")
            queries = np.stack(queries)
            rows = [{"input": c.input, "frame_index": i, "timestamp": round(info.timestamp(i), 6)} for i in picks]
    encodings = latent.encode_dataset(model, model_file, c.data, c.split)
    if picture:
        found, distances = latent.nearest(model.encode(queries), encodings.z, c.k)
        images = encodings.images(found.ravel())
        tiles = [t for q, idx in zip(queries, found) for t in [q] + [images[int(i)] for i in idx]]
        visual.write_png(c.output, visual.montage(_zoom_all(tiles, c.zoom), cols=c.k + 1))
        frames_written = len(rows)
    else:
        indices, found, distances = _film_neighbours(model, encodings, c, info, lo, hi, size, fit)
        frames_written = _write_neighbour_film(encodings, c, info, indices, size, fit, found, fmt)
        rows = [{"input": c.input, "frame_index": i, "timestamp": round(info.timestamp(i), 6)} for i in indices]
    summary = {"command": "neighbours", "model": os.path.abspath(c.model), "model_file": model_file,
               "data": os.path.abspath(c.data), "split": c.split, "searched": len(encodings), "k": int(found.shape[1]),
               "output": os.path.abspath(c.output), "frames": frames_written,
               "rows": [dict(r, neighbours=[dict(encodings.describe(i), distance=round(float(d), 5))
                                            for i, d in zip(idx, dist)])
                        for r, idx, dist in zip(rows, found, distances)]}
    return _finish(summary, c.output, c.settings)


def _zoom_all(tiles, zoom):
    return np.stack([_zoom(_rgb(t), zoom) for t in tiles])


def _film_neighbours(model, encodings, c, info, lo, hi, size, fit):
    """Every decodable frame of [lo, hi): ``(frame indices, k nearest records, distances)``, in blocks of
    ``latent.BATCH`` frames."""
    indices, found, distances, batch = [], [], [], []

    def flush():
        if batch:
            i, d = latent.nearest(model.encode(np.stack(batch)), encodings.z, c.k)
            found.append(i)
            distances.append(d)
            batch.clear()

    for index, _, frame in media.read_frames(c.input, size=size, fit=fit, info=info, start=lo, stop=hi):
        indices.append(index)
        batch.append(frame)
        if len(batch) == latent.BATCH:
            flush()
    flush()
    return indices, np.concatenate(found), np.concatenate(distances)


def _side_by_side(tiles, zoom, even):
    row = visual.montage(_zoom_all(tiles, zoom), cols=len(tiles))
    return _even(row) if even else row


def _write_neighbour_film(encodings, c, info, indices, size, fit, found, fmt):
    """The film's frames (at the model's size) beside their neighbours, with the film's own timing."""
    images = encodings.images(np.unique(found))
    lo, hi = indices[0], indices[-1] + 1
    shape = _side_by_side([np.zeros(size + (3,), np.uint8)] * (c.k + 1), c.zoom, fmt.even_sides).shape[:2]
    row_of = dict(zip(indices, found))

    def frames():
        for index, _, frame in media.read_frames(c.input, size=size, fit=fit, info=info, start=lo, stop=hi):
            if index in row_of:
                yield _side_by_side([frame] + [images[int(i)] for i in row_of[index]], c.zoom, fmt.even_sides)

    if indices != list(range(lo, hi)):
        raise CadlError(f"{c.input}: frames {sorted(set(range(lo, hi)) - set(indices))[:5]} cannot be decoded: "
                        "choose a range without them (--start, --end) or a .png montage")
    timing = video_out.segment_timing(info, lo, hi)
    return latent.write_video(c.output, frames(), hi - lo, shape, None, fmt, timing=timing).num_frames


# ---- attribute ----

@dataclasses.dataclass(frozen=True)
class AttributeConfig:
    model: str
    data: str                    # a CelebA dataset (records with attributes), extracted at the model's size
    attribute: str               # e.g. Smiling (the manifest's attribute_names)
    output: str                  # .png: one row per face, the original then each amount
    amounts: tuple = (-2.0, 2.0)  # from, to: multiples of the vector added to each face's z
    steps: int = 5               # columns of amounts (0 included when the range spans it)
    faces: int = 6               # validation faces (rows)
    split: str = "train"         # records the vector is computed from
    faces_split: str = "validation"
    zoom: int = 1
    settings: Optional[dict] = dataclasses.field(default=None, compare=False)  # what the command resolved
                                 # (cadl's --config: {"job", "argv", "config_file", "flags"}), into the summary


def attribute(c):
    _check_png(c.output)
    if c.steps < 1 or c.faces < 1 or c.zoom < 1:
        raise CadlError(f"--steps, --faces and --zoom must be at least 1 (got {c.steps}, {c.faces}, {c.zoom})")
    from pipelines import tfdata
    latent.check_attribute(c.data, tfdata.load_manifest(c.data), c.attribute)
    model, model_file = latent.load(c.model)
    encodings = latent.encode_dataset(model, model_file, c.data, c.split)
    vector, n_on, n_off = latent.attribute_vector(encodings, c.attribute)
    saved = latent.save_attribute(model_file, c.attribute, vector, {
        "data": os.path.abspath(c.data), "split": c.split, "with": n_on, "without": n_off})
    faces = latent.encode_dataset(model, model_file, c.data, c.faces_split)
    picks = list(range(min(c.faces, len(faces))))
    originals = faces.images(picks)
    amounts = np.linspace(c.amounts[0], c.amounts[1], c.steps) if c.steps > 1 else np.array([c.amounts[1]])
    tiles = []
    for i in picks:
        zs = faces.z[i][None] + amounts[:, None] * vector[None]
        tiles += [originals[i]] + list(latent.decode_batched(model, zs))
    visual.write_png(c.output, visual.montage(_zoom_all(tiles, c.zoom), cols=len(amounts) + 1))
    summary = {"command": "attribute", "model": os.path.abspath(c.model), "model_file": model_file,
               "data": os.path.abspath(c.data), "attribute": c.attribute, "split": c.split, "with": n_on,
               "without": n_off, "vector_norm": float(np.linalg.norm(vector)), "saved": saved,
               "amounts": [round(float(a), 6) for a in amounts], "output": os.path.abspath(c.output),
               "faces": [faces.describe(i) for i in picks]}
    return _finish(summary, c.output, c.settings)


# ---- map ----

LAYOUTS = ("grid", "scatter")


@dataclasses.dataclass(frozen=True)
class MapConfig:
    model: str
    data: str
    output: str                  # .png
    split: str = "train"
    samples: int = 256           # records placed (a seeded sample; all when the split has fewer)
    seed: int = 0
    layout: str = "grid"         # grid: one cell each, rows by the 2nd component then columns by the 1st;
                                 # scatter: at their coordinates on a canvas (thumbnails may overlap)
    canvas: int = 1024           # scatter: the picture's side in pixels
    zoom: int = 1                # thumbnails enlarged this many times
    settings: Optional[dict] = dataclasses.field(default=None, compare=False)  # what the command resolved
                                 # (cadl's --config: {"job", "argv", "config_file", "flags"}), into the summary


def pca_2d(z):
    """Project ``z`` (N, L) onto its two principal axes: ``(coords (N, 2), explained variance ratios)``."""
    centred = z.astype(np.float64) - z.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    return centred @ vt[:2].T, (var[:2] / max(var.sum(), 1e-12)).tolist()


def grid_cells(coords):
    """(row, col) per point: rows filled by the second coordinate, each row ordered by the first."""
    n = len(coords)
    cols = int(np.ceil(np.sqrt(n)))
    cells = np.zeros((n, 2), int)
    by_y = np.argsort(coords[:, 1], kind="stable")
    for r in range(int(np.ceil(n / cols))):
        row = by_y[r * cols:(r + 1) * cols]
        for c, i in enumerate(row[np.argsort(coords[row, 0], kind="stable")]):
            cells[i] = (r, c)
    return cells, cols


def map_dataset(c):
    _check_png(c.output)
    if c.layout not in LAYOUTS:
        raise CadlError(f"--layout must be one of {', '.join(LAYOUTS)}, not {c.layout!r}")
    if c.samples < 2 or c.zoom < 1:
        raise CadlError(f"--samples must be at least 2 and --zoom at least 1 (got {c.samples}, {c.zoom})")
    model, model_file = latent.load(c.model)
    encodings = latent.encode_dataset(model, model_file, c.data, c.split)
    rng = np.random.default_rng(c.seed)
    picks = np.sort(rng.choice(len(encodings), min(c.samples, len(encodings)), replace=False))
    coords, explained = pca_2d(encodings.z[picks])
    thumbs = encodings.images(picks)
    h, w = model.config["image_size"]
    th, tw = h * c.zoom, w * c.zoom
    if c.layout == "grid":
        cells, cols = grid_cells(coords)
        rows = int(cells[:, 0].max()) + 1
        canvas = np.full((rows * (th + 1) + 1, cols * (tw + 1) + 1, 3), 255, np.uint8)
        spots = [(1 + r * (th + 1), 1 + col * (tw + 1)) for r, col in cells]
    else:
        side = max(c.canvas, 2 * max(th, tw))
        canvas = np.full((side, side, 3), 255, np.uint8)
        lo, span = coords.min(0), np.maximum(np.ptp(coords, 0), 1e-12)
        unit = (coords - lo) / span
        spots = [(int(round((1 - v) * (side - th))), int(round(u * (side - tw)))) for u, v in unit]
    placed = []
    for k, i in enumerate(picks):
        y, x = spots[k]
        canvas[y:y + th, x:x + tw] = _zoom(_rgb(thumbs[int(i)]), c.zoom)
        placed.append(dict(encodings.describe(i), x=int(x), y=int(y), pc=[round(float(v), 5) for v in coords[k]]))
    visual.write_png(c.output, canvas)
    summary = {"command": "map", "model": os.path.abspath(c.model), "model_file": model_file,
               "data": os.path.abspath(c.data), "split": c.split, "records": len(encodings),
               "samples": len(picks), "layout": c.layout, "explained_variance": [round(v, 5) for v in explained],
               "thumbnail": [th, tw], "output": os.path.abspath(c.output), "placed": placed}
    return _finish(summary, c.output, c.settings)
