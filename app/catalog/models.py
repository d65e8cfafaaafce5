"""Products."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, Index, Integer, Numeric, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column, validates

from app.core.columns import TABLE_ARGS, UTCDateTime, key_string, text_column, utcnow
from app.core.dialect import locked, search_document
from app.core.extensions import db
from app.core.text import key, search_words


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
    sku: Mapped[str] = mapped_column(String(64))
    # The sku in one case (``key_of``), on every row ever written: the history of a sku,
    # its deleted products included.
    sku_lower: Mapped[str] = mapped_column(key_string(64), index=True)
    # The same while the product is live, NULL once deleted: at most one live product per
    # sku, whatever its case; a deleted product's sku can be used again.
    sku_key: Mapped[str | None] = mapped_column(key_string(64), unique=True)
    name: Mapped[str] = mapped_column(text_column(200))
    # The name's words as search reads them (``search_of``), under a full-text index that
    # the migrations keep (MariaDB: FULLTEXT ft_products_search; SQLite: the FTS5 table
    # products_fts, by triggers), so that a product is found once its write commits.
    search: Mapped[str] = mapped_column(Text, default="", server_default="")
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    mark: Mapped[str] = mapped_column(text_column(100))
    quantity: Mapped[int] = mapped_column(Integer)
    # Incremented by every change (``touch``): the ETag, and the guard of cached copies.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # ------------------------------------------------------------ rules

    # The one case-insensitive rule for skus: every lookup compares this form.
    key_of = staticmethod(key)

    @staticmethod
    def etag_of(product_id: int, version: int) -> str:
        """The entity tag of a product's version, unquoted: its JSON changes only when its
        version does, so this is a strong validator."""
        return f"{product_id}-{version}"

    @property
    def etag(self) -> str:
        return self.etag_of(self.id, self.version)

    @validates("sku")
    def _derive_keys(self, _key: str, sku: str) -> str:
        self.sku_lower = self.key_of(sku)
        self.sku_key = self.sku_lower if self.deleted_at is None else None
        return sku

    @staticmethod
    def search_of(name: str) -> str:
        """What the search index reads of a name: its words, accents and case folded."""
        return search_document(search_words(name))

    @validates("name")
    def _derive_search(self, _key: str, name: str) -> str:
        self.search = self.search_of(name)
        return name

    @classmethod
    def new_row(cls, sku: str, values: dict, now: datetime) -> dict:
        """A new product as a row for a bulk INSERT, with the keys the model derives."""
        key = cls.key_of(sku)
        return {
            "sku": sku,
            "sku_lower": key,
            "sku_key": key,
            **values,
            "search": cls.search_of(values["name"]),
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }

    @classmethod
    def changed_row(cls, current, values: dict, now: datetime) -> dict:
        """A change of the live product ``current`` (a row: id, sku, version) as a row for
        a bulk UPDATE by id: ``values``, the keys, the next version."""
        key = cls.key_of(current.sku)
        return {
            "id": current.id,
            "sku": current.sku,
            "sku_lower": key,
            "sku_key": key,
            **values,
            "search": cls.search_of(values["name"]),
            "version": cls.next_version(current.version),
            "updated_at": now,
        }

    @staticmethod
    def next_version(version: int) -> int:
        """Every change of a product is a new version."""
        return version + 1

    def touch(self) -> None:
        """A change: a new version (``updated_at`` follows at the flush)."""
        self.version = self.next_version(self.version)

    def restore(self) -> None:
        """A deleted product live again, under its own sku (a revert)."""
        self.deleted_at = None
        self.sku_key = self.sku_lower
        self.touch()

    def soft_delete(self) -> None:
        """The row keeps its history; the sku can be used again."""
        self.deleted_at = utcnow()
        self.sku_key = None
        self.touch()

    # ------------------------------------------------------------ lookups

    @classmethod
    def live(cls):
        """The condition of a live (not deleted) product."""
        return cls.deleted_at.is_(None)

    @classmethod
    def by_sku(cls, sku: str, *, lock: bool = False) -> Product | None:
        """The live product with this sku (any case), or None; ``lock``: locked for a
        change, so that concurrent changes of one product take turns."""
        query = select(cls).where(cls.sku_key == cls.key_of(sku))
        return locked(query) if lock else db.session.scalar(query)

    @classmethod
    def ever_named(cls, sku: str):
        """The ids of every product that ever carried this sku (any case): a deleted and
        re-created product keeps one history."""
        return select(cls.id).where(cls.sku_lower == cls.key_of(sku))

    @classmethod
    def with_history(cls, sku: str) -> Product | None:
        """The live product with this sku, else the most recently deleted one."""
        return cls.by_sku(sku) or db.session.scalar(
            select(cls)
            .where(cls.sku_lower == cls.key_of(sku), cls.deleted_at.is_not(None))
            .order_by(cls.deleted_at.desc())
            .limit(1)
        )

    def __repr__(self) -> str:
        return f"<Product {self.sku}>"
