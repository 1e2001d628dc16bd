"""Does the tf.data input hold training back?

    python benchmarks/input_bench.py [--seconds 20] [--size 64x64] [--batch-size 32] [--steps 60]

Data: a generated film (ffmpeg's testsrc2) extracted with the real ``cadl extract`` (PNG records).

1. Input alone: images/s of ``pipelines.tfdata.make_dataset`` (training mode: shuffle, repeat, parallel PNG
   decode), without and with the decoded cache, against the limit: a plain in-memory loop that gathers random
   batches of the same decoded images from a numpy array and hands them to TensorFlow.
2. Training: steps/s of the default VAE's compiled training step fed by the real pipeline (as ``cadl train``
   builds it, then also with ``--cache no``) against the same step fed one constant in-memory batch.
   Goal: the pipeline-fed rate is at least 95% of the constant-batch rate.

Measurements alternate (A B A B ...) so a shared machine's load hits both sides alike; medians are printed.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rate(fn, count):
    """Items per second of one call of fn(), which handles ``count`` items."""
    t = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of the generated film")
    p.add_argument("--size", default="64x64", help="frame size HxW")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="training steps per timing block")
    p.add_argument("--repeats", type=int, default=5, help="timing blocks per side")
    p.add_argument("--work", help="working folder (default: a temporary one)")
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from jobs import extract
    from models import vae
    from pipelines import tfdata
    from pipelines.synthetic import make_film

    work = args.work or tempfile.mkdtemp(prefix="cadl-input-")
    film, data = os.path.join(work, "film.mp4"), os.path.join(work, "data")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        make_film(film, "testsrc2", seconds=args.seconds, size=(320, 180), rate="25", audio=False)
        extract.run(["--input", film, "--output", data, "--size", args.size, "--num-shards", "4"])
    manifest = tfdata.load_manifest(data)
    images = tfdata.load_images(data, "train", manifest=manifest)
    n, bs = len(images), args.batch_size
    print(f"data: {n} training frames of {args.size}, batch {bs}, {os.cpu_count()} CPUs")

    # 1. the input pipeline alone
    batches = max(4, n // bs)

    def consume(it):
        return lambda: [next(it) for _ in range(batches)]

    rng = np.random.default_rng(0)

    def memory_loop():
        for _ in range(batches):
            tf.constant(images[rng.integers(0, n, bs)])

    def pipeline(cache):
        def make():
            it = iter(tfdata.make_dataset(data, "train", bs, manifest=manifest, cache=cache))
            for _ in range(batches + 2):  # warm up: fill the cache, start the threads
                next(it)
            return consume(it)
        return make

    # One live iterator at a time: an idle pipeline's prefetch threads would steal CPU from the other side.
    sides = {"pipeline, decode every time": pipeline(False), "pipeline, cached": pipeline(True),
             "in-memory loop": lambda: memory_loop}
    figures = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, make in sides.items():
            fn = make()
            figures[name].append(rate(fn, batches * bs))
            del fn
    limit = statistics.median(figures["in-memory loop"])
    print("\ninput alone (images/s, median):")
    for name, values in figures.items():
        print(f"  {name:>28}: {statistics.median(values):9.0f}  ({statistics.median(values) / limit:5.2f}x the "
              f"in-memory loop)")

    # 2. the training step: real pipeline vs a constant batch
    h, w = manifest["image"]["height"], manifest["image"]["width"]
    model = vae.VAE(vae.make_config(image_size=[h, w], channels=3)).build_all()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.make_train_function()
    feeds = {"constant in-memory batch": lambda: tf.data.Dataset.from_tensors(tf.constant(images[:bs])).repeat(),
             "pipeline (cadl train default)": lambda: tfdata.make_dataset(data, "train", bs, manifest=manifest),
             "pipeline, --cache no": lambda: tfdata.make_dataset(data, "train", bs, manifest=manifest,
                                                                 cache=False)}

    def steps(it, count):
        def go():
            for _ in range(count):
                logs = model.train_function(it)
            float(logs["loss"])  # wait for the last step
        return go

    train_figures = {k: [] for k in feeds}
    for _ in range(args.repeats):
        for name, make in feeds.items():  # one live iterator at a time, warmed (trace, cache, threads) first
            it = iter(make())
            steps(it, n // bs + 2)()
            train_figures[name].append(rate(steps(it, args.steps), args.steps))
            del it
    base = statistics.median(train_figures["constant in-memory batch"])
    print("\ntraining step (steps/s, median):")
    for name, values in train_figures.items():
        value = statistics.median(values)
        print(f"  {name:>30}: {value:7.2f}  ({value / base:6.1%} of the constant batch; goal >= 95%)")
    return {"input": {k: statistics.median(v) for k, v in figures.items()},
            "train": {k: statistics.median(v) for k, v in train_figures.items()}}


if __name__ == "__main__":
    main()
