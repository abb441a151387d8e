"""Micro-batching: the concurrent requests of one worker share one predict call per arm."""

from __future__ import annotations

import _thread
import threading
import time
from typing import Any

__all__ = ["Batcher"]


class _Job:
    __slots__ = ("model", "rows", "answer", "error", "done", "wake")

    def __init__(self, model, rows):
        self.model, self.rows = model, rows
        self.answer, self.error, self.done = None, None, False
        self.wake = _thread.allocate_lock()  # held until the job is answered or made the runner
        self.wake.acquire()


class Batcher:
    """Requests of one worker share a predict call: one runner at a time takes every queued request.

    A request arriving while no batch runs becomes the runner. Requests arriving while
    a batch runs queue; when it ends, the runner hands the queue to the first of them,
    which runs the next batch. Before running, a runner lingers up to ``wait`` seconds
    for as many requests as the previous batch held (none when it held one, so a lone
    request never waits). Each waiting request is woken once, by its own lock: when
    answered, or when made the runner. Each model (arm) of a batch gets its own call,
    on its own rows only.
    """

    def __init__(self, predict, *, wait: float = 0.001):
        self._predict = predict  # (model, rows) -> (predictions, probabilities)
        self.wait = wait
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # only a lingering runner waits on it
        self._queue: list[_Job] = []
        self._busy = False  # a runner exists (lingering, running, or being handed the queue)
        self._lingering = False
        self._last = 1  # size of the previous batch

    def __call__(self, model, rows: list[dict[str, Any]]) -> tuple[list, list[float]]:
        job = _Job(model, rows)
        with self._lock:
            self._queue.append(job)
            runner = not self._busy
            self._busy = True
            if self._lingering and len(self._queue) >= self._last:
                self._arrived.notify()
        if not runner:
            job.wake.acquire()  # answered, or handed the queue
            if not job.done:
                runner = True
        if runner:
            self._run_next(job)
        if job.error is not None:
            raise job.error
        return job.answer

    def _run_next(self, own: _Job) -> None:
        """Linger, take the queue (``own`` job first), predict it, then hand over to the next queued request."""
        with self._lock:
            if self.wait > 0 and len(self._queue) < self._last:
                self._lingering = True
                deadline = time.monotonic() + self.wait
                while len(self._queue) < self._last and (left := deadline - time.monotonic()) > 0:
                    self._arrived.wait(left)
                self._lingering = False
            batch, self._queue, self._last = self._queue, [], len(self._queue)
        following = None
        try:
            self._run(batch)
        finally:
            for j in batch:
                if not j.done:  # the runner was interrupted
                    j.error, j.done = RuntimeError("the shared predict call was interrupted"), True
            with self._lock:
                if self._queue:
                    following = self._queue[0]  # stays busy: the next runner is named
                else:
                    self._busy = False
            for j in batch:
                if j is not own:
                    j.wake.release()
            if following is not None:
                following.wake.release()

    def _run(self, batch: list[_Job]) -> None:
        groups: dict[int, list[_Job]] = {}
        for job in batch:
            groups.setdefault(id(job.model), []).append(job)
        for jobs in groups.values():
            try:
                predictions, probabilities = self._predict(jobs[0].model, [r for j in jobs for r in j.rows])
            except Exception as err:  # each request answers its own error
                for j in jobs:
                    j.error, j.done = err, True
                continue
            start = 0
            for j in jobs:
                end = start + len(j.rows)
                # a regression answers no probabilities (None)
                j.answer = predictions[start:end], None if probabilities is None else probabilities[start:end]
                j.done = True
                start = end
