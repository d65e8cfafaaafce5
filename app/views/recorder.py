"""Recording a product view: one policy, chosen when the app is built, and one recorder
with two back ends.

The policy (``VIEW_RECORDING``, ``REDIS_URL``, ``VIEW_DEDUP_SECONDS``):

- ``stream`` (``auto`` with Redis): each view is one XADD to the views stream, before the
  read answers; the worker writes it to the database (app/views/stream.py). Without a
  de-duplication window, the XADD rides on the product cache's own round trip
  (``rides_on_cache``: app/catalog/reads.py).
- ``direct`` (``direct``, or ``auto`` without Redis): the read writes its view and the
  roll-ups in a transaction of their own.
- ``off``: nothing is recorded.

Every view has an id of its own (``View.id``, unique in ``product_views``). When an XADD's
outcome is unknown (Redis stalled, restarted or cut the connection, before or after
running it), the view is written directly with the same id: if the XADD did run, the
worker's write of that entry changes nothing. So a read answered 200 or 304 has exactly
one view whatever Redis does; only when the database refuses the direct write too is a
view lost, and then it is logged and counted (``marketplace_views_lost_total``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import NamedTuple

import redis
from flask import Flask, current_app

from app.core import metrics, redis_client
from app.core.columns import utcnow
from app.views import stream
from app.views.rollups import View, write_views

log = logging.getLogger(__name__)

OFF, STREAM, DIRECT = "off", "stream", "direct"


class ViewPolicy(NamedTuple):
    mode: str  # OFF, STREAM or DIRECT
    dedup_seconds: int

    @property
    def rides_on_cache(self) -> bool:
        """Whether a read's view is added by the product cache's script (no window to
        check first)."""
        return self.mode == STREAM and not self.dedup_seconds


def policy_for(config) -> ViewPolicy:
    setting = config["VIEW_RECORDING"]
    if setting == "auto":
        mode = STREAM if config["REDIS_URL"] else DIRECT
    else:
        mode = OFF if setting == "off" else DIRECT
    return ViewPolicy(mode, config["VIEW_DEDUP_SECONDS"])


def init_app(app: Flask) -> None:
    app.extensions["views"] = Recorder(policy_for(app.config))


def recorder() -> Recorder:
    return current_app.extensions["views"]


def new_view_id() -> str:
    return os.urandom(16).hex()


class Recorder:
    """Records views under one policy: into the stream or directly (the two back ends)."""

    def __init__(self, policy: ViewPolicy):
        self.policy = policy
        self.recent = RecentViewers()

    def pending(self, user_id: int | None) -> View | None:
        """A view for the cache's script to add to the stream (its product is the
        entry's), or None when views do not ride on the cache."""
        if not self.policy.rides_on_cache:
            return None
        return View(new_view_id(), 0, user_id, utcnow())

    def taken(self, view: View) -> str:
        """The stream took a pending view (the script that added it answered)."""
        metrics.VIEWS_STREAMED.inc()
        return STREAM

    def unconfirmed(self, view: View, product_id: int, exc: redis.RedisError) -> str:
        """A script that may have added a pending view failed: the view is written
        directly under its own id (a second write of the same id changes nothing)."""
        log.warning("views stream did not confirm a view of product %s: %s", product_id, exc)
        return self._direct(view._replace(product_id=product_id), fell_back=True)

    def record(self, product_id: int, user_id: int | None, client: str | None) -> str:
        """Record one consultation before the read answers; how ("stream", "direct",
        "off", "repeat" inside the window, or "lost")."""
        if self.policy.mode == OFF:
            return OFF
        if self.policy.dedup_seconds and not self._first_in_window(product_id, user_id, client):
            metrics.VIEWS_REPEATED.inc()
            return "repeat"
        view = View(new_view_id(), product_id, user_id, utcnow())
        if self.policy.mode == DIRECT:
            return self._direct(view)
        try:
            stream.append_view(view)
        except redis.RedisError as exc:
            log.warning("views stream did not take a view of product %s: %s", product_id, exc)
            return self._direct(view, fell_back=True)
        return self.taken(view)

    def _direct(self, view: View, fell_back: bool = False) -> str:
        """Write one view in a transaction of its own, or count it lost."""
        try:
            write_views([view])
        except Exception:
            # The read itself succeeded: answer it, and say what was not recorded.
            metrics.VIEWS_LOST.inc()
            log.exception(
                "view of product %s by %s lost", view.product_id, view.user_id or "anonymous"
            )
            return "lost"
        metrics.VIEWS_RECORDED.labels(DIRECT).inc()
        if fell_back:
            metrics.VIEWS_FALLBACK.inc()
        return DIRECT

    def _first_in_window(self, product_id: int, user_id: int | None, client: str | None) -> bool:
        """The first view of this product from this user (or, anonymous, this address) in
        the window: shared through Redis, else counted in this process."""
        seconds = self.policy.dedup_seconds
        who = f"u{user_id}" if user_id is not None else f"a{client or '-'}"
        key = f"{product_id}:{who}"
        if (conn := redis_client.client()) is not None:
            try:
                return bool(conn.set(f"{stream.VIEWED_PREFIX}{key}", 1, nx=True, ex=seconds))
            except redis.RedisError as exc:
                log.warning("views de-duplication falls back to this process: %s", exc)
        return self.recent.first(key, seconds)


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
