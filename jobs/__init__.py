"""What a user runs. Each job module has ``run(argv=None)`` (returns the summary dict it also writes to
``summary.json``) and a ``__main__`` that only calls ``main(run)``.

Exit codes, every job: 0 done · 2 an error, in one line naming the file and the problem · 75 another run
holds the lock of the folder this one writes (nothing touched) · 130 interrupted by SIGINT (Ctrl-C) or
SIGTERM, start-up included (a line says so; locks are released, work folders removed or kept to resume).
"""
import logging
import signal
import sys

JOBS = ("extract", "train", "render", "retrain", "info", "explore", "autoencoder", "classifier", "demo")


def main(run, argv=None):
    """Run a job the way the command line does: user errors become one line and an exit code."""
    from pipelines.errors import CadlError, no_space

    # Our own progress at INFO; other libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    for package in ("cadl", "jobs", "pipelines", "models"):
        logging.getLogger(package).setLevel(logging.INFO)
    previous = sigterm_as_interrupt()
    try:
        run(argv)
    except CadlError as e:
        print(f"cadl: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return interrupted(e)
    except Exception as e:
        if not no_space(e):
            raise
        where = getattr(e, "filename", None)
        print(f"cadl: error: {where + ': ' if where else ''}no space left on device (free some space and run "
              "again; an interrupted run resumes)", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


EXIT_INTERRUPTED = 130  # SIGINT or SIGTERM, start-up included


def interrupted(error):
    """Say that the job was interrupted (and by what), and give its exit code."""
    print(f"cadl: interrupted{f' by {error}' if str(error) else ''}", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def sigterm_as_interrupt():
    """systemd, Airflow and ``kill`` stop a job with SIGTERM: unwind like Ctrl-C, so locks are released and
    work folders cleaned up or kept for resuming. Returns the previous handler (None off the main thread)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        return None
