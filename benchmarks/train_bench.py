"""Is ``cadl train``'s own loop as fast as Keras' ``model.fit``, and what does an hour of CPU buy?

    /work/venv/bin/python benchmarks/train_bench.py                  # 300 steps each
    /work/venv/bin/python benchmarks/train_bench.py --steps 100 --quick

A generated film (testsrc2, 40 s) is extracted at 64x64 and at 72x128. Then, one after the other on this
machine, each in its own process:
  cadl train        the command (``--max-steps N``), images/s over steps 11..N from its log windows (time
                    inside the training steps: data, forward, backward, update; validation, checkpoints and
                    montages excluded; the whole command's wall time is printed beside it)
  model.fit         the baseline a user would write instead: the same network (``models.vae.VAE`` built from
                    the cadl run's config.json), the same optimizer, batch and tf.data pipeline
                    (``tfdata.make_dataset``), ``model.fit(ds, steps_per_epoch=N)``; images/s over the same
                    steps 11..N, timed by a callback (the first ten, with tracing and the shuffle buffer's
                    filling, left out on both sides)
for the default network at 64x64 (with and without ``--jit``) and 72x128, and the course's network at
64x64 (``--preset course``). The last line is cadl / model.fit for the default network at 64x64 (goal >= 1.0).
The machine may be shared: figures from one run only, and the load average is printed.

Last run (``--steps 150``, 2 cores shared with other work, load average 2.5 at the start and 3.6-6.8 during):
  default 64x64          cadl train 262.9 images/s; model.fit 247.9 images/s: 1.06x
  default 64x64 --jit    cadl train  88.5 images/s; model.fit  78.9 images/s: 1.12x   (XLA on a CPU: a third)
  default 72x128         cadl train  55.2 images/s   (under the heaviest load of the run; alone, 150 steps each
                         right after one another: 96.0 images/s at 72x128 against 179.0 at 64x64, 1.9x)
  course 64x64           cadl train 188.4 images/s; model.fit 179.4 images/s: 1.05x
  default / course network at 64x64 = 1.40; an hour of CPU here: 0.95 M images at 64x64
Both sides run the same Keras train function (``cadl train`` calls ``model.make_train_function()``); the
difference is what runs between steps: Keras' callbacks and logs on one side, the clock and the NaN guard
(a float of the loss each step) on the other.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

FIT = r"""
import json, sys, time
import keras
from models import vae
from pipelines import tfdata
data, run, steps, batch, jit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
stored = json.load(open(run + "/config.json"))
training = stored["training"]
keras.utils.set_random_seed(training["seed"])
model = vae.VAE(stored["model"], name="vae").build_all()
model.compile(optimizer=keras.optimizers.Adam(training["lr"]), jit_compile=jit,
              steps_per_execution=training["steps_per_execution"])
ds = tfdata.make_dataset(data, "train", batch, training=True, seed=training["seed"])

class Clock(keras.callbacks.Callback):
    def on_train_batch_end(self, b, logs=None):
        if b + 1 == WARM:
            self.start = time.perf_counter()
        self.end = time.perf_counter()

WARM = 10
clock = Clock()
model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[clock])
print(json.dumps({"images_per_s": (steps - WARM) * batch / (clock.end - clock.start)}))
"""


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="training steps per measurement (default: 300)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="only the default network at 64x64, cadl and fit")
    p.add_argument("--workdir", default=None)
    return p


def _steady_rate(run, batch):
    """images/s over the log windows after step 10 (RUN/report/history.jsonl: one line per 10 steps)."""
    images = seconds = 0.0
    with open(os.path.join(run, "report", "history.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    previous = None
    for row in rows:
        if row.get("kind") != "train":
            continue
        if previous is not None and previous >= 10 and row.get("images_per_s"):
            n = (row["step"] - previous) * batch
            images, seconds = images + n, seconds + n / row["images_per_s"]
        previous = row["step"]
    return images / seconds


def main(argv=None):
    from pipelines.extract import ExtractConfig, extract
    from pipelines.synthetic import make_film

    args = build_parser().parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="train-bench-")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    film = os.path.join(work, "film.mp4")
    if not os.path.exists(film):
        make_film(film, "testsrc2", seconds=40, size=(320, 180), audio=False)
    data = {}
    for size in ((64, 64), (72, 128)):
        data[size] = os.path.join(work, f"data-{size[0]}x{size[1]}")
        if not os.path.exists(os.path.join(data[size], "manifest.json")):
            extract(ExtractConfig(inputs=(film,), output=data[size], size=size))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.steps} steps of "
          f"{args.batch_size} images each", flush=True)

    cases = [("default 64x64", (64, 64), []), ("default 64x64 --jit", (64, 64), ["--jit"]),
             ("default 72x128", (72, 128), []), ("course 64x64", (64, 64), ["--preset", "course"])]
    if args.quick:
        cases = cases[:1]
    results = {}
    for name, size, extra in cases:
        run = os.path.join(work, "run-" + name.replace(" ", "_").replace("-", ""))
        subprocess.run(["rm", "-rf", run], check=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.cli", "train", "--data", data[size], "--out", run,
                        "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--no-progress"] + extra,
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        ours = _steady_rate(run, args.batch_size)
        line = f"  {name:22s} cadl train {ours:7.1f} images/s (whole command {wall:5.1f} s)"
        if name != "default 72x128":
            out = subprocess.run([sys.executable, "-c", FIT, data[size], run, str(args.steps),
                                  str(args.batch_size), "1" if "--jit" in extra else "0"],
                                 env=env, check=True, capture_output=True, text=True, cwd=REPO).stdout
            fit = json.loads(out.strip().splitlines()[-1])["images_per_s"]
            line += f"; model.fit {fit:7.1f} images/s: {ours / fit:.2f}x"
            results[name] = (ours, fit)
        else:
            results[name] = (ours, None)
        print(line, flush=True)
    ours, fit = results["default 64x64"]
    if "course 64x64" in results:
        print(f"default / course network at 64x64 (cadl train) = {ours / results['course 64x64'][0]:.2f}")
        print(f"an hour of CPU here: {ours * 3600 / 1e6:.2f} M images at 64x64, "
              f"{results['default 72x128'][0] * 3600 / 1e6:.2f} M at 72x128")
    print(f"cadl train / model.fit (default network, 64x64) = {ours / fit:.2f}")


if __name__ == "__main__":
    sys.exit(main())
