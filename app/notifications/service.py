"""Who is told about a product change, and what the email says.

``notify`` adds one pending row per admin to the caller's session: the rows commit with
the change or not at all (a transactional outbox). Sending is the worker's (app/worker.py,
through app/notifications/outbox.py); the unit of work wakes it after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from flask import current_app
from sqlalchemy import func, select

from app.accounts.models import Role, User
from app.core.columns import utcnow
from app.core.dates import days
from app.core.dialect import as_date
from app.core.extensions import db
from app.core.unit_of_work import note_worker_work
from app.notifications.models import Notification, NotificationStatus


class Changed(Protocol):
    """What an email needs of the product a change is about."""

    id: int
    sku: str
    name: str


@dataclass(frozen=True)
class Change:
    """What happened to a product, by whom: the material of a notification."""

    product: Changed
    event: str  # "created" | "updated" | "deleted"
    actor: User | None
    changes: dict[str, list]  # field -> [old, new]


def recipients(actor: User | None) -> list[User]:
    query = select(User).where(User.role == Role.ADMIN, User.is_active).order_by(User.id)
    admins = list(db.session.scalars(query))
    if actor is not None and not current_app.config["NOTIFY_ACTOR"]:
        admins = [admin for admin in admins if admin.id != actor.id]
    return admins


def notify(change: Change) -> list[Notification]:
    """Add one pending email per admin to the session; sent only if the change commits."""
    changes = {field: {"old": old, "new": new} for field, (old, new) in change.changes.items()}
    return _email_admins(
        change.actor,
        event=change.event,
        changes=changes,
        product_id=change.product.id,
        sku=change.product.sku,
        product_name=change.product.name,
    )


def _email_admins(actor: User | None, **content) -> list[Notification]:
    """One pending notification row per recipient, in the session: the outbox."""
    now = utcnow()
    rows = [
        Notification(
            recipient=admin.email,
            recipient_id=admin.id,
            actor_id=actor.id if actor else None,
            actor_name=actor.fullname if actor else None,
            actor_email=actor.email if actor else None,
            occurred_at=now,
            next_attempt_at=now,
            **content,
        )
        for admin in recipients(actor)
    ]
    if rows:
        db.session.add_all(rows)
        note_worker_work(db.session)
    return rows


# How many product changes an import's summary email lists (the counts cover them all).
SUMMARY_CHANGES = 20


@dataclass(frozen=True)
class ImportSummary:
    """What a catalog import changed, by whom: the material of one email per admin."""

    actor: User | None
    created: int
    updated: int
    unchanged: int
    # The first SUMMARY_CHANGES changes in file order: (sku, event, {field: [old, new]}).
    changes: list[tuple[str, str, dict[str, list]]]


def notify_import(summary: ImportSummary) -> list[Notification]:
    """Add one pending summary email per admin to the session (event "imported")."""
    content = {
        "created": summary.created,
        "updated": summary.updated,
        "unchanged": summary.unchanged,
        "products": [
            {
                "sku": sku,
                "event": event,
                "changes": {field: {"old": old, "new": new} for field, (old, new) in diff.items()},
            }
            for sku, event, diff in summary.changes[:SUMMARY_CHANGES]
        ],
    }
    return _email_admins(summary.actor, event="imported", changes=content)


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
