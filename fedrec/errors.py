"""Exception types with one-line, user-facing messages.

Every error that can be caused by user input (a config key, a dataset file, a client update)
is raised as one of these, with a message that names the offending field or ``file:line`` and
says what was expected. The CLI prints the message on one line without a traceback.
"""

from __future__ import annotations


class FedRecError(Exception):
    """Base class for errors caused by user input."""


class ConfigError(FedRecError, ValueError):
    """A configuration key is unknown, has the wrong type, or is out of range."""


class DataFormatError(FedRecError, ValueError):
    """A dataset file is missing or malformed (the message names file and line)."""


class DatasetNotFoundError(FedRecError, LookupError):
    """An unknown dataset name, or a dataset that is not present locally."""


class ChecksumError(FedRecError):
    """A downloaded or local file does not match its registered checksum."""


class RunFailedError(FedRecError):
    """A run could not produce trustworthy results (the CLI exits with status 1, not 2).

    The message names the step; what was computed before it (metrics log, checkpoint) is kept
    and the run directory is marked failed (``error.txt``).
    """


class NonFiniteError(RunFailedError):
    """The model's parameters or scores became non-finite (NaN or infinite)."""
