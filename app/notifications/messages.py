"""What a product-change email says: its subject, plain text and HTML, rendered from the
change's event with the templates in app/templates/email/ (Jinja: the HTML is escaped).

Rendered by the worker after it has claimed the row, outside the claim's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import render_template
from sqlalchemy import select

from app.accounts.models import User
from app.core.extensions import db
from app.core.text import one_line
from app.events.models import Event
from app.notifications.mailers import Email
from app.notifications.models import Notification, NotificationKind

# What the body lists for each kind of change: the new values, old -> new, or the last ones.
HEADINGS = {"created": "Values", "updated": "Changes", "deleted": "Last values"}
MAX_SUBJECT = 200
# How many product changes an import's summary lists (its counts cover them all).
SUMMARY_CHANGES = 20
WHEN = "%Y-%m-%d %H:%M:%S UTC"


@dataclass(frozen=True)
class Line:
    field: str
    old: str
    new: str


def kind_of(event: Event) -> str:
    """created, updated or deleted: the change an email and the delivery log name."""
    return event.type.rsplit(".", 1)[-1]


def _lines(changes: dict) -> list[Line]:
    return [
        Line(one_line(field), one_line(change.get("old")), one_line(change.get("new")))
        for field, change in changes.items()
    ]


def actors_of(rows: list[Notification]) -> list[User]:
    """The accounts that made the changes of ``rows``, read in one statement: while the
    caller holds them, rendering the rows finds them in the session, not in the
    database."""
    ids = {row.event.actor_id for row in rows if row.event.actor_id is not None}
    return list(db.session.scalars(select(User).where(User.id.in_(ids)))) if ids else []


def _actor(event: Event) -> str:
    if event.actor_id is None:
        return "an operator (command line)"
    user = db.session.get(User, event.actor_id)
    name = user.fullname if user is not None else "someone"
    return one_line(f"{name} <{event.actor_email}>")


def _name(event: Event) -> str:
    """The product's name after the change (the last one, once deleted)."""
    if event.snapshot:
        return one_line(event.snapshot.get("name", ""))
    return one_line((event.changes.get("name") or {}).get("old", ""))


# Where the text names its notification: its last line does, in every template.
ID_MARK = "\x00notification-id\x00"


@dataclass(frozen=True)
class Content:
    subject: str
    text: str  # ends with ID_MARK
    html: str


def render(row: Notification, rendered: dict | None = None) -> Email:
    """The email of one outbox row. ``rendered``: what was rendered already in this batch,
    so that the recipients of one change share its rendering (only the notification id
    at the end of the text is theirs)."""
    key = (row.kind, row.event_row_id, row.event_count)
    content = None if rendered is None else rendered.get(key)
    if content is None:
        content = _content(row)
        if rendered is not None and row.kind != NotificationKind.WEBHOOK_DISABLED:
            rendered[key] = content
    if content is None:  # a template that names the notification elsewhere
        return _email(row, *_template_values(row, row.id))
    return Email(
        to=row.recipient,
        subject=content.subject,
        text=content.text.removesuffix(ID_MARK) + str(row.id),
        html=content.html,
        notification_id=row.id,
    )


def _content(row: Notification) -> Content | None:
    email = _email(row, *_template_values(row, ID_MARK))
    if not email.text.endswith(ID_MARK) or ID_MARK in email.subject + email.html:
        return None
    return Content(email.subject, email.text, email.html)


def _template_values(row: Notification, notification_id) -> tuple[str, dict]:
    if row.kind == NotificationKind.IMPORT:
        return _import_values(row, notification_id)
    if row.kind == NotificationKind.WEBHOOK_DISABLED:
        return _webhook_disabled_values(row, notification_id)
    return _change_values(row, notification_id)


def _change_values(row: Notification, notification_id) -> tuple[str, dict]:
    event, kind = row.event, kind_of(row.event)
    values = {
        "sku": one_line(event.sku),
        "name": _name(event),
        "kind": kind,
        "actor": _actor(event),
        "when": event.at.strftime(WHEN),
        "heading": HEADINGS[kind],
        "lines": _lines(event.changes),
        "reverted_to": event.reverted_to,
        "notification_id": notification_id,
    }
    return "change", values


def _import_values(row: Notification, notification_id) -> tuple[str, dict]:
    """The summary email of one catalog import: counts, then the first changes."""
    first = row.event
    events = db.session.scalars(
        select(Event)
        .where(Event.id >= first.id, Event.id < first.id + row.event_count)
        .order_by(Event.id)
        .limit(SUMMARY_CHANGES)
    )
    products = [
        {"sku": one_line(e.sku), "kind": kind_of(e), "lines": _lines(e.changes)} for e in events
    ]
    created, updated = row.summary["created"], row.summary["updated"]
    counts = f"{created} created, {updated} updated, {row.summary['unchanged']} unchanged"
    values = {
        "counts": counts,
        "changed": created + updated,
        "listed": len(products),
        "products": products,
        "actor": _actor(first),
        "when": first.at.strftime(WHEN),
        "notification_id": notification_id,
    }
    return "import", values


def _webhook_disabled_values(row: Notification, notification_id) -> tuple[str, dict]:
    """The service turned a webhook endpoint off: which, why, and how to turn it on."""
    values = {
        "webhook": row.summary["webhook"],
        "url": one_line(row.summary["url"]),
        "reason": one_line(row.summary["reason"]),
        "event_id": row.event.id,
        "when": row.created_at.strftime(WHEN),
        "notification_id": notification_id,
    }
    return "webhook_disabled", values


def _email(row: Notification, template: str, values: dict) -> Email:
    subject = one_line(render_template(f"email/{template}_subject.txt", **values))
    if len(subject) > MAX_SUBJECT:
        subject = subject[: MAX_SUBJECT - 3] + "..."
    return Email(
        to=row.recipient,
        subject=subject,
        text=render_template(f"email/{template}.txt", **values),
        html=render_template(f"email/{template}.html", **values),
        notification_id=row.id,
    )


def delivery_changes(row: Notification) -> dict:
    """What the delivery log shows as a row's ``changes``: its event's; for an import's
    summary the counts and the first products changed (``products: [{sku, event,
    changes}]``); for a disabled webhook, which and why (``{webhook, url, reason}``)."""
    if row.kind == NotificationKind.CHANGE:
        return row.event.changes
    if row.kind == NotificationKind.WEBHOOK_DISABLED:
        return row.summary
    events = db.session.scalars(
        select(Event)
        .where(Event.id >= row.event.id, Event.id < row.event.id + row.event_count)
        .order_by(Event.id)
        .limit(SUMMARY_CHANGES)
    )
    products = [{"sku": e.sku, "event": kind_of(e), "changes": e.changes} for e in events]
    return {**row.summary, "products": products}
