"""Writing views to the database: the raw rows and their per-day roll-ups in one
transaction per batch, and the maintenance of both (`flask stats rollup`, `flask views prune`).

Views carry an id (unique in ``product_views``): a batch applied again, or a view written
both from the stream and directly, is stored once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta
from operator import itemgetter
from typing import NamedTuple

from flask import current_app
from sqlalchemy import delete, except_, func, insert, or_, select, tuple_, union_all
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from app.catalog.models import Product
from app.core import dialect
from app.core.dates import days, week_of
from app.core.dialect import insert_ignore, upsert_adding
from app.core.extensions import db
from app.core.threads import in_parallel
from app.views.models import (
    DailyCatalogViews,
    DailyProductViewer,
    DailyProductViews,
    DailySkuViews,
    ProductView,
    WeeklySkuViews,
)


class View(NamedTuple):
    id: str  # unique among all views: the same view written twice is stored once
    product_id: int
    user_id: int | None  # None: anonymous
    viewed_at: datetime


COUNTED = ["anonymous_views", "registered_views"]


def _summed(counts: Counter, key_of) -> list[tuple]:
    """``counts`` ((product, day) -> (anonymous, registered)) summed per ``key_of(product,
    day)`` (None: left out), in key order."""
    sums: Counter = Counter()
    for (pid, day), (anon, reg) in counts.items():
        key = key_of(pid, day)
        if key is not None:
            had = sums[key] or (0, 0)
            sums[key] = (had[0] + anon, had[1] + reg)
    return sorted(sums.items())


# Product id -> sku key, remembered by this process's app: a product's sku never changes
# and its row is never deleted, so the hot products of the views need no read per batch.
KNOWN_SKUS = 100_000


def _skus_of(ids: set[int], session: Session) -> dict[int, str]:
    known: dict[int, str] = current_app.extensions.setdefault("view_skus", {})
    found = {pid: sku for pid in ids if (sku := known.get(pid)) is not None}
    if missing := sorted(ids - found.keys()):
        # A plain read (no lock).
        fetched = dict(
            session.execute(
                select(Product.id, Product.sku_lower).where(Product.id.in_(missing))
            ).all()
        )
        found.update(fetched)
        if len(known) + len(fetched) > KNOWN_SKUS:
            known.clear()
        known.update(fetched)
    return found


# The per-sku roll-ups: (model, period column, the period of a day), in the order they
# are written.
PER_SKU = ((DailySkuViews, "day", lambda day: day), (WeeklySkuViews, "week", week_of))


def _per_sku(counts: Counter, skus: dict[int, str], period_of) -> dict[tuple, tuple]:
    """``counts`` ((product, day) -> (anonymous, registered)) as {(sku, period): (anonymous,
    registered, views)}, in key order. A view of an id no product has (a malformed entry)
    ranks nowhere."""
    summed = _summed(counts, lambda pid, day: (skus[pid], period_of(day)) if pid in skus else None)
    return {key: (anon, reg, anon + reg) for key, (anon, reg) in summed}


def _upsert_counts(session: Session, counts: Counter) -> None:
    """Add to the per-product counts, then to the per-sku ones (per day, per week), then to
    the catalog's of the same days (always in this order, each in key order: concurrent
    batches lock alike, and never deadlock)."""
    rows = [
        {"product_id": pid, "day": day, "anonymous_views": anon, "registered_views": reg}
        for (pid, day), (anon, reg) in sorted(counts.items())
    ]
    table = DailyProductViews.__table__
    session.execute(upsert_adding(table, ["product_id", "day"], COUNTED, session), rows)
    skus = _skus_of({pid for pid, _day in counts}, session)
    for model, period, period_of in PER_SKU:
        if per_sku := _per_sku(counts, skus, period_of):
            keys, counted = ["sku_lower", period], [*COUNTED, "views"]
            names = [*keys, *counted]
            session.execute(
                upsert_adding(model.__table__, keys, counted, session),
                [dict(zip(names, (*key, *n), strict=True)) for key, n in per_sku.items()],
            )
    catalog = [
        {"day": day, "anonymous_views": anon, "registered_views": reg}
        for day, (anon, reg) in _summed(counts, lambda _pid, day: day)
    ]
    session.execute(upsert_adding(DailyCatalogViews.__table__, ["day"], COUNTED, session), catalog)


def _add_viewers(session: Session, viewers: set[tuple[int, date, int]]) -> None:
    table = DailyProductViewer.__table__
    rows = [{"product_id": p, "day": d, "user_id": u} for p, d, u in sorted(viewers)]
    session.execute(insert_ignore(table, session), rows)


def _add_to_rollups(session: Session, views: list[View]) -> None:
    """Add views to the per-day counts and the per-day registered viewers."""
    counts: Counter = Counter()
    viewers: set[tuple[int, date, int]] = set()
    for view in views:
        key = (view.product_id, view.viewed_at.date())
        anon, reg = counts[key] or (0, 0)
        counts[key] = (anon + (view.user_id is None), reg + (view.user_id is not None))
        if view.user_id is not None:
            viewers.add((view.product_id, view.viewed_at.date(), view.user_id))
    if counts:
        _upsert_counts(session, counts)
    if viewers:
        _add_viewers(session, viewers)


def _write(session: Session, views: list[View]) -> int:
    views = list({view.id: view for view in views}.values())
    applied = set(
        session.scalars(
            select(ProductView.view_id).where(ProductView.view_id.in_([v.id for v in views]))
        )
    )
    views = [view for view in views if view.id not in applied]
    if not views:
        return 0
    session.execute(
        insert(ProductView),
        [
            {
                "product_id": v.product_id,
                "user_id": v.user_id,
                "viewed_at": v.viewed_at,
                "view_id": v.id,
            }
            # One order for every writer: concurrent batches take their locks alike.
            for v in sorted(views, key=lambda v: (v.product_id, v.id))
        ],
    )
    _add_to_rollups(session, views)
    return len(views)


def write_views(views: list[View]) -> int:
    """Write views and their roll-ups in one transaction of their own; return how many
    were new (a view whose id is stored already is skipped).

    A session of its own: a request's session (its objects, its transaction) is never
    touched by the write.
    """
    if not views:
        return 0
    for attempt in (1, 2):
        with Session(db.engine) as session:
            try:
                written = _write(session, views)
            except IntegrityError:
                # Another writer stored some of these views at the same moment (a
                # reclaimed batch, a direct write): read what it stored, write the rest.
                if attempt == 2:
                    raise
                continue
            except DBAPIError as exc:
                # A pooled connection the server had dropped (a restart), before the
                # COMMIT: nothing was written, and the pool now holds fresh ones.
                if attempt == 2 or not exc.connection_invalidated:
                    raise
                continue
            # Never again after this: a COMMIT whose answer was lost may have happened.
            session.commit()
            return written
    return 0


# Days rebuilt per transaction by `flask stats rollup`: a day's roll-ups change at once (a
# reader sees the day as it was or as rebuilt), and each statement reads one day's views
# (222,000 at 20 million views over 90 days), well within DB_STATEMENT_SECONDS (4 s).
DAYS_PER_TRANSACTION = 1
# Stretches of days rebuilt at once on MariaDB, each in its own transaction on its own
# connection (the days are independent): the server works on two cores. SQLite takes one
# writer at a time.
ROLLUP_THREADS = 2
# Keys per DELETE of the roll-up rows that differ from the raw views.
DELETED_PER_STATEMENT = 500
# Skus per transaction of a week's mend: no worker batch waits on a whole week's rows.
MENDED_PER_TRANSACTION = 500


def rebuild_rollups(
    start: date, end: date, progress: Callable[[int], object] | None = None
) -> tuple[int, date | None]:
    """Bring the roll-ups of [start, end] to what the raw rows say (`flask stats rollup`).

    Days before the oldest raw row are left alone: their raw rows may have been pruned,
    and their roll-ups are then the only record. The weekly rankings of every week the
    range touches are mended from the days (``_mend_week``). Returns (views rolled up,
    first day). ``progress(days)`` is told of each stretch of days done (skipped days
    included).
    """
    progress = progress or (lambda _days: None)
    oldest = db.session.scalar(select(func.min(ProductView.viewed_at)))
    first = max(start, oldest.date()) if oldest is not None else end + timedelta(days=1)
    progress(min((first - start).days, (end - start).days + 1))
    db.session.commit()  # the read above ends its transaction
    # Every week the range touches is mended once the days of it that are rebuilt are
    # done (the days before ``first`` are not rebuilt: their weeks can be mended at once).
    weeks = sorted({week_of(day) for day in days(start, end)})

    def mend_weeks(through: date) -> None:
        while weeks and weeks[0] + timedelta(days=6) <= through:
            _mend_week(weeks.pop(0))

    mend_weeks(first - timedelta(days=1))
    if first > end:
        mend_weeks(date.max)
        return 0, None
    # A stretch of days per transaction: the operator sees it advance, and an interrupted
    # run keeps the stretches it finished.
    stretches, day = [], first
    while day <= end:
        last = min(end, day + timedelta(days=DAYS_PER_TRANSACTION - 1))
        stretches.append((day, last))
        day = last + timedelta(days=1)
    threads = 1 if dialect.is_sqlite() else ROLLUP_THREADS
    count = 0
    for (day, last), rolled_up in zip(
        stretches, in_parallel(_rebuilt, stretches, threads), strict=True
    ):
        # The days come back in order: the weeks whose rebuilt days are all done.
        mend_weeks(last if last < end else date.max)
        count += rolled_up
        progress((last - day).days + 1)
    return count, first


def _mend_week(monday: date) -> None:
    """Make the weekly roll-ups of the week from ``monday`` the sums of its days', while
    the worker writes.

    One statement reads each sku's difference between the sums of its days and its weekly
    row, and each difference is then added to the row. A batch of views the worker
    commits meanwhile adds the same to a day and to its week, so the difference is the
    same after it: added, it mends the row whatever was committed in between (rewriting
    the row with the sums read would drop that batch). The rows are locked in key order,
    as the worker's batches lock them."""
    daily, weekly = DailySkuViews, WeeklySkuViews
    parts = union_all(
        select(
            daily.sku_lower,
            daily.anonymous_views.label("anon"),
            daily.registered_views.label("reg"),
            (daily.anonymous_views + daily.registered_views).label("views"),
        ).where(daily.day.between(monday, monday + timedelta(days=6))),
        select(
            weekly.sku_lower, -weekly.anonymous_views, -weekly.registered_views, -weekly.views
        ).where(weekly.week == monday),
    ).subquery()
    anon, reg, views = (func.sum(parts.c[name]) for name in ("anon", "reg", "views"))
    differences = [
        {
            "sku_lower": sku,
            "week": monday,
            "anonymous_views": int(a),
            "registered_views": int(r),
            "views": int(v),
        }
        for sku, a, r, v in db.session.execute(
            select(parts.c.sku_lower, anon, reg, views)
            .group_by(parts.c.sku_lower)
            .having(or_(anon != 0, reg != 0, views != 0))
            .order_by(parts.c.sku_lower)
        )
    ]
    db.session.commit()  # the read's transaction
    counted = [*COUNTED, "views"]
    # Each difference is right whenever it is added: a few hundred per transaction.
    for at in range(0, len(differences), MENDED_PER_TRANSACTION):
        chunk = differences[at : at + MENDED_PER_TRANSACTION]
        db.session.execute(
            upsert_adding(weekly.__table__, ["sku_lower", "week"], counted, db.session), chunk
        )
        # A sku the week no longer holds (its row taken down to nothing) goes.
        if lowered := [d["sku_lower"] for d in chunk if min(d[name] for name in counted) < 0]:
            db.session.execute(
                delete(weekly).where(
                    weekly.week == monday,
                    weekly.sku_lower.in_(lowered),
                    *[weekly.__table__.c[name] == 0 for name in counted],
                )
            )
        db.session.commit()


def _rebuilt(stretch: tuple[date, date]) -> int:
    """Rebuild the days of ``stretch`` in a transaction of their own."""
    count = _rebuild_days(*stretch)
    db.session.commit()
    return count


def _rebuild_days(first: date, last: date) -> int:
    """Make the roll-ups of the days [first, last] what their raw views say, in the
    session's transaction; the number of raw views they hold.

    The raw views are read grouped by the database, from one index (the days' entries of
    ``ix_product_views_viewed_product_user``, no row read), and each roll-up is compared
    with them: only the rows that differ are deleted and written again. A rebuild of right
    roll-ups (the usual run: a check after an incident) writes nothing, so it neither
    locks the rows the worker is adding to nor rewrites pages spread over the tables
    (their keys start with the product or sku: a day's rows are everywhere)."""
    lo = datetime.combine(first, datetime.min.time())
    hi = datetime.combine(last + timedelta(days=1), datetime.min.time())
    in_days = (ProductView.viewed_at >= lo, ProductView.viewed_at < hi)
    day_of_view = func.date(ProductView.viewed_at)
    registered = func.count(ProductView.user_id)
    grouped = (
        select(ProductView.product_id, day_of_view, func.count() - registered, registered)
        .where(*in_days)
        .group_by(ProductView.product_id, day_of_view)
    )
    counts = Counter(
        {
            (pid, dialect.as_date(day)): (int(anon), int(reg))
            for pid, day, anon, reg in db.session.execute(grouped)
        }
    )
    # In the order the worker's batches write them (products, skus, catalog, viewers).
    _make_rows(DailyProductViews, first, last, dict(counts))
    skus = _skus_of({pid for pid, _day in counts}, db.session)
    _make_rows(DailySkuViews, first, last, _per_sku(counts, skus, lambda day: day))
    _make_rows(DailyCatalogViews, first, last, dict(_summed(counts, lambda _pid, day: (day,))))
    viewed_by = (
        select(ProductView.product_id, day_of_view, ProductView.user_id)
        .where(*in_days, ProductView.user_id.is_not(None))
        .distinct()
    )
    _make_viewers(first, last, viewed_by)
    return sum(anon + reg for anon, reg in counts.values())


def _make_viewers(first: date, last: date, viewed_by) -> None:
    """Make the registered viewers of the days [first, last] those of ``viewed_by``
    (product, day, user). Compared by the database (EXCEPT, both ways): only the rows that
    differ come back, where reading both sides (twice as many as a day's products) would
    cost more than the rest of the day's rebuild."""
    viewer = DailyProductViewer
    stored = select(viewer.product_id, viewer.day, viewer.user_id).where(
        viewer.day.between(first, last)
    )
    _delete_keys(
        viewer.__table__, [tuple(row) for row in db.session.execute(except_(stored, viewed_by))]
    )
    missing = [
        {"product_id": pid, "day": dialect.as_date(day), "user_id": user}
        for pid, day, user in db.session.execute(except_(viewed_by, stored))
    ]
    if missing:
        db.session.execute(
            insert_ignore(viewer.__table__),
            sorted(missing, key=itemgetter("product_id", "day", "user_id")),
        )


def _make_rows(model, first: date, last: date, wanted: dict[tuple, tuple]) -> None:
    """Make ``model``'s rows of the days [first, last] ``wanted`` ({primary key: the
    other columns, in the table's order}): the rows that are missing, or hold other
    values, or are not wanted at all, are deleted and inserted, the others left alone."""
    table = model.__table__
    keys = list(table.primary_key.columns)
    values = [c for c in table.columns if not c.primary_key]
    stored = {
        tuple(row[: len(keys)]): tuple(row[len(keys) :])
        for row in db.session.execute(
            select(*keys, *values).where(table.c.day.between(first, last))
        )
    }
    _delete_keys(table, [key for key, had in stored.items() if wanted.get(key) != had])
    names = [c.name for c in (*keys, *values)]
    fresh = [
        dict(zip(names, (*key, *now), strict=True))
        for key, now in sorted(wanted.items())
        if stored.get(key) != now
    ]
    if fresh:
        db.session.execute(insert(table), fresh)


def _delete_keys(table, keys: list[tuple]) -> None:
    """Delete the rows of ``table`` with these primary keys, in key order."""
    columns = tuple_(*table.primary_key.columns)
    keys = sorted(keys)
    for at in range(0, len(keys), DELETED_PER_STATEMENT):
        db.session.execute(delete(table).where(columns.in_(keys[at : at + DELETED_PER_STATEMENT])))


def views_before(before: date) -> int:
    """How many raw views are older than ``before`` (what prune_views would delete)."""
    cutoff = datetime.combine(before, datetime.min.time())
    return db.session.scalar(
        select(func.count()).select_from(ProductView).where(ProductView.viewed_at < cutoff)
    )


def prune_views(before: date, progress: Callable[[int], object] | None = None) -> int:
    """Delete raw views older than ``before`` (their roll-ups stay), in chunks;
    ``progress(rows)`` is told of each chunk deleted."""
    cutoff = datetime.combine(before, datetime.min.time())
    total = 0
    while True:
        ids = list(
            db.session.scalars(
                select(ProductView.id).where(ProductView.viewed_at < cutoff).limit(10_000)
            )
        )
        if not ids:
            return total
        db.session.execute(delete(ProductView).where(ProductView.id.in_(ids)))
        db.session.commit()
        total += len(ids)
        if progress is not None:
            progress(len(ids))
