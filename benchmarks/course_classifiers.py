"""Test accuracy of the course's classifiers and of each measured improvement, against the lesson's networks.

    python benchmarks/course_classifiers.py                                  # generated digits (default)
    python benchmarks/course_classifiers.py --data-dir DIR                   # MNIST-format IDX files in DIR
    python benchmarks/course_classifiers.py --variants linear,lesson,improved --epochs 10

Every variant is the real ``cadl classifier`` job (``jobs.classifier.run``) on the same data, split and
seed, in this same run. Data: the MNIST files in ``--data-dir`` (MNIST itself, or Fashion-MNIST, whose files
have the same names and format), with ``--split official`` (the published 10,000 test images); without it,
``--generated N`` synthetic digits (the tests' generator: glyphs 0-9 at random sizes, positions, rotations,
with noise), written as IDX files and read back through the same loader. Nothing is downloaded.

Printed: one line per variant with its test accuracy, training time and the ratio of its test accuracy to
the baseline's (``--baseline``, default ``lesson``: the lesson's convolutional network), then a JSON line.

Variants:
  linear      the lesson's softmax regression
  lesson      the lesson's conv network: 5x5 stride-2 convs of 32 and 64, 128 units, softmax; Glorot init
  he          lesson + He initialisation          bn        lesson + batch normalisation
  dropout     lesson + dropout 0.3                augment   lesson + random shifts of up to 10%
  improved    lesson + everything in ``models.classifiers.IMPROVED`` (``--improved``)
"""
import argparse
import json
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from measure import add_digit_options, digits_dir  # noqa: E402  (benchmarks/measure.py)

VARIANTS = {
    "linear": ["--model", "linear"],
    "lesson": ["--model", "conv"],
    "he": ["--model", "conv", "--init", "he_normal"],
    "bn": ["--model", "conv", "--batch-norm"],
    "dropout": ["--model", "conv", "--dropout", "0.3"],
    "augment": ["--model", "conv", "--augment", "0.1"],
    "improved": ["--model", "conv", "--improved"],
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_digit_options(p, generated=12000)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--baseline", default="lesson", help="the variant the ratios are against (default lesson)")
    p.add_argument("--epochs", type=int, default=10, help="epochs for every variant (default 10)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; figures are averaged (default 0)")
    p.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    args = p.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}")
    if args.baseline not in names:
        names.insert(0, args.baseline)

    from jobs import classifier

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the job's per-epoch lines

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        data_dir = digits_dir(args.data_dir, args.generated, out)
        results = {}
        for name in names:
            accuracies, seconds = [], []
            for seed in (int(s) for s in args.seeds.split(",")):
                started = time.time()
                summary = classifier.run(["--dataset", "mnist", "--data-dir", data_dir, "--split", "official",
                                          "--epochs", str(args.epochs), "--seed", str(seed), "--fresh",
                                          "--out", os.path.join(out, f"{name}-{seed}")] + VARIANTS[name])
                accuracies.append(summary["test_accuracy"])
                seconds.append(time.time() - started)
            results[name] = {"test_accuracy": sum(accuracies) / len(accuracies), "runs": accuracies,
                             "seconds": sum(seconds) / len(seconds)}
        base = results[args.baseline]["test_accuracy"]
        print(f"\ndata: {args.data_dir or f'{args.generated} generated digits'}; {args.epochs} epochs; "
              f"seeds {args.seeds}; baseline {args.baseline}")
        for name, r in results.items():
            r["ratio"] = r["test_accuracy"] / base
            print(f"{name:10s} test accuracy {r['test_accuracy']:.4f}  ({r['ratio']:.3f}x {args.baseline})  "
                  f"{r['seconds']:.0f} s  runs {[round(a, 4) for a in r['runs']]}")
        print(json.dumps({"data": args.data_dir or f"generated:{args.generated}", "epochs": args.epochs,
                          "results": results}))
    return results


if __name__ == "__main__":
    main()
