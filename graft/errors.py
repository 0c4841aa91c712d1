"""The exception hierarchy of graft, drawn once.

    GraftError                  anything graft raises on purpose; CLI exit code 1
    ├── SurgeryError            an edit that cannot be done on this graph (e.g. a multi-tensor point)
    ├── WriteError              a file that could not be written (disk full, ...); also an OSError
    └── InputError              bad input from the user; CLI exit code 2
        ├── BusyError           a run directory another graft process is using
        ├── ModelLoadError      a model file or name that will not load
        ├── LayerNotFoundError  a layer name that is not in the model (carries close matches)
        ├── InvalidCutError     a cut at a point that is not a valid cut point (names the nearest ones)
        ├── DatasetError        a data set folder that cannot be used
        ├── RulesError          a rules file with an error (message starts with `FILE:LINE:`)
        └── PlanError           a plan file with an error (message starts with `FILE:LINE:`)

Messages are one readable sentence or two: what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class GraftError(Exception):
    """Base class of every error graft raises on purpose."""

    exit_code = 1


class SurgeryError(GraftError):
    """An edit that is well-formed but cannot be done on this graph."""


class WriteError(GraftError, OSError):
    """A file that could not be written: the disk is full, a quota is reached, the folder is read-only.

    Also an `OSError`, so code that caught the operating system's error still catches it.

    Attributes:
        path: the file that was being written.
        no_space: whether the cause is a full disk or quota (ENOSPC, EDQUOT).
    """

    def __init__(self, message: str, path: str = "", no_space: bool = False):
        super().__init__(message)
        self.path = path
        self.no_space = no_space

    def __str__(self) -> str:  # OSError would otherwise format errno and filename
        return str(self.args[0])


class InputError(GraftError):
    """Bad input from the user: a path, a name, a file's content."""

    exit_code = 2


class ModelLoadError(InputError):
    """A model file or `keras.applications` name that cannot be loaded."""


class LayerNotFoundError(InputError, KeyError):
    """A layer name that is not in the model.

    Attributes:
        name: the name asked for.
        suggestions: the closest existing names, best first.
    """

    def __init__(self, message: str, name: str = "", suggestions: list[str] | None = None):
        super().__init__(message)
        self.name = name
        self.suggestions = list(suggestions or [])

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class InvalidCutError(InputError):
    """A cut requested at a tensor that is not a valid cut point.

    Attributes:
        before: the nearest valid cut point before the request (or None).
        after: the nearest valid cut point after the request (or None).
    """

    def __init__(self, message: str, before: str | None = None, after: str | None = None):
        super().__init__(message)
        self.before = before
        self.after = after


class BusyError(InputError):
    """A run directory that another graft process holds (its lock file is locked)."""


class DatasetError(InputError):
    """A data set folder that cannot be used as it is."""


class RulesError(InputError):
    """A rules file with an error; the message starts with `FILE:LINE:`."""


class PlanError(InputError):
    """A plan file with an error; the message starts with `FILE:LINE:`."""
