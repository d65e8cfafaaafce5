"""The claim protocol of the email rows: how a sender takes a row, sends it once, and
records what happened.

A row's life::

    pending --claim--> pending+lease --start--> sending --SES accepted--> sent
                 ^                          |             \\--SES refused--> pending (backoff)
                 |                          |                               or failed
                 +------- release ----------+              \\--no answer----> unknown

    SES throttled it (its rate) or its daily quota is spent: pending again, the attempt
    not counted (tried again in a second, or in QUOTA_WAIT with the reason in last_error).

- ``claim`` takes a few due rows for one sender with a short lease (``claim_token`` and
  ``claimed_until``): another sender skips them until the lease ends.
- ``start`` marks the row ``sending`` (committed) just before SES is called, if the lease
  is still this sender's. From then on the row is never sent again by itself.
- A sender that cannot record SES's answer (the database is away) keeps the answer and
  retries until the database answers; while it lives, its row is never taken for
  abandoned, however long the database was away.
- A ``sending`` row whose sender died (its lease ran out without a result) becomes
  ``unknown``, as does a send SES may have taken without answering (a timeout): it shows
  in ``GET /api/notifications?status=unknown`` and is resent only on purpose
  (`flask notifications retry --unknown`).
- A graceful stop releases the rows a sender claimed but has not started.
- A row whose recipient is on the suppression list (app/notifications/suppressions.py)
  becomes ``suppressed`` when claimed: never handed to SES.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import OperationalError

from app.core import dialect
from app.core.batches import per_row
from app.core.columns import utcnow
from app.core.extensions import db
from app.notifications import suppressions
from app.notifications.mailers import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    Email,
    Mailer,
    NotAccepted,
    OutcomeUnknown,
    QuotaExceeded,
    Throttled,
)
from app.notifications.messages import actors_of, render
from app.notifications.models import (
    HANDED_TO_SES,
    Notification,
    NotificationStatus,
    NotificationTry,
)

log = logging.getLogger(__name__)

Status = NotificationStatus
# A claimed row not yet started is another sender's after this long.
CLAIM_LEASE = timedelta(seconds=60)
# How long a sender keeps trying to mark a row ``sending`` while the database is away
# (nothing is lost by giving up: the row is still pending). SES's answer, once had, is
# recorded however long it takes.
RECORD_RETRY_SECONDS = 20
# A row being sent: longer than the longest SES call plus the time to record its start
# and its result (each retried while the database is away), so a live sender is never
# taken for a dead one.
SEND_LEASE = timedelta(seconds=CONNECT_TIMEOUT + READ_TIMEOUT + 2 * RECORD_RETRY_SECONDS + 10)
# SES throttled a send (its rate): sent again this soon, the attempt not counted.
THROTTLED_RETRY = timedelta(seconds=1)
# SES's 24-hour quota is spent: the email waits this long between tries, pending, with
# this reason (the metrics count the emails waiting so).
QUOTA_WAIT = timedelta(minutes=5)
QUOTA_REASON = "waiting for SES's daily sending quota"


@dataclass(frozen=True)
class Claimed:
    """A row this sender holds: what it needs to send and record it, read at claim time."""

    id: int
    token: str
    attempts: int
    email: Email


def _due(now):
    return and_(
        Notification.status == Status.PENDING,
        Notification.next_attempt_at <= now,
        or_(Notification.claimed_until.is_(None), Notification.claimed_until < now),
    )


def _by_ids(ids: list[int]):
    return update(Notification).where(Notification.id.in_(ids))


def _execute(statement) -> int:
    result = db.session.execute(statement.execution_options(synchronize_session=False))
    db.session.commit()
    return result.rowcount


def claim(limit: int) -> list[Claimed]:
    """Take up to ``limit`` due rows for this sender (committed), then read what their
    sends need. Rows to suppressed addresses are written off on the way; a batch only
    of those is not the end of the due ones, so the next batch is taken."""
    while True:
        now = utcnow()
        token = uuid.uuid4().hex
        ids = dialect.claim(
            Notification,
            _due(now),
            Notification.id,
            limit,
            {"claim_token": token, "claimed_until": now + CLAIM_LEASE},
        )
        if not ids:
            return []
        rows = list(
            db.session.scalars(
                select(Notification).where(
                    Notification.id.in_(ids), Notification.claim_token == token
                )
            )
        )
        suppressed = suppressions.among({row.recipient for row in rows})
        claimed, rendered, _actors = [], {}, actors_of(rows)
        for row in rows:
            if (entry := suppressed.get(row.recipient)) is not None:
                # Never handed to SES: written off at once, the batch's others go out.
                row.status = Status.SUPPRESSED
                row.claim_token = row.claimed_until = None
                row.last_error = f"the address is suppressed ({entry.reason})"
                log.info("notification %s: suppressed (%s)", row.id, entry.reason)
            else:
                claimed.append(Claimed(row.id, token, row.attempts, render(row, rendered)))
        db.session.commit()
        if claimed or not rows:
            return claimed


# The rows this process's senders are sending, or hold SES's answer for.
_held: set[int] = set()
_held_lock = threading.Lock()


@contextmanager
def _holding(row_ids: set[int]) -> Iterator[None]:
    with _held_lock:
        _held.update(row_ids)
    try:
        yield
    finally:
        with _held_lock:
            _held.difference_update(row_ids)


def held() -> set[int]:
    with _held_lock:
        return set(_held)


def _until_the_database_answers(
    work: Callable[[], int],
    row_id: int,
    what: str,
    seconds: float | None = RECORD_RETRY_SECONDS,
    stopping: threading.Event | None = None,
) -> int:
    """Run a short transaction, retrying while the database is away: for ``seconds``, or
    with None until it answers, or, once ``stopping`` is set, for RECORD_RETRY_SECONDS
    more (a process asked to stop does not hang on a database that is gone)."""
    delay = 0.5
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        try:
            return work()
        except OperationalError as exc:
            db.session.rollback()
            if deadline is None and stopping is not None and stopping.is_set():
                deadline = time.monotonic() + RECORD_RETRY_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                raise
            log.warning("notification %s: %s failed, retrying: %s", row_id, what, exc.orig)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def start(rows: list[Claimed]) -> set[int]:
    """Mark claimed rows ``sending`` just before SES is called, in one statement; the ids
    still ours (the others were taken back: their lease ran out)."""
    ids = [row.id for row in rows]
    token = rows[0].token
    statement = (
        _by_ids(ids)
        .where(Notification.claim_token == token, Notification.status == Status.PENDING)
        .values(
            status=Status.SENDING,
            attempts=Notification.attempts + 1,
            claimed_until=utcnow() + SEND_LEASE,
        )
    )
    first = ids[0]
    if _until_the_database_answers(lambda: _execute(statement), first, "starting") == len(ids):
        return set(ids)
    # Some rows were not marked now: taken back, or (a retry after a lost answer to the
    # COMMIT) marked already, by this sender, as no other sender has its claim token.
    return _until_the_database_answers(lambda: _marked_by(ids, token), first, "checking")


def _marked_by(ids: list[int], token: str) -> set[int]:
    marked = set(
        db.session.scalars(
            select(Notification.id).where(
                Notification.id.in_(ids),
                Notification.claim_token == token,
                Notification.status == Status.SENDING,
            )
        )
    )
    db.session.commit()
    return marked


@dataclass(frozen=True)
class Tried:
    """What SES answered to one row's send, held until the database has it."""

    row: Claimed
    status: str  # the row's new status (or "throttled", "quota": pending again)
    values: dict  # the row's new values
    kept: dict  # the try itself: when, what, how long


def _finish(tried: list[Tried], stopping: threading.Event | None) -> None:
    """Record the results on their rows and keep the tries, in one transaction of two
    statements, if the rows are still this sender's; however long the database takes to
    answer, unless the process is stopping. When some row changed meanwhile, each row is
    recorded on its own, so that only this sender's rows get its results."""
    token = tried[0].row.token
    columns = sorted({column for t in tried for column in t.values})
    table = Notification.__table__

    def value_of(column: str):
        setting = {t.row.id: t.values[column] for t in tried if column in t.values}
        return per_row(table.c[column], table.c.id, setting, len(tried))

    statement = (
        _by_ids([t.row.id for t in tried])
        .where(Notification.claim_token == token)
        .values(
            claim_token=None,
            claimed_until=None,
            **{column: value_of(column) for column in columns},
        )
        .execution_options(synchronize_session=False)
    )

    def record() -> int:
        changed = db.session.execute(statement).rowcount
        if changed != len(tried):
            db.session.rollback()
            return changed
        db.session.execute(insert(NotificationTry), [t.kept for t in tried])
        db.session.commit()
        return changed

    first = tried[0].row.id
    if _until_the_database_answers(
        record, first, "recording", seconds=None, stopping=stopping
    ) == len(tried):
        return
    if len(tried) > 1:
        for one in tried:
            _finish([one], stopping)
        return
    log.warning("notification %s: its row changed before its result was recorded", first)


def backoff(attempts: int) -> timedelta:
    base = current_app.config["NOTIFY_RETRY_BASE_SECONDS"]
    return timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), 3600))


def deliver(
    rows: list[Claimed], mailer: Mailer, stopping: threading.Event | None = None
) -> list[str]:
    """Send claimed rows (of one claim) once each and record what SES answered: the rows
    marked ``sending`` in one statement, their results in one transaction. Each row's new
    status, in order ("lost" if another took it). ``stopping``: the worker's stop request.

    The caller hands over as many rows as may be sent now (the pace): one at a time when
    SES's rate is the limit, the claim's whole batch when it is not."""
    ours = start(rows)
    statuses = {row.id: "lost" for row in rows if row.id not in ours}
    for row_id in statuses:
        log.warning("notification %s: lease lost before sending; left to its new sender", row_id)
    sending = [row for row in rows if row.id in ours]
    tried: list[Tried] = []
    with _holding({row.id for row in sending}):
        try:
            for row in sending:
                tried.append(_send(row, mailer))
        finally:
            # What SES answered is recorded even when a send failed unexpectedly; that
            # row stays `sending` (unknown once its lease ends); the rows after it were
            # never handed to SES and are due again.
            if tried:
                _finish(tried, stopping)
            if unsent := sending[len(tried) + 1 :]:
                _unstart(unsent)
    statuses.update((t.row.id, t.status) for t in tried)
    return [statuses[row.id] for row in rows]


def _unstart(rows: list[Claimed]) -> None:
    """Rows marked ``sending`` but never handed to SES: pending again, their attempt not
    counted."""
    statement = (
        _by_ids([row.id for row in rows])
        .where(Notification.claim_token == rows[0].token, Notification.status == Status.SENDING)
        .values(
            status=Status.PENDING,
            attempts=Notification.attempts - 1,
            claim_token=None,
            claimed_until=None,
        )
    )
    _until_the_database_answers(lambda: _execute(statement), rows[0].id, "giving back")


def _send(row: Claimed, mailer: Mailer) -> Tried:
    """Send the row's email once: what SES answered, to record."""
    started = time.monotonic()
    status, outcome, values = _answer(row, mailer)
    kept = {
        "notification_id": row.id,
        "at": utcnow(),
        "outcome": outcome,
        "error": values.get("last_error"),
        "duration_ms": round((time.monotonic() - started) * 1000),
    }
    return Tried(row, status, values, kept)


def _answer(row: Claimed, mailer: Mailer) -> tuple[str, str, dict]:
    """SES's answer: the row's new status, the try's outcome and the row's new values."""
    attempts = row.attempts + 1
    try:
        message_id = mailer.send(row.email)
    except Throttled as exc:
        log.info("notification %s: throttled by SES, sent again shortly: %s", row.id, exc)
        again = {
            "status": Status.PENDING,
            "attempts": row.attempts,
            "next_attempt_at": utcnow() + THROTTLED_RETRY,
        }
        return "throttled", "throttled", again
    except QuotaExceeded as exc:
        log.warning("notification %s: %s", row.id, exc)
        wait = {
            "status": Status.PENDING,
            "attempts": row.attempts,
            "last_error": f"{QUOTA_REASON}: {exc}"[:1000],
            "next_attempt_at": utcnow() + QUOTA_WAIT,
        }
        return "quota", "quota", wait
    except NotAccepted as exc:
        error = str(exc)[:1000]
        if attempts >= current_app.config["NOTIFY_MAX_ATTEMPTS"]:
            log.error(
                "notification %s failed for good after %s attempts: %s", row.id, attempts, error
            )
            return Status.FAILED, "failed", {"status": Status.FAILED, "last_error": error}
        log.warning("notification %s attempt %s failed: %s", row.id, attempts, error)
        retry = {
            "status": Status.PENDING,
            "last_error": error,
            "next_attempt_at": utcnow() + backoff(attempts),
        }
        return Status.PENDING, "retry", retry
    except OutcomeUnknown as exc:
        error = f"outcome unknown: {exc}"[:1000]
        log.error("notification %s: %s; not resent (flask notifications retry)", row.id, error)
        return Status.UNKNOWN, "unknown", {"status": Status.UNKNOWN, "last_error": error}
    sent = {
        "status": Status.SENT,
        "sent_at": utcnow(),
        "message_id": message_id,
        "last_error": None,
    }
    return Status.SENT, "sent", sent


def release(rows: list[Claimed]) -> int:
    """Give back claimed rows not started (a graceful stop): due again at once."""
    released = 0
    for token in {row.token for row in rows}:
        ids = [row.id for row in rows if row.token == token]
        released += _execute(
            _by_ids(ids)
            .where(Notification.claim_token == token, Notification.status == Status.PENDING)
            .values(claim_token=None, claimed_until=None)
        )
    return released


def expire_abandoned_sends() -> list[int]:
    """Rows left ``sending`` past their lease, by a sender no longer sending or holding
    them: their outcome is unknown. This process's own live senders' rows are never
    taken, however long the database was away; the claim token stays, so a live sender
    of another process cut off past its lease still records what SES answered when it
    gets through."""
    now = utcnow()
    abandoned = and_(Notification.status == Status.SENDING, Notification.claimed_until < now)
    if alive := held():
        abandoned = and_(abandoned, Notification.id.not_in(alive))
    ids = list(db.session.scalars(select(Notification.id).where(abandoned)))
    if not ids:
        db.session.commit()
        return []
    _execute(
        _by_ids(ids)
        .where(abandoned)
        .values(
            status=Status.UNKNOWN,
            claimed_until=None,
            last_error="outcome unknown: the sender stopped during the send",
        )
    )
    for row_id in ids:
        log.error("notification %s: its sender stopped during the send; outcome unknown", row_id)
    return ids


def requeue(
    ids: list[int] | None = None, *, all_failed: bool = False, all_unknown: bool = False
) -> int:
    """Make failed or unknown rows due again (`flask notifications retry`)."""
    statuses = [Status.FAILED, Status.UNKNOWN]
    query = update(Notification).where(Notification.status.in_(statuses))
    if all_failed or all_unknown:
        chosen = [s for s, on in ((Status.FAILED, all_failed), (Status.UNKNOWN, all_unknown)) if on]
        query = query.where(or_(Notification.status.in_(chosen), Notification.id.in_(ids or [])))
    else:
        query = query.where(Notification.id.in_(ids or []))
    return _execute(
        query.values(
            status=Status.PENDING,
            attempts=0,
            next_attempt_at=utcnow(),
            claim_token=None,
            claimed_until=None,
        )
    )


def state() -> dict:
    """Rows by status and the age of the oldest pending one (for the metrics)."""
    counts = dict.fromkeys((s.value for s in Status), 0)
    for status, count in db.session.execute(
        select(Notification.status, func.count()).group_by(Notification.status)
    ):
        counts[status] = count
    oldest = db.session.scalar(
        select(func.min(Notification.created_at)).where(Notification.status == Status.PENDING)
    )
    age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
    waiting = db.session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(
            Notification.status == Status.PENDING,
            Notification.last_error.startswith(QUOTA_REASON, autoescape=True),
        )
    )
    return {
        "notifications": counts,
        "oldest_pending_seconds": max(age, 0.0),
        "waiting_for_quota": waiting,
        "rates": {window: _rates(utcnow() - span) for window, span in RATE_WINDOWS.items()},
    }


# The windows of the bounce and complaint rates (SES reviews an account on its recent
# sending; these show the service's own share).
RATE_WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}


def _rates(since) -> dict:
    """Of the emails SES took since ``since`` (by ``sent_at``), the share that bounced
    and the share that complained (0 when none was sent)."""
    counts = dict(
        db.session.execute(
            select(Notification.status, func.count())
            .where(Notification.sent_at >= since, Notification.status.in_(HANDED_TO_SES))
            .group_by(Notification.status)
        ).all()
    )
    handed = sum(counts.values())
    if not handed:
        return {"bounce": 0.0, "complaint": 0.0}
    return {
        "bounce": counts.get(Status.BOUNCED, 0) / handed,
        "complaint": counts.get(Status.COMPLAINED, 0) / handed,
    }
