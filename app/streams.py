"""Redis, when ``REDIS_URL`` is set: the durable stream of product views and the list
that wakes the worker after a commit that added emails.

Web processes only append (XADD, LPUSH); the worker (app/worker.py) reads the stream in
a consumer group and writes the views to the database. Short socket timeouts on the web
side (``REDIS_TIMEOUT`` to connect and again to answer): a Redis that cannot be reached
costs a read about that before the view is written to the database directly.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import redis
from flask import Flask, current_app

log = logging.getLogger(__name__)

VIEWS_STREAM = "marketplace:views"
VIEWS_GROUP = "view-writers"
WAKE_LIST = "marketplace:outbox:wake"
# VIEW_DEDUP_SECONDS: one key per (product, client) seen in the window (SET NX EX).
VIEWED_PREFIX = "marketplace:viewed:"
# The wake-up list never holds more than this: one entry is enough to wake the worker.
WAKE_KEEP = 16


def connect(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=True,
    )


def init_app(app: Flask) -> None:
    url = app.config["REDIS_URL"]
    # redis-py's pool notices a fork and opens new connections in the child (uWSGI).
    app.extensions["redis"] = connect(url, app.config["REDIS_TIMEOUT"]) if url else None


def client() -> redis.Redis | None:
    return current_app.extensions.get("redis")


def may_have_run(exc: redis.RedisError) -> bool:
    """Whether a command that raised ``exc`` may have run all the same: it went out and
    no answer came back (a timeout once connected)."""
    return isinstance(exc, redis.TimeoutError) and "connecting" not in str(exc)


def view_fields(product_id: int, user_id: int | None, at: datetime) -> dict:
    return {"p": product_id, "u": user_id if user_id is not None else "", "t": at.timestamp()}


def parse_view(fields: dict) -> tuple[int, int | None, datetime]:
    """(product id, user id or None, when) from a stream entry; ValueError if malformed."""
    user = fields.get("u", "")
    product_id, user_id = int(fields["p"]), int(user) if user != "" else None
    if not 0 < product_id < 2**31 or (user_id is not None and not 0 < user_id < 2**31):
        raise ValueError("an id out of range")
    return product_id, user_id, datetime.fromtimestamp(float(fields["t"]), UTC)


def append_view(product_id: int, user_id: int | None, at: datetime) -> str:
    """XADD one view; raises redis.RedisError when Redis cannot take it."""
    return client().xadd(VIEWS_STREAM, view_fields(product_id, user_id, at))


def wake_worker() -> None:
    """Tell the worker that emails are due (best effort: it also polls)."""
    conn = client()
    if conn is None:
        return
    try:
        pipe = conn.pipeline(transaction=False)
        pipe.lpush(WAKE_LIST, 1)
        pipe.ltrim(WAKE_LIST, 0, WAKE_KEEP - 1)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not wake the worker (it will poll): %s", exc)


def stream_state() -> dict | None:
    """The views stream's length, consumer lag and pending entries; None without Redis."""
    conn = client()
    if conn is None:
        return None
    length = conn.xlen(VIEWS_STREAM)
    groups = {g["name"]: g for g in conn.xinfo_groups(VIEWS_STREAM)} if length else {}
    group = groups.get(VIEWS_GROUP)
    if group is None:
        return {"length": length, "lag": length, "pending": 0}
    lag = group.get("lag")
    return {
        "length": length,
        "lag": lag if lag is not None else length,
        "pending": group["pending"],
    }
