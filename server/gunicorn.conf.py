"""gunicorn settings for the prediction service.

    gunicorn -c server/gunicorn.conf.py 'server:create_app()'

Each worker loads the models and starts its own refresh scheduler after the fork
(``post_worker_init``), so the service behaves the same with and without
``--preload``; the scheduler stops in ``worker_exit``. Metrics of all workers are
aggregated through prometheus_client's multiprocess mode.

Environment: ``MLOPS_BIND`` (or ``GUNICORN_BIND``; default 127.0.0.1:8000),
``MLOPS_WORKERS`` (2), ``MLOPS_THREADS`` (16), ``MLOPS_TIMEOUT`` (60 s),
``MLOPS_CONTROL_SOCKET`` (gunicornc's socket; default: none),
``PROMETHEUS_MULTIPROC_DIR`` (default: a fresh temporary folder), ``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` (1: a worker per core), plus every ``MLOPS_*`` setting of mlops_core.
"""

import glob
import logging
import os
import shutil
import tempfile

# -- before anything imports numpy, prometheus_client or mlflow (the master reads this file first) --
# one worker per core: each worker's BLAS and OpenMP pools get one thread. With a pool per core in every worker,
# a matrix-vector product of a KNN kernel (3,000 x 70) took 540 us instead of 74 us on 2 busy cores.
for _pool in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")
_OWN_METRICS_DIR = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _OWN_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mlops-metrics-")
# start with an empty metrics folder (files of a previous run would be counted again); once per
# master, before --preload builds the app, and not again when a HUP re-reads this file
if os.environ.get("_MLOPS_METRICS_WIPED") != str(os.getpid()):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    for _path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(_path)
    os.environ["_MLOPS_METRICS_WIPED"] = str(os.getpid())

import server  # noqa: E402  (after PROMETHEUS_MULTIPROC_DIR: it imports Flask only)

server.leave_start_to_gunicorn_hooks()  # post_worker_init starts each worker's store, after the fork

bind = [os.environ.get("MLOPS_BIND") or os.environ.get("GUNICORN_BIND") or "127.0.0.1:8000"]
workers = int(os.environ.get("MLOPS_WORKERS", "2"))
worker_class = "gthread"
# a worker answers as many requests at once as it has threads, and one micro-batch gathers those waiting: 16
# lets a version served through its pipeline (~30 ms a call, whatever the rows) batch all 32 connections of
# two workers (bench/serve: 171 -> 524 req/s) while the compiled path stays at its ratio to a no-op endpoint
threads = int(os.environ.get("MLOPS_THREADS", "16"))
timeout = int(os.environ.get("MLOPS_TIMEOUT", "60"))  # covers the first model load in a worker
graceful_timeout = 20
keepalive = 5
max_requests = 0  # a restarted worker must reload its models; do not recycle workers needlessly
wsgi_app = "server:create_app()"
accesslog = os.environ.get("MLOPS_ACCESS_LOG") or None
errorlog = "-"
# gunicorn >= 25 opens a control socket in $XDG_RUNTIME_DIR or ~/.gunicorn by default: two servers
# on one host would share it, and a sandboxed service may not write there. Opt in with MLOPS_CONTROL_SOCKET.
control_socket_disable = not os.environ.get("MLOPS_CONTROL_SOCKET")
control_socket = os.environ.get("MLOPS_CONTROL_SOCKET") or "gunicorn.ctl"
loglevel = os.environ.get("MLOPS_LOG_LEVEL", "info")


def on_starting(server):
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def when_ready(server):
    """Say once if feedback will be refused. Import the serving libraries once, in the master, before any worker
    is forked: every worker inherits them, so their pages are shared (counted once in PSS) and no worker spends
    seconds importing them."""
    import gc

    from mlops_core.config import Settings
    from server.live_ab import warn_if_feedback_refused
    from server.preload import import_serving_libraries

    try:
        settings = Settings.from_env()
    except ValueError:  # invalid settings: the workers name the problem when they build the app
        return
    warn_if_feedback_refused(settings, server.log)
    if not settings.preload_libraries:  # MLOPS_PRELOAD_LIBRARIES=false: each worker imports its own
        return
    import_serving_libraries()
    gc.collect()
    gc.freeze()  # the collector never walks (and so never copies) these inherited objects in a worker


def post_worker_init(worker):
    """Load the models in this worker, then start its refresh scheduler, before it serves."""
    from server.worker_exit import close_idle_connections_on_exit

    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    if not close_idle_connections_on_exit(worker):
        worker.log.warning("this gunicorn's worker has changed: a stopping worker waits up to graceful_timeout "
                           "for clients that keep idle connections open")
    store = worker.wsgi.extensions["mlops_store"]
    worker.notify()
    store.start()
    store.freeze_heap()  # full collections would walk every library and model object, stalling the worker
    if "mlops_ab" in worker.wsgi.extensions:
        worker.wsgi.extensions["mlops_ab"].start()  # this worker's prediction log (writer on first record)
    snapshot = store.snapshot
    worker.log.info("worker %s serving production=%s staging=%s%s", worker.pid,
                    snapshot.production.version if snapshot.production else None,
                    snapshot.staging.version if snapshot.staging else None,
                    f" (refresh error: {snapshot.error})" if snapshot.error else "")


def worker_exit(server, worker):
    """Stop this worker's scheduler; write its queued predictions and stop its writer."""
    app = getattr(worker, "wsgi", None)
    store = app.extensions.get("mlops_store") if app is not None and hasattr(app, "extensions") else None
    if store is not None:
        store.stop(wait=False)
    ab_log = app.extensions.get("mlops_ab") if app is not None and hasattr(app, "extensions") else None
    if ab_log is not None:
        ab_log.stop(timeout=10)  # write what is queued: no logged prediction is lost on a restart


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the aggregated metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder if this file created it."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)
