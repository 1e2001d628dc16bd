"""The ``cadl`` console script: ``cadl <job> [options]``, one subcommand per module in ``jobs``."""
import contextlib
import importlib
import logging
import os
import re
import signal
import sys
import tempfile

from jobs import EXIT_INTERRUPTED, JOBS, interrupted, main as run_job, sigterm_as_interrupt

USAGE = """usage: cadl <job> [options]

jobs:
  extract      films, CelebA and image folders -> sharded TFRecords (Apache Beam)
  train        train the convolutional VAE on extracted shards
  render       re-render a film through a trained VAE
  retrain      scheduled step: extract what is new, warm-start, evaluate, promote
  explore      a trained VAE's latent space: interpolations, walks, neighbours, attributes, maps
  info         what cadl sees in a film: streams, size and aspect, rotation, fields, rate, frames, audio
  autoencoder  the course's autoencoders on MNIST / CIFAR-10 / CelebA / an image folder
  classifier   the course's linear and convolutional classifiers
  demo         generate two films, extract, train, render: the whole loop in minutes on a CPU

'cadl <job> --help' describes a job's options.
"""


def main(argv=None):
    """``cadl <job> ...``: the job's exit code. Start-up takes seconds (TensorFlow, Beam): Ctrl-C or SIGTERM
    during it is a line and 130 too."""
    previous = sigterm_as_interrupt()
    try:
        return _start(argv)
    except KeyboardInterrupt as e:
        return interrupted(e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _start(argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in JOBS:
        print(f"cadl: unknown job {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    helping = any(a in ("-h", "--help") for a in rest)  # a job's --help is instant: it imports neither
    quiet_imports(tensorflow=name not in ("extract", "info") and not helping,  # extraction never needs TF
                  beam=not helping and (name in ("extract", "retrain", "demo") or
                                        any(a.startswith("--runner") for a in rest)))
    module = importlib.import_module(f"jobs.{name}")
    return run_job(module.run, rest)


def console():
    """The ``cadl`` console script. An interrupted job leaves at once after its line: Beam's and
    TensorFlow's native threads may still run, and C++ teardown of running threads aborts the process
    ("terminate called without an active exception") instead of giving the exit code."""
    code = main()
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


# Start-up lines TensorFlow and Beam print on every run that tell a user nothing: absl INFO lines written
# before logging is set up, the CUDA probe on a machine without a GPU, optional Google Cloud clients.
_CHATTER = re.compile(r"^(I0000 |WARNING: All log messages before absl|E0000 .*cuInit|W0000 .*cuda"
                      r"|.*oneDNN custom operations|.*Could not find cuda drivers)")


@contextlib.contextmanager
def _filtered_stderr():
    """Capture file descriptor 2 (C++ code writes there directly), then replay all but the chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.strip() and not _CHATTER.match(line):
                    print(line, file=sys.stderr)


def quiet_imports(tensorflow=True, beam=True):
    """Import TensorFlow (and look for GPUs) and Beam once, without their start-up chatter.

    Ctrl-C or SIGTERM while they import is held and raised as ``KeyboardInterrupt`` once they are in, so that
    no library's bare ``except:`` around an optional import can swallow it (a guard: no such loss was seen;
    an ignored signal, as in a background job, stays ignored)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # Beam logs optional-dependency warnings on import
    held, previous = [], {}
    with contextlib.suppress(ValueError):  # off the main thread: nothing to hold
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        with _filtered_stderr():
            if tensorflow:
                tf = _import_tensorflow()
                tf.config.list_physical_devices("GPU")
            if beam:
                import apache_beam  # noqa: F401
    finally:
        root.setLevel(level)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt("SIGTERM" if held[0] == signal.SIGTERM else "")


def _import_tensorflow():
    """``import tensorflow``, without the matplotlib.pyplot that Keras imports on the way for a plotting
    helper cadl never calls (a third of a second of every start; ``pipelines.report`` draws with
    matplotlib's Agg canvas and imports it itself, when it draws)."""
    blocked = "matplotlib.pyplot" not in sys.modules
    if blocked:
        sys.modules["matplotlib.pyplot"] = None  # Keras' `import matplotlib.pyplot` raises ImportError
    try:
        import tensorflow as tf
    finally:
        if blocked and sys.modules.get("matplotlib.pyplot", 0) is None:
            del sys.modules["matplotlib.pyplot"]
    return tf


if __name__ == "__main__":
    sys.exit(console())
