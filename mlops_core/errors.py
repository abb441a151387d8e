"""Exceptions of the loop; each subclasses the built-in it resembles."""

from __future__ import annotations

__all__ = ["MlopsError", "DataValidationError", "RegistryError", "TrainingError", "BusyError"]


class MlopsError(Exception):
    """Base class: a failure the loop reports with a reason, never a crash."""


class DataValidationError(MlopsError, ValueError):
    """A CSV that cannot enter the chain; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


class RegistryError(MlopsError, RuntimeError):
    """The model registry is unreachable or does not hold what was asked."""


class TrainingError(MlopsError, RuntimeError):
    """AutoML produced no usable model."""


class BusyError(MlopsError, RuntimeError):
    """Another pipeline run holds the lock."""
