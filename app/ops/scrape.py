"""GET /metrics: Prometheus' scrape, for the operator's network only."""

from __future__ import annotations

import hmac
import ipaddress
import logging

import redis
from flask import Blueprint, Response, abort, current_app, request
from sqlalchemy.exc import SQLAlchemyError

from app.core import metrics
from app.notifications import outbox
from app.notifications.webhooks import service as webhooks
from app.views import stream

log = logging.getLogger(__name__)

metrics_blp = Blueprint("metrics", __name__)


def allowed() -> bool:
    """Loopback and private addresses (the host, the VPC), or the METRICS_TOKEN."""
    token = current_app.config["METRICS_TOKEN"]
    if token and request.authorization is not None and request.authorization.token:
        return hmac.compare_digest(request.authorization.token, token)
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return not address.is_global  # loopback, private, link-local


def read_state() -> dict:
    try:
        state = outbox.state()
    except SQLAlchemyError as exc:
        log.warning("metrics: the outbox could not be read: %s", exc)
        state = {"notifications": {}, "oldest_pending_seconds": float("nan")}
    try:
        state["webhooks"] = webhooks.state()
    except SQLAlchemyError as exc:
        log.warning("metrics: the webhook deliveries could not be read: %s", exc)
        state["webhooks"] = None
    try:
        state["stream"] = stream.stream_state()
    except redis.RedisError as exc:
        log.warning("metrics: the views stream could not be read: %s", exc)
        state["stream"] = None
    return state


@metrics_blp.get("/metrics")
def scrape():
    if not allowed():
        abort(404)  # as if there were nothing here
    return Response(metrics.exposition(read_state), mimetype="text/plain; version=0.0.4")
