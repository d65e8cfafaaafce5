"""Product views: the raw rows and their per-day roll-ups."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, ForeignKey, Index, Integer
from sqlalchemy.orm import Mapped, mapped_column

from app.core.columns import TABLE_ARGS, UTCDateTime, key_string
from app.core.extensions import db


class ProductView(db.Model):
    """One consultation of one product: who (None = anonymous) and when (UTC)."""

    __tablename__ = "product_views"
    __table_args__ = (
        Index("ix_product_views_product_viewed", "product_id", "viewed_at"),
        # A day's views from the index alone (`flask stats rollup`: the per-product counts
        # and the registered viewers), and the oldest views (`flask views prune`).
        Index("ix_product_views_viewed_product_user", "viewed_at", "product_id", "user_id"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # No foreign key to products on the view tables: its check would share-lock the
    # product row in every batch of views and so wait on (and deadlock with) the
    # changes of that product. Products are never deleted (soft deletes only).
    product_id: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    viewed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The view's own id (the read gives it; older rows: the stream entry's id): a view
    # written twice (a batch applied again, the stream and a direct write) is stored once.
    view_id: Mapped[str | None] = mapped_column(key_string(32), unique=True)


class DailyProductViews(db.Model):
    """Views per product per UTC day, kept up to date as views are written."""

    __tablename__ = "daily_product_views"
    # A day's rows with their counts from the index alone (`flask stats rollup` compares
    # each day with the raw views; the key starts with the product, so a day's rows are
    # spread over the whole table).
    __table_args__ = (
        Index(
            "ix_daily_product_views_day_counts",
            "day",
            "product_id",
            "anonymous_views",
            "registered_views",
        ),
        TABLE_ARGS,
    )

    product_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    anonymous_views: Mapped[int] = mapped_column(default=0)
    registered_views: Mapped[int] = mapped_column(default=0)


class SkuViews:
    """The counts of a sku's views over a period (a day, a week): every product that ever
    carried the sku, any case."""

    anonymous_views: Mapped[int] = mapped_column(default=0)
    registered_views: Mapped[int] = mapped_column(default=0)
    # anonymous + registered, stored so that one index ranks all of a period's views.
    views: Mapped[int] = mapped_column(default=0)


def _ranked_by(table: str, period: str) -> tuple:
    """The indexes that rank a period's skus by count, one per audience."""
    return (
        Index(f"ix_{table}_{period}_views", period, "views"),
        Index(f"ix_{table}_{period}_anonymous", period, "anonymous_views"),
        Index(f"ix_{table}_{period}_registered", period, "registered_views"),
    )


class DailySkuViews(SkuViews, db.Model):
    """Views per sku per UTC day, kept with the per-product counts in the same
    transactions, and indexed by day and count for each audience: the most viewed of a day
    are the first entries of an index, which is what the top products read instead of
    grouping every product of the range (see app/stats/service.py ``top_products``)."""

    __tablename__ = "daily_sku_views"
    __table_args__ = (*_ranked_by(__tablename__, "day"), TABLE_ARGS)

    sku_lower: Mapped[str] = mapped_column(key_string(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)


class WeeklySkuViews(SkuViews, db.Model):
    """The same per ISO week (``week``: its Monday), kept in the same transactions: a
    range's whole weeks are ranked by a seventh of the index entries its days would take."""

    __tablename__ = "weekly_sku_views"
    __table_args__ = (*_ranked_by(__tablename__, "week"), TABLE_ARGS)

    sku_lower: Mapped[str] = mapped_column(key_string(64), primary_key=True)
    week: Mapped[date] = mapped_column(Date, primary_key=True)


class DailyCatalogViews(db.Model):
    """Views of the whole catalog per UTC day (every product, deleted ones too), kept with
    the per-product counts in the same transactions: the catalog's statistics read one row
    per day, whatever the size of the catalog."""

    __tablename__ = "daily_catalog_views"
    __table_args__ = (TABLE_ARGS,)

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    anonymous_views: Mapped[int] = mapped_column(BigInteger, default=0)
    registered_views: Mapped[int] = mapped_column(BigInteger, default=0)


class DailyProductViewer(db.Model):
    """Which registered users viewed a product on a day: unique viewers without raw rows."""

    __tablename__ = "daily_product_viewers"
    # By day: `flask stats rollup` replaces a stretch of days without reading the table.
    __table_args__ = (Index("ix_daily_product_viewers_day", "day"), TABLE_ARGS)

    product_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
