"""What a user runs. Each job module has ``run(argv=None)`` (returns the summary dict it also writes to
``summary.json``) and a ``__main__`` that only calls ``main(run)``."""
import logging
import sys

JOBS = ("extract", "train", "render", "retrain", "autoencoder", "classifier", "demo")


def main(run, argv=None):
    """Run a job the way the command line does: user errors become one line and an exit code."""
    from pipelines.errors import CadlError, no_space

    # Our own progress at INFO; other libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    for package in ("cadl", "jobs", "pipelines", "models"):
        logging.getLogger(package).setLevel(logging.INFO)
    try:
        run(argv)
    except CadlError as e:
        print(f"cadl: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        if not no_space(e):
            raise
        where = getattr(e, "filename", None)
        print(f"cadl: error: {where + ': ' if where else ''}no space left on device (free some space and run "
              "again; an interrupted run resumes)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cadl: interrupted", file=sys.stderr)
        return 130
    return 0
