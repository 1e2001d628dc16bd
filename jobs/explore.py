"""``cadl explore``: what a trained VAE's encoding lets you do, one subcommand per picture or film.

    cadl explore interpolate --model RUN --from A --to B --output a_to_b.mp4 [--frames 120] [--linear] [--gif]
    cadl explore walk        --model RUN --output walk.mp4 [--seconds 20] [--data DATA] [--audio FILE]
    cadl explore neighbours  --model RUN --data DATA --input FILM --output grid.mp4|grid.png [--k 4]
    cadl explore attribute   --model RUN --data CELEBA_DATA --attribute Smiling --output smile.png
    cadl explore map         --model RUN --data DATA --output map.png

A and B are image files or FILM@SECONDS. Each writes OUT.summary.json next to OUT; the flags are the fields
of ``pipelines.explore``'s configs, which do the work. ``run`` returns the summary.
"""
import argparse
import sys

import jobs
from jobs import config_file
from pipelines import explore, geometry, video_out
from pipelines.errors import CadlError


def _model(p):
    config_file.add_option(p)
    p.add_argument("--model", required=True,
                   help="trained VAE: a run folder, its export/ folder, a .keras file or a symlink to one")


def _film_out(p, what):
    p.add_argument("--output", required=True, help=f"{what}: .mp4/.m4v (H.264), .mov (ProRes) or .mkv")
    p.add_argument("--codec", default="auto", choices=("auto",) + tuple(c for c in video_out.CODECS if c != "png"),
                   help="video codec (default: auto = h264, prores for .mov); ffv1 (.mkv) is lossless")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality 0 (lossless) .. 51 (default: 18)")


def _size(p, default):
    p.add_argument("--size", default=None, metavar="HxW",
                   help=f"frame size of the film, the picture letterboxed into it (default: {default})")


def _data(p, what, required=True):
    p.add_argument("--data", required=required, help=f"dataset folder written by cadl extract: {what}")
    p.add_argument("--split", default="train", choices=("train", "validation", "test"),
                   help="which of its splits (default: train)")


def _zoom(p):
    p.add_argument("--zoom", type=int, default=1, help="enlarge every tile this many times (default: 1)")


def build_parser():
    p = argparse.ArgumentParser(
        prog="cadl explore",
        description="Explore a trained VAE's latent space: interpolation and walk films, the nearest training "
                    "frames of another film, CelebA attribute vectors, a map of a dataset. Encodings of a "
                    "dataset and attribute vectors are cached in the run folder (RUN/explore/).",
        epilog="Every subcommand writes OUT.summary.json next to OUT and takes --config FILE.toml (its flags "
               "as keys). 'cadl explore SUBCOMMAND --help' lists its options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    s = sub.add_parser("interpolate", help="a film from A to B through the latent space",
                       description="Encode A and B to their latent means, follow the great circle (or the "
                                   "straight line) between them, decode: a film whose first and last frames "
                                   "are the reconstructions of A and B.")
    _model(s)
    s.add_argument("--from", dest="start", required=True, metavar="A", help="an image file or FILM@SECONDS")
    s.add_argument("--to", dest="end", required=True, metavar="B", help="an image file or FILM@SECONDS")
    _film_out(s, "the film")
    s.add_argument("--frames", type=int, default=120, help="frames from A to B, both included (default: 120)")
    s.add_argument("--fps", default="25", help="exact frame rate: 25, 30000/1001, 29.97 (default: 25)")
    s.add_argument("--linear", action="store_true", help="a straight line instead of slerp")
    s.add_argument("--gif", action="store_true", help="also write the frames as OUT with .gif")
    _size(s, "the model's")

    s = sub.add_parser("walk", help="a smooth random path through the latent space",
                       description="Decode a smooth seeded path through the prior N(0, I), or through the "
                                   "encoded frames of a dataset (--data), into a film at an exact rate.")
    _model(s)
    _film_out(s, "the film")
    s.add_argument("--seconds", type=float, default=10.0, help="length in seconds (default: 10)")
    s.add_argument("--fps", default=None,
                   help="exact frame rate (default: the dataset's film's rate with --data, else 25)")
    s.add_argument("--seed", type=int, default=0, help="the path's randomness (default: 0)")
    s.add_argument("--smoothness", type=float, default=2.0, metavar="SECONDS",
                   help="how slowly the path turns: prior: smoothing width; data: seconds between the frames "
                        "it passes through (default: 2)")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="prior: scale of z; below 1 stays nearer the average picture (default: 1)")
    _data(s, "walk through its encoded frames instead of the prior", required=False)
    s.add_argument("--audio", default=None, metavar="FILE",
                   help="add the first audio track of FILE (audio or film), cut to the walk's length")
    _size(s, "the model's, or the height of the dataset's film with --data")

    s = sub.add_parser("neighbours", help="a film's frames beside their nearest training frames",
                       description="For frames of a film (or a picture), the nearest records of a dataset in "
                                   "latent space, by an exact search: a side-by-side film (every frame, the "
                                   "film's own timing) or a PNG montage (sampled frames, one row each).")
    _model(s)
    _data(s, "the frames searched")
    s.add_argument("--input", required=True, help="a film, an image or FILM@SECONDS")
    s.add_argument("--output", required=True, help=".png for a montage; .mp4/.m4v/.mov/.mkv for a film")
    s.add_argument("--codec", default="auto", help=argparse.SUPPRESS)
    s.add_argument("--crf", type=int, default=18, help="film output: H.264 quality (default: 18)")
    s.add_argument("--k", type=int, default=4, help="neighbours per frame (default: 4)")
    s.add_argument("--samples", type=int, default=8, help="montage of a film: rows, evenly spaced (default: 8)")
    s.add_argument("--start", type=float, default=0.0, help="film input: from this time, seconds (default: 0)")
    s.add_argument("--end", type=float, default=None, help="film input: to this time (default: the end)")
    _zoom(s)

    s = sub.add_parser("attribute", help="a CelebA attribute's vector applied to faces",
                       description="The attribute vector (mean latent of the records with the attribute minus "
                                   "the mean of those without) added in steps to validation faces: a montage, "
                                   "each row a face: the original, then each amount. The vector is saved in "
                                   "RUN/explore/attributes.json, where cadl render --attribute finds it.")
    _model(s)
    _data(s, "CelebA records (with attributes) the vector is computed from")
    s.add_argument("--attribute", required=True, help="an attribute name, e.g. Smiling")
    s.add_argument("--output", required=True, help="the montage (.png)")
    s.add_argument("--amount", default="-2..2", metavar="LO..HI",
                   help="range of multiples of the vector, written --amount=-2..2 when it starts with a minus "
                        "(default: -2..2)")
    s.add_argument("--steps", type=int, default=5, help="amounts across the range (default: 5)")
    s.add_argument("--faces", type=int, default=6, help="validation faces, one row each (default: 6)")
    _zoom(s)

    s = sub.add_parser("map", help="a dataset organised by its encodings",
                       description="The latent means of a seeded sample of records projected onto their two "
                                   "principal components, one thumbnail per sampled record.")
    _model(s)
    _data(s, "the records placed")
    s.add_argument("--output", required=True, help="the map (.png)")
    s.add_argument("--samples", type=int, default=256, help="records placed (default: 256)")
    s.add_argument("--seed", type=int, default=0, help="which records (default: 0)")
    s.add_argument("--layout", choices=explore.LAYOUTS, default="grid",
                   help="grid: one cell per record, rows by the 2nd component, columns by the 1st; scatter: "
                        "at their coordinates (may overlap) (default: grid)")
    s.add_argument("--canvas", type=int, default=1024, help="scatter: side of the picture in pixels")
    _zoom(s)
    return p


def _parse_size(text):
    if text is None:
        return None
    try:
        return geometry.parse_size(text)
    except ValueError as e:
        raise CadlError(f"--size: {e}") from None


def _parse_amounts(text):
    lo, sep, hi = str(text).partition("..")
    try:
        return (float(lo), float(hi)) if sep else (float(lo), float(lo))
    except ValueError:
        raise CadlError(f"--amount {text}: expected LO..HI, e.g. -2..2") from None


def config_from_args(args):
    """Parsed flags -> the subcommand's config."""
    common = {"model": args.model, "settings": getattr(args, "settings", None)}
    if args.command == "interpolate":
        return explore.InterpolateConfig(**common, start=args.start, end=args.end, output=args.output,
                                         frames=args.frames, fps=args.fps, linear=args.linear, gif=args.gif,
                                         size=_parse_size(args.size), codec=args.codec, crf=args.crf)
    if args.command == "walk":
        return explore.WalkConfig(**common, output=args.output, seconds=args.seconds, fps=args.fps, seed=args.seed,
                                  smoothness=args.smoothness, temperature=args.temperature, data=args.data,
                                  split=args.split, audio=args.audio, size=_parse_size(args.size),
                                  codec=args.codec, crf=args.crf)
    if args.command == "neighbours":
        return explore.NeighboursConfig(**common, data=args.data, input=args.input, output=args.output, k=args.k,
                                        split=args.split, samples=args.samples, start=args.start, end=args.end,
                                        zoom=args.zoom, codec=args.codec, crf=args.crf)
    if args.command == "attribute":
        return explore.AttributeConfig(**common, data=args.data, attribute=args.attribute, output=args.output,
                                       amounts=_parse_amounts(args.amount), steps=args.steps, faces=args.faces,
                                       split=args.split, zoom=args.zoom)
    return explore.MapConfig(**common, data=args.data, output=args.output, split=args.split, samples=args.samples,
                             seed=args.seed, layout=args.layout, canvas=args.canvas, zoom=args.zoom)


COMMANDS = {"interpolate": explore.interpolate, "walk": explore.walk, "neighbours": explore.neighbours,
            "attribute": explore.attribute, "map": explore.map_dataset}


def run(argv=None):
    args = config_file.parse(build_parser(), argv)
    return COMMANDS[args.command](config_from_args(args))


if __name__ == "__main__":
    sys.exit(jobs.main(run))
