"""Redis, when ``REDIS_URL`` is set: one client per process for the views stream, the
product cache, the shared login limits and the worker's wake-up list.

Short socket timeouts on the web side (``REDIS_TIMEOUT`` to connect and again to answer):
a Redis that cannot be reached costs a request about that, never a hang.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, current_app

log = logging.getLogger(__name__)

WAKE_LIST = "marketplace:outbox:wake"
# One list per kind of work, so that a wake-up for one never wakes (and is taken by) the
# threads of another.
WAKE_LISTS = {"emails": WAKE_LIST, "webhooks": "marketplace:webhooks:wake"}
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


def wake_worker(queues=("emails",)) -> None:
    """Tell the worker that emails or webhooks (``queues``) are due (best effort: it also
    polls)."""
    conn = client()
    if conn is None:
        return
    try:
        pipe = conn.pipeline(transaction=False)
        for queue in sorted(queues):
            pipe.lpush(WAKE_LISTS[queue], 1)
            pipe.ltrim(WAKE_LISTS[queue], 0, WAKE_KEEP - 1)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not wake the worker (it will poll): %s", exc)
