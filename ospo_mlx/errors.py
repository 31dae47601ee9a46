"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations


class OspoError(Exception):
    """A problem the user can fix (bad config, missing file, malformed data).

    The message must say what is wrong and how to fix it, in one line.
    """


class ConfigError(OspoError):
    """An invalid configuration key or value."""


class DataError(OspoError):
    """A malformed or missing data file, row or column."""
