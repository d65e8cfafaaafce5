"""Sending webhook deliveries: the claim, the attempts, and what their answers decide.

A delivery's life::

    pending --claim--> pending+lease --POST--> 2xx in time --------------> delivered
                ^                         \\--> anything else --> retrying (backoff)
                |                          \\                   or failed (past the window)
                +-- lease runs out (the sender died) --+        410: the endpoint disabled

- ``claim`` takes several due deliveries in one transaction, each with a lease. Due: open,
  its time come, its endpoint active, and no earlier delivery of the same product to the
  same endpoint still open, so one product's events go out one at a time, in order,
  while other products' go on.
- ``post`` checks the URL's addresses again (SSRF, DNS rebinding), signs and posts one
  delivery; ``record`` then keeps the attempts of several (the posts that finished while
  the last were being recorded) and their deliveries' new status in one transaction, if
  the leases are still this sender's (else each on its own: only those still held).
- A sender that dies holding a lease (kill -9, a lost database) leaves the delivery open:
  once the lease runs out it is sent again, under the same webhook-id. Receivers see a
  delivery at least once and never under two ids; they de-duplicate by webhook-id.

Retries: the n-th retry waits WEBHOOK_RETRY_BASE_SECONDS x 2^(n-1), at most 6 hours, and
up to a quarter more at random (jitter), or what a Retry-After answer asks when that is
longer. A delivery still refused RETRY_WINDOW after its first attempt is ``failed``. An
endpoint whose attempts have failed for DISABLE_AFTER without a success, or that
answered 410 Gone, is turned off, and the admins are emailed.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from flask import current_app
from sqlalchemy import and_, exists, insert, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import aliased, joinedload

from app.core import dialect, metrics
from app.core.batches import per_row
from app.core.columns import utcnow
from app.core.extensions import db
from app.events.models import Event
from app.notifications.service import notify_webhook_disabled
from app.notifications.webhooks import destinations, service, transport
from app.notifications.webhooks.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from app.notifications.webhooks.signing import SecretUnreadable, signatures

log = logging.getLogger(__name__)
T = TypeVar("T")

Status = DeliveryStatus
RETRY_WINDOW = timedelta(hours=72)
DISABLE_AFTER = timedelta(days=5)
MAX_DELAY = timedelta(hours=6)
JITTER = 0.25
# How long a sender keeps trying to record an attempt while the database is away.
RECORD_RETRY_SECONDS = 20
# A success updates the endpoint's last success at most this often (one row, many senders).
SUCCESS_MARK_SECONDS = 60


@dataclass(frozen=True)
class Claimed:
    """A delivery this sender holds, with all an attempt needs (read at claim time)."""

    id: int
    token: str
    webhook_id: str
    endpoint_id: int
    event_row_id: int
    url: str
    body: bytes
    attempts: int
    first_attempt_at: datetime | None
    secrets: tuple[str, ...]
    secret_error: str | None = None


def lease() -> timedelta:
    """A claimed delivery is another sender's after this long: longer than one attempt and
    the recording of its result (retried while the database is away)."""
    timeout = current_app.config["WEBHOOK_TIMEOUT_SECONDS"]
    return timedelta(seconds=timeout + RECORD_RETRY_SECONDS + 10)


def payload(event: Event) -> bytes:
    """The body: {"type", "timestamp", "data": {event_id, sku, version, changes, actor,
    product}}, compact JSON (what is signed is exactly what is sent)."""
    data = {
        "event_id": event.id,
        "sku": event.sku,
        "version": event.version,
        "changes": event.changes,
        "actor": None
        if event.actor_id is None
        else {"id": event.actor_id, "email": event.actor_email},
        "product": event.snapshot,
    }
    if event.reverted_to is not None:
        data["reverted_to"] = event.reverted_to
    body = {"type": event.type, "timestamp": event.at.isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- claiming


# An earlier delivery of the same product to the same endpoint (made once: an alias is
# costly to build).
_EARLIER = aliased(WebhookDelivery)


def _due(now: datetime, endpoint_ids: list[int]):
    delivery, earlier = WebhookDelivery, _EARLIER
    blocked = exists().where(
        earlier.endpoint_id == delivery.endpoint_id,
        earlier.ordering_key == delivery.ordering_key,
        earlier.status.in_(Status.open()),
        earlier.event_row_id < delivery.event_row_id,
    )
    return and_(
        delivery.status.in_(Status.open()),
        delivery.next_attempt_at <= now,
        or_(delivery.claimed_until.is_(None), delivery.claimed_until < now),
        delivery.endpoint_id.in_(endpoint_ids),
        ~blocked,
    )


def claim(limit: int) -> list[Claimed]:
    """Take up to ``limit`` due deliveries for this sender in one transaction (committed),
    then read what their attempts need."""
    now = utcnow()
    endpoint_ids = list(
        db.session.scalars(
            select(WebhookEndpoint.id).where(WebhookEndpoint.live(), WebhookEndpoint.active)
        )
    )
    if not endpoint_ids:
        db.session.commit()
        return []
    token = uuid.uuid4().hex
    ids = dialect.claim(
        WebhookDelivery,
        _due(now, endpoint_ids),
        WebhookDelivery.id,
        limit,
        {"claim_token": token, "claimed_until": now + lease()},
    )
    if not ids:
        return []
    # Each with its event and its endpoint (URL and secrets as they are now), in one read.
    rows = db.session.scalars(
        select(WebhookDelivery)
        .options(joinedload(WebhookDelivery.endpoint))
        .where(WebhookDelivery.id.in_(ids), WebhookDelivery.claim_token == token)
        .order_by(WebhookDelivery.id)
    )
    claimed = [_claimed(row, token, now) for row in rows]
    db.session.commit()
    return claimed


def _claimed(row: WebhookDelivery, token: str, now) -> Claimed:
    endpoint = row.endpoint
    secrets, secret_error = (), None
    try:
        secrets = tuple(service.signing_secrets(endpoint, now))
    except SecretUnreadable as exc:
        secret_error = str(exc)
    return Claimed(
        id=row.id,
        token=token,
        webhook_id=row.webhook_id,
        endpoint_id=row.endpoint_id,
        event_row_id=row.event_row_id,
        url=endpoint.url,
        body=payload(row.event),
        attempts=row.attempts,
        first_attempt_at=row.first_attempt_at,
        secrets=secrets,
        secret_error=secret_error,
    )


# ---------------------------------------------------------------- attempts


@dataclass(frozen=True)
class Attempted:
    """One POST of a claimed delivery, begun at ``began``, and its answer: to be recorded."""

    row: Claimed
    answer: transport.Answer
    began: datetime


def post(row: Claimed) -> Attempted:
    """Post one claimed delivery once (``record`` keeps what came of it)."""
    began = utcnow()
    answer = _post(row, current_app.config["WEBHOOK_TIMEOUT_SECONDS"])
    metrics.WEBHOOK_ATTEMPT_SECONDS.observe(answer.duration_ms / 1000)
    return Attempted(row, answer, began)


def _post(row: Claimed, timeout: float) -> transport.Answer:
    if row.secret_error:
        return transport.Answer(None, 0, error=row.secret_error)
    started = time.monotonic()
    try:
        destination = destinations.check(row.url)
    except destinations.Refused as exc:
        took = round((time.monotonic() - started) * 1000)
        return transport.Answer(None, took, error=f"not sent: {exc}")
    timestamp = int(time.time())
    headers = {
        "webhook-id": row.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures(list(row.secrets), row.webhook_id, timestamp, row.body),
    }
    remaining = timeout - (time.monotonic() - started)
    answer = transport.post(destination, headers, row.body, remaining)
    took = round((time.monotonic() - started) * 1000)
    return transport.Answer(
        answer.status_code, took, answer.error, answer.excerpt, answer.retry_after
    )


def delay(attempts: int, retry_after: float | None = None) -> timedelta:
    """How long to wait after ``attempts`` refused attempts: exponential, capped, with
    jitter; at least what Retry-After asked (capped too)."""
    base = current_app.config["WEBHOOK_RETRY_BASE_SECONDS"]
    seconds = min(base * 2 ** max(attempts - 1, 0), MAX_DELAY.total_seconds())
    seconds *= 1 + random.uniform(0, JITTER)
    if retry_after:
        seconds = max(seconds, min(retry_after, MAX_DELAY.total_seconds()))
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class _Result:
    """What an attempt changes: the delivery's new status and values, the attempt's row."""

    attempted: Attempted
    outcome: str
    values: dict
    kept: dict


def _result(attempted: Attempted, now: datetime) -> _Result:
    row, answer, began = attempted.row, attempted.answer, attempted.began
    first = row.first_attempt_at or began
    attempts = row.attempts + 1
    values: dict = {"attempts": attempts, "first_attempt_at": first}
    if answer.delivered:
        outcome = Status.DELIVERED.value
        values.update(status=Status.DELIVERED, delivered_at=now)
    elif now - first >= RETRY_WINDOW:
        outcome = Status.FAILED.value
        values.update(status=Status.FAILED)
    else:
        outcome = Status.RETRYING.value
        values.update(
            status=Status.RETRYING, next_attempt_at=now + delay(attempts, answer.retry_after)
        )
    kept = {
        "delivery_id": row.id,
        "at": began,
        "status_code": answer.status_code,
        "duration_ms": answer.duration_ms,
        "error": answer.error,
        "response_excerpt": answer.excerpt,
    }
    return _Result(attempted, outcome, values, kept)


def record(attempted: list[Attempted]) -> list[str]:
    """Keep the attempts and their deliveries' new status, with the endpoints' health, in
    one transaction of a few statements, if every delivery is still this sender's (its
    claim token); else each on its own, so that only the deliveries still held get their
    result. Each one's new status, in order ("gone" when its 410 disabled the endpoint,
    "lost" when another sender had taken the delivery)."""
    now = utcnow()
    results = [_result(one, now) for one in attempted]
    outcomes = _until_the_database_answers(lambda: _kept(results, now), attempted[0].row.webhook_id)
    if outcomes is None and len(results) > 1:
        return [outcome for one in attempted for outcome in record([one])]
    if outcomes is None:
        log.warning(
            "webhook %s: its lease ran out before its result was kept", attempted[0].row.webhook_id
        )
        outcomes = ["lost"]
    for result, outcome in zip(results, outcomes, strict=True):
        row, answer = result.attempted.row, result.attempted.answer
        metrics.WEBHOOKS.labels(outcome).inc()
        if answer.delivered:
            log.info("webhook %s delivered (%s ms)", row.webhook_id, answer.duration_ms)
        elif outcome != "lost":
            log.warning("webhook %s attempt %s: %s", row.webhook_id, row.attempts + 1, answer.error)
    return outcomes


def _kept(results: list[_Result], now: datetime) -> list[str] | None:
    """One transaction: the deliveries (if still held), their attempts, the endpoints'
    health. The outcomes, or None (nothing written) when a delivery was no longer held."""
    deliveries = WebhookDelivery.__table__  # plain statements: no ORM objects to keep in step
    ids = [result.attempted.row.id for result in results]
    tokens = {result.attempted.row.id: result.attempted.row.token for result in results}
    columns = sorted({column for result in results for column in result.values})

    def value_of(column: str):
        setting = {r.attempted.row.id: r.values[column] for r in results if column in r.values}
        return per_row(deliveries.c[column], deliveries.c.id, setting, len(results))

    held = per_row(deliveries.c.claim_token, deliveries.c.id, tokens, len(results))
    changed = db.session.execute(
        update(deliveries)
        .where(deliveries.c.id.in_(ids), deliveries.c.claim_token == held)
        .values(
            claim_token=None,
            claimed_until=None,
            **{column: value_of(column) for column in columns},
        )
    ).rowcount
    if changed != len(results):
        db.session.rollback()
        return None
    db.session.execute(insert(WebhookAttempt.__table__), [result.kept for result in results])
    outcomes, marked = [], set()
    for result in results:
        row, answer = result.attempted.row, result.attempted.answer
        outcome = result.outcome
        if answer.delivered:
            if row.endpoint_id not in marked and _succeeded(row.endpoint_id, now):
                marked.add(row.endpoint_id)
        else:
            marked.discard(row.endpoint_id)  # the endpoint is failing again
            if _failed(row, now, gone=answer.status_code == 410) and answer.status_code == 410:
                outcome = "gone"
        outcomes.append(outcome)
    db.session.commit()
    for endpoint_id in marked:
        _healthy(endpoint_id)
    return outcomes


# When this process's app last marked each endpoint healthy (monotonic seconds): a
# success within SUCCESS_MARK_SECONDS of it needs no statement.
_marked_lock = threading.Lock()


def _marks() -> dict[int, float]:
    return current_app.extensions.setdefault("webhook_health_marks", {})


def _succeeded(endpoint_id: int, now: datetime) -> bool:
    """Mark the endpoint healthy, unless this process did so lately; whether it did now
    (the caller notes it once committed: ``_healthy``)."""
    with _marked_lock:
        last = _marks().get(endpoint_id)
    if last is not None and time.monotonic() - last < SUCCESS_MARK_SECONDS:
        return False
    endpoint = WebhookEndpoint.__table__.c
    stale = now - timedelta(seconds=SUCCESS_MARK_SECONDS)
    db.session.execute(
        update(WebhookEndpoint.__table__)
        .where(
            endpoint.id == endpoint_id,
            or_(
                endpoint.failing_since.is_not(None),
                endpoint.last_success_at.is_(None),
                endpoint.last_success_at < stale,
            ),
        )
        .values(failing_since=None, last_success_at=now)
    )
    return True


def _healthy(endpoint_id: int) -> None:
    with _marked_lock:
        _marks()[endpoint_id] = time.monotonic()


def _failed(row: Claimed, now: datetime, gone: bool) -> bool:
    """Note the endpoint failing; turn it off after a 410, or after DISABLE_AFTER of
    failures (then email the admins). Whether this attempt turned it off."""
    with _marked_lock:  # the next success marks it healthy again at once
        _marks().pop(row.endpoint_id, None)
    endpoint = WebhookEndpoint
    db.session.execute(
        update(endpoint)
        .where(endpoint.id == row.endpoint_id, endpoint.failing_since.is_(None))
        .values(failing_since=now)
        .execution_options(synchronize_session=False)
    )
    if gone:
        reason = "it answered 410 Gone"
        when = endpoint.active.is_(True)
    else:
        days = DISABLE_AFTER.days
        reason = f"every attempt failed for {days} days"
        when = and_(endpoint.active.is_(True), endpoint.failing_since <= now - DISABLE_AFTER)
    turned_off = db.session.execute(
        update(endpoint)
        .where(endpoint.id == row.endpoint_id, when)
        .values(active=False, disabled_reason=reason)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not turned_off:
        return False
    disabled = db.session.get(WebhookEndpoint, row.endpoint_id, populate_existing=True)
    notify_webhook_disabled(disabled, row.event_row_id)
    log.error("webhook endpoint %s disabled: %s", row.endpoint_id, reason)
    return True


def _until_the_database_answers(work: Callable[[], T], webhook_id: str) -> T:
    """Run a short transaction, retrying while the database is away."""
    pause, deadline = 0.5, time.monotonic() + RECORD_RETRY_SECONDS
    while True:
        try:
            return work()
        except OperationalError as exc:
            db.session.rollback()
            if time.monotonic() > deadline:
                raise
            log.warning("webhook %s: recording failed, retrying: %s", webhook_id, exc.orig)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
