"""The one exception type the CLI turns into a single-line message (no traceback)."""


class TinltError(Exception):
    """A user-facing error: bad input, bad config, missing file.

    The message must stand alone on one line and name the file, line or key at fault.
    """


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving a resumable checkpoint."""

    def __init__(self, signum: int, path) -> None:
        super().__init__(f"stopped by signal {signum}; resumable checkpoint: {path}")
        self.signum = signum
        self.path = path
