"""Products."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, Index, Integer, Numeric
from sqlalchemy.orm import Mapped, mapped_column, validates

from app.core.columns import TABLE_ARGS, UTCDateTime, key_string, text_column, utcnow
from app.core.extensions import db


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
