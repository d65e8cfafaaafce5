"""Change events: every committed change of a product or an account, stored once.

An event is written in the transaction of its change (a change that rolls back leaves
none) and is never updated or deleted afterwards. Its public ``id`` is given at commit
(``sealed``): the ids are dense and follow the order in which the changes committed, and
each event carries the hash of the one before it and its own (a chain that
`flask events verify` walks).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.columns import TABLE_ARGS, UTCDateTime, key_string, utcnow
from app.core.extensions import db

BIG_ID = BigInteger().with_variant(Integer, "sqlite")


class EventType(enum.StrEnum):
    PRODUCT_CREATED = "product.created"
    PRODUCT_UPDATED = "product.updated"
    PRODUCT_DELETED = "product.deleted"
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DELETED = "user.deleted"

    @classmethod
    def product_types(cls) -> list[str]:
        return [t.value for t in cls if t.value.startswith("product.")]


class Event(db.Model):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_product_id", "product_id", "id"),
        Index("ix_events_sku_key", "sku_key", "id"),
        Index("ix_events_user_id", "user_id", "id"),
        Index("ix_events_type_id", "type", "id"),
        TABLE_ARGS,
    )

    # The row's own key, in insert order; the public ``id`` is given at commit.
    row_id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    id: Mapped[int | None] = mapped_column(BIG_ID, unique=True)
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Who made the change; None: an operator on the command line.
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor_email: Mapped[str | None] = mapped_column(String(254))
    # A product's event: its row (a deleted and re-created sku has two) and its sku.
    product_id: Mapped[int | None] = mapped_column(Integer)
    sku: Mapped[str | None] = mapped_column(String(64))
    sku_key: Mapped[str | None] = mapped_column(key_string(64))
    # An account's event: the account.
    user_id: Mapped[int | None] = mapped_column(Integer)
    # {field: {"old": ..., "new": ...}}; a password shows only {"changed": true}.
    changes: Mapped[dict] = mapped_column(JSON)
    # The product's version after the change.
    version: Mapped[int | None] = mapped_column(Integer)
    # A revert names the event whose values it restored.
    reverted_to: Mapped[int | None] = mapped_column(BIG_ID)
    # The product (or account, without its password) right after the change: what history,
    # `as_of`, revert and webhooks show of it.
    snapshot: Mapped[dict | None] = mapped_column(JSON)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))

    def public(self) -> dict:
        """The event as the API and its hash show it."""
        body = {
            "id": self.id,
            "type": self.type,
            "at": self.at.isoformat(),
            "actor": None
            if self.actor_id is None
            else {"id": self.actor_id, "email": self.actor_email},
        }
        if self.product_id is not None:
            body["sku"] = self.sku
        if self.user_id is not None:
            body["user_id"] = self.user_id
        body["changes"] = self.changes
        body["version"] = self.version
        if self.reverted_to is not None:
            body["reverted_to"] = self.reverted_to
        return body

    def __repr__(self) -> str:
        return f"<Event {self.id} {self.type}>"


class EventChain(db.Model):
    """The last sealed event: one row, locked by every commit that seals events, so that
    ids are given in commit order and each event knows the hash before it."""

    __tablename__ = "event_chain"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(BIG_ID, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
