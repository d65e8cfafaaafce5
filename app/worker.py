"""The worker process, `flask worker`: the one place where background work happens.

- Views: reads the Redis views stream in a consumer group, writes each batch (raw rows
  with their entry ids, and the roll-ups) in one transaction, then acknowledges it.
  Entries a dead consumer left pending are reclaimed (XAUTOCLAIM); what every consumer
  has acknowledged is trimmed from the stream.
- Emails: a few sender threads claim due rows (app/outbox.py) and send them; a commit
  that adds emails wakes one at once (a Redis list), and they poll the database besides.
- Housekeeping: sends abandoned by a dead sender become ``unknown``; expired idempotency
  keys, commit receipts and the revocations of expired tokens are deleted.

SIGTERM or SIGINT is a graceful stop: each thread finishes what it is doing (one batch
of views, one email), claimed emails not yet started are released, and the process exits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import redis
from flask import Flask
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from app import logs, metrics, outbox, streams
from app.extensions import db
from app.mail import build_mailer
from app.services import accounts, idempotency, tracking

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 5.0
PRUNE_SECONDS = 300.0
FINAL_DRAIN_SECONDS = 5.0
# A consumer gone this long with nothing pending is forgotten by the group.
FORGET_CONSUMER_MS = 3_600_000


def _safe_remove() -> None:
    try:
        db.session.remove()
    except SQLAlchemyError:
        db.session.registry.clear()


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
            self.conn.xgroup_create(
                streams.VIEWS_STREAM, streams.VIEWS_GROUP, id="0", mkstream=True
            )
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
            streams.VIEWS_GROUP,
            self.name,
            {streams.VIEWS_STREAM: start},
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
                views.append(tracking.View(*streams.parse_view(fields), stream_id=entry_id))
            except (KeyError, ValueError, TypeError, OverflowError):
                metrics.VIEWS_LOST.inc()
                log.error("views stream entry %s is malformed, skipped: %r", entry_id, fields)
        try:
            written = tracking.write_views(views)
        except SQLAlchemyError:
            self.backlog = True  # read them again from this consumer's pending list
            raise
        self.conn.xack(streams.VIEWS_STREAM, streams.VIEWS_GROUP, *[e[0] for e in entries])
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
                streams.VIEWS_STREAM,
                streams.VIEWS_GROUP,
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
        groups = {g["name"]: g for g in self.conn.xinfo_groups(streams.VIEWS_STREAM)}
        delivered = groups[streams.VIEWS_GROUP]["last-delivered-id"]
        pending = self.conn.xpending(streams.VIEWS_STREAM, streams.VIEWS_GROUP)
        oldest_needed = pending["min"] if pending["pending"] else delivered
        if oldest_needed and oldest_needed != "0-0":
            self.conn.xtrim(streams.VIEWS_STREAM, minid=oldest_needed, approximate=False)
        for consumer in self.conn.xinfo_consumers(streams.VIEWS_STREAM, streams.VIEWS_GROUP):
            if (
                consumer["name"] != self.name
                and consumer["pending"] == 0
                and consumer["idle"] > FORGET_CONSUMER_MS
            ):
                self.conn.xgroup_delconsumer(
                    streams.VIEWS_STREAM, streams.VIEWS_GROUP, consumer["name"]
                )


class Worker:
    def __init__(self, app: Flask):
        self.app = app
        config = app.config
        self.senders = config["WORKER_SENDERS"]
        self.batch = config["WORKER_BATCH"]
        self.poll = config["WORKER_POLL_SECONDS"]
        self.name = config["WORKER_NAME"] or f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = threading.Event()
        self.linger = config["VIEWS_LINGER_SECONDS"]
        url = config["REDIS_URL"]
        # Blocking reads: the socket waits longer than any block.
        self.redis = streams.connect(url, timeout=self.poll + 10) if url else None
        self.consumer = (
            ViewsConsumer(
                self.redis,
                self.name,
                batch=config["VIEWS_BATCH"],
                block_ms=1000,
                idle_ms=int(config["VIEWS_RECLAIM_SECONDS"] * 1000),
            )
            if self.redis is not None
            else None
        )

    def stop(self) -> None:
        self.stopping.set()

    # ------------------------------------------------------------ the loops

    def _guarded(self, what: str, work: Callable[[], object], pause: float = 1.0) -> object:
        """Run one unit of work; a database or Redis outage is logged and waited out."""
        try:
            return work()
        except (OperationalError, redis.RedisError) as exc:
            log.warning("worker: %s failed, retrying: %s", what, exc)
            _safe_remove()
            self.stopping.wait(pause)
        except Exception:
            log.exception("worker: %s failed", what)
            _safe_remove()
            self.stopping.wait(pause)
        return None

    def _send_once(self, mailer) -> int:
        rows = outbox.claim(self.batch)
        for index, row in enumerate(rows):
            if self.stopping.is_set():
                released = outbox.release(rows[index:])
                log.info("worker: released %s claimed email(s) on stop", released)
                break
            with logs.bind(notification_id=row.id):
                metrics.EMAILS.labels(outbox.deliver(row, mailer)).inc()
        _safe_remove()
        return len(rows)

    def _wait_for_emails(self) -> None:
        if self.redis is None:
            self.stopping.wait(self.poll)
            return
        try:
            self.redis.blpop([streams.WAKE_LIST], timeout=self.poll)
        except redis.RedisError:
            self.stopping.wait(self.poll)

    def _sender(self) -> None:
        with self.app.app_context():
            mailer = build_mailer(self.app.config)
            while not self.stopping.is_set():
                if not self._guarded("sending emails", lambda: self._send_once(mailer)):
                    self._wait_for_emails()

    def _views(self) -> None:
        last_upkeep = 0.0
        with self.app.app_context():
            self._guarded("creating the views group", self.consumer.ensure_group)
            while not self.stopping.is_set():
                read = self._guarded("writing views", self.consumer.step)
                if read is not None and read < self.consumer.batch:
                    # A part batch: let the stream fill a little. One transaction per
                    # few hundred views, not per view, keeps the database's and the
                    # worker's cost per view small (a view waits this long at most).
                    self.stopping.wait(self.linger)
                if time.monotonic() - last_upkeep > HOUSEKEEPING_SECONDS:
                    self._guarded("reclaiming views", self.consumer.reclaim)
                    self._guarded("trimming the views stream", self.consumer.trim)
                    last_upkeep = time.monotonic()
            # Stopping: write what the stream holds now (the last reads before the web
            # workers stopped), for a few seconds at most; anything later waits in Redis
            # for the next worker.
            deadline = time.monotonic() + FINAL_DRAIN_SECONDS
            while time.monotonic() < deadline and self._guarded(
                "writing the last views", lambda: self.consumer.step(block=False), pause=0.2
            ):
                pass

    def _housekeeping(self) -> None:
        last_prune = 0.0
        with self.app.app_context():
            while not self.stopping.wait(HOUSEKEEPING_SECONDS):
                self._guarded("expiring abandoned sends", outbox.expire_abandoned_sends)
                if time.monotonic() - last_prune > PRUNE_SECONDS:
                    self._guarded("pruning idempotency keys", idempotency.prune)
                    self._guarded("pruning revoked tokens", accounts.prune_revoked_tokens)
                    last_prune = time.monotonic()
                _safe_remove()

    # ------------------------------------------------------------ running

    def run(self) -> None:
        """Run until stop() (a signal): the threads finish their current work first."""
        threads = [threading.Thread(target=self._housekeeping, name="housekeeping")]
        threads += [
            threading.Thread(target=self._sender, name=f"sender-{n}") for n in range(self.senders)
        ]
        if self.consumer is not None:
            threads.append(threading.Thread(target=self._views, name="views"))
        log.info(
            "worker %s: %s sender(s), mail backend %s, views stream %s",
            self.name,
            self.senders,
            self.app.config["MAIL_BACKEND"],
            "on" if self.consumer is not None else "off (no REDIS_URL)",
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log.info("worker %s: stopped", self.name)

    def drain(self) -> tuple[int, int]:
        """Apply every view in the stream and send every email due now, then return
        (views entries, emails attempted): `flask worker --once`."""
        entries = emails = 0
        with self.app.app_context():
            outbox.expire_abandoned_sends()
            if self.consumer is not None:
                self.consumer.ensure_group()
                while count := self.consumer.step(block=False):
                    entries += count
                entries += self.consumer.reclaim()
                self.consumer.trim()
            mailer = build_mailer(self.app.config)
            while count := self._send_once(mailer):
                emails += count
            _safe_remove()
        return entries, emails
