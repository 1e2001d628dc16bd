"""The one exception type a user should see as a single line instead of a traceback."""
import errno


class CadlError(Exception):
    """A user-facing problem (bad input, unusable output folder, ...).

    The message is one line that names the file and the problem. ``exit_code`` is what the
    command-line front end exits with (2 unless a job documents another, e.g. retrain's lock).
    """

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


def no_space(error):
    """True when ``error`` (or what it wraps: Beam and TensorFlow re-raise workers' errors as their own)
    is a full disk or quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
