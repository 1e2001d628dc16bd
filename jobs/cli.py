"""The ``cadl`` console script: ``cadl <job> [options]``, one subcommand per module in ``jobs``."""
import importlib
import os
import sys

from jobs import JOBS, main as run_job

USAGE = """usage: cadl <job> [options]

jobs:
  extract      films, CelebA and image folders -> sharded TFRecords (Apache Beam)
  train        train the convolutional VAE on extracted shards
  render       re-render a film through a trained VAE
  retrain      scheduled step: extract what is new, warm-start, evaluate, promote
  autoencoder  the course's autoencoders on MNIST / CIFAR-10 / CelebA / an image folder
  classifier   the course's linear and convolutional classifiers
  demo         generate two films, extract, train, render: the whole loop in minutes on a CPU

'cadl <job> --help' describes a job's options.
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in JOBS:
        print(f"cadl: unknown job {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    # TensorFlow's C++ start-up chatter is noise for a command-line user; keep warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(f"jobs.{name}")
    return run_job(module.run, rest)


if __name__ == "__main__":
    sys.exit(main())
