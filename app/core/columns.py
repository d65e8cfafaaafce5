"""Column types every model uses, the same on SQLite and MariaDB.

Uniqueness rule: SKUs, emails and usernames are unique case-insensitively. Each table keeps
the value as the client wrote it plus a ``*_key`` column holding its lowercased form, with a
binary collation on MySQL so accents and case never fold differently between the two
databases. The models derive the keys whenever the value is set.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, String, TypeDecorator
from sqlalchemy.dialects import mysql

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
