"""The outbox: one row per email to one admin."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.columns import TABLE_ARGS, UTCDateTime, key_string, utcnow
from app.core.extensions import db
from app.events.models import BIG_ID, Event


class NotificationStatus(enum.StrEnum):
    PENDING = "pending"  # due (now or after a backoff), possibly claimed by a sender
    SENDING = "sending"  # handed to SES; never sent again by itself
    SENT = "sent"  # accepted by SES
    FAILED = "failed"  # SES refused it NOTIFY_MAX_ATTEMPTS times, or rejected it after taking it
    UNKNOWN = "unknown"  # SES may or may not have taken it: resent only on purpose
    # What SES's events (app/notifications/ses_events.py) tell of an email it took:
    DELIVERED = "delivered"  # the recipient's mail server accepted it
    BOUNCED = "bounced"  # a permanent bounce: the address is suppressed
    COMPLAINED = "complained"  # the recipient marked it as spam: the address is suppressed
    SUPPRESSED = "suppressed"  # never handed to SES: its address is on the suppression list


# Emails SES took: what the bounce and complaint rates are rates of.
HANDED_TO_SES = (
    NotificationStatus.SENT,
    NotificationStatus.DELIVERED,
    NotificationStatus.BOUNCED,
    NotificationStatus.COMPLAINED,
)


class NotificationKind(enum.StrEnum):
    CHANGE = "change"  # one product change
    IMPORT = "import"  # a catalog import's summary
    WEBHOOK_DISABLED = "webhook_disabled"  # the service turned a webhook endpoint off


class Notification(db.Model):
    """One email to one admin about one change event (or, for a catalog import, about the
    import's events): the transactional outbox.

    Written in the same transaction as the change and its event. A row is *claimed* by a
    sender for a short lease (``claim_token``/``claimed_until``) while its email is handed
    to the mailer, so two senders never send the same row; a lease left by a crashed
    process expires and the row becomes due again. Each try is kept (``tries``).
    """

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_due", "status", "next_attempt_at"),
        Index("ix_notifications_message_id", "message_id"),
        Index("ix_notifications_sent_at", "sent_at"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The change it tells of. An import's summary tells of ``event_count`` events: this
    # one and those sealed right after it (one transaction's events have consecutive ids).
    event_row_id: Mapped[int] = mapped_column(BIG_ID, ForeignKey("events.row_id"), index=True)
    event_count: Mapped[int] = mapped_column(default=1)
    kind: Mapped[str] = mapped_column(
        String(20), default=NotificationKind.CHANGE, server_default=NotificationKind.CHANGE
    )
    # An import's summary: {"created", "updated", "unchanged"}; a disabled webhook:
    # {"webhook", "url", "reason"} (its event: the delivery that failed last). None for
    # one change.
    summary: Mapped[dict | None] = mapped_column(JSON)
    recipient: Mapped[str] = mapped_column(String(254))
    recipient_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default=NotificationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    claim_token: Mapped[str | None] = mapped_column(String(36), index=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    event: Mapped[Event] = relationship(lazy="joined", innerjoin=True)
    tries: Mapped[list[NotificationTry]] = relationship(
        order_by="NotificationTry.id", lazy="select", viewonly=True
    )

    def __repr__(self) -> str:
        return f"<Notification {self.id} event {self.event_row_id} -> {self.recipient}>"


class NotificationTry(db.Model):
    """One try at sending an email: when, what came of it, how long it took."""

    __tablename__ = "notification_tries"
    __table_args__ = (
        Index("ix_notification_tries_notification", "notification_id", "id"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # sent, retry (refused, tried again later), failed (refused for good), unknown.
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(1000))
    duration_ms: Mapped[int | None] = mapped_column()


class SuppressionReason(enum.StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"


class Suppression(db.Model):
    """An address the service no longer emails: it bounced for good or complained. Its
    emails are written ``suppressed`` and never handed to SES until the entry is lifted.

    ``email`` is the address's canonical form (app/core/addresses.py ``lookup_email``),
    the form the accounts store.
    """

    __tablename__ = "suppressions"
    __table_args__ = (TABLE_ARGS,)

    email: Mapped[str] = mapped_column(key_string(254), primary_key=True)
    reason: Mapped[str] = mapped_column(String(16))
    since: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The email whose bounce or complaint put the address here (None if unknown).
    notification_id: Mapped[int | None] = mapped_column(ForeignKey("notifications.id"))

    def __repr__(self) -> str:
        return f"<Suppression {self.email} {self.reason}>"
