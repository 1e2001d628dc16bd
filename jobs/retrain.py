"""``cadl retrain``: one idempotent scheduled step — extract what is new, warm-start, evaluate, promote.

    cadl retrain --inputs DIR [--inputs DIR ...] --work WORKDIR [training options]

The flags of ``pipelines.retrain.RetrainConfig`` (the steps, the WORKDIR layout and the safety rules are
described there) and, for the candidate, cadl train's. Exit codes: 0 done (promoted, rejected or nothing new),
75 (EX_TEMPFAIL) another retrain holds the lock (nothing was touched; try later), 2 a user error (one line
naming the file), 130 interrupted.
"""
import argparse
import signal
import sys

import jobs
from jobs import config_file, train
from pipelines import geometry
from pipelines.errors import CadlError
from pipelines.lock import EXIT_BUSY
from pipelines.retrain import RetrainConfig, retrain

_SET_BY_RETRAIN = ("--data", "--out", "--init-from")  # cadl train's flags that retrain fills in itself


def build_parser():
    p = argparse.ArgumentParser(
        prog="cadl retrain", allow_abbrev=False,  # never let "--keep" (a train option) become --keep-rejected
        description="One scheduled retraining step, safe to run from cron, a systemd timer or Airflow: extract "
                    "only new inputs into WORKDIR/data, warm-start the VAE from the promoted model, evaluate "
                    "candidate and promoted model on the same validation set, and promote the candidate to "
                    "WORKDIR/models/vNNNN (LATEST switched atomically) only if it is not worse. Exit codes: "
                    f"0 done or nothing new, {EXIT_BUSY} another retrain is in progress (nothing touched), "
                    "2 user error, 130 interrupted. The training options are cadl train's (all but --data, --out "
                    "and --init-from, which retrain sets).",
        epilog="Example (hourly from cron): cadl retrain --inputs /srv/films --work /srv/cadl "
               "--max-seconds 1800 --size 72x128")
    p.add_argument("--inputs", "--input", dest="inputs", action="append", required=True, metavar="PATH",
                   help="a film, a folder (searched recursively), a glob, or a CelebA root; repeat for several. "
                        "Inputs already in WORKDIR/data (same path, size and modification time) are skipped")
    p.add_argument("--work", required=True, metavar="WORKDIR",
                   help="the working folder holding data/, models/, candidates/ and the run summaries "
                        "(created on the first run)")
    p.add_argument("--force", action="store_true",
                   help="train and evaluate a candidate even when nothing is new")

    g = p.add_argument_group("extraction (passed to cadl extract; a later run keeps the dataset's own unless given)")
    g.add_argument("--size", metavar="HxW", type=_size,
                   help="image size of the dataset, e.g. 64x64 or 72x128 (default: the dataset's own once it "
                        "exists, else cadl extract's 64x64). Fixed by the first run")
    g.add_argument("--fit", choices=("crop", "pad", "stretch"),
                   help="how frames are fitted to --size (default: the dataset's own once it exists, else crop)")
    g.add_argument("--every", type=int, metavar="N", help="keep every Nth frame of a film (default: all)")
    g.add_argument("--fps", type=float, metavar="F", help="keep about F frames per second of film (default: all)")
    g.add_argument("--validation-fraction", type=float, metavar="F",
                   help="share of each film held out for validation, in whole blocks (default: cadl extract's, "
                        "0.05)")
    g.add_argument("--validation-block", type=float, metavar="SECONDS",
                   help="length of those validation blocks (default: cadl extract's, 4)")

    g = p.add_argument_group("promotion gate")
    g.add_argument("--loss-tolerance", type=float, default=0.01, metavar="FRACTION",
                   help="the candidate's validation loss may exceed the promoted model's by this fraction of "
                        "it (default: 0.01 = 1%%; negative demands an improvement)")
    g.add_argument("--psnr-tolerance", type=float, default=0.1, metavar="DB",
                   help="the candidate's validation PSNR may be this many dB below the promoted model's "
                        "(default: 0.1; negative demands an improvement)")
    g.add_argument("--keep-rejected", type=int, default=10, metavar="N",
                   help="keep the newest N rejected (or failed) candidates in WORKDIR/candidates, delete older "
                        "ones (default: 10)")
    config_file.add_option(p)
    train.add_options(p, preset_defaults=False)
    return p


def _size(text):
    try:
        return geometry.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(argv=None):
    args, unknown = config_file.parse(build_parser(), argv, known=True)
    if args.init_from is not None:
        unknown.insert(0, "--init-from")
    for option in unknown:
        if option.split("=", 1)[0] in _SET_BY_RETRAIN:
            raise CadlError(f"retrain sets {option.split('=', 1)[0]} itself; remove it from the command line")
    if unknown:
        raise CadlError(f"unknown option(s) for cadl retrain / cadl train: {' '.join(unknown)}")
    config = RetrainConfig(
        inputs=tuple(args.inputs), work=args.work, force=args.force,
        train=train.config_from_args(args, data="", out=""),
        size=args.size, fit=args.fit, every=args.every, fps=args.fps,
        validation_fraction=args.validation_fraction, validation_block=args.validation_block,
        loss_tolerance=args.loss_tolerance, psnr_tolerance=args.psnr_tolerance, keep_rejected=args.keep_rejected,
        settings=args.settings)
    previous_handler = jobs.sigterm_as_interrupt()  # the partial candidate is kept for the next run
    try:
        return retrain(config)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    sys.exit(jobs.main(run))
