"""Webhook endpoints and their deliveries: the rules, as plain functions.

``deliveries_for`` and ``deliveries_for_import`` add one delivery per matching endpoint to
the caller's session, beside the change's event and emails (app/notifications/service.py
``notify`` calls them): a change that commits has its deliveries, one that rolls back has
none. Sending is the worker's (app/notifications/webhooks/sender.py).
"""

from __future__ import annotations

import base64
import os
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update

from app.core.columns import utcnow
from app.core.errors import RuleError
from app.core.extensions import db
from app.core.unit_of_work import note_worker_work
from app.events.models import Event, EventType
from app.notifications.webhooks import destinations, signing
from app.notifications.webhooks.models import (
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)

# What an endpoint may receive: the catalog's events (an account's events hold personal
# data and are not offered).
TYPES = tuple(EventType.product_types())
# Endpoints at most: each has its own series in the metrics.
MAX_ENDPOINTS = 100
# How long the secret before a rotation keeps signing beside the new one.
ROTATION_OVERLAP = timedelta(hours=24)
WORKER_QUEUE = "webhooks"
CHUNK = 1000


def new_webhook_id() -> str:
    """A webhook-id: ``msg_`` and 26 random base32 characters (no dot, as the
    specification asks)."""
    return "msg_" + base64.b32encode(os.urandom(16)).decode().rstrip("=").lower()


def ordering_key(event: Event) -> str:
    """Deliveries with the same key go out in event order: a product's sku (a sku deleted
    and created again stays one line)."""
    return event.sku_key or f"product:{event.product_id}"


# ---------------------------------------------------------------- endpoints


def _checked(url: str) -> str:
    try:
        destinations.check(url)
    except destinations.Refused as exc:
        raise RuleError(422, str(exc), "url") from exc
    return url


def live_endpoints():
    return select(WebhookEndpoint).where(WebhookEndpoint.live()).order_by(WebhookEndpoint.id)


def create_endpoint(url: str, events: list[str], description: str) -> tuple[WebhookEndpoint, str]:
    """A new active endpoint and its secret (the only time the secret is shown)."""
    count = db.session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.live())
    )
    if count >= MAX_ENDPOINTS:
        raise RuleError(409, f"At most {MAX_ENDPOINTS} webhook endpoints; delete one first.")
    secret = signing.new_secret()
    endpoint = WebhookEndpoint(
        url=_checked(url),
        events=events,
        description=description,
        active=True,
        secret=signing.seal(secret),
    )
    db.session.add(endpoint)
    db.session.flush()
    return endpoint, secret


def update_endpoint(endpoint: WebhookEndpoint, data: dict) -> WebhookEndpoint:
    """Change url, events, description or active. Turning an endpoint on again starts it
    afresh: its deliveries still open are sent, oldest first per product."""
    if "url" in data and data["url"] != endpoint.url:
        endpoint.url = _checked(data["url"])
    if "events" in data:
        endpoint.events = data["events"]
    if "description" in data:
        endpoint.description = data["description"]
    if "active" in data and data["active"] != endpoint.active:
        endpoint.active = data["active"]
        endpoint.disabled_reason = None
        endpoint.failing_since = None
        if endpoint.active:
            note_worker_work(db.session, WORKER_QUEUE)
    db.session.flush()
    return endpoint


def delete_endpoint(endpoint: WebhookEndpoint) -> None:
    """Nothing more is sent to it; its delivery log stays in the database."""
    endpoint.deleted_at = utcnow()
    endpoint.active = False
    db.session.flush()


def rotate_secret(endpoint: WebhookEndpoint) -> str:
    """A new secret; the current one keeps signing beside it for ROTATION_OVERLAP."""
    secret = signing.new_secret()
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_until = utcnow() + ROTATION_OVERLAP
    endpoint.secret = signing.seal(secret)
    db.session.flush()
    return secret


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, and the one before it during
    a rotation. SecretUnreadable when SECRET_KEY changed since."""
    found = [signing.unseal(endpoint.secret)]
    until = endpoint.previous_secret_until
    if endpoint.previous_secret and until is not None and until > now:
        found.append(signing.unseal(endpoint.previous_secret))
    return found


# ---------------------------------------------------------------- deliveries of changes


def _receiving(event_type: str) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.live(), WebhookEndpoint.active)
    with db.session.no_autoflush:  # the change's rows go in the commit's one flush
        return [e for e in db.session.scalars(query) if e.receives(event_type)]


def deliveries_for(event: Event) -> list[WebhookDelivery]:
    """One pending delivery of ``event`` per active endpoint that receives its type, in the
    session: sent only if the change commits."""
    if event.type not in TYPES:
        return []
    now = utcnow()
    rows = [
        WebhookDelivery(
            endpoint_id=endpoint.id,
            event=event,
            webhook_id=new_webhook_id(),
            ordering_key=ordering_key(event),
            status=DeliveryStatus.PENDING,
            next_attempt_at=now,
            created_at=now,
        )
        for endpoint in _receiving(event.type)
    ]
    if rows:
        db.session.add_all(rows)
        note_worker_work(db.session, WORKER_QUEUE)
    return rows


def deliveries_for_import(first: Event, count: int) -> int:
    """The deliveries of a catalog import's ``count`` events (sealed already, ids from
    ``first.id`` on), a statement per thousand; how many."""
    endpoints = [e for e in db.session.scalars(live_endpoints()) if e.active]
    if not endpoints:
        return 0
    events = db.session.execute(
        select(Event.row_id, Event.type, Event.sku_key, Event.product_id)
        .where(Event.id >= first.id, Event.id < first.id + count)
        .order_by(Event.id)
    ).all()
    now = utcnow()
    rows = [
        {
            "endpoint_id": endpoint.id,
            "event_row_id": event.row_id,
            "webhook_id": new_webhook_id(),
            "ordering_key": ordering_key(event),
            "status": DeliveryStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for event in events
        for endpoint in endpoints
        if endpoint.receives(event.type)
    ]
    for start in range(0, len(rows), CHUNK):
        db.session.execute(insert(WebhookDelivery.__table__), rows[start : start + CHUNK])
    if rows:
        note_worker_work(db.session, WORKER_QUEUE)
    return len(rows)


# ---------------------------------------------------------------- sending again


def _again(now: datetime) -> dict:
    """What queues a delivery again: due now, a new retry window, no sender holding it."""
    return {
        "status": DeliveryStatus.PENDING.value,
        "next_attempt_at": now,
        "first_attempt_at": None,
        "claim_token": None,
        "claimed_until": None,
    }


def _must_be_active(endpoint: WebhookEndpoint) -> None:
    if not endpoint.active:
        raise RuleError(
            409, f"Webhook {endpoint.id} is disabled: set it active (PATCH) to send to it."
        )


def retry(endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again now, under its webhook-id (after any earlier open delivery of
    the same product to this endpoint, as always)."""
    _must_be_active(endpoint)
    for name, value in _again(utcnow()).items():
        setattr(delivery, name, value)
    db.session.flush()
    note_worker_work(db.session, WORKER_QUEUE)
    return delivery


def replay(endpoint: WebhookEndpoint, after: int) -> int:
    """Queue every event after event ``after`` that the endpoint receives again: a
    delivery it had is sent again under its webhook-id, a missing one (an event from
    before the endpoint, or of a type it did not receive then) is added. How many."""
    _must_be_active(endpoint)
    now = utcnow()
    matching = select(Event.row_id).where(Event.id > after, Event.type.in_(endpoint.events))
    queued = db.session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint.id,
            WebhookDelivery.event_row_id.in_(matching.scalar_subquery()),
        )
        .values(_again(now))
        .execution_options(synchronize_session=False)
    ).rowcount
    had = select(WebhookDelivery.event_row_id).where(WebhookDelivery.endpoint_id == endpoint.id)
    missing = db.session.execute(
        select(Event.row_id, Event.sku_key, Event.product_id)
        .where(Event.id > after, Event.type.in_(endpoint.events), Event.row_id.not_in(had))
        .order_by(Event.id)
    ).all()
    rows = [
        {
            "endpoint_id": endpoint.id,
            "event_row_id": event.row_id,
            "webhook_id": new_webhook_id(),
            "ordering_key": ordering_key(event),
            "attempts": 0,
            "created_at": now,
            **_again(now),
        }
        for event in missing
    ]
    for start in range(0, len(rows), CHUNK):
        db.session.execute(insert(WebhookDelivery.__table__), rows[start : start + CHUNK])
    if queued or rows:
        note_worker_work(db.session, WORKER_QUEUE)
    return queued + len(rows)


# ---------------------------------------------------------------- how they stand


def deliveries(endpoint: WebhookEndpoint, status: str | None):
    """An endpoint's deliveries, newest first (a query to page)."""
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    return query.order_by(WebhookDelivery.id.desc())


OPEN = [status.value for status in DeliveryStatus.open()]
COUNTED = [*OPEN, DeliveryStatus.FAILED.value]


def health(endpoints: list[WebhookEndpoint]) -> dict[int, dict]:
    """Each endpoint's health: its state (healthy, failing, disabled), deliveries waiting
    (pending, retrying) and failed, the age of its oldest open delivery, its last success,
    since when it has been failing, and why the service disabled it."""
    ids = [e.id for e in endpoints]
    counts: dict[tuple[int, str], int] = {}
    oldest: dict[int, datetime] = {}
    if ids:
        in_endpoints = WebhookDelivery.endpoint_id.in_(ids)
        for endpoint_id, status, count in db.session.execute(
            select(WebhookDelivery.endpoint_id, WebhookDelivery.status, func.count())
            .where(in_endpoints, WebhookDelivery.status.in_(COUNTED))
            .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.status)
        ):
            counts[(endpoint_id, status)] = count
        oldest = dict(
            db.session.execute(
                select(WebhookDelivery.endpoint_id, func.min(WebhookDelivery.created_at))
                .where(in_endpoints, WebhookDelivery.status.in_(OPEN))
                .group_by(WebhookDelivery.endpoint_id)
            ).all()
        )
    now = utcnow()
    found = {}
    for endpoint in endpoints:
        since = oldest.get(endpoint.id)
        state = "healthy"
        if not endpoint.active:
            state = "disabled"
        elif endpoint.failing_since is not None:
            state = "failing"
        found[endpoint.id] = {
            "state": state,
            **{status: counts.get((endpoint.id, status), 0) for status in COUNTED},
            "oldest_pending_seconds": round(max((now - since).total_seconds(), 0.0), 3)
            if since is not None
            else 0.0,
            "last_success_at": endpoint.last_success_at,
            "failing_since": endpoint.failing_since,
            "disabled_reason": endpoint.disabled_reason,
        }
    return found


def state() -> dict:
    """For the metrics: open and failed deliveries by status (live endpoints), and each
    live endpoint's oldest open delivery's age."""
    endpoints = list(db.session.scalars(live_endpoints()))
    found = health(endpoints)
    return {
        "deliveries": {s: sum(h[s] for h in found.values()) for s in COUNTED},
        "oldest_pending_seconds": {
            str(e.id): found[e.id]["oldest_pending_seconds"] for e in endpoints
        },
    }
