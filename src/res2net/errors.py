"""Exceptions with messages meant for users; the CLI prints them without a traceback."""


class Res2NetError(Exception):
    """Base class of the package's user-facing errors."""


class CheckpointError(Res2NetError):
    """A checkpoint that cannot be used: missing, truncated, wrong keys or shapes, hash mismatch."""


class DataError(Res2NetError):
    """A data set that is missing or malformed (names the file or folder)."""


class ConfigError(Res2NetError, ValueError):
    """A bad configuration key or value (names the key and what is allowed)."""
