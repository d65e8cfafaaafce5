"""What a product-change email says: subject, plain text and HTML, from its outbox row."""

from __future__ import annotations

import html

from app.core.text import one_line
from app.notifications.mailers import Email
from app.notifications.models import Notification

# What the body lists for each event: the new values, old -> new, or the last values.
HEADINGS = {"created": "Values", "updated": "Changes", "deleted": "Last values"}
MAX_SUBJECT = 200


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
