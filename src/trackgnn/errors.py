"""User-facing errors: one line that names the file (or key) and the problem."""

from __future__ import annotations


class TrackGNNError(Exception):
    """An error caused by the user's input, config or environment.

    The CLI prints ``str(error)`` on one line and exits non-zero, without a traceback
    unless ``--debug`` is given.
    """


class PathError(TrackGNNError):
    """An error about one file: the message is ``<path>: <problem>``."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputError(PathError):
    """A bad input file: missing, truncated, wrong columns, dtypes or values."""


class OutputError(PathError):
    """An output path that cannot be written (its parent is a file, no permission, ...)."""


class ConfigError(TrackGNNError):
    """A config that fails validation; the message names the key."""


class CheckpointError(TrackGNNError):
    """A corrupted, truncated or mismatched model checkpoint."""
