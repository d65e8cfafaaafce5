"""The rows the unit of work keeps: idempotency keys and commit receipts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.columns import TABLE_ARGS, UTCDateTime, key_string, utcnow
from app.core.extensions import db


class IdempotencyKey(db.Model):
    """A client's ``Idempotency-Key`` for one write: the first answer, replayed to retries."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(key_string(255))
    # What the key was first used for: method, path and a hash of the body.
    fingerprint: Mapped[str] = mapped_column(String(64))
    # The request holding the key (a random token): only it frees the key.
    owner: Mapped[str | None] = mapped_column(String(32))
    # While the first request runs, a retry gets 409; a request that died leaves a
    # lease that runs out.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    response_headers: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WriteReceipt(db.Model):
    """Written in every write's transaction: if the commit's answer is lost, a look for
    the receipt tells whether the write committed."""

    __tablename__ = "write_receipts"
    __table_args__ = (TABLE_ARGS,)

    token: Mapped[str] = mapped_column(key_string(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
