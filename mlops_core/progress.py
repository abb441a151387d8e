"""How far a run is: a bar on a terminal, a log line for a long step, or nothing.

The chain calls three methods of one :class:`Progress` object (``ctx.progress``): :meth:`~Progress.step` when a
step starts, :meth:`~Progress.plan` when a step knows how much work it holds (training: models x folds, then
the final fit), :meth:`~Progress.advance` as that work is done. :class:`Silent` does nothing (``--json``, not a
terminal, the library); :class:`Bar` draws a tqdm bar on stderr (``mlops run`` on a terminal); :class:`LogLines`
logs one line every ``every`` seconds while a step runs longer than that (the watcher's run process).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["Progress", "Silent", "Bar", "LogLines"]


class Progress:
    """The interface; every method does nothing."""

    def step(self, name: str) -> None:
        """A step of the chain starts (validate, drift, train, score, register...)."""

    def plan(self, units: int, what: str) -> None:
        """The current step holds ``units`` of work (e.g. ``models x folds + 1``)."""

    def advance(self, units: int = 1, note: str = "") -> None:
        """``units`` of the current step's work are done; ``note`` says what comes next."""

    def close(self) -> None:
        """The run is over."""


Silent = Progress


class Bar(Progress):
    """One tqdm bar per step on ``file`` (stderr): steps without a plan show their name and elapsed time."""

    def __init__(self, file: Any = None):
        import sys

        self._file = file or sys.stderr
        self._bar = None

    def _new(self, total: int | None, desc: str):
        from tqdm import tqdm

        self._close_bar()
        self._bar = tqdm(total=total, desc=desc, file=self._file, leave=True, dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"
                         "{postfix}" if total else "{desc} [{elapsed}]")

    def step(self, name: str) -> None:
        self._new(None, name)

    def plan(self, units: int, what: str) -> None:
        desc = self._bar.desc if self._bar is not None else "step"
        self._new(units, f"{desc} ({what})")

    def advance(self, units: int = 1, note: str = "") -> None:
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(units)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()


class LogLines(Progress):
    """A log line every ``every`` seconds while one step runs longer: which step, for how long, how far."""

    def __init__(self, log: logging.Logger, every: float = 10.0):
        self._log, self._every = log, every
        self._lock = threading.Lock()
        self._name, self._started, self._done, self._total, self._note = "", 0.0, 0, 0, ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, name: str) -> None:
        with self._lock:
            self._name, self._started, self._done, self._total, self._note = name, time.monotonic(), 0, 0, ""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="progress", daemon=True)
            self._thread.start()

    def plan(self, units: int, what: str) -> None:
        with self._lock:
            self._done, self._total, self._note = 0, units, what

    def advance(self, units: int = 1, note: str = "") -> None:
        with self._lock:
            self._done += units
            self._note = note or self._note

    def line(self) -> str | None:
        """The progress line now, or ``None`` while the step is younger than ``every`` seconds."""
        with self._lock:
            took = time.monotonic() - self._started
            if not self._name or took < self._every:
                return None
            share = f" {self._done}/{self._total}" if self._total else ""
            return f"progress step={self._name} seconds={took:.0f}{share}" + (f" ({self._note})" if self._note
                                                                               else "")

    def _watch(self) -> None:
        while not self._stop.wait(self._every):
            text = self.line()
            if text:
                self._log.info("%s", text)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._name = ""
