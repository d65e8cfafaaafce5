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


# The networks that scrape without METRICS_TOKEN: the host and the operator's own private
# networks, named one by one (``not is_global`` would also take Teredo's 2001::/32, the
# carriers' shared 100.64.0.0/10 and other special ranges that reach the internet or
# belong to someone else). IPv4 clients seen through IPv6 (::ffff:a.b.c.d) count as
# their IPv4 address; 6to4, Teredo and NAT64 addresses are the internet's.
SCRAPERS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "127.0.0.0/8",  # loopback
        "::1/128",
        "10.0.0.0/8",  # RFC 1918: a VPC, a data centre
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",  # IPv6 unique local addresses
        "169.254.0.0/16",  # link-local (the host's own link)
        "fe80::/10",
    )
)


def allowed() -> bool:
    """The operator's addresses (SCRAPERS), or the METRICS_TOKEN."""
    token = current_app.config["METRICS_TOKEN"]
    if token and request.authorization is not None and request.authorization.token:
        return hmac.compare_digest(request.authorization.token, token)
    return is_operator(request.remote_addr)


def is_operator(address: str | None) -> bool:
    """Whether a client at ``address`` is on the host or the operator's network."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in SCRAPERS)


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
