"""Products."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column, validates

from app.core.columns import TABLE_ARGS, UTCDateTime, key_string, text_column, utcnow
from app.core.dialect import locked
from app.core.extensions import db
from app.core.text import key, search_words

# products.search holds each word of the name behind this mark, cut at WORD_MAX characters
# (the format migration 0013 gave it); the triggers of product_words read the words after
# the mark.
WORD_MARK = "ww"
WORD_MAX = 80


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
    # The name's words as search reads them (``search_of``): the database's triggers
    # write them into product_words (``ProductWord``) in the same statement.
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
    def words_of(text: str) -> list[str]:
        """The words of a name or a search as the search compares them: accents and case
        folded (``text.search_words``), each cut at ``WORD_MAX`` characters."""
        return [word[:WORD_MAX] for word in search_words(text)]

    @classmethod
    def search_of(cls, name: str) -> str:
        """What the search's index reads of a name (``products.search``)."""
        return " ".join(WORD_MARK + word for word in cls.words_of(name))

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


class ProductWord(db.Model):
    """The search's index: one row per distinct word of each live product's name.

    Written by the database alone: triggers on ``products`` (migration
    0017_product_words) read ``search`` whenever a row is inserted, its ``search`` or
    ``deleted_at`` changes, or it is deleted, so every writer (the ORM, the import's bulk
    statements, SQL run by hand) keeps it, in its own transaction. A deleted product has
    no rows: the index holds the live catalog. SQL run by hand must write ``search`` as
    ``Product.search_of`` does (a write whose ``search`` holds a quote, a backslash or a
    control character fails: the triggers read it as a JSON list).

    The key orders a word's products as the search ranks them (``app/catalog/search.py``):
    the fewest other words in the name first, then the oldest."""

    __tablename__ = "product_words"
    __table_args__ = (
        PrimaryKeyConstraint("word", "other_words", "product_id"),
        Index("ix_product_words_product_id", "product_id"),
        TABLE_ARGS,
    )

    # A word of the name as ``text.search_words`` gives it (accents and case folded),
    # cut at ``WORD_MAX`` characters.
    word: Mapped[str] = mapped_column(key_string(WORD_MAX))
    # How many of the name's words are not this one: 0 for a name of just this word.
    other_words: Mapped[int] = mapped_column(SmallInteger)
    product_id: Mapped[int] = mapped_column(Integer)


class SearchVocabulary(db.Model):
    """Every word a live product's name has held, by length: where the search looks for the
    correction of a misspelt word (``app/catalog/search.py`` ``closest``).

    Written by the triggers that keep ``ProductWord`` (migration 0017_product_words), which
    add a product's new words and never remove one (a word no live product holds any more
    is never chosen: the search counts each candidate's products)."""

    __tablename__ = "search_vocabulary"
    __table_args__ = (PrimaryKeyConstraint("length", "word"), TABLE_ARGS)

    length: Mapped[int] = mapped_column(SmallInteger)
    word: Mapped[str] = mapped_column(key_string(WORD_MAX))
