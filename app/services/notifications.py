"""Who is told about a product change, and what the email says.

``notify`` adds one pending row per admin to the caller's session: the rows commit with
the change or not at all (a transactional outbox). Sending is the worker's (app/worker.py,
through app/outbox.py); after the commit a session listener only wakes it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from flask import Flask, current_app
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from app import streams
from app.extensions import db
from app.fields import CONTROL_CHARACTERS
from app.mail import Email
from app.models import Notification, NotificationStatus, Product, Role, User, utcnow

# Set on the session when it holds new rows; read by the after-commit wake-up.
PENDING_KEY = "notifications_added"


@dataclass(frozen=True)
class Change:
    """What happened to a product, by whom: the material of a notification."""

    product: Product
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
        db.session.info[PENDING_KEY] = True
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


def _wake_after_commit(session: Session) -> None:
    if session.info.pop(PENDING_KEY, False):
        streams.wake_worker()


def _forget_after_rollback(session: Session) -> None:
    session.info.pop(PENDING_KEY, None)


def init_app(app: Flask) -> None:
    """After a commit that added emails, wake the worker (it sends; nothing here does)."""
    if not event.contains(Session, "after_commit", _wake_after_commit):
        event.listen(Session, "after_commit", _wake_after_commit)
        event.listen(Session, "after_rollback", _forget_after_rollback)


# What the body lists for each event: the new values, old -> new, or the last values.
HEADINGS = {"created": "Values", "updated": "Changes", "deleted": "Last values"}
MAX_SUBJECT = 200


def one_line(value) -> str:
    """A stored value as one line of the email (rows written before control characters
    were refused at the API could hold some)."""
    return CONTROL_CHARACTERS.sub(" ", str(value))


def _lines(row: Notification, arrow: str) -> list[str]:
    lines = []
    for field, change in row.changes.items():
        old, new = one_line(change["old"]), one_line(change["new"])
        if row.event == "created":
            lines.append(f"{field}: {new}")
        elif row.event == "deleted":
            lines.append(f"{field}: {old}")
        else:
            lines.append(f"{field}: {old} {arrow} {new}")
    return lines


def _actor(row: Notification) -> str:
    if row.actor_email:
        return one_line(f"{row.actor_name} <{row.actor_email}>")
    return "an operator (command line)"


def _import_lines(row: Notification, arrow: str) -> list[str]:
    """One line per product of an import's summary: what changed, field old -> new."""
    lines = []
    for product in row.changes["products"]:
        changes = product["changes"]
        if product["event"] == "created":
            values = [f"{field}: {one_line(c['new'])}" for field, c in changes.items()]
        else:
            values = [
                f"{field}: {one_line(c['old'])} {arrow} {one_line(c['new'])}"
                for field, c in changes.items()
            ]
        lines.append(f"{one_line(product['sku'])} {product['event']}: " + "; ".join(values))
    return lines


def render_import(row: Notification) -> Email:
    """The summary email of one catalog import: counts, then the first changes."""
    summary = row.changes
    created, updated, unchanged = summary["created"], summary["updated"], summary["unchanged"]
    counts = f"{created} created, {updated} updated, {unchanged} unchanged"
    when = row.occurred_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    changed = created + updated
    listed = len(summary["products"])
    noun = "product" if changed == 1 else "products"
    heading = f"Changes (the first {listed} of {changed}):" if listed < changed else "Changes:"
    lines = _import_lines(row, "->")
    text = (
        "\n".join(
            [
                f"A catalog import changed {changed} {noun}: {counts}.",
                "",
                f"By:   {_actor(row)}",
                f"When: {when}",
                "",
                heading,
                *(f"  {line}" for line in lines),
                "",
                f"Notification {row.id}",
            ]
        )
        + "\n"
    )
    items = "".join(f"<li>{html.escape(line)}</li>" for line in _import_lines(row, "\u2192"))
    body = (
        f"<p>A catalog import changed {changed} {noun}: {counts}.</p>"
        f"<p>By: {html.escape(_actor(row))}<br>When: {when}</p>"
        f"<p>{heading}</p><ul>{items}</ul>"
    )
    subject = f"[Marketplace] Catalog import: {counts}"
    return Email(to=row.recipient, subject=subject, text=text, html=body, notification_id=row.id)


def render(row: Notification) -> Email:
    """Plain text and HTML bodies from the row's snapshot of the change."""
    if row.event == "imported":
        return render_import(row)
    actor = _actor(row)
    sku, name = one_line(row.sku), one_line(row.product_name)
    when = row.occurred_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = _lines(row, "->")
    detail = "; ".join(lines) if row.event == "updated" else name
    subject = f"[Marketplace] Product {sku} {row.event}: {detail}"
    if len(subject) > MAX_SUBJECT:
        subject = subject[: MAX_SUBJECT - 3] + "..."
    heading = HEADINGS[row.event]
    text = (
        "\n".join(
            [
                f"Product {sku} ({name}) was {row.event}.",
                "",
                f"By:   {actor}",
                f"When: {when}",
                "",
                f"{heading}:",
                *(f"  {line}" for line in lines),
                "",
                f"Notification {row.id}",
            ]
        )
        + "\n"
    )
    items = "".join(f"<li>{html.escape(line)}</li>" for line in _lines(row, "\u2192"))
    body = (
        f"<p>Product <b>{html.escape(sku)}</b> ({html.escape(name)}) "
        f"was {html.escape(row.event)}.</p>"
        f"<p>By: {html.escape(actor)}<br>When: {when}</p>"
        f"<p>{heading}:</p><ul>{items}</ul>"
    )
    return Email(to=row.recipient, subject=subject, text=text, html=body, notification_id=row.id)


# ---------------------------------------------------------------- delivery summary


def delivery_summary(days: int) -> dict:
    """How the emails of the last ``days`` UTC days (today included) stand, per day of
    their creation and status, and in all."""
    end = utcnow().date()
    start = end - timedelta(days=days - 1)
    since = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    day = func.date(Notification.created_at)
    counts = {
        (_as_date(created), status): int(count)
        for created, status, count in db.session.execute(
            select(day, Notification.status, func.count())
            .where(Notification.created_at >= since)
            .group_by(day, Notification.status)
        )
    }
    by_day = []
    for offset in range(days):
        date_ = start + timedelta(days=offset)
        by_day.append(
            {"date": date_, **{status: counts.get((date_, status), 0) for status in STATUSES}}
        )
    totals = {status: sum(d[status] for d in by_day) for status in STATUSES}
    return {"start": start, "end": end, "days": days, **totals, "by_day": by_day}


STATUSES = [status.value for status in NotificationStatus]


def _as_date(value) -> date:
    """DATE() answers a date on MariaDB and its ISO text on SQLite."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))
