"""Recording a product view.

A 200 (or 304) product read records its view before the answer leaves the process:
with ``REDIS_URL`` set, one XADD to the views stream (the worker writes it to the
database, see app/worker.py); without Redis, or when Redis does not answer, a direct
write of the view and its roll-ups. If that fails too, the read still answers and the
lost view is logged and counted (``marketplace_views_lost_total``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from datetime import datetime

import redis
from flask import current_app

from app.core import metrics, redis_client
from app.core.columns import utcnow
from app.views import stream
from app.views.rollups import View, write_views

log = logging.getLogger(__name__)


class RecentViewers:
    """The (client, product) pairs seen in the last ``seconds``, in this process only:
    without Redis, each web process de-duplicates on its own (so with N processes a
    client can count up to N times per window). At most ``size`` pairs are kept."""

    def __init__(self, size: int = 100_000):
        self.size = size
        self.seen: OrderedDict[str, float] = OrderedDict()
        self.lock = threading.Lock()

    def first(self, key: str, seconds: float) -> bool:
        now = time.monotonic()
        with self.lock:
            while self.seen and next(iter(self.seen.values())) <= now:
                self.seen.popitem(last=False)  # the oldest expires first
            if key in self.seen:
                return False
            self.seen[key] = now + seconds
            if len(self.seen) > self.size:
                self.seen.popitem(last=False)
            return True


def first_view_in_window(product_id: int, user_id: int | None, client: str | None) -> bool:
    """Whether this view counts under ``VIEW_DEDUP_SECONDS``: the first from this user
    (or, anonymous, this address) for this product in the window."""
    seconds = current_app.config["VIEW_DEDUP_SECONDS"]
    if not seconds:
        return True
    who = f"u{user_id}" if user_id is not None else f"a{client or '-'}"
    key = f"{product_id}:{who}"
    if (conn := redis_client.client()) is not None:
        try:
            return bool(conn.set(f"{stream.VIEWED_PREFIX}{key}", 1, nx=True, ex=seconds))
        except redis.RedisError as exc:
            log.warning("views de-duplication falls back to this process: %s", exc)
    return current_app.extensions.setdefault("recent_viewers", RecentViewers()).first(key, seconds)


def streams_each_view() -> bool:
    """Whether a read's view goes straight into the stream: ``auto`` with Redis and no
    de-duplication window (the product cache then adds it in the read's own round trip)."""
    config = current_app.config
    return (
        config["VIEW_RECORDING"] == "auto"
        and not config["VIEW_DEDUP_SECONDS"]
        and redis_client.client() is not None
    )


def record_view(product_id: int, user_id: int | None, client: str | None = None) -> str:
    """Record one consultation before the read answers; return how ("stream", "direct",
    "off", "repeat" (inside VIEW_DEDUP_SECONDS) or "lost")."""
    mode = current_app.config["VIEW_RECORDING"]
    if mode == "off":
        return "off"
    if not first_view_in_window(product_id, user_id, client):
        metrics.VIEWS_REPEATED.inc()
        return "repeat"
    now = utcnow()
    if mode == "auto" and redis_client.client() is not None:
        try:
            stream.append_view(product_id, user_id, now)
            return streamed()
        except redis.RedisError as exc:
            if not stream_failed(product_id, exc):
                return "unconfirmed"
            return write_directly(product_id, user_id, now, fell_back=True)
    return write_directly(product_id, user_id, now)


def streamed() -> str:
    """Count a view the stream took."""
    metrics.VIEWS_STREAMED.inc()
    return "stream"


def stream_failed(product_id: int, exc: redis.RedisError) -> bool:
    """After an XADD (or a script ending with one) raised: True when the view is not in
    the stream and must be written directly; False when it may be there."""
    if redis_client.may_have_run(exc):
        # The XADD went out and no answer came: it may be in the stream, so a direct
        # write could count the read twice. Marked, not guessed.
        metrics.VIEWS_RECORDED.labels("stream-unconfirmed").inc()
        log.warning("view of product %s: the stream did not confirm it", product_id)
        return False
    log.warning("views stream unavailable, writing the view directly: %s", exc)
    return True


def write_directly(
    product_id: int, user_id: int | None, at: datetime, fell_back: bool = False
) -> str:
    """Write one view in a transaction of its own ("direct"), or count it lost;
    ``fell_back``: because the stream failed."""
    try:
        write_views([View(product_id, user_id, at)])
    except Exception:
        # The read itself succeeded: answer it, and say what was not recorded.
        metrics.VIEWS_LOST.inc()
        log.exception("view of product %s by %s lost", product_id, user_id or "anonymous")
        return "lost"
    metrics.VIEWS_RECORDED.labels("direct").inc()
    if fell_back:
        metrics.VIEWS_FALLBACK.inc()
    return "direct"
