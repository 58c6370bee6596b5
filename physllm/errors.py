"""One exception type for everything a user can get wrong.

The CLI turns a :class:`PhysllmError` into one line on stderr and exit status
``exit_code`` (2 for bad input), never a traceback. Library callers can catch
it like any other exception.
"""

from __future__ import annotations


class PhysllmError(Exception):
    """Bad input or an unusable file: the message is shown to the user as is."""

    exit_code = 2


class TrainingDivergedError(PhysllmError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1
