"""The one exception type a user should see as a single line instead of a traceback."""


class CadlError(Exception):
    """A user-facing problem (bad input, unusable output folder, ...).

    The message is one line that names the file and the problem. ``exit_code`` is what the
    command-line front end exits with (2 unless a job documents another, e.g. retrain's lock).
    """

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code
