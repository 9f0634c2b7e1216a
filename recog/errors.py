"""Errors that reach the user as a one-paragraph message, not a traceback."""


class RecogError(Exception):
    """A problem the user can fix (bad config, bad data); shown without a traceback."""


class ConfigError(RecogError):
    """An invalid configuration value."""


class DataError(RecogError):
    """Unreadable or malformed input data."""


class BadImageError(DataError):
    """One image file that cannot be used: ``path`` and a short ``reason`` (missing, empty, truncated, ...)."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)  # args = (path, reason): survives pickling between processes
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"bad image {self.path}: {self.reason}"


class NonFiniteError(RecogError):
    """A training step produced a NaN or Inf loss or gradient; ``step`` is the global step (from 1),
    ``terms`` the loss terms' values (NaN / Inf included) on this rank, averaged over the ranks."""

    def __init__(self, message: str, step: int, terms: dict[str, float]):
        super().__init__(message)
        self.step = step
        self.terms = terms


class TrainingInterrupted(RecogError):
    """Training stopped on SIGTERM / SIGINT after saving a checkpoint to resume from.

    ``run.py`` exits with ``exit_code`` (128 + the signal number: 143 for SIGTERM, 130 for SIGINT).
    ``complete``: the signal came after the run's work was done (its MLflow run is FINISHED, not KILLED).
    """

    def __init__(self, message: str, signum: int, complete: bool = False):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.complete = complete
