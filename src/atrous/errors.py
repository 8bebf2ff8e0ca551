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


class TrainingError(AtrousError, RuntimeError):
    """Training cannot go on as configured (the loss or the weights stopped being finite numbers)."""


class StorageError(AtrousError, OSError):
    """A file could not be written for want of space: the message says how much was needed, how much is free, where."""


class OutOfMemoryError(AtrousError, MemoryError):
    """The work asked for more memory than the device has: the message says what failed, how much was asked, and
    the settings that need less."""


class DistributedTimeoutError(AtrousError, TimeoutError):
    """The other processes of a distributed run did not answer within the collective timeout (one stalled or died)."""


def user_message(error: BaseException) -> str:
    """What to print for ``error``: its message, unwrapped when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process as the same type whose message is the whole worker
    traceback ("Caught DataError in DataLoader worker process 0. Original Traceback ... atrous.errors.DataError:
    x.png: ..."); the user's message is what follows the last "<module>.<Type>: " of that traceback.
    """
    text = str(error)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    kind = type(error)
    _, found, message = text.rpartition(f"\n{kind.__module__}.{kind.__qualname__}: ")
    return message.strip() if found else text.strip().rsplit("\n", 1)[-1]
