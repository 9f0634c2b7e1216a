"""Errors that reach the user as a one-paragraph message, not a traceback."""


class RecogError(Exception):
    """A problem the user can fix (bad config, bad data); shown without a traceback."""


class ConfigError(RecogError):
    """An invalid configuration value."""


class DataError(RecogError):
    """Unreadable or malformed input data."""
