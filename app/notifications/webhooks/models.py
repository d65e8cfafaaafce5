"""Webhook endpoints, their deliveries (one per event and endpoint) and every attempt."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.columns import TABLE_ARGS, UTCDateTime, utcnow
from app.core.dialect import locked
from app.core.extensions import db
from app.events.models import BIG_ID, Event


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # not tried yet (or queued again): due now or once the one before is done
    RETRYING = "retrying"  # tried and refused; tried again after a backoff
    DELIVERED = "delivered"  # the endpoint answered 2xx in time
    FAILED = "failed"  # refused for more than the retry window; replay or retry to resend

    @classmethod
    def open(cls) -> tuple[DeliveryStatus, ...]:
        """Still to be delivered: the statuses the sender takes, in event order per product."""
        return (cls.PENDING, cls.RETRYING)


class WebhookEndpoint(db.Model):
    """A URL that receives the catalog's events (Standard Webhooks), with its signing
    secret, sealed with a key derived from SECRET_KEY (``signing.seal``)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500), default="")
    # The event types it receives, e.g. ["product.updated"].
    events: Mapped[list] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    secret: Mapped[str] = mapped_column(String(255))
    # After a rotation, the secret before it also signs until ``previous_secret_until``.
    previous_secret: Mapped[str | None] = mapped_column(String(255))
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Why the service turned it off (410 Gone, or failing for days); None when an admin did.
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    # The first failed attempt since its last success (None: not failing).
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @classmethod
    def live(cls):
        """Not deleted (deleted endpoints keep their deliveries, unseen and unsent)."""
        return cls.deleted_at.is_(None)

    @classmethod
    def by_id(cls, endpoint_id: int, lock: bool = False) -> WebhookEndpoint | None:
        query = select(cls).where(cls.id == endpoint_id, cls.live())
        return locked(query) if lock else db.session.scalar(query)

    def receives(self, event_type: str) -> bool:
        return event_type in self.events

    def __repr__(self) -> str:
        return f"<WebhookEndpoint {self.id} {self.url}>"


class WebhookDelivery(db.Model):
    """One event to one endpoint: written in the change's transaction, sent by the worker,
    always under the same ``webhook_id``.

    A delivery is sent only when no earlier delivery of the same ``ordering_key`` (the
    product's sku) to the same endpoint is still open: one product's events arrive in
    event order, and products do not wait for each other. A sender holds it for a short
    lease (``claim_token``/``claimed_until``) while it posts; a lease left by a dead
    worker runs out and the delivery is sent again, with the same ``webhook_id``.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_row_id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index(
            "ix_webhook_deliveries_order", "endpoint_id", "ordering_key", "status", "event_row_id"
        ),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "status", "id"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id"))
    event_row_id: Mapped[int] = mapped_column(BIG_ID, ForeignKey("events.row_id"))
    # The webhook-id header: one per event and endpoint, the same on every attempt.
    webhook_id: Mapped[str] = mapped_column(String(40), unique=True)
    # Deliveries with the same key go out one at a time, in event order.
    ordering_key: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The first attempt of this round (the retry window runs from it; a replay starts a
    # new round).
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(32), index=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    event: Mapped[Event] = relationship(lazy="joined", innerjoin=True)
    endpoint: Mapped[WebhookEndpoint] = relationship(lazy="select")
    attempt_rows: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.id", lazy="select", viewonly=True
    )

    def __repr__(self) -> str:
        return f"<WebhookDelivery {self.id} {self.webhook_id} {self.status}>"


class WebhookAttempt(db.Model):
    """One POST of a delivery: when, the answer's status (None: no answer), how long it
    took, why it failed, and the start of the answer's body."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        Index("ix_webhook_attempts_delivery", "delivery_id", "id"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(BIG_ID, ForeignKey("webhook_deliveries.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status_code: Mapped[int | None] = mapped_column()
    duration_ms: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(String(1000))
    response_excerpt: Mapped[str | None] = mapped_column(String(1000))
