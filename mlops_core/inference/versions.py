"""The library versions whose private API the compiled path reads (:mod:`.libraries`, :mod:`.tree_engine`,
:mod:`.regression_kernels`): with any other version installed, :func:`untested` names it and the callers fall
back cleanly."""

from __future__ import annotations

from functools import cache
from importlib import metadata

__all__ = ["TESTED", "untested"]

#: distribution -> the version prefix whose private API this module was written and verified against
TESTED = {"pycaret": "3.3.", "scikit-learn": "1.4.", "lightgbm": "4."}

@cache
def untested(distribution: str) -> str | None:
    """None when the installed ``distribution`` is a version :data:`TESTED` names; else why not."""
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return f"{distribution} is not installed"
    if not version.startswith(TESTED[distribution]):
        return f"{distribution} {version} is not the tested {TESTED[distribution]}x"
    return None
