"""One error type for bad input: the CLI prints it as one line and exits 2."""

from __future__ import annotations


class LoraKitError(Exception):
    """A problem with the user's input, naming the file (if any) and what is wrong."""

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class Interrupted(BaseException):
    """A run stopped by a signal (Ctrl-C, SIGTERM): the CLI prints the message and exits with `exit_code`.

    A BaseException, as KeyboardInterrupt is, so that no `except Exception` on the way (a library
    wrapping load errors, click turning KeyboardInterrupt into Abort) swallows or rewords it.
    """

    def __init__(self, message: str, exit_code: int, *, run_dir: object | None = None, state: object | None = None):
        self.exit_code = exit_code
        self.run_dir = run_dir
        self.state = state
        super().__init__(message)
