"""The suppression list: addresses the service no longer emails.

An address that bounced for good, or whose owner complained, is put here by SES's events
(app/notifications/ses_events.py). An email to it is written off as ``suppressed`` when a
sender claims it, never handed to SES (each bounce or complaint costs the account's
reputation with SES); the other admins' emails go out as usual. An admin lifts an entry
(``DELETE /api/suppressions/<email>``) once the address works again: the emails of later
changes go to it; those already suppressed stay so.

Addresses are compared in their canonical form, the accounts' own
(app/core/addresses.py ``lookup_email``): ``Admin@Example.COM`` is ``admin@example.com``.
"""

from __future__ import annotations

from sqlalchemy import delete, select

from app.core import dialect
from app.core.addresses import lookup_email
from app.core.columns import utcnow
from app.core.extensions import db
from app.notifications.models import Suppression


def suppress(address: str, reason: str, notification_id: int | None) -> None:
    """Put ``address`` on the list in the session, unless it is already there (its first
    reason and time stay)."""
    values = {
        "email": lookup_email(address),
        "reason": reason,
        "since": utcnow(),
        "notification_id": notification_id,
    }
    db.session.execute(dialect.insert_ignore(Suppression.__table__).values(**values))


def lift(address: str) -> bool:
    """Take ``address`` off the list (in the session); False if it was not on it."""
    result = db.session.execute(
        delete(Suppression).where(Suppression.email == lookup_email(address))
    )
    return result.rowcount == 1


def among(addresses: set[str]) -> dict[str, Suppression]:
    """The entries of those of ``addresses`` that are suppressed (matched in canonical
    form), by the address as given."""
    keys = {address: lookup_email(address) for address in addresses}
    if not keys:
        return {}
    entries = {
        entry.email: entry
        for entry in db.session.scalars(
            select(Suppression).where(Suppression.email.in_(set(keys.values())))
        )
    }
    return {address: entries[key] for address, key in keys.items() if key in entries}


def listing():
    """The query of every entry, newest first (for the paginated list)."""
    return select(Suppression).order_by(Suppression.since.desc(), Suppression.email)
