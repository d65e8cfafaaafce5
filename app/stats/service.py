"""Statistics of product views, read from the per-day roll-ups."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import date, timedelta

from sqlalchemy import Date, Integer, bindparam, func, select, text
from sqlalchemy.orm import Session

from app.catalog.models import Product
from app.core.dates import days, whole_weeks
from app.core.extensions import db
from app.views.models import (
    DailyCatalogViews,
    DailyProductViewer,
    DailyProductViews,
    DailySkuViews,
    WeeklySkuViews,
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


# Each period's ranking is first read to FIRST_DEPTH times the limit, then DEEPER times
# deeper while that does not settle the answer; past DEEPEST skus a period, the range is
# grouped.
FIRST_DEPTH = 2
DEEPER = 4
DEEPEST = 5_000
RANKED_BY = {"all": "views", "anonymous": "anonymous_views", "registered": "registered_views"}
# The rankings of a period, by its column: a range's whole weeks are read from the weekly
# one, its other days from the daily one.
RANKINGS = {"week": WeeklySkuViews.__tablename__, "day": DailySkuViews.__tablename__}


def top_products(start: date, end: date, limit: int, audience: str) -> list[dict]:
    """The most viewed skus in the range (a deleted and re-created sku counts once).

    Read from the ranking of each period of the range (its whole weeks in
    ``WeeklySkuViews``, its other days in ``DailySkuViews``, each indexed by period and
    count), not by grouping every product of the range. A sku that is not above a
    period's ``depth``-th count has at most that count in that period, so a sku above
    none of them has at most their sum (``bound``); the skus above some of them are the
    candidates. When the limit-th candidate has more than ``bound``, the candidates hold
    the answer, exactly; otherwise each period is read deeper (a period with fewer than
    ``depth`` skus is read whole: its floor is 0). Past DEEPEST skus a period, the range
    is grouped.
    """
    with stats_session() as session:
        periods = _periods(session, start, end)
        depth = FIRST_DEPTH * limit
        while True:
            if depth > DEEPEST:  # a ranking too flat to settle early: group the range
                ranked = _grouped(session, start, end, limit, audience)
                break
            floors = _floors(session, periods, audience, depth)
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


def _periods(session, start: date, end: date) -> list[tuple[str, date]]:
    """The periods of [start, end] with views: ("week", its Monday) for each week the
    range holds whole, ("day", the day) for the days left over."""
    viewed = set(
        session.scalars(
            select(DailyCatalogViews.day).where(DailyCatalogViews.day.between(start, end))
        )
    )
    mondays, other_days = whole_weeks(start, end)
    weeks = [m for m in mondays if viewed.intersection(days(m, m + timedelta(days=6)))]
    return [("week", m) for m in weeks] + [("day", d) for d in other_days if d in viewed]


# The two statements below are a part per period of the range (up to 60 in a year): written
# as text with bound values, since building and caching them as expressions cost more
# than the database takes to answer them. The count's column comes from RANKED_BY only.


def _floors(session, periods: list[tuple[str, date]], audience: str, depth: int) -> dict:
    """Each period's ``depth``-th count (0 for a period with fewer skus): a sku not above
    it in that period has at most that many views there. A short index range a period, in
    one statement of one row."""
    if not periods:
        return {}
    column = RANKED_BY[audience]
    floors = session.execute(
        text(
            "SELECT "
            + ", ".join(
                f"COALESCE((SELECT {column} FROM {RANKINGS[kind]} WHERE {kind} = :p{n}"
                f" ORDER BY {column} DESC LIMIT 1 OFFSET :skip), 0)"
                for n, (kind, _when) in enumerate(periods)
            )
        ).bindparams(*_bound_periods(periods), bindparam("skip", depth - 1, type_=Integer))
    ).one()
    return {period: int(floor) for period, floor in zip(periods, floors, strict=True)}


def _bound_periods(periods: list[tuple[str, date]]) -> list:
    return [bindparam(f"p{n}", when, type_=Date) for n, (_kind, when) in enumerate(periods)]


def _candidates(session, floors: dict, limit: int, audience: str) -> list[str]:
    """The skus above some period's floor that may be in the top ``limit``: each has at
    least its views in those periods and at most that plus the floors of the others, and
    one whose most is below the limit-th best "at least" cannot make it. Summed and sorted
    out by the database: fewer than ``depth`` rows a period, and only the kept skus come
    back."""
    column = RANKED_BY[audience]
    periods = list(floors)
    # A part per period (the index range above its floor, the floor as a constant), so
    # that no row is tested against every period.
    parts = [
        f"SELECT sku_lower, {column} AS n, :floor{n} AS floor FROM {RANKINGS[kind]}"
        f" WHERE {kind} = :p{n} AND {column} > :floor{n}"
        for n, (kind, _when) in enumerate(periods)
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
        *_bound_periods(periods),
        *[bindparam(f"floor{n}", floors[p], type_=Integer) for n, p in enumerate(periods)],
        bindparam("limit", limit, type_=Integer),
        bindparam("bound", sum(floors.values()), type_=Integer),
    )
    return list(session.scalars(statement))


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
