"""Typed models.

Uniqueness rule, identical on SQLite and MariaDB: SKUs, emails and usernames are unique
case-insensitively. Each table keeps the value as the client wrote it (emails lowercased)
plus a ``*_key`` column holding its lowercased form, with a binary collation on MySQL so
accents and case never fold differently between the two databases. The models derive the
keys whenever the value is set; ``soft_delete()`` clears them (the row and its history
stay), so the sku or email can be used again.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, validates

from app.extensions import db

TABLE_ARGS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci"}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Naive UTC in the database, aware UTC in Python (MySQL DATETIME keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=UTC) if value is not None else None


def key_string(length: int):
    """A lookup-key column: lowercase text compared byte for byte on every database."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def text_column(length: int):
    """Text compared case-insensitively on both databases (MySQL's _ci collation, SQLite NOCASE)."""
    return String(length).with_variant(String(length, collation="NOCASE"), "sqlite")


class Role(enum.IntEnum):
    ADMIN = 1
    READER = 2  # a registered, read-only account (rol 2 on the wire)


class User(db.Model):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("rol IN (1, 2)", name="rol_known"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    fullname: Mapped[str] = mapped_column(String(120))
    username: Mapped[str] = mapped_column(String(64))
    email: Mapped[str] = mapped_column(String(254))
    username_key: Mapped[str | None] = mapped_column(key_string(64), unique=True)
    email_key: Mapped[str | None] = mapped_column(key_string(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    # "rol" in the database and on the wire (the seed's name); "role" in Python.
    role: Mapped[int] = mapped_column("rol", Integer, default=Role.READER)
    # Bumped whenever existing tokens must stop working (delete, demotion, new password).
    token_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)

    @validates("email")
    def _derive_email_key(self, _key: str, email: str) -> str:
        email = email.lower()
        self.email_key = email
        return email

    @validates("username")
    def _derive_username_key(self, _key: str, username: str) -> str:
        self.username_key = username.lower()
        return username

    @hybrid_property
    def is_active(self) -> bool:
        """Not deleted; in a query, ``deleted_at IS NULL``."""
        return self.deleted_at is None

    @is_active.inplace.expression
    @classmethod
    def _is_active_expression(cls):
        return cls.deleted_at.is_(None)

    def soft_delete(self) -> None:
        """The row stays for history; the email and username are free again, tokens die."""
        self.deleted_at = utcnow()
        self.email_key = self.username_key = None
        self.token_version += 1

    def __repr__(self) -> str:
        return f"<User {self.id} {self.email}>"


class Product(db.Model):
    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("price >= 0", name="price_not_negative"),
        CheckConstraint("quantity >= 0", name="quantity_not_negative"),
        # The list shows live rows (deleted_at IS NULL): with or without a mark filter,
        # an index gives the page in sort order and counts the total from the index alone.
        Index("ix_products_live_price", "deleted_at", "price"),
        Index("ix_products_live_name", "deleted_at", "name"),
        Index("ix_products_live_created", "deleted_at", "created_at"),
        Index("ix_products_mark_live_price", "mark", "deleted_at", "price"),
        Index("ix_products_mark_live_name", "mark", "deleted_at", "name"),
        Index("ix_products_mark_live_created", "mark", "deleted_at", "created_at"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Looked up case-insensitively, deleted rows included (the statistics of a deleted product).
    sku: Mapped[str] = mapped_column(text_column(64), index=True)
    sku_key: Mapped[str | None] = mapped_column(key_string(64), unique=True)
    name: Mapped[str] = mapped_column(text_column(200))
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    mark: Mapped[str] = mapped_column(text_column(100))
    quantity: Mapped[int] = mapped_column(Integer)
    # Incremented by every change: the ETag, and the guard of cached copies.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @staticmethod
    def key_of(sku: str) -> str:
        """The lookup key of a sku (its lowercased form)."""
        return sku.lower()

    @validates("sku")
    def _derive_sku_key(self, _key: str, sku: str) -> str:
        self.sku_key = self.key_of(sku)
        return sku

    def soft_delete(self) -> None:
        """The row keeps its history; the sku can be used again."""
        self.deleted_at = utcnow()
        self.sku_key = None

    def __repr__(self) -> str:
        return f"<Product {self.sku}>"


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


class ProductView(db.Model):
    """One consultation of one product: who (None = anonymous) and when (UTC)."""

    __tablename__ = "product_views"
    __table_args__ = (
        Index("ix_product_views_product_viewed", "product_id", "viewed_at"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # No foreign key to products on the view tables: its check would share-lock the
    # product row in every batch of views and so wait on (and deadlock with) the
    # changes of that product. Products are never deleted (soft deletes only).
    product_id: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    viewed_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # The views stream's entry id: a batch applied twice adds nothing (NULL: written
    # directly by the read).
    stream_id: Mapped[str | None] = mapped_column(key_string(32), unique=True)


class DailyProductViews(db.Model):
    """Views per product per UTC day, kept up to date as views are written."""

    __tablename__ = "daily_product_views"
    __table_args__ = (Index("ix_daily_product_views_day", "day", "product_id"), TABLE_ARGS)

    product_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    anonymous_views: Mapped[int] = mapped_column(default=0)
    registered_views: Mapped[int] = mapped_column(default=0)


class DailyProductViewer(db.Model):
    """Which registered users viewed a product on a day: unique viewers without raw rows."""

    __tablename__ = "daily_product_viewers"
    __table_args__ = (TABLE_ARGS,)

    product_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)


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
