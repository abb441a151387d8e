"""Prometheus metrics of the service, correct under several gunicorn workers."""

from __future__ import annotations

import os

from flask import Flask

from mlops_core.forks import PerProcess

from .store import ARMS, Snapshot

__all__ = ["Metrics", "multiprocess_dir"]

NO_ARM = "none"  # requests rejected before they reached a model


def multiprocess_dir() -> str | None:
    """The folder shared by gunicorn workers for metric files, when multiprocess mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class _Instruments:
    """The metric objects of one process, in their own registry.

    Built in the process that uses them (:class:`PerProcess`): with ``gunicorn --preload`` the app is built
    in the master, and metrics created there would show the master as one more (idle) worker in the live
    gauges.
    """

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mlops_predict_requests", "Prediction requests, by the arm that served them.",
                                ["arm"], registry=r)
        self.errors = Counter("mlops_predict_errors", "Prediction requests answered with an error status.",
                              ["arm", "code"], registry=r)
        self.rows = Counter("mlops_predict_rows", "Rows predicted, by arm.", ["arm"], registry=r)
        self.latency = Histogram("mlops_predict_latency_seconds", "Time to answer a prediction request.",
                                 ["arm"], registry=r,
                                 buckets=(.005, .01, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10))
        self.version = Gauge("mlops_model_version", "Registry version loaded per arm (0: none), per worker.",
                             ["arm"], registry=r, multiprocess_mode="liveall")
        self.loaded_at = Gauge("mlops_model_loaded_timestamp_seconds", "When the loaded version was loaded.",
                               ["arm"], registry=r, multiprocess_mode="liveall")
        self.compiled = Gauge("mlops_model_compiled", "1 when the arm's version answers through the compiled path, "
                              "0 through its pipeline (the reason is in /models), per worker.", ["arm"], registry=r,
                              multiprocess_mode="liveall")
        self.kernel = Gauge("mlops_model_kernel", "1 for the kernel answering the arm's version (onnx, a hand "
                            "kernel's name, generic; pipeline when not compiled), per worker; why is in /models.",
                            ["arm", "kernel"], registry=r, multiprocess_mode="liveall")
        self.kernels: dict[str, str] = {}  # arm -> the kernel label last set to 1
        self.refreshes = Counter("mlops_refresh", "Model refreshes attempted, by what started them: start, poll "
                                 "(the periodic tick), notice (an alias-move notice file), webhook (MLflow's).",
                                 ["cause"], registry=r)
        self.refresh_failures = Counter("mlops_refresh_failures", "Model refreshes that failed "
                                        "(registry unreachable or a version that would not load).", registry=r)
        self.last_refresh = Gauge("mlops_refresh_last_success_timestamp_seconds",
                                  "Time of the last successful refresh, per worker.", registry=r,
                                  multiprocess_mode="liveall")
        self.ab_written = Counter("mlops_ab_log_written", "Prediction rows written to the A/B store.", registry=r)
        self.ab_dropped = Counter("mlops_ab_log_dropped", "Prediction rows not logged: the writer's queue was "
                                  "full (never waited on).", registry=r)
        self.arms: dict[str, tuple] = {}  # arm -> its labelled children (labels() costs a lock and a lookup)


class Metrics:
    """Request, error, latency and model metrics, in a registry owned by one app (one per process)."""

    def __init__(self, app: Flask | None = None):
        self._instruments = PerProcess(_Instruments)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.extensions["mlops_metrics"] = self

    def observe_refresh(self, snapshot: Snapshot, ok: bool, cause: str = "poll") -> None:
        """Record one refresh, what started it, and the versions it left loaded."""
        m = self._instruments.get()
        m.refreshes.labels(cause).inc()
        if not ok:
            m.refresh_failures.inc()
        if snapshot.refreshed_at is not None and ok:
            m.last_refresh.set(snapshot.refreshed_at)
        for alias, arm in ARMS.items():
            model = snapshot.arm(alias)
            m.version.labels(arm).set(int(model.version) if model is not None else 0)
            m.loaded_at.labels(arm).set(model.loaded_at if model is not None else 0)
            predictor = getattr(model, "predictor", None)
            m.compiled.labels(arm).set(1 if predictor is not None and predictor.compiled else 0)
            kernel = ("none" if model is None else "pipeline" if predictor is None or not predictor.compiled
                      else predictor.kernel.__name__)
            previous = m.kernels.get(arm)
            if previous is not None and previous != kernel:
                m.kernel.labels(arm, previous).set(0)  # a removed child would live on in multiprocess files
            m.kernel.labels(arm, kernel).set(1)
            m.kernels[arm] = kernel

    def observe_request(self, arm: str | None, status: int, seconds: float, rows: int) -> None:
        m = self._instruments.get()
        arm = arm or NO_ARM
        children = m.arms.get(arm)
        if children is None:
            children = m.arms[arm] = (m.requests.labels(arm), m.latency.labels(arm), m.rows.labels(arm))
        requests, latency, predicted = children
        requests.inc()
        latency.observe(seconds)
        if status >= 400:
            m.errors.labels(arm, str(status)).inc()
        elif rows:
            predicted.inc(rows)

    def observe_ab_log(self, *, written: int = 0, dropped: int = 0) -> None:
        """Count prediction rows written to the A/B store, or dropped because its queue was full."""
        m = self._instruments.get()
        if written:
            m.ab_written.inc(written)
        if dropped:
            m.ab_dropped.inc(dropped)

    def render(self) -> tuple[bytes, str]:
        """The exposition text: every worker's values in multiprocess mode, else this registry's."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        folder = multiprocess_dir()
        if folder:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=folder)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self._instruments.get().registry), CONTENT_TYPE_LATEST
