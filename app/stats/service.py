"""Statistics of product views, read from the per-day roll-ups."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import date

from sqlalchemy import Date, and_, case, func, literal, or_, select, union_all
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


# Each day's ranking is first read to FIRST_DEPTH times the limit, then DEEPER times deeper
# while that does not settle the answer; past DEEPEST skus a day, the range is grouped.
FIRST_DEPTH = 2
DEEPER = 4
DEEPEST = 5_000
RANKED_BY = {"all": "views", "anonymous": "anonymous_views", "registered": "registered_views"}


def top_products(start: date, end: date, limit: int, audience: str) -> list[dict]:
    """The most viewed skus in the range (a deleted and re-created sku counts once).

    Read from each day's ranking (``DailySkuViews``, indexed by day and count), not by
    grouping every product of the range. A sku that is not above a day's ``depth``-th
    count has at most that count on that day, so a sku above none of them has at most
    their sum (``bound``); the skus above some of them are the candidates. When the
    limit-th candidate has more than ``bound``, the candidates hold the answer, exactly;
    otherwise each day is read deeper (a day with fewer than ``depth`` skus is read whole:
    its floor is 0). Past DEEPEST skus a day, the range is grouped.
    """
    with stats_session() as session:
        depth = FIRST_DEPTH * limit
        while True:
            if depth > DEEPEST:  # a ranking too flat to settle early: group the range
                ranked = _grouped(session, start, end, limit, audience)
                break
            floors = _floors(session, start, end, audience, depth)
            bound = sum(floors.values())
            skus = _candidates(session, floors, limit, audience) if floors else []
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


def _floors(session, start: date, end: date, audience: str, depth: int) -> dict[date, int]:
    """Each viewed day's ``depth``-th count (0 for a day with fewer skus): a sku not above
    it on that day has at most that many views there. A short index range a day, in one
    statement."""
    count = getattr(DailySkuViews, RANKED_BY[audience])
    viewed_days = session.scalars(
        select(DailyCatalogViews.day).where(DailyCatalogViews.day.between(start, end))
    ).all()
    if not viewed_days:
        return {}
    floors = session.execute(
        union_all(
            *[
                select(
                    literal(day, Date),
                    func.coalesce(
                        select(count)
                        .where(DailySkuViews.day == day)
                        .order_by(count.desc())
                        .offset(depth - 1)
                        .limit(1)
                        .scalar_subquery(),
                        0,
                    ),
                )
                for day in viewed_days
            ]
        )
    )
    # SQLite gives a literal day back as its text.
    return {
        day if isinstance(day, date) else date.fromisoformat(day): int(floor)
        for day, floor in floors
    }


def _candidates(session, floors: dict[date, int], limit: int, audience: str) -> list[str]:
    """The skus above some day's floor that may be in the top ``limit``: each has at least
    its views on those days and at most that plus the floors of the other days, and one
    whose most is below the limit-th best "at least" cannot make it. Summed and sorted out
    by the database: fewer than ``depth`` rows a day, and only the kept skus come back."""
    count = getattr(DailySkuViews, RANKED_BY[audience])
    # Days in a row with one floor (a quiet stretch: often 0 or 1) are one index range.
    runs = _runs(floors)
    in_run = [(DailySkuViews.day.between(first, last), floor) for first, last, floor in runs]
    floor_of_day = case(*in_run)
    least = func.sum(count)
    seen = (
        select(
            DailySkuViews.sku_lower,
            least.label("least"),
            func.sum(floor_of_day).label("floors"),
            # The limit-th best "at least" (NULL with fewer candidates).
            func.nth_value(least, limit)
            .over(order_by=least.desc(), rows=(None, None))
            .label("cut"),
        )
        .where(or_(*[and_(days, count > floor) for days, floor in in_run]))
        .group_by(DailySkuViews.sku_lower)
        .subquery()
    )
    bound = sum(floors.values())
    return list(
        session.scalars(
            select(seen.c.sku_lower)
            .where(seen.c.least + bound - seen.c.floors >= func.coalesce(seen.c.cut, 0))
            .order_by(seen.c.sku_lower)
        )
    )


def _runs(floors: dict[date, int]) -> list[tuple[date, date, int]]:
    """(first day, last day, floor) of each stretch of days with the same floor (a day
    between two viewed days has no views: it may join either)."""
    runs: list[list] = []
    for day, floor in sorted(floors.items()):
        if runs and runs[-1][2] == floor:
            runs[-1][1] = day
        else:
            runs.append([day, day, floor])
    return [(first, last, floor) for first, last, floor in runs]


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
