"""The views stream (Redis): web processes append one entry per view; the worker reads
them in a consumer group and writes each batch to the database (app/views/rollups.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import redis
from sqlalchemy.exc import SQLAlchemyError

from app.core import logs, metrics
from app.core.redis_client import client
from app.views import rollups
from app.views.rollups import View

log = logging.getLogger(__name__)

VIEWS_STREAM = "marketplace:views"
VIEWS_GROUP = "view-writers"
# VIEW_DEDUP_SECONDS: one key per (product, client) seen in the window (SET NX EX).
VIEWED_PREFIX = "marketplace:viewed:"
# A consumer gone this long with nothing pending is forgotten by the group.
FORGET_CONSUMER_MS = 3_600_000


def view_fields(view: View) -> list:
    """A view's entry fields after its product, as the cache's scripts take them too:
    user ("" anonymous), time, id."""
    return ["" if view.user_id is None else str(view.user_id), view.viewed_at.timestamp(), view.id]


def parse_view(entry_id: str, fields: dict) -> View:
    """The view of a stream entry; ValueError if malformed. An entry without an id
    (written before views had one) takes the entry's."""
    user = fields.get("u", "")
    product_id, user_id = int(fields["p"]), int(user) if user != "" else None
    if not 0 < product_id < 2**31 or (user_id is not None and not 0 < user_id < 2**31):
        raise ValueError("an id out of range")
    view_id = fields.get("i") or entry_id
    if len(view_id) > 32:
        raise ValueError("an id too long")
    return View(view_id, product_id, user_id, datetime.fromtimestamp(float(fields["t"]), UTC))


def append_view(view: View) -> str:
    """XADD one view; raises redis.RedisError when Redis cannot take it (it may have)."""
    user, at, view_id = view_fields(view)
    return client().xadd(VIEWS_STREAM, {"p": view.product_id, "u": user, "t": at, "i": view_id})


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


class ViewsConsumer:
    """One member of the stream's consumer group."""

    def __init__(self, conn: redis.Redis, name: str, batch: int, block_ms: int, idle_ms: int):
        self.conn = conn
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.idle_ms = idle_ms
        # Entries delivered to this consumer but not yet written (a database error).
        self.backlog = True

    def ensure_group(self) -> None:
        try:
            self.conn.xgroup_create(VIEWS_STREAM, VIEWS_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, block: bool) -> list[tuple[str, dict | None]]:
        start = "0" if self.backlog else ">"
        try:
            return self._read_from(start, block)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (a restart without persistence, a flush): make it
            # again and go on; the web processes' XADDs recreate the stream meanwhile.
            log.warning("views stream: the consumer group was gone; created again")
            self.ensure_group()
            return self._read_from(start, block)

    def _read_from(self, start: str, block: bool) -> list[tuple[str, dict | None]]:
        answer = self.conn.xreadgroup(
            VIEWS_GROUP,
            self.name,
            {VIEWS_STREAM: start},
            count=self.batch,
            block=self.block_ms if block and not self.backlog else None,
        )
        entries = answer[0][1] if answer else []
        if self.backlog and not entries:
            self.backlog = False  # nothing left of our own: on to new entries
            return self._read_from(">", block)
        return entries

    def apply(self, entries: list[tuple[str, dict | None]]) -> int:
        """Write the entries' views (those not written before) and acknowledge them."""
        if not entries:
            return 0
        first, last = entries[0][0], entries[-1][0]
        with logs.bind(stream_ids=first if first == last else f"{first}..{last}"):
            return self._apply(entries)

    def _apply(self, entries: list[tuple[str, dict | None]]) -> int:
        views = []
        for entry_id, fields in entries:
            if not fields:
                continue  # trimmed before it was read: nothing left to write
            try:
                views.append(parse_view(entry_id, fields))
            except (KeyError, ValueError, TypeError, OverflowError):
                metrics.VIEWS_LOST.inc()
                log.error("views stream entry %s is malformed, skipped: %r", entry_id, fields)
        try:
            written = rollups.write_views(views)
        except SQLAlchemyError:
            self.backlog = True  # read them again from this consumer's pending list
            raise
        self.conn.xack(VIEWS_STREAM, VIEWS_GROUP, *[e[0] for e in entries])
        metrics.VIEWS_APPLIED.inc(written)
        return written

    def step(self, block: bool = True) -> int:
        """Read and apply one batch; return how many entries it held."""
        entries = self._read(block)
        self.apply(entries)
        return len(entries)

    def reclaim(self) -> int:
        """Take over entries another consumer read but did not acknowledge in time."""
        total = 0
        start = "0-0"
        while True:
            answer = self.conn.xautoclaim(
                VIEWS_STREAM,
                VIEWS_GROUP,
                self.name,
                min_idle_time=self.idle_ms,
                start_id=start,
                count=self.batch,
            )
            start, entries = answer[0], answer[1]
            if entries:
                log.info("reclaimed %s pending views from other consumers", len(entries))
                self.apply(entries)
                total += len(entries)
            if start == "0-0" or not entries:
                return total

    def trim(self) -> None:
        """Drop what every consumer has acknowledged; forget long-gone empty consumers."""
        # The last delivered id first, then what is pending: an entry delivered between
        # the two reads is then pending, never trimmed.
        groups = {g["name"]: g for g in self.conn.xinfo_groups(VIEWS_STREAM)}
        delivered = groups[VIEWS_GROUP]["last-delivered-id"]
        pending = self.conn.xpending(VIEWS_STREAM, VIEWS_GROUP)
        oldest_needed = pending["min"] if pending["pending"] else delivered
        if oldest_needed and oldest_needed != "0-0":
            self.conn.xtrim(VIEWS_STREAM, minid=oldest_needed, approximate=False)
        for consumer in self.conn.xinfo_consumers(VIEWS_STREAM, VIEWS_GROUP):
            if (
                consumer["name"] != self.name
                and consumer["pending"] == 0
                and consumer["idle"] > FORGET_CONSUMER_MS
            ):
                self.conn.xgroup_delconsumer(VIEWS_STREAM, VIEWS_GROUP, consumer["name"])
