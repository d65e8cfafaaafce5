"""Who is told about a product change.

``notify`` adds one pending email row per admin and one delivery per webhook endpoint
that receives the event to the caller's session, each referencing the change's event:
they commit with the change or not at all (a transactional outbox). Sending is the
worker's (app/worker.py, through app/notifications/outbox.py and
app/notifications/webhooks/sender.py); the unit of work wakes it after the commit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import func, select

from app.accounts.models import Role, User
from app.core.columns import utcnow
from app.core.dates import days
from app.core.dialect import as_date
from app.core.extensions import db
from app.core.unit_of_work import note_worker_work
from app.events.models import Event
from app.notifications.models import Notification, NotificationKind, NotificationStatus
from app.notifications.webhooks import service as webhooks
from app.notifications.webhooks.models import WebhookEndpoint


def recipients(actor_id: int | None) -> list[tuple[int, str]]:
    """The admins to email about a change, (id, email) (its actor too, unless
    NOTIFY_ACTOR is off)."""
    query = (
        select(User.id, User.email).where(User.role == Role.ADMIN, User.is_active).order_by(User.id)
    )
    with db.session.no_autoflush:  # the change's rows go in the commit's one flush
        admins = [tuple(admin) for admin in db.session.execute(query)]
    if actor_id is not None and not current_app.config["NOTIFY_ACTOR"]:
        admins = [admin for admin in admins if admin[0] != actor_id]
    return admins


def notify(event: Event) -> list[Notification]:
    """One pending email per admin about ``event``, and its webhook deliveries, in the
    session: sent only if the change commits. The emails."""
    webhooks.deliveries_for(event)
    return _email_admins(event.actor_id, event=event)


def notify_import(first: Event, count: int, summary: dict) -> list[Notification]:
    """One pending summary email per admin about a catalog import: its ``count`` events
    from ``first`` on, and ``summary`` ({"created", "updated", "unchanged"}); and a webhook
    delivery of each event per endpoint that receives it. The emails."""
    webhooks.deliveries_for_import(first, count)
    return _email_admins(
        first.actor_id,
        event=first,
        event_count=count,
        summary=summary,
        kind=NotificationKind.IMPORT,
    )


def notify_webhook_disabled(endpoint: WebhookEndpoint, event_row_id: int) -> list[Notification]:
    """One email per admin: the service turned ``endpoint`` off (``disabled_reason``);
    ``event_row_id`` is the event of the delivery that failed last."""
    summary = {"webhook": endpoint.id, "url": endpoint.url, "reason": endpoint.disabled_reason}
    return _email_admins(
        None, event_row_id=event_row_id, summary=summary, kind=NotificationKind.WEBHOOK_DISABLED
    )


def _email_admins(actor_id: int | None, **content) -> list[Notification]:
    now = utcnow()
    rows = [
        Notification(recipient=email, recipient_id=admin_id, next_attempt_at=now, **content)
        for admin_id, email in recipients(actor_id)
    ]
    if rows:
        db.session.add_all(rows)
        note_worker_work(db.session)
    return rows


# ---------------------------------------------------------------- delivery summary


def delivery_summary(count: int) -> dict:
    """How the emails of the last ``count`` UTC days (today included) stand, per day of
    their creation and status, and in all."""
    end = utcnow().date()
    start = end - timedelta(days=count - 1)
    since = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    day = func.date(Notification.created_at)
    counts = {
        (as_date(created), status): int(count)
        for created, status, count in db.session.execute(
            select(day, Notification.status, func.count())
            .where(Notification.created_at >= since)
            .group_by(day, Notification.status)
        )
    }
    by_day = [
        {"date": day, **{status: counts.get((day, status), 0) for status in STATUSES}}
        for day in days(start, end)
    ]
    totals = {status: sum(d[status] for d in by_day) for status in STATUSES}
    return {"start": start, "end": end, "days": count, **totals, "by_day": by_day}


STATUSES = [status.value for status in NotificationStatus]
