"""The errors a user can fix: a bad setting, a bad file, a missing file or package.

``atrous`` on the command line prints these as one line and exits 2; any other exception is a bug in atrous
and keeps its traceback. Each one is also the built-in type that code written before it caught
(``ValueError``, ``FileNotFoundError``, ``ImportError``).
"""

from __future__ import annotations


class AtrousError(Exception):
    """Base of every error caused by the user's input rather than by atrous."""


class ConfigError(AtrousError, ValueError):
    """An unknown key, a value of the wrong type or out of range, or an invalid combination of settings."""


class DataError(AtrousError, ValueError):
    """A file of a dataset that cannot be used: unreadable, truncated, wrong size, bad label values."""


class WeightsError(AtrousError, ValueError):
    """A weights file or state dict that cannot be read or does not fit the model."""


class MissingFileError(AtrousError, FileNotFoundError):
    """A file or folder the user named (or a layout expects) does not exist."""


class MissingDependencyError(AtrousError, ImportError):
    """An optional package is not installed; the message gives the install command."""
