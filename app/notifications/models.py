"""The outbox: one row per email to one admin."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.columns import TABLE_ARGS, UTCDateTime, text_column, utcnow
from app.core.extensions import db


class NotificationStatus(enum.StrEnum):
    PENDING = "pending"  # due (now or after a backoff), possibly claimed by a sender
    SENDING = "sending"  # handed to SES; never sent again by itself
    SENT = "sent"
    FAILED = "failed"  # SES refused it NOTIFY_MAX_ATTEMPTS times
    UNKNOWN = "unknown"  # SES may or may not have taken it: resent only on purpose


class Notification(db.Model):
    """One email to one admin about one product change (or one catalog import): the
    transactional outbox.

    Written in the same transaction as the change. A row is *claimed* by a sender for a
    short lease (``claim_token``/``claimed_until``) while its email is handed to the mailer,
    so two senders never send the same row; a lease left by a crashed process expires and
    the row becomes due again.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_due", "status", "next_attempt_at"),
        Index("ix_notifications_sku_id", "sku", "id"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    recipient: Mapped[str] = mapped_column(String(254))
    recipient_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # None for a catalog import's summary (event "imported"), which is about many products.
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id"), index=True)
    sku: Mapped[str | None] = mapped_column(text_column(64))
    product_name: Mapped[str | None] = mapped_column(String(200))
    event: Mapped[str] = mapped_column(String(16))
    changes: Mapped[dict] = mapped_column(JSON)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    actor_name: Mapped[str | None] = mapped_column(String(120))
    actor_email: Mapped[str | None] = mapped_column(String(254))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), default=NotificationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    claim_token: Mapped[str | None] = mapped_column(String(36), index=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<Notification {self.id} {self.event} {self.sku} -> {self.recipient}>"
