"""Writing views to the database: the raw rows and their per-day roll-ups in one
transaction per batch, and the maintenance of both (`flask stats rollup`, `flask views prune`).

Views carry an id (unique in ``product_views``): a batch applied again, or a view written
both from the stream and directly, is stored once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import NamedTuple

from flask import current_app
from sqlalchemy import case, delete, func, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from app.catalog.models import Product
from app.core.dialect import insert_ignore, upsert_adding
from app.core.extensions import db
from app.views.models import (
    DailyCatalogViews,
    DailyProductViewer,
    DailyProductViews,
    DailySkuViews,
    ProductView,
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


def _upsert_counts(session: Session, counts: Counter) -> None:
    """Add to the per-product counts, then to the per-sku ones, then to the catalog's of the
    same days (always in this order, each in key order: concurrent batches lock alike, and
    never deadlock)."""
    rows = [
        {"product_id": pid, "day": day, "anonymous_views": anon, "registered_views": reg}
        for (pid, day), (anon, reg) in sorted(counts.items())
    ]
    table = DailyProductViews.__table__
    session.execute(upsert_adding(table, ["product_id", "day"], COUNTED, session), rows)
    _upsert_totals(session, counts)


def _upsert_totals(session: Session, counts: Counter) -> None:
    """Add the per-product counts ``counts`` to the per-sku counts, then to the catalog's."""
    skus = _skus_of({pid for pid, _day in counts}, session)
    per_sku = [
        {
            "sku_lower": sku,
            "day": day,
            "anonymous_views": anon,
            "registered_views": reg,
            "views": anon + reg,
        }
        # A view of an id no product has (a malformed entry) ranks nowhere, as before.
        for (sku, day), (anon, reg) in _summed(
            counts, lambda pid, day: (skus[pid], day) if pid in skus else None
        )
    ]
    if per_sku:
        table = DailySkuViews.__table__
        session.execute(
            upsert_adding(table, ["sku_lower", "day"], [*COUNTED, "views"], session), per_sku
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


# Days rebuilt per transaction by `flask stats rollup`. More days a statement visit each
# roll-up page fewer times (their keys start with the product, so a day's rows are spread
# over the whole table): 5 days took 2.8 s a day at 20 million views, 1 day 3.9 s. But a
# statement's time grows with the views it reads, and DB_STATEMENT_SECONDS (4 s) stops it:
# one day (222,000 views there) keeps each under 1.5 s.
DAYS_PER_TRANSACTION = 1


def rebuild_rollups(
    start: date, end: date, progress: Callable[[int], object] | None = None
) -> tuple[int, date | None]:
    """Recompute the roll-ups of [start, end] from the raw rows (`flask stats rollup`).

    Days before the oldest raw row are left alone: their raw rows may have been pruned,
    and their roll-ups are then the only record. Returns (views rolled up, first day).
    ``progress(days)`` is told of each stretch of days done (skipped days included).
    """
    progress = progress or (lambda _days: None)
    oldest = db.session.scalar(select(func.min(ProductView.viewed_at)))
    first = max(start, oldest.date()) if oldest is not None else end + timedelta(days=1)
    progress(min((first - start).days, (end - start).days + 1))
    db.session.commit()  # the read above ends its transaction
    if first > end:
        return 0, None
    count = 0
    # Computed by the database (a year of views never goes through Python), a stretch of
    # days per transaction: those days' roll-ups change at once (a reader sees them as
    # they were or as rebuilt), the operator sees it advance, and an interrupted run
    # keeps the stretches it finished.
    day = first
    while day <= end:
        last = min(end, day + timedelta(days=DAYS_PER_TRANSACTION - 1))
        count += _rebuild_days(day, last)
        db.session.commit()
        progress((last - day).days + 1)
        day = last + timedelta(days=1)
    return count, first


def _rebuild_days(first: date, last: date) -> int:
    """Rebuild the roll-ups of the days [first, last] in the session's transaction; the
    number of raw views they hold."""
    lo = datetime.combine(first, datetime.min.time())
    hi = datetime.combine(last + timedelta(days=1), datetime.min.time())
    in_range = (ProductView.viewed_at >= lo, ProductView.viewed_at < hi)
    day_of_view = func.date(ProductView.viewed_at)
    anonymous = case((ProductView.user_id.is_(None), 1), else_=0)
    for model in (DailyProductViews, DailyProductViewer, DailySkuViews, DailyCatalogViews):
        db.session.execute(
            delete(model).where(model.day.between(first, last)),
            execution_options={"synchronize_session": False},  # no objects of them loaded
        )
    db.session.execute(
        insert(DailyProductViews).from_select(
            ["product_id", "day", "anonymous_views", "registered_views"],
            select(
                ProductView.product_id, day_of_view, func.sum(anonymous), func.sum(1 - anonymous)
            )
            .where(*in_range)
            .group_by(ProductView.product_id, day_of_view),
        )
    )
    # The per-sku and the catalog's counts from the day's per-product ones, by the writer
    # the worker's batches use: the skus come from this process's memo, not from a join
    # with products, whose rows are spread over a table the buffer pool seldom holds (a
    # lookup of each viewed product, every day, was the slowest statement of a day).
    rebuilt = select(
        DailyProductViews.product_id,
        DailyProductViews.day,
        DailyProductViews.anonymous_views,
        DailyProductViews.registered_views,
    ).where(DailyProductViews.day.between(first, last))
    counts = Counter(
        {(pid, day): (anon, reg) for pid, day, anon, reg in db.session.execute(rebuilt)}
    )
    if counts:
        _upsert_totals(db.session, counts)
    db.session.execute(
        insert(DailyProductViewer).from_select(
            ["product_id", "day", "user_id"],
            select(ProductView.product_id, day_of_view, ProductView.user_id)
            .where(*in_range, ProductView.user_id.is_not(None))
            .distinct(),
        )
    )
    return sum(anon + reg for anon, reg in counts.values())


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
