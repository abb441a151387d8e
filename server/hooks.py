"""``POST /hooks/mlflow``: an MLflow server's registry webhooks (an alias set or deleted) refresh the models at once.

MLflow (3.3 and later) signs each delivery with the webhook's secret: ``X-MLflow-Signature: v1,<base64 of the
HMAC-SHA256 of "<X-MLflow-Delivery-Id>.<X-MLflow-Timestamp>.<raw body>">`` (as MLflow's module
``mlflow.webhooks.delivery`` computes it). This endpoint checks it against ``MLOPS_WEBHOOK_SECRET``, in
constant time, and refuses a timestamp more than :data:`MAX_SKEW_SECONDS` from this server's clock (a replayed
delivery). Without a secret the endpoint is off (404). A delivery reaches one worker: it refreshes, and writes the
alias-move notice under the server's home so that the other workers sharing that home refresh too
(mlops_core/notices.py); the poll covers the rest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, Forbidden, NotFound

from mlops_core.notices import announce

__all__ = ["bp", "verify", "sign", "MAX_SKEW_SECONDS", "EVENTS"]

log = logging.getLogger(__name__)

bp = Blueprint("hooks", __name__)

MAX_SKEW_SECONDS = 300  # Standard Webhooks' replay window, which MLflow's delivery follows
EVENTS = ("model_version_alias.created", "model_version_alias.deleted")  # the registry events that move an arm
_SIGNATURE, _DELIVERY, _TIMESTAMP = "X-MLflow-Signature", "X-MLflow-Delivery-Id", "X-MLflow-Timestamp"


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` MLflow sends with ``body``: ``v1,<base64 HMAC-SHA256>``."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float) -> str | None:
    """None when ``body`` carries a valid signature made with ``secret`` at a time close to ``now``; else what is
    wrong with it."""
    signature, delivery, timestamp = (headers.get(name) for name in (_SIGNATURE, _DELIVERY, _TIMESTAMP))
    missing = [name for name, value in ((_SIGNATURE, signature), (_DELIVERY, delivery), (_TIMESTAMP, timestamp))
               if not value]
    if missing:
        return f"missing header(s) {', '.join(missing)}: not a signed MLflow webhook delivery"
    try:
        skew = now - int(timestamp)
    except ValueError:
        return f"{_TIMESTAMP} must be Unix seconds, got {timestamp[:40]!r}"
    if abs(skew) > MAX_SKEW_SECONDS:
        return (f"{_TIMESTAMP} is {skew:+.0f} s away from this server's clock (more than {MAX_SKEW_SECONDS} s): "
                f"refused as a possible replay")
    expected = sign(secret, delivery, timestamp, body)
    if not any(hmac.compare_digest(expected.encode(), given.encode()) for given in signature.split()):
        return f"{_SIGNATURE} does not match this body signed with MLOPS_WEBHOOK_SECRET"
    return None


@bp.post("/hooks/mlflow")
def mlflow_webhook():
    """Refresh now when a verified delivery says an alias of this server's model was set or deleted."""
    store = current_app.extensions["mlops_store"]
    settings = store.settings
    if not settings.webhook_secret:
        raise NotFound("MLflow webhooks are off on this server: set MLOPS_WEBHOOK_SECRET to the secret given to "
                       "MlflowClient().create_webhook(...)")
    body = request.get_data(cache=False)
    problem = verify(settings.webhook_secret, request.headers, body, now=time.time())
    if problem is not None:
        log.warning("refused an MLflow webhook delivery from %s: %s", request.remote_addr, problem)
        raise Forbidden(problem)
    try:
        delivery = json.loads(body)
        event, data = f"{delivery['entity']}.{delivery['action']}", delivery.get("data") or {}
    except (ValueError, KeyError, TypeError) as err:
        raise BadRequest(f"a signed delivery that is not MLflow's webhook JSON ({err!r})") from err
    if event not in EVENTS or data.get("name") != settings.model_name:
        return jsonify({"refresh": False, "event": event, "model": data.get("name"),
                        "reason": f"this server refreshes on {' and '.join(EVENTS)} of {settings.model_name!r}"})
    version = data.get("version") if event.endswith("created") else None
    log.info("MLflow webhook: %s %s -> %s; refreshing", event, data.get("alias"), version)
    # the other workers sharing this home learn from the notice; this one too (its watcher), or now if unwritten
    if not (store.watching and announce(settings, alias=str(data.get("alias")), version=version, source="webhook")):
        store.changed("webhook")
    return jsonify({"refresh": True, "event": event, "alias": data.get("alias"), "version": version}), 202
