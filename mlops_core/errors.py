"""Exceptions of the loop; each subclasses the built-in it resembles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MlopsError", "DataValidationError", "RegistryError", "TrainingError", "BusyError", "SettingsError",
           "shorten", "first_line", "MAX_PROBLEM_CHARS", "MAX_PROBLEMS",
           "FeedbackError", "UnknownRequestError", "DuplicateFeedbackError", "InvalidLabelError"]

#: the longest one problem may be: problems quote cell values, and a cell can hold megabytes
MAX_PROBLEM_CHARS = 300
#: the most problems one error lists; the rest are counted
MAX_PROBLEMS = 50


def shorten(text: object, limit: int) -> str:
    """``text`` as it is when at most ``limit`` characters, else its head, ``…`` and its original length.

    The result is never longer than ``limit``: ``shorten("x" * 70000, 30)`` is ``"xxxxxxxxxxxxxx… [70,000 chars]"``.
    """
    text = str(text)
    if len(text) <= limit:
        return text
    note = f"… [{len(text):,} chars]"
    if len(note) >= limit:
        return text[:limit]
    return text[:limit - len(note)] + note


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type's name when it has none), at most ``limit`` characters:
    what a log line, a metric label or an HTTP answer may quote of an exception from a library."""
    text = str(err).strip()
    return shorten(text.splitlines()[0] if text else type(err).__name__, limit)


class MlopsError(Exception):
    """Base class: a failure the loop reports with a reason, never a crash."""


class DataValidationError(MlopsError, ValueError):
    """A CSV that cannot enter the chain; ``problems`` lists every reason.

    Each problem is shortened to :data:`MAX_PROBLEM_CHARS` (a quoted cell value can be any size) and at most
    :data:`MAX_PROBLEMS` are kept, so the message stays small enough for a log line, a pipe and a state file.
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        problems = [shorten(p, MAX_PROBLEM_CHARS) for p in problems]
        if len(problems) > MAX_PROBLEMS:
            problems[MAX_PROBLEMS - 1:] = [f"… and {len(problems) - MAX_PROBLEMS + 1} more problem(s)"]
        self.problems = problems
        super().__init__(f"{shorten(source, 1000)}: " + "; ".join(self.problems))


class RegistryError(MlopsError, RuntimeError):
    """The model registry is unreachable or does not hold what was asked."""


class TrainingError(MlopsError, RuntimeError):
    """AutoML produced no usable model."""


class BusyError(MlopsError, RuntimeError):
    """Another pipeline run holds the lock."""


class SettingsError(MlopsError, ValueError):
    """The settings do not fit the data (a feature named that no file has): bad usage, exit 2."""


class FeedbackError(MlopsError, ValueError):
    """Feedback that cannot be joined; ``ids`` names the request ids at fault."""

    def __init__(self, message: str, ids: Sequence[str]):
        self.ids = list(ids)
        super().__init__(message)


class UnknownRequestError(FeedbackError, LookupError):
    """Feedback for a request id that no logged prediction carries."""


class DuplicateFeedbackError(FeedbackError):
    """Feedback for a request id that already has a label."""


class InvalidLabelError(FeedbackError):
    """A label that is none of the classes of the version that answered the request, or, for a regression, no
    finite number.

    ``index`` is its place in the labels given, ``label`` the value and ``classes`` the classes it was checked
    against (None for a regression's true value)."""

    def __init__(self, message: str, ids: Sequence[str], *, index: int, label: Any,
                 classes: Sequence[Any] | None):
        self.index, self.label = index, label
        self.classes = list(classes) if classes is not None else None
        super().__init__(message, ids)
