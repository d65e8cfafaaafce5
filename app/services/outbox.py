"""Product-change emails through a transactional outbox.

``notify`` writes one row per recipient in the caller's transaction. After the commit, a
session listener hands the new rows to this process's dispatcher threads, so the request
never waits for the mailer. ``deliver_due`` (the `flask notifications worker` loop, also
used by the dispatcher) sends whatever is due, including rows a crashed process left.

Each send goes: claim a batch (short transaction, lease) -> renew the row's lease (short
transaction; skipped if another sender holds it now) -> mailer -> mark sent or schedule a
retry (short transaction). A claimed row is invisible to other senders until its lease
expires, so two workers never send the same row.
"""

from __future__ import annotations

import atexit
import html
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from queue import Queue
from typing import TYPE_CHECKING

from flask import Flask, current_app
from sqlalchemy import and_, event, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.database import remove_session_safely
from app.extensions import db
from app.mail import Email, Mailer, build_mailer
from app.models import Notification, NotificationStatus, Role, User, utcnow

if TYPE_CHECKING:
    from app.services.catalog import Change

log = logging.getLogger(__name__)

OUTBOX_KEY = "outbox_ids"
LEASE = timedelta(minutes=5)
Status = NotificationStatus


# ---------------------------------------------------------------- writing the rows


def recipients(actor: User | None) -> list[User]:
    query = select(User).where(User.role == Role.ADMIN, User.is_active).order_by(User.id)
    admins = list(db.session.scalars(query))
    if actor is not None and not current_app.config["NOTIFY_ACTOR"]:
        admins = [admin for admin in admins if admin.id != actor.id]
    return admins


def notify(change: Change) -> list[Notification]:
    """Add one pending email per admin to the session; sent only if the change commits."""
    now = utcnow()
    changes = {field: {"old": old, "new": new} for field, (old, new) in change.changes.items()}
    rows = [
        Notification(
            recipient=admin.email,
            recipient_id=admin.id,
            product_id=change.product.id,
            sku=change.product.sku,
            product_name=change.product.name,
            event=change.event,
            changes=changes,
            actor_id=change.actor.id if change.actor else None,
            actor_name=change.actor.fullname if change.actor else None,
            actor_email=change.actor.email if change.actor else None,
            occurred_at=now,
            next_attempt_at=now,
        )
        for admin in recipients(change.actor)
    ]
    if rows:
        db.session.add_all(rows)
        db.session.flush()
        db.session.info.setdefault(OUTBOX_KEY, []).extend(row.id for row in rows)
    return rows


@event.listens_for(Session, "after_commit")
def _hand_off_after_commit(session: Session) -> None:
    ids = session.info.pop(OUTBOX_KEY, None)
    if ids:
        dispatcher = current_app.extensions.get("outbox")
        if dispatcher is not None:
            dispatcher.submit(ids)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(OUTBOX_KEY, None)


# ---------------------------------------------------------------- the email itself

# What the body lists for each event: the new values, old -> new, or the last values.
HEADINGS = {"created": "Values", "updated": "Changes", "deleted": "Last values"}


def _lines(row: Notification, arrow: str) -> list[str]:
    lines = []
    for field, change in row.changes.items():
        old, new = change["old"], change["new"]
        if row.event == "created":
            lines.append(f"{field}: {new}")
        elif row.event == "deleted":
            lines.append(f"{field}: {old}")
        else:
            lines.append(f"{field}: {old} {arrow} {new}")
    return lines


def render(row: Notification) -> Email:
    """Plain text and HTML bodies from the row's snapshot of the change."""
    actor = (
        f"{row.actor_name} <{row.actor_email}>" if row.actor_email else "an operator (command line)"
    )
    when = row.occurred_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = _lines(row, "->")
    detail = "; ".join(lines) if row.event == "updated" else row.product_name
    subject = f"[Marketplace] Product {row.sku} {row.event}: {detail}"
    if len(subject) > 200:
        subject = subject[:197] + "..."
    heading = HEADINGS[row.event]
    text = (
        "\n".join(
            [
                f"Product {row.sku} ({row.product_name}) was {row.event}.",
                "",
                f"By:   {actor}",
                f"When: {when}",
                "",
                f"{heading}:",
                *(f"  {line}" for line in lines),
            ]
        )
        + "\n"
    )
    items = "".join(f"<li>{html.escape(line)}</li>" for line in _lines(row, "\u2192"))
    body = (
        f"<p>Product <b>{html.escape(row.sku)}</b> ({html.escape(row.product_name)}) "
        f"was {html.escape(row.event)}.</p>"
        f"<p>By: {html.escape(actor)}<br>When: {when}</p>"
        f"<p>{heading}:</p><ul>{items}</ul>"
    )
    return Email(to=row.recipient, subject=subject, text=text, html=body)


# ---------------------------------------------------------------- delivery


def _due(now):
    return and_(
        Notification.status == Status.PENDING,
        Notification.next_attempt_at <= now,
        or_(Notification.claimed_until.is_(None), Notification.claimed_until < now),
    )


@dataclass(frozen=True)
class Claimed:
    """A row this sender holds: what it needs to send and record it, read at claim time."""

    id: int
    token: str
    attempts: int
    email: Email


def claim(limit: int, ids: list[int] | None = None) -> list[Claimed]:
    """Take up to ``limit`` due rows for this sender, in a transaction of their own."""
    now = utcnow()
    token = str(uuid.uuid4())
    due = _due(now)
    claiming = update(Notification).values(
        claim_token=token, claimed_until=now + LEASE, attempts=Notification.attempts + 1
    )
    if db.engine.dialect.name == "sqlite":
        # One writer at a time: a conditional UPDATE is the claim.
        candidates = select(Notification.id).where(due).order_by(Notification.id).limit(limit)
        if ids is not None:
            candidates = candidates.where(Notification.id.in_(ids))
        target = and_(Notification.id.in_(candidates.scalar_subquery()), due)
        db.session.execute(claiming.where(target).execution_options(synchronize_session=False))
        db.session.commit()
        rows = db.session.scalars(select(Notification).where(Notification.claim_token == token))
        return [Claimed(row.id, token, row.attempts, render(row)) for row in rows]
    # MySQL/MariaDB: lock the due rows, skipping those another sender holds; they are ours
    # until the commit, so the update goes by primary key alone. What the sends need is
    # read before the commit: a connection lost after it must not leave rows claimed for
    # a whole lease that this sender never got to see.
    query = select(Notification).where(due).order_by(Notification.id).limit(limit)
    if ids is not None:
        query = query.where(Notification.id.in_(ids))
    rows = list(db.session.scalars(query.with_for_update(skip_locked=True)))
    if not rows:
        db.session.commit()
        return []
    claimed = [Claimed(row.id, token, row.attempts + 1, render(row)) for row in rows]
    db.session.execute(
        claiming.where(Notification.id.in_([row.id for row in claimed])).execution_options(
            synchronize_session=False
        )
    )
    db.session.commit()
    return claimed


def backoff(attempts: int) -> timedelta:
    base = current_app.config["NOTIFY_RETRY_BASE_SECONDS"]
    return timedelta(seconds=min(base * 2 ** (attempts - 1), 3600))


RECORD_RETRY_SECONDS = 120


def _until_the_database_answers(work, row_id: int, what: str):
    """Run a short transaction, retrying while the database is away (for up to
    RECORD_RETRY_SECONDS): giving up would leave a claimed row unsent until its lease
    expires, or a sent email unrecorded, to be sent again."""
    delay, deadline = 0.5, time.monotonic() + RECORD_RETRY_SECONDS
    while True:
        try:
            return work()
        except OperationalError as exc:
            remove_session_safely()
            if time.monotonic() > deadline:
                raise
            log.warning("notification %s: %s failed, retrying: %s", row_id, what, exc.orig)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _finish(row_id: int, token: str, **values) -> None:
    """Record a send's outcome (waiting for the database if it is away)."""

    def record():
        result = db.session.execute(
            update(Notification)
            .where(Notification.id == row_id, Notification.claim_token == token)
            .values(claim_token=None, claimed_until=None, **values)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        return result.rowcount

    if _until_the_database_answers(record, row_id, "recording its result") != 1:
        log.warning("notification %s: lease lost before its result was recorded", row_id)


def _renew(row: Claimed) -> bool:
    """Extend the lease just before sending; False when the row is no longer this sender's
    (its lease ran out while earlier rows of the batch were sent, and another took it)."""

    def renew():
        result = db.session.execute(
            update(Notification)
            .where(
                Notification.id == row.id,
                Notification.claim_token == row.token,
                Notification.status == Status.PENDING,
            )
            .values(claimed_until=utcnow() + LEASE)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        return result.rowcount

    return _until_the_database_answers(renew, row.id, "renewing its lease") == 1


def deliver(row: Claimed, mailer: Mailer) -> bool:
    """Send one claimed row; record success, or the error and when to try again."""
    row_id, token, attempts = row.id, row.token, row.attempts
    if not _renew(row):
        log.warning("notification %s: lease lost before sending; left to its new sender", row_id)
        return False
    try:
        message_id = mailer.send(row.email)
    except Exception as exc:  # any mailer failure is recorded and retried, never raised
        error = f"{type(exc).__name__}: {exc}"[:1000]
        if attempts >= current_app.config["NOTIFY_MAX_ATTEMPTS"]:
            log.error(
                "notification %s failed for good after %s attempts: %s", row_id, attempts, error
            )
            _finish(row_id, token, status=Status.FAILED, last_error=error)
        else:
            log.warning("notification %s attempt %s failed: %s", row_id, attempts, error)
            _finish(row_id, token, last_error=error, next_attempt_at=utcnow() + backoff(attempts))
        return False
    _finish(row_id, token, status=Status.SENT, sent_at=utcnow(), message_id=message_id)
    return True


def deliver_due(mailer: Mailer, limit: int = 20, ids: list[int] | None = None) -> int:
    """Claim and send one batch; return how many rows were attempted."""
    rows = claim(limit, ids)
    for row in rows:
        deliver(row, mailer)
    return len(rows)


def requeue(ids: list[int] | None = None, all_failed: bool = False) -> int:
    """Make failed rows due again (`flask notifications retry`)."""
    query = update(Notification).where(Notification.status == Status.FAILED)
    if not all_failed:
        query = query.where(Notification.id.in_(ids or []))
    result = db.session.execute(
        query.values(
            status=Status.PENDING,
            attempts=0,
            next_attempt_at=utcnow(),
            claim_token=None,
            claimed_until=None,
        ).execution_options(synchronize_session=False)
    )
    db.session.commit()
    return result.rowcount


# ---------------------------------------------------------------- in-process dispatch


class Dispatcher:
    """Background threads that send a commit's emails right after it, off the request."""

    STOP = object()

    def __init__(self, app: Flask):
        self.app = app
        self.queue: Queue = Queue()
        self.threads: list[threading.Thread] = []
        self.pid: int | None = None
        self.lock = threading.Lock()
        self._mailer: Mailer | None = None

    @property
    def mailer(self) -> Mailer:
        if self._mailer is None:
            self._mailer = build_mailer(self.app.config)
        return self._mailer

    def submit(self, ids: list[int]) -> None:
        if not self.app.config["NOTIFY_THREADS"]:
            return  # sending is left to `flask notifications worker`
        self.ensure_started()
        self.queue.put(list(ids))

    def ensure_started(self) -> None:
        # Threads do not survive a fork (uWSGI forks its workers): start them per process.
        if self.pid == os.getpid():
            return
        with self.lock:
            if self.pid == os.getpid():
                return
            self.queue = Queue()
            self.threads = [
                threading.Thread(target=self._run, name=f"outbox-{n}", daemon=True)
                for n in range(self.app.config["NOTIFY_THREADS"])
            ]
            sweep = self.app.config["NOTIFY_SWEEP_SECONDS"]
            if sweep:
                self.threads.append(
                    threading.Thread(
                        target=self._sweep, args=(sweep,), name="outbox-sweep", daemon=True
                    )
                )
            for thread in self.threads:
                thread.start()
            # A graceful stop hands over what is queued before the process exits.
            atexit.register(self.stop)
            self.pid = os.getpid()

    def _run(self) -> None:
        while True:
            ids = self.queue.get()
            try:
                if ids is self.STOP:
                    return
                with self.app.app_context():
                    # One pass: rows another sender claimed first are that sender's.
                    deliver_due(self.mailer, limit=len(ids), ids=ids)
            except Exception:
                # The rows stay pending in the database; the worker will send them.
                log.exception("dispatching notifications %s failed", ids)
            finally:
                with self.app.app_context():
                    db.session.remove()
                self.queue.task_done()

    def _sweep(self, every: float) -> None:
        while True:
            time.sleep(every)
            try:
                with self.app.app_context():
                    deliver_due(self.mailer)
                    db.session.remove()
            except Exception:
                log.exception("sweeping due notifications failed")

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every submitted batch has been handled (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.queue.unfinished_tasks

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued (bounded by ``timeout``), then end the sender threads."""
        if self.pid != os.getpid():
            return
        self.pid = None
        self.wait_idle(timeout)
        for thread in self.threads:
            if thread.name != "outbox-sweep":
                self.queue.put(self.STOP)


def init_app(app: Flask) -> None:
    dispatcher = Dispatcher(app)
    app.extensions["outbox"] = dispatcher
    if app.config["NOTIFY_SWEEP_SECONDS"]:
        # Start the sweeper in each serving process (not in CLI commands).
        app.before_request(dispatcher.ensure_started)


def run_worker(batch: int, poll: float, once: bool, should_stop) -> int:
    """The `flask notifications worker` loop; returns how many rows it attempted."""
    mailer = build_mailer(current_app.config)
    total = 0
    while not should_stop():
        try:
            handled = deliver_due(mailer, limit=batch)
        except OperationalError as exc:
            # Database down or a lock conflict: nothing was lost, try again shortly.
            log.warning("notifications worker: database error, retrying: %s", exc.orig)
            handled = 0
            if once:
                raise
        finally:
            db.session.remove()
        total += handled
        if once and not handled:
            break
        if not handled:
            time.sleep(poll)
    return total
