"""Accounts: users (admins and readers) and the tokens given up before they expire."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, select
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, validates

from app.core.columns import TABLE_ARGS, UTCDateTime, key_string, utcnow
from app.core.dialect import locked
from app.core.extensions import db
from app.core.text import key


class Role(enum.IntEnum):
    """The roles, once: the column's check, the API's validation and the guards use these."""

    ADMIN = 1
    READER = 2  # a registered, read-only account (rol 2 on the wire)

    @classmethod
    def values(cls) -> list[int]:
        return [role.value for role in cls]


class User(db.Model):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"rol IN ({', '.join(map(str, Role.values()))})", name="rol_known"),
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

    # The lookup key of an email or a username: case never tells two accounts apart.
    key_of = staticmethod(key)

    @validates("email")
    def _derive_email_key(self, _key: str, email: str) -> str:
        email = email.lower()
        self.email_key = self.key_of(email)
        return email

    @validates("username")
    def _derive_username_key(self, _key: str, username: str) -> str:
        self.username_key = self.key_of(username)
        return username

    @classmethod
    def by_email(cls, email: str) -> User | None:
        """The active account with this email (any case), or None."""
        return db.session.scalar(select(cls).where(cls.email_key == cls.key_of(email)))

    @classmethod
    def by_username(cls, username: str) -> User | None:
        """The active account with this username (any case), or None."""
        return db.session.scalar(select(cls).where(cls.username_key == cls.key_of(username)))

    @classmethod
    def active(cls, user_id: int, *, lock: bool = False) -> User | None:
        """The account with this id unless deleted; ``lock``: locked for a change, so that
        of two deletions of one account the second finds nobody."""
        if lock:
            user = locked(select(cls).where(cls.id == user_id))
        else:
            user = db.session.get(cls, user_id)
        return user if user is not None and user.is_active else None

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


class RevokedToken(db.Model):
    """A token given up before it expires (log out): refused until it would have expired,
    then pruned. Tokens of a whole account are revoked by ``User.token_version`` instead."""

    __tablename__ = "revoked_tokens"
    __table_args__ = (TABLE_ARGS,)

    jti: Mapped[str] = mapped_column(key_string(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
