"""State that must not cross a fork: a value built on first use in each process."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess"]

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``build()``'s value, built on first use in each process.

    A copy inherited through ``fork()`` (a gunicorn worker forked from a ``--preload`` master) is never
    used: its threads, sockets and locks belong to the parent. The child builds its own on first use.
    """

    def __init__(self, build: Callable[[], T]):
        self._build = build
        self._lock = threading.Lock()
        self._value: T | None = None
        self._pid: int | None = None

    def get(self) -> T:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._value, self._pid = self._build(), os.getpid()
        return self._value  # type: ignore[return-value]

    def here(self) -> T | None:
        """The value when this process built it, else None (nothing is built)."""
        return self._value if self._pid == os.getpid() else None

    def clear(self) -> None:
        """Forget the value (the next ``get`` builds another)."""
        with self._lock:
            self._value, self._pid = None, None
