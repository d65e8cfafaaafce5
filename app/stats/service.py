"""Statistics of product views, read from the per-day roll-ups."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.catalog.models import Product
from app.core.dates import days
from app.core.extensions import db
from app.views.models import DailyCatalogViews, DailyProductViewer, DailyProductViews


@contextmanager
def stats_session():
    """A session on the statistics database (``STATS_DATABASE_URL``, a read replica)."""
    engine = db.engines.get("stats") or db.engine
    with Session(engine) as session:
        yield session


def _days(start: date, end: date, per_day: dict[date, tuple[int, int]]) -> list[dict]:
    """Every day of [start, end] with its views (0 on a day without any)."""
    return [
        {"date": day, "views": anon + reg, "anonymous_views": anon, "registered_views": reg}
        for day in days(start, end)
        for anon, reg in [per_day.get(day, (0, 0))]
    ]


def _totals(by_day: list[dict]) -> dict:
    anonymous = sum(d["anonymous_views"] for d in by_day)
    registered = sum(d["registered_views"] for d in by_day)
    return {
        "views": anonymous + registered,
        "anonymous_views": anonymous,
        "registered_views": registered,
    }


def _views_per_day(session, *where) -> dict[date, tuple[int, int]]:
    """(anonymous, registered) views per day of the roll-ups matching ``where``."""
    rows = session.execute(
        select(
            DailyProductViews.day,
            func.sum(DailyProductViews.anonymous_views),
            func.sum(DailyProductViews.registered_views),
        )
        .where(*where)
        .group_by(DailyProductViews.day)
    )
    return {day: (int(anon), int(reg)) for day, anon, reg in rows}


def catalog_stats(start: date, end: date) -> dict:
    """Views of the whole catalog per day (deleted products included), from the catalog's
    own roll-up: a row per day, whatever the number of products."""
    with stats_session() as session:
        rows = session.execute(
            select(
                DailyCatalogViews.day,
                DailyCatalogViews.anonymous_views,
                DailyCatalogViews.registered_views,
            ).where(DailyCatalogViews.day.between(start, end))
        )
        per_day = {day: (int(anon), int(reg)) for day, anon, reg in rows}
    by_day = _days(start, end, per_day)
    return {"start": start, "end": end, **_totals(by_day), "by_day": by_day}


def product_stats(product: Product, start: date, end: date) -> dict:
    ids = Product.ever_named(product.sku).scalar_subquery()
    in_range = DailyProductViews.day.between(start, end)
    with stats_session() as session:
        per_day = _views_per_day(session, DailyProductViews.product_id.in_(ids), in_range)
        unique = session.scalar(
            select(func.count(func.distinct(DailyProductViewer.user_id))).where(
                DailyProductViewer.product_id.in_(ids),
                DailyProductViewer.day.between(start, end),
            )
        )
    by_day = _days(start, end, per_day)
    return {
        "sku": product.sku,
        "name": product.name,
        "start": start,
        "end": end,
        **_totals(by_day),
        "unique_registered_viewers": unique or 0,
        "by_day": by_day,
    }


def top_products(start: date, end: date, limit: int, audience: str) -> list[dict]:
    """The most viewed skus in the range (a deleted and re-created sku counts once)."""
    anon = func.sum(DailyProductViews.anonymous_views)
    reg = func.sum(DailyProductViews.registered_views)
    rank = {"all": anon + reg, "anonymous": anon, "registered": reg}[audience]
    sku = func.min(Product.sku)  # one spelling per group; the group is case-insensitive
    query = (
        select(sku.label("sku"), anon.label("anon"), reg.label("reg"))
        .join(Product, Product.id == DailyProductViews.product_id)
        .where(DailyProductViews.day.between(start, end))
        .group_by(Product.sku_lower)
        .having(rank > 0)
        .order_by(rank.desc(), sku)
        .limit(limit)
    )
    with stats_session() as session:
        ranked = session.execute(query).all()
        # The name shown is the live product's, else the most recently deleted one's.
        names: dict[str, str] = {}
        for product in session.scalars(
            select(Product)
            .where(Product.sku_lower.in_([Product.key_of(r.sku) for r in ranked]))
            .order_by(Product.deleted_at.is_not(None), Product.id.desc())
        ):
            names.setdefault(product.sku_lower, product.name)
    return [
        {
            "sku": r.sku,
            "name": names.get(Product.key_of(r.sku), ""),
            "views": int(r.anon) + int(r.reg),
            "anonymous_views": int(r.anon),
            "registered_views": int(r.reg),
        }
        for r in ranked
    ]
