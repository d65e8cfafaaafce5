"""Statistics of product views, read from the per-day roll-ups."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import date

from sqlalchemy import Date, Integer, bindparam, func, select, text
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


# The two statements below are a part per day of the range (up to 366): written as text
# with bound values, since building and caching them as expressions cost more than the
# database takes to answer them. The count's column comes from RANKED_BY only.
RANKINGS = DailySkuViews.__tablename__


def _day(n: int, day: date):
    return bindparam(f"day{n}", day, type_=Date)


def _floors(session, start: date, end: date, audience: str, depth: int) -> dict[date, int]:
    """Each viewed day's ``depth``-th count (0 for a day with fewer skus): a sku not above
    it on that day has at most that many views there. A short index range a day, in one
    statement of one row."""
    viewed_days = session.scalars(
        select(DailyCatalogViews.day).where(DailyCatalogViews.day.between(start, end))
    ).all()
    if not viewed_days:
        return {}
    column = RANKED_BY[audience]
    floors = session.execute(
        text(
            "SELECT "
            + ", ".join(
                f"COALESCE((SELECT {column} FROM {RANKINGS} WHERE day = :day{n}"
                f" ORDER BY {column} DESC LIMIT 1 OFFSET :skip), 0)"
                for n in range(len(viewed_days))
            )
        ).bindparams(
            *[_day(n, day) for n, day in enumerate(viewed_days)],
            bindparam("skip", depth - 1, type_=Integer),
        )
    ).one()
    return {day: int(floor) for day, floor in zip(viewed_days, floors, strict=True)}


def _candidates(session, floors: dict[date, int], limit: int, audience: str) -> list[str]:
    """The skus above some day's floor that may be in the top ``limit``: each has at least
    its views on those days and at most that plus the floors of the other days, and one
    whose most is below the limit-th best "at least" cannot make it. Summed and sorted out
    by the database: fewer than ``depth`` rows a day, and only the kept skus come back."""
    column = RANKED_BY[audience]
    # A day with a floor: the index range above it, the floor as a constant; the days read
    # to their end (floor 0) in a row: one range of days (a quiet stretch). A part each, so
    # that no row is tested against every day.
    floored = [(day, floor) for day, floor in floors.items() if floor]
    parts = [
        f"SELECT sku_lower, {column} AS n, :floor{n} AS floor FROM {RANKINGS}"
        f" WHERE day = :day{n} AND {column} > :floor{n}"
        for n in range(len(floored))
    ]
    quiet = _quiet_stretches(floors)
    parts += [
        f"SELECT sku_lower, {column} AS n, 0 AS floor FROM {RANKINGS}"
        f" WHERE day BETWEEN :first{n} AND :last{n} AND {column} > 0"
        for n in range(len(quiet))
    ]
    statement = text(
        "SELECT sku_lower FROM ("
        " SELECT sku_lower, SUM(n) AS least, SUM(floor) AS floors,"
        # The limit-th best "at least" (NULL with fewer candidates).
        " NTH_VALUE(SUM(n), :limit) OVER (ORDER BY SUM(n) DESC"
        " ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS cut"
        f" FROM ({' UNION ALL '.join(parts)}) parts GROUP BY sku_lower"
        ") seen WHERE least + :bound - floors >= COALESCE(cut, 0) ORDER BY sku_lower"
    ).bindparams(
        *[_day(n, day) for n, (day, _floor) in enumerate(floored)],
        *[bindparam(f"floor{n}", floor, type_=Integer) for n, (_d, floor) in enumerate(floored)],
        *[bindparam(f"first{n}", first, type_=Date) for n, (first, _l) in enumerate(quiet)],
        *[bindparam(f"last{n}", last, type_=Date) for n, (_f, last) in enumerate(quiet)],
        bindparam("limit", limit, type_=Integer),
        bindparam("bound", sum(floors.values()), type_=Integer),
    )
    return list(session.scalars(statement))


def _quiet_stretches(floors: dict[date, int]) -> list[tuple[date, date]]:
    """(first, last) of each run of viewed days whose floor is 0 (a day between two viewed
    days has no views: it may join the run)."""
    stretches: list[list[date]] = []
    previous = None
    for day, floor in sorted(floors.items()):
        if floor == 0:
            if stretches and previous == stretches[-1][1]:
                stretches[-1][1] = day
            else:
                stretches.append([day, day])
        previous = day
    return [(first, last) for first, last in stretches]


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
