"""The worker process, `flask worker`: the one place where background work happens.

- Views: reads the Redis views stream in a consumer group, writes each batch (raw rows
  with their entry ids, and the roll-ups) in one transaction, then acknowledges it.
  Entries a dead consumer left pending are reclaimed (XAUTOCLAIM); what every consumer
  has acknowledged is trimmed from the stream.
- Emails: a few sender threads claim due rows (app/outbox.py) and send them, each send
  at the pace SES allows (app/notifications/pace.py: a token bucket, in Redis shared by
  every worker process); a commit that adds emails wakes one at once (a Redis list), and
  they poll the database besides. After a claim smaller than WORKER_BATCH, a sender lets
  the next emails gather for WORKER_LINGER_SECONDS.
- Webhooks: one thread claims due deliveries, several per transaction, as many as there
  are free places among WEBHOOK_CONCURRENCY sending threads, which post them; the same
  thread then records the attempts that have finished, together, in one transaction
  (app/notifications/webhooks/sender.py). A commit that adds deliveries wakes it (a Redis
  list of its own), and so does each finished attempt (once recorded, the next event of
  that product may be due); it polls besides. After a claim smaller than it asked for, it
  lets deliveries gather for WEBHOOK_LINGER_SECONDS before the next. Emails and webhooks
  never share a thread: a slow endpoint does not hold an email back.
- SES events: with SES_EVENTS_QUEUE_URL, one thread long-polls the SQS queue of SES's
  events and applies each (app/notifications/ses_events.py): deliveries, bounces,
  complaints; a message is deleted once its effect is committed.
- Housekeeping: sends abandoned by a dead sender become ``unknown``; expired idempotency
  keys, commit receipts and the revocations of expired tokens are deleted.

SIGTERM or SIGINT is a graceful stop: each thread finishes what it is doing (one batch
of views, one email, the webhook attempts under way), claimed emails not yet started are
released, and the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import redis
from flask import Flask
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from app.accounts import service as accounts
from app.core import idempotency, logs, metrics, redis_client
from app.core.extensions import db
from app.notifications import outbox, ses_events
from app.notifications.mailers import build_mailer
from app.notifications.pace import Pace
from app.notifications.webhooks import sender as webhooks
from app.views import stream

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 5.0
PRUNE_SECONDS = 300.0
FINAL_DRAIN_SECONDS = 5.0
# A sender claims no more emails than the pace lets it send in this long: half the lease
# of a claimed row.
CLAIM_WITHIN = outbox.CLAIM_LEASE.total_seconds() / 2
# A consumer gone this long with nothing pending is forgotten by the group.
FORGET_CONSUMER_MS = 3_600_000


def _safe_remove() -> None:
    try:
        db.session.remove()
    except SQLAlchemyError:
        db.session.registry.clear()


class Worker:
    def __init__(self, app: Flask, stopping: threading.Event | None = None):
        self.app = app
        config = app.config
        self.senders = config["WORKER_SENDERS"]
        self.batch = config["WORKER_BATCH"]
        self.poll = config["WORKER_POLL_SECONDS"]
        self.email_linger = config["WORKER_LINGER_SECONDS"]
        self.name = config["WORKER_NAME"] or f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = stopping or threading.Event()  # set: stop (see stop())
        self.linger = config["VIEWS_LINGER_SECONDS"]
        self.webhook_places = config["WEBHOOK_CONCURRENCY"]
        self.webhook_batch = config["WEBHOOK_BATCH"]
        self.webhook_linger = config["WEBHOOK_LINGER_SECONDS"]
        self.webhook_work = threading.Event()
        self.webhooks_posted: queue.SimpleQueue[webhooks.Attempted] = queue.SimpleQueue()
        self.webhooks_in_flight = 0
        self.flight_lock = threading.Lock()
        url = config["REDIS_URL"]
        # Blocking reads: the socket waits longer than any block.
        self.redis = redis_client.connect(url, timeout=self.poll + 10) if url else None
        # Redis, when there is one, shares the send rate between every worker process.
        self.pace = Pace(config, build_mailer(config), self.redis)
        queue_url = config["SES_EVENTS_QUEUE_URL"]
        self.ses_events = (
            ses_events.EventsQueue(queue_url, config["REGION_NAME"]) if queue_url else None
        )
        self.consumer = (
            stream.ViewsConsumer(
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
        rows = outbox.claim(self.pace.claimable(self.batch, self.senders, CLAIM_WITHIN))
        index = 0
        while index < len(rows):
            if self.stopping.is_set() or not self.pace.wait(self.stopping):
                released = outbox.release(rows[index:])
                log.info("worker: released %s claimed email(s) on stop", released)
                break
            # As many as the pace allows now go out together (recorded together).
            end = index + 1
            while end < len(rows) and self.pace.take_now():
                end += 1
            with logs.bind(notification_id=rows[index].id):
                for status in outbox.deliver(rows[index:end], mailer, self.stopping):
                    metrics.EMAILS.labels(status).inc()
            index = end
        _safe_remove()
        return len(rows)

    def _wait_for_emails(self) -> None:
        if self.redis is None:
            self.stopping.wait(self.poll)
            return
        try:
            self.redis.blpop([redis_client.WAKE_LIST], timeout=self.poll)
        except redis.RedisError:
            self.stopping.wait(self.poll)

    def _sender(self) -> None:
        with self.app.app_context():
            mailer = build_mailer(self.app.config)
            while not self.stopping.is_set():
                sent = self._guarded("sending emails", lambda: self._send_once(mailer))
                if not sent:
                    self._wait_for_emails()
                elif sent < self.batch:
                    # A part batch: the emails of the next changes gather for a moment, so
                    # that one claim serves several changes under a steady stream of them.
                    self.stopping.wait(self.email_linger)

    # ------------------------------------------------------------ webhooks

    def _flying(self, change: int = 0) -> int:
        with self.flight_lock:
            self.webhooks_in_flight += change
            return self.webhooks_in_flight

    def _webhooks(self) -> None:
        """Record the attempts that have finished, then claim due deliveries for the free
        sending places; wait when there is nothing to do."""
        pool = ThreadPoolExecutor(self.webhook_places, thread_name_prefix="webhook")
        with self.app.app_context():
            while not self.stopping.is_set():
                self.webhook_work.clear()
                self._record_webhooks()
                wanted = min(self.webhook_places - self._flying(), self.webhook_batch)
                claimed = None
                if wanted > 0:
                    claimed = self._guarded("claiming webhooks", partial(webhooks.claim, wanted))
                    _safe_remove()
                if claimed:
                    for row in claimed:
                        self._flying(+1)
                        pool.submit(self._post_webhook, row)
                    if len(claimed) < wanted:
                        # A part batch: the first delivery has gone at once; let the next
                        # ones gather (one claim and one record per several deliveries,
                        # not per delivery, under a steady stream of changes).
                        self.stopping.wait(self.webhook_linger)
                    continue
                self.webhook_work.wait(self.poll)
            pool.shutdown(wait=True)  # the attempts under way finish (WEBHOOK_TIMEOUT_SECONDS)
            self._record_webhooks()

    def _post_webhook(self, row: webhooks.Claimed) -> None:
        """On a sending thread: one POST; its answer waits for ``_record_webhooks``."""
        try:
            with self.app.app_context(), logs.bind(webhook_id=row.webhook_id):
                self.webhooks_posted.put(webhooks.post(row))
        except Exception:
            log.exception("worker: sending webhook %s failed", row.webhook_id)
            self._flying(-1)
        finally:
            self.webhook_work.set()

    def _record_webhooks(self) -> None:
        """Record every attempt that has finished, in one transaction (each a sending
        place again once recorded; the next delivery of its product may be due)."""
        posted = []
        with contextlib.suppress(queue.Empty):
            while True:
                posted.append(self.webhooks_posted.get_nowait())
        if posted:
            self._guarded("recording webhook attempts", partial(webhooks.record, posted))
            _safe_remove()
            self._flying(-len(posted))

    def _webhook_wakeups(self) -> None:
        """Redis: a commit that added deliveries wakes the webhook thread at once."""
        while not self.stopping.is_set():
            try:
                if self.redis.blpop([redis_client.WAKE_LISTS["webhooks"]], timeout=self.poll):
                    self.webhook_work.set()
            except redis.RedisError:
                self.stopping.wait(self.poll)

    # ------------------------------------------------------------ views

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

    # ------------------------------------------------------------ SES events

    def _ses_events(self) -> None:
        """Long-poll SES's events queue and apply what arrives."""
        with self.app.app_context():
            while not self.stopping.is_set():
                self._guarded("reading SES events", self.ses_events.step, pause=5.0)
                _safe_remove()

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
        threads.append(threading.Thread(target=self._webhooks, name="webhooks"))
        if self.redis is not None:
            threads.append(threading.Thread(target=self._webhook_wakeups, name="webhook-wakeups"))
        if self.consumer is not None:
            threads.append(threading.Thread(target=self._views, name="views"))
        if self.ses_events is not None:
            threads.append(threading.Thread(target=self._ses_events, name="ses-events"))
        log.info(
            "worker %s: %s sender(s), mail backend %s, %s webhook sender(s), views stream %s, "
            "SES events %s",
            self.name,
            self.senders,
            self.app.config["MAIL_BACKEND"],
            self.webhook_places,
            "on" if self.consumer is not None else "off (no REDIS_URL)",
            "on" if self.ses_events is not None else "off (no SES_EVENTS_QUEUE_URL)",
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log.info("worker %s: stopped", self.name)

    def drain(self) -> tuple[int, int]:
        """Apply every view in the stream, send every email due now and apply SES's events
        queued now, then return
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
            if self.ses_events is not None:
                while self.ses_events.step(wait=False):
                    pass
            _safe_remove()
        return entries, emails

    def drain_webhooks(self) -> int:
        """Attempt every webhook delivery due now, each product's in order (the next one
        is due once the one before is delivered), then return how many attempts were made:
        `flask worker --once`."""
        attempted = 0
        with self.app.app_context():
            while rows := webhooks.claim(self.webhook_batch):
                posted = []
                for row in rows:
                    with logs.bind(webhook_id=row.webhook_id):
                        posted.append(webhooks.post(row))
                webhooks.record(posted)
                attempted += len(rows)
                _safe_remove()
            _safe_remove()
        return attempted
