"""Test reconstruction error of the course's autoencoders, against predicting the mean image.

    python benchmarks/course_autoencoders.py                                 # generated digits (default)
    python benchmarks/course_autoencoders.py --data-dir DIR --epochs 5       # MNIST-format IDX files in DIR

Every model is the real ``cadl autoencoder`` job (``jobs.autoencoder.run``) on the same data (``--split
official``: the published test images) and seed, in this same run. Data: the MNIST files in ``--data-dir``
(MNIST itself or Fashion-MNIST: same names, same format), or ``--generated N`` synthetic digits written as IDX
files and read back through the same loader. Nothing is downloaded.

Baseline: the training split's mean image as every reconstruction (what an autoencoder that learned nothing
but the mean would give). Printed: one line per model with its test mean squared error per pixel (values in
[0, 1]), its PSNR, the ratio of its error to the baseline's (lower is better) and its training time; denoising
models also give the error of reconstructing masked test images; then a JSON line.
"""
import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from measure import add_digit_options, digits_dir  # noqa: E402  (benchmarks/measure.py)

MODELS = ("fc", "conv", "denoising", "vae", "conv-vae")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_digit_options(p, generated=6000)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=5, help="epochs for every model (default 5, the lesson's)")
    p.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    args = p.parse_args(argv)

    from jobs import autoencoder
    from pipelines import loaders

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        data_dir = digits_dir(args.data_dir, args.generated, out)
        ds = loaders.MNIST(data_dir, split="official")
        test = ds.test.pixels.astype(np.float32) / 255.0
        baseline = float(np.mean(np.square(test - ds.mean_image())))
        results = {"mean-image": {"mse": baseline, "psnr": 10 * np.log10(1 / baseline), "ratio": 1.0}}
        for model in args.models.split(","):
            started = time.time()
            summary = autoencoder.run(["--dataset", "mnist", "--data-dir", data_dir, "--split", "official",
                                       "--model", model, "--epochs", str(args.epochs), "--fresh",
                                       "--out", os.path.join(out, model)])
            mse = summary["test_reconstruction_error"]
            results[model] = {"mse": mse, "psnr": summary["test_psnr"], "ratio": mse / baseline,
                              "denoising_mse": summary.get("test_denoising_error"),
                              "seconds": time.time() - started}
        print(f"\ndata: {args.data_dir or f'{args.generated} generated digits'}; {args.epochs} epochs; "
              f"baseline mean-image")
        for name, r in results.items():
            extra = f"  masked-input mse {r['denoising_mse']:.5f}" if r.get("denoising_mse") else ""
            print(f"{name:10s} test mse {r['mse']:.5f}  PSNR {r['psnr']:.2f} dB  ({r['ratio']:.3f}x mean-image)"
                  f"{'  %.0f s' % r['seconds'] if 'seconds' in r else ''}{extra}")
        print(json.dumps({"data": args.data_dir or f"generated:{args.generated}", "epochs": args.epochs,
                          "results": results}, default=float))
    return results


if __name__ == "__main__":
    main()
