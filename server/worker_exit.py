"""A stopping gunicorn worker closes its idle client connections at once.

gunicorn 26's threaded worker, once told to stop, waits for every open connection in a single poll whose timeout
is the whole graceful timeout: a connection a client keeps alive between requests (any HTTP session, any load
balancer) wakes nothing, so the worker outlives it by the graceful timeout (20 s here; a deploy or a restart
waits that long for each worker) instead of closing it after its keep-alive. This module holds the one use of
the worker's internals, checked for before use: on a gunicorn without them the worker keeps gunicorn's own
behaviour.
"""

from __future__ import annotations

import signal

_NEEDED = ("handle_exit", "method_queue", "keepalived_conns", "pending_conns", "murder_keepalived",
           "murder_pending")


def close_idle_connections_on_exit(worker) -> bool:
    """On SIGTERM, besides gunicorn's own handling, close the worker's idle connections (kept alive or accepted
    without a request yet) on its main loop. Requests in flight still finish. Returns whether it was set up."""
    if not all(hasattr(worker, name) for name in _NEEDED):
        return False
    handle_exit = worker.handle_exit

    def close_idle():  # on the worker's main thread, which owns these connections
        for conn in (*worker.keepalived_conns, *worker.pending_conns):
            conn.timeout = 0
        worker.murder_keepalived()
        worker.murder_pending()

    def on_term(sig, frame):
        handle_exit(sig, frame)
        worker.method_queue.defer(close_idle)  # a SimpleQueue put and a pipe write: safe in a signal handler

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)  # signal.signal() resets it; gunicorn keeps requests uninterrupted
    return True
