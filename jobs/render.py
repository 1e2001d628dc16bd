"""``cadl render``: push a film through a trained VAE and write the reconstructed film.

    cadl render --model RUN_OR_MODEL --input FILM --output OUT [options] [--runner R  Beam options]

The flags of ``pipelines.render.render`` (``RenderConfig``), which does the work: the geometry of a frame's
path, resuming from ``OUT.parts/``, the Beam runner and the summary (``OUT.summary.json``, for a PNG
sequence ``OUT/summary.json``) are described there. ``run`` returns the summary.
"""
import argparse
import dataclasses
import sys

import jobs
from jobs import config_file
from pipelines import geometry, latent, media, video_out
from pipelines.errors import CadlError
from pipelines.render import RenderConfig, render


def build_parser():
    p = argparse.ArgumentParser(
        prog="cadl render",
        description="Re-render a film through a trained VAE: same frames, exact frame rate and timing, "
                    "audio kept. Resumable (rerun the same command after a crash); --runner renders segments "
                    "in parallel with Apache Beam. Extra arguments after --runner are Beam pipeline options.",
        epilog="Writes OUT (atomically, when complete) and OUT.summary.json (for a PNG sequence: OUT/summary.json, "
               "with OUT/timestamps.txt and OUT/audio.mka); work in progress lives in OUT.parts/. The model's "
               "picture lands where the model saw it: with a crop-trained model on a film of another aspect "
               "ratio, the parts the model never saw stay black.")
    p.add_argument("--model", required=True,
                   help="trained model: a run folder, its export/ folder, a .keras file or a symlink to one "
                        "(e.g. WORKDIR/models/LATEST)")
    p.add_argument("--input", required=True, help="the film to render (anything ffmpeg reads)")
    p.add_argument("--output", required=True,
                   help="output film: .mp4/.m4v (H.264), .mov (ProRes), .mkv (H.264, or --codec ffv1|prores), "
                        "or a path without extension for a PNG frame sequence folder")
    config_file.add_option(p)
    p.add_argument("--codec", default="auto", choices=("auto",) + video_out.CODECS,
                   help="video codec (default: auto = h264 for .mp4/.m4v/.mkv, prores for .mov, png for a "
                        "folder); ffv1 (.mkv only) is lossless")
    p.add_argument("--crf", type=int, default=18,
                   help="H.264 quality: constant rate factor 0 (lossless) .. 51, lower is better (default: 18)")
    p.add_argument("--preset", default="medium", choices=video_out.PRESETS,
                   help="H.264 speed/size trade-off (default: medium)")
    p.add_argument("--pix-fmt", default=None,
                   help="encoded pixel format (default: yuv420p for H.264, which every player plays; "
                        "yuv422p10le for ProRes; bgr0 for FFV1; rgb24 for PNG)")
    p.add_argument("--prores-profile", default="hq", choices=tuple(video_out.PRORES_PROFILES),
                   help="ProRes profile (default: hq)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--output-size", default=None,
                      help="output frame size HxW in pixels (default: the film's own size); a different "
                           "aspect ratio is letterboxed, never stretched")
    size.add_argument("--scale", type=float, default=None,
                      help="output size as a factor of the film's size, e.g. 0.5 (default: 1)")
    p.add_argument("--side-by-side", action="store_true",
                   help="write the original and the reconstruction next to each other (twice as wide)")
    p.add_argument("--blend", type=float, default=None, metavar="ALPHA",
                   help="mix: ALPHA x reconstruction + (1 - ALPHA) x original, ALPHA in [0, 1] "
                        "(default: 1, the reconstruction alone)")
    p.add_argument("--smooth", type=int, default=1, metavar="K",
                   help="average each frame's latent z over the K frames centred on it (K rounded up to "
                        "odd) before decoding, to reduce flicker (default: 1 = off)")
    p.add_argument("--attribute", action="append", default=[], metavar="NAME=AMOUNT",
                   help="add AMOUNT x a CelebA attribute's latent vector to every frame, e.g. Smiling=1.5 "
                        "(repeatable); the vector is the one cadl explore attribute saved in the run folder, "
                        "or computed from --attribute-data")
    p.add_argument("--attribute-data", default=None, metavar="DATA",
                   help="CelebA records (with attributes) to compute --attribute vectors from")
    p.add_argument("--no-audio", action="store_true", help="leave the source's audio out")
    p.add_argument("--audio-track", type=int, default=0, metavar="N",
                   help="which of the source's audio tracks to keep, counted from 0 (default: 0, the first; "
                        "`cadl info FILM` lists them)")
    p.add_argument("--keep-fields", action="store_true",
                   help="interlaced films: do not deinterlace (default: deinterlace, as extraction does)")
    p.add_argument("--stall-seconds", type=float, default=media.STALL_SECONDS, metavar="SECONDS",
                   help="give up on an ffmpeg process whose output has not moved for SECONDS (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per model call (default: 16)")
    p.add_argument("--model-threads", type=int, default=0, metavar="N",
                   help="CPU threads per model operation (default: 0 = half the cores on a machine without a "
                        "GPU, leaving the rest to ffmpeg's decoder and encoder)")
    p.add_argument("--segment-seconds", type=float, default=30.0,
                   help="length of the committed segments in seconds of film: what a crash can lose and "
                        "the unit of parallel work (default: 30; each segment starts an encoder, which "
                        "costs about 0.1 CPU s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--score", action="store_true",
                   help="score the written film against its source at the model's input size: PSNR, SSIM, "
                        "MS-SSIM, Laplacian ratio (detail kept) and flicker ratio, in the summary's \"score\"")
    p.add_argument("--runner", default=None,
                   help="render segments with an Apache Beam pipeline on this runner (DirectRunner, "
                        "FlinkRunner, ...); further Beam options follow, e.g. --direct_num_workers 2 "
                        "--direct_running_mode multi_processing (default: local streaming, no Beam)")
    return p


def config_from_args(args, beam_args=()):
    """Parsed flags -> ``RenderConfig``: every flag's field, here in one place."""
    config = RenderConfig(
        model=args.model, input=args.input, output=args.output, codec=args.codec, crf=args.crf,
        preset=args.preset, pix_fmt=args.pix_fmt, prores_profile=args.prores_profile, scale=args.scale,
        side_by_side=args.side_by_side, blend=args.blend, smooth=args.smooth, audio=not args.no_audio,
        audio_track=args.audio_track, deinterlace="off" if args.keep_fields else "auto",
        stall_seconds=args.stall_seconds, batch_size=args.batch_size, model_threads=args.model_threads,
        segment_seconds=args.segment_seconds, overwrite=args.overwrite, runner=args.runner,
        beam_args=tuple(beam_args), score=args.score, settings=getattr(args, "settings", None))
    if args.attribute_data and not args.attribute:
        raise CadlError("--attribute-data: give the attribute too, e.g. --attribute Smiling=1.5")
    if args.attribute:
        config = dataclasses.replace(config, attribute=tuple(latent.parse_attribute(a) for a in args.attribute),
                                     attribute_data=args.attribute_data)
    if args.output_size is None:
        return config
    # Parsed after the other knobs are checked, so a command with several bad flags names the same first.
    try:
        size = geometry.parse_size(args.output_size)
    except ValueError as e:
        raise CadlError(f"--output-size: {e}") from None
    return dataclasses.replace(config, output_size=size)


def run(argv=None):
    parser = build_parser()
    args, beam_args = config_file.parse(parser, argv, known=True)
    if beam_args and not args.runner:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam options need --runner)")
    return render(config_from_args(args, beam_args))


if __name__ == "__main__":
    sys.exit(jobs.main(run))
