"""Statistics of product views, read from the per-day roll-ups."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import date

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session

from app.catalog.models import Product
from app.core.dates import days
from app.core.extensions import db
from app.views.models import (
    DailyCatalogViews,
    DailyProductViewer,
    DailyProductViews,
    DailySkuViews,
)


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


# The ranking of each day is first read to FIRST_DEPTH times the limit, then 4 times deeper
# while that does not settle the answer; beyond DEEPEST rows a day, the range is grouped.
FIRST_DEPTH = 2
DEEPER = 4
DEEPEST = 5_000
RANKED_BY = {"all": "views", "anonymous": "anonymous_views", "registered": "registered_views"}


def top_products(start: date, end: date, limit: int, audience: str) -> list[dict]:
    """The most viewed skus in the range (a deleted and re-created sku counts once).

    Read from each day's ranking (``DailySkuViews``, indexed by day and count), not by
    grouping every product of the range: the first ``depth`` skus of each day are the
    candidates, and a sku that is none of them has at most the sum of each day's
    ``depth``-th count (``bound``). When the limit-th candidate ranks above that, the
    candidates hold the answer, exactly; otherwise each day is read deeper.
    """
    with stats_session() as session:
        depth = FIRST_DEPTH * limit
        while True:
            if depth > DEEPEST:  # a flat ranking: grouping the range reads less
                ranked = _grouped(session, start, end, limit, audience)
                break
            skus, bound = _candidates(session, start, end, limit, audience, depth)
            ranked = _grouped(session, start, end, limit, audience, skus)
            if bound == 0 or (len(ranked) == limit and _rank(ranked[-1], audience) > bound):
                break
            depth *= DEEPER
        names = _names(session, [r.sku for r in ranked])
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


def _rank(row, audience: str) -> int:
    return {"all": row.anon + row.reg, "anonymous": row.anon, "registered": row.reg}[audience]


def _candidates(
    session, start: date, end: date, limit: int, audience: str, depth: int
) -> tuple[list[str], int]:
    """The skus among the first ``depth`` of some day's ranking that may be in the top
    ``limit``, and the most views any other sku can have in the range."""
    count = getattr(DailySkuViews, RANKED_BY[audience])
    viewed_days = session.scalars(
        select(DailyCatalogViews.day).where(DailyCatalogViews.day.between(start, end))
    ).all()
    if not viewed_days:
        return [], 0
    # One statement: a short range of the (day, count) index per day.
    leaders = union_all(
        *[
            select(DailySkuViews.sku_lower, DailySkuViews.day, count.label("n"))
            .where(DailySkuViews.day == day, count > 0)
            .order_by(count.desc())
            .limit(depth)
            .subquery()
            .select()
            for day in viewed_days
        ]
    )
    seen: dict[str, dict[date, int]] = {}
    per_day: dict[date, list[int]] = {}
    for sku, day, n in session.execute(leaders):
        seen.setdefault(sku, {})[day] = n
        per_day.setdefault(day, []).append(n)
    # A day read to its end (fewer rows than the depth) leaves no one out.
    floor = {day: min(counts) if len(counts) == depth else 0 for day, counts in per_day.items()}
    bound = sum(floor.values())
    # What each candidate has at least (its days seen) and at most (the floor elsewhere).
    least = {sku: sum(by_day.values()) for sku, by_day in seen.items()}
    most = {
        sku: least[sku] + bound - sum(floor[day] for day in by_day) for sku, by_day in seen.items()
    }
    # A candidate below the limit-th best "at least" cannot make it.
    cut = sorted(least.values(), reverse=True)[limit - 1] if len(least) >= limit else 0
    return sorted(sku for sku in seen if most[sku] >= cut), bound


def _grouped(
    session, start: date, end: date, limit: int, audience: str, skus: list[str] | None = None
):
    """The top of the range by grouping its per-product roll-ups, of ``skus`` only if given."""
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
    if skus is not None:
        query = query.where(Product.sku_lower.in_(skus))
    return session.execute(query).all()


def _names(session, skus: list[str]) -> dict[str, str]:
    """The name shown for each sku: the live product's, else the most recently deleted one's."""
    names: dict[str, str] = {}
    for product in session.scalars(
        select(Product)
        .where(Product.sku_lower.in_([Product.key_of(sku) for sku in skus]))
        .order_by(Product.deleted_at.is_not(None), Product.id.desc())
    ):
        names.setdefault(product.sku_lower, product.name)
    return names
