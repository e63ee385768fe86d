"""The one exception type users see: a one-line message and an exit status."""


class GenbenchError(Exception):
    """A user-facing failure. The CLI prints ``str(error)`` on one line and exits with ``exit_code``.

    Exit status 2 is for usage errors (a wrong option or value), 1 for failures (missing data,
    a diverged run). Anything that is not a ``GenbenchError`` is a bug and shows a traceback.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(GenbenchError):
    """A wrong option, name or value given by the user (exit status 2)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)
