"""``cadl extract``: films, CelebA and image folders -> sharded TFRecords, with an Apache Beam pipeline.

    cadl extract --input films/ --input stills/ --output data/ --size 72x128
    cadl extract --input ~/celeba --output celeba64/ --size 64x64 --crop-factor 0.8
    cadl extract --input new.mp4 --output data/ --incremental          # add only what is new
    cadl extract --input gs://b/films/ --output gs://b/data --runner DataflowRunner \\
        --project P --region R --temp_location gs://b/tmp --setup_file ./setup.py
    cadl extract --input /shared/films --output /shared/data --runner FlinkRunner \\
        --flink_master host:8081 --environment_type PROCESS --setup_file ./setup.py

Inputs and output are local paths or URLs of any filesystem Apache Beam knows (gs://, s3://, hdfs://, ...;
its extra must be installed, e.g. apache-beam[gcp]). With a remote runner, local paths must be on a
filesystem that the driver and every worker share. A remote film is copied to a local file by the worker
that decodes it (ffmpeg seeks in it); everything written goes through Beam's FileSystems (temp file, then
rename).

Options this job does not know are Beam pipeline options and pass straight through (``--runner``,
``--temp_location``, ``--setup_file``, ``--flink_master``, ...). Without ``--runner`` the pipeline runs on
Beam's FnApiRunner on this machine with one worker per core: Beam's "DirectRunner" would first try the Prism
runner, which downloads a binary and so fails (slowly) without internet.

Writes into the output folder: the shards, ``manifest.json`` (see ``pipelines.manifest``), ``mean.png`` and
``std.png`` (per-pixel mean and standard deviation of every record), ``moments.npz``, ``summary.json`` and the
``.cadl`` marker. A later run's files carry its tag (``r0002-mean.png``) and the manifest's switch publishes
them (see ``pipelines.manifest``); a local output is locked (``.cadl-lock``) for the run: a second extract
into it exits 75 touching nothing.

The work is ``pipelines.extract.extract(ExtractConfig)``; this module maps the flags to the config's fields
(``config``), and ``run`` returns the summary ``extract`` returns (its keys: see ``pipelines.extract``).
"""
import argparse
import sys

import jobs
from jobs import config_file
from pipelines import geometry
from pipelines.errors import CadlError
from pipelines.extract import TMP_PREFIX, ExtractConfig, extract

__all__ = ["build_parser", "config", "run", "TMP_PREFIX"]  # TMP_PREFIX: tests look for leftover work folders


def build_parser():
    p = argparse.ArgumentParser(
        prog="cadl extract", allow_abbrev=False,
        description="Turn films, CelebA and image folders into sharded TFRecords (one tf.train.Example per "
                    "picture, see pipelines/schema.py) with an Apache Beam pipeline. Unknown options are Beam "
                    "pipeline options (--runner, --temp_location, --setup_file, ...) and pass through.",
        epilog="Without --runner the pipeline runs here on Beam's FnApiRunner with one worker per core "
               "(--direct_num_workers N, --direct_running_mode multi_threading|multi_processing to change); "
               "Beam's DirectRunner would first try the Prism runner, which downloads a binary.")
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a film, an image, a folder (searched recursively for films and jpg/png/webp/bmp "
                        "images), a glob (quote it), or a CelebA root (holding img_align_celeba/ or "
                        "img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt); a local path or a "
                        "URL such as gs://bucket/films/ (any filesystem Beam knows); repeatable")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="dataset folder (local or a URL such as gs://bucket/data): shards, manifest.json, "
                        "mean.png, std.png, moments.npz, summary.json")
    config_file.add_option(p)
    g = p.add_argument_group("geometry")
    g.add_argument("--size", default="64x64", metavar="HxW",
                   help="picture size of every record, height x width in pixels, e.g. 64x64, 72x128 (16:9), "
                        "144x256 (default: %(default)s)")
    g.add_argument("--fit", default="crop", choices=geometry.FITS,
                   help="how other aspect ratios fit: crop = cover then centre-crop, pad = fit inside with "
                        "black bars, stretch = distort (default: %(default)s)")
    g.add_argument("--crop-factor", type=float, default=None, metavar="F",
                   help="stills only: keep the central F of each side before fitting; default 0.8 for CelebA "
                        "(the course's choice, mostly face) and 1.0 for image folders")
    g = p.add_argument_group("sampling (films)")
    s = g.add_mutually_exclusive_group()
    s.add_argument("--every", type=int, default=1, metavar="N",
                   help="keep every Nth frame, counted from --start (default: every frame)")
    s.add_argument("--fps", type=float, default=None, metavar="F",
                   help="keep about F frames per second of film: the first frame of each 1/F s, like "
                        "ffmpeg -r (default: every frame)")
    g.add_argument("--start", type=float, default=0.0, metavar="SECONDS",
                   help="skip the first SECONDS of each film (default: 0)")
    g.add_argument("--end", type=float, default=None, metavar="SECONDS",
                   help="stop at SECONDS into each film (default: its end)")
    g.add_argument("--keep-fields", action="store_true",
                   help="interlaced films: keep each frame's two fields woven together as stored (default: "
                        "deinterlace them with ffmpeg's bwdif, one frame per frame)")
    g.add_argument("--stall-seconds", type=float, default=120.0, metavar="SECONDS",
                   help="stop an ffmpeg process whose output has not moved for SECONDS and skip what it was "
                        "reading, reported as one line (default: %(default)s)")
    g.add_argument("--segment-seconds", type=float, default=None, metavar="SECONDS",
                   help="least length of the pieces a film is cut into (each starts right after a keyframe, "
                        "where decoding is cheap); each is a separate work item, so one long film keeps every "
                        "worker busy (default: sized by the work, frames x pixels, and the local workers: "
                        "at least 10 s, at most two pieces per worker)")
    g = p.add_argument_group("encoding and shards")
    g.add_argument("--format", default="png", choices=("png", "jpeg"),
                   help="picture encoding in the records: png is lossless (default: %(default)s)")
    g.add_argument("--quality", type=int, default=95, metavar="Q",
                   help="JPEG quality 1..100, with --format jpeg (default: %(default)s)")
    g.add_argument("--compression", default="none", choices=("none", "gzip"),
                   help="compress shards with GZIP (.tfrecord.gz); PNG hardly shrinks (default: %(default)s)")
    g.add_argument("--shard-mb", type=float, default=100.0, metavar="MB",
                   help="target shard size in MiB when --num-shards is not given; TensorFlow advises >= 10 MB, "
                        "ideally 100 MB or more (default: %(default)s)")
    g.add_argument("--num-shards", type=int, default=0, metavar="N",
                   help="write (at most) N shards per split instead, records sorted within each; this "
                        "shuffles every record, so the local runner holds them all in memory (default: by "
                        "size)")
    g = p.add_argument_group("splits")
    g.add_argument("--validation-fraction", type=float, default=0.05, metavar="F",
                   help="share of films (in whole blocks) and of image-folder stills that goes to validation; "
                        "CelebA keeps its official partition (default: %(default)s)")
    g.add_argument("--validation-block", type=float, default=4.0, metavar="SECONDS",
                   help="films go to validation in contiguous blocks this long, chosen by a hash of (film, "
                        "block), so validation frames are not near-copies of training frames; a film of two "
                        "or more blocks always gives at least one (default: %(default)s)")
    p.add_argument("--incremental", action="store_true",
                   help="keep the dataset already in --output: skip inputs its manifest lists with the same "
                        "size and modification time, add new shards (tagged rNNNN-) and merge the manifest")
    return p


def config(args, beam_args=()):
    """The flags (``build_parser``'s namespace) as an ExtractConfig; ``beam_args``: the options it does not know."""
    try:
        size = geometry.parse_size(args.size)
    except ValueError as e:
        raise CadlError(f"--size: {e}") from None
    return ExtractConfig(
        inputs=tuple(args.input), output=args.output, size=size, fit=args.fit, crop_factor=args.crop_factor,
        every=args.every, fps=args.fps, start=args.start, end=args.end,
        deinterlace="off" if args.keep_fields else "auto", stall_seconds=args.stall_seconds,
        segment_seconds=args.segment_seconds, format=args.format, quality=args.quality,
        compression=args.compression, shard_mb=args.shard_mb, num_shards=args.num_shards,
        validation_fraction=args.validation_fraction, validation_block=args.validation_block,
        incremental=args.incremental, beam_args=tuple(beam_args), settings=getattr(args, "settings", None))


def run(argv=None):
    args, beam_args = config_file.parse(build_parser(), argv, known=True)
    return extract(config(args, beam_args))


if __name__ == "__main__":
    sys.exit(jobs.main(run))
