"""The model store: Production and Staging in memory, refreshed from the registry when told of an alias move
(a notice file, a webhook) and on a tick that reconciles whatever was missed."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mlops_core.config import Settings, redact
from mlops_core.errors import first_line
from mlops_core.notices import NoticeWatcher, notice_path
from mlops_core.registry import PRODUCTION, STAGING, LoadedModel

__all__ = ["ModelStore", "Snapshot", "ARMS", "CAUSES"]

log = logging.getLogger(__name__)

ARMS = {PRODUCTION: "Production", STAGING: "Staging"}
REFREEZE_SECONDS = 60.0  # the shortest time between two re-freezes of the heap after model changes
#: what starts a refresh: the first load, the periodic tick, an alias-move notice file, an MLflow webhook
CAUSES = ("start", "poll", "notice", "webhook")


@dataclass(frozen=True)
class Snapshot:
    """What the store serves at one moment; replaced as a whole, never changed in place."""

    production: LoadedModel | None = None
    staging: LoadedModel | None = None
    attempted_at: float | None = None  # last refresh, successful or not
    refreshed_at: float | None = None  # last refresh that reached the registry and loaded what it named
    error: str | None = None  # the last refresh's error; None when it succeeded
    error_at: float | None = None  # time of the most recent failure (kept after recovery)
    last_error: str | None = None  # the most recent failure's message (kept after recovery)
    failures: int = 0  # failed refreshes since start
    cause: str | None = None  # what started the last refresh (one of CAUSES)

    def arm(self, alias: str) -> LoadedModel | None:
        return self.production if alias == PRODUCTION else self.staging


def _clean(err: BaseException) -> str:
    """One line describing ``err``, with any credentials in URIs hidden."""
    return redact(first_line(err, 500))


def _versions(snapshot: Snapshot) -> tuple:
    return tuple(m.version if m is not None else None for m in (snapshot.production, snapshot.staging))


class ModelStore:
    """Holds the loaded Production and Staging models and keeps them in step with the registry.

    ``snapshot`` is one immutable object; a refresh builds a new one and swaps it in
    by a single assignment, so a request that read it keeps a consistent pair.
    """

    def __init__(self, settings: Settings, *, registry: Any = None, clock: Callable[[], float] = time.time,
                 on_refresh: Callable[[Snapshot, bool, str], None] | None = None,
                 load: Callable[[Any, str], LoadedModel] | None = None):
        self.settings = settings
        self._registry = registry
        self._clock = clock
        self._on_refresh = on_refresh
        self._load = load or (lambda registry, version: registry.load_model(version))  # (registry, version)
        self._refresh_lock = threading.Lock()
        self._scheduler = None
        self._watcher: NoticeWatcher | None = None
        self._scheduler_pid: int | None = None  # the process whose scheduler and notice watcher these are
        self._frozen = False  # the heap is frozen (freeze_heap); a model change is followed by a re-freeze
        self._refreeze_due = False
        self._refrozen_at = 0.0
        self.snapshot = Snapshot()

    # -- registry access ---------------------------------------------------------
    @property
    def registry(self):
        if self._registry is None:  # reads aliases and compiled artifacts without importing MLflow
            from mlops_core.registry_reader import RegistryReader

            self._registry = RegistryReader(self.settings)
        return self._registry

    # -- refresh -------------------------------------------------------------------
    def refresh(self, *, cause: str = "poll") -> Snapshot:
        """Resolve both aliases in one call, load only what changed and swap the new pair in."""
        with self._refresh_lock:
            current = self.snapshot
            try:
                aliases = self.registry.aliases()
            except Exception as err:  # registry down: keep serving what we have
                new = self._failed(current, self._clock(), f"registry unreachable: {_clean(err)}")
                log.warning("model refresh failed, keeping loaded models: %s", new.error)
            else:
                new = self._resolve(current, aliases)
            new = replace(new, cause=cause)
            self.snapshot = new
            if self._frozen:
                self._tend_heap(changed=_versions(new) != _versions(current))
        if self._on_refresh is not None:
            try:
                self._on_refresh(new, new.error is None, cause)
            except Exception:  # metrics must never break a refresh
                log.exception("refresh callback failed")
        return new

    # -- the garbage collector ---------------------------------------------------------
    def freeze_heap(self) -> None:
        """Move everything alive now (libraries, loaded models) out of the cyclic collector's way.

        Nearly all of a worker's long-lived objects are library code; without this, every full
        collection walks all of them and the worker stalls meanwhile (the p99 outliers under load;
        figures in the README). Frozen objects are still freed by reference counting, but not
        their reference cycles, and a replaced model has some (holding its arrays). So after a
        model change a later tick unfreezes, collects and freezes again: one such pause per
        change, at most one every :data:`REFREEZE_SECONDS`.
        """
        gc.collect()
        gc.freeze()
        self._frozen, self._refrozen_at = True, time.monotonic()

    def _tend_heap(self, *, changed: bool) -> None:
        if changed:  # requests may still hold the old snapshot: collect on a later tick
            self._refreeze_due = True
        elif self._refreeze_due and time.monotonic() - self._refrozen_at >= REFREEZE_SECONDS:
            self._refreeze_due = False
            started = time.perf_counter()
            gc.unfreeze()
            self.freeze_heap()
            log.info("re-froze the heap after a model change in %.0f ms", (time.perf_counter() - started) * 1000)

    def _failed(self, current: Snapshot, now: float, message: str) -> Snapshot:
        return replace(current, attempted_at=now, error=message, error_at=now, last_error=message,
                       failures=current.failures + 1)

    def _resolve(self, current: Snapshot, aliases: dict[str, str]) -> Snapshot:
        loaded = [m for m in (current.production, current.staging) if m is not None]
        problems: list[str] = []

        def obtain(alias: str, fallback: LoadedModel | None) -> LoadedModel | None:
            version = aliases.get(alias)
            if version is None:
                return None
            for model in loaded:
                if int(model.version) == int(version):
                    return model
            try:
                model = self._load(self.registry, version)
            except Exception as err:
                problems.append(f"loading {alias} version {version}: {_clean(err)}")
                return fallback
            log.info("loaded %s version %s (run %s)", alias, version, model.run_id)
            loaded.append(model)
            return model

        production = obtain(PRODUCTION, current.production)
        if production is None and current.production is not None:
            # an alias that vanished is most likely a mistake: never go from serving to 503 for it
            problems.append(f"no {PRODUCTION!r} alias in the registry; "
                            f"keeping version {current.production.version}")
            production = current.production
        staging = obtain(STAGING, current.staging)
        now = self._clock()
        if problems:
            message = "; ".join(problems)
            log.warning("model refresh incomplete: %s", message)
            return replace(self._failed(current, now, message), production=production, staging=staging)
        return replace(current, production=production, staging=staging, attempted_at=now, refreshed_at=now,
                       error=None)

    # -- scheduling ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True when this process's scheduler is ticking (a forked copy's never is)."""
        return (self._scheduler is not None and self._scheduler_pid == os.getpid()
                and self._scheduler.running)

    @property
    def watching(self) -> bool:
        """True when this process's notice watcher runs."""
        return self._watcher is not None and self._scheduler_pid == os.getpid() and self._watcher.running

    def start(self) -> None:
        """Load the models now, then refresh when an alias-move notice appears (mlops_core/notices.py) and every
        ``refresh_seconds``, from two background threads."""
        if self.running:
            return
        if self._scheduler_pid != os.getpid():
            self._scheduler = self._watcher = None  # inherited through fork: their threads do not exist here
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        # created before the first refresh: a move announced while it loads is acted on once the watcher starts
        watcher = NoticeWatcher(notice_path(self.settings), lambda cause: self.refresh(cause=cause),
                                model=self.settings.model_name)
        self.refresh(cause="start")
        # one job, never overlapping: one worker thread is all the executor needs
        scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)}, daemon=True, timezone="UTC")
        scheduler.add_job(self.refresh, "interval", seconds=self.settings.refresh_seconds, id="mlops-refresh",
                          name="model refresh", max_instances=1, coalesce=True,
                          misfire_grace_time=max(1, int(self.settings.refresh_seconds)))
        scheduler.start()
        watcher.start()
        self._scheduler, self._watcher, self._scheduler_pid = scheduler, watcher, os.getpid()

    def changed(self, cause: str) -> None:
        """The registry says an alias moved (``cause``: ``webhook``): refresh now, in the notice watcher's thread
        when it runs in this process, else here."""
        if self.watching:
            self._watcher.poke(cause)
        else:
            self.refresh(cause=cause)

    def stop(self, *, wait: bool = True) -> None:
        """Stop the refresh scheduler and the notice watcher, if they run in this process."""
        scheduler, watcher = self._scheduler, self._watcher
        if self._scheduler_pid == os.getpid():
            if watcher is not None:
                watcher.stop(wait=wait)
            if scheduler is not None and scheduler.running:
                scheduler.shutdown(wait=wait)
        self._scheduler = self._watcher = None
