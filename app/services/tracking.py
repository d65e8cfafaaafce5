"""Product views: recording them, rolling them up, and the statistics.

A 200 (or 304) product read records its view before the answer leaves the process:
with ``REDIS_URL`` set, one XADD to the views stream (the worker writes it to the
database, see app/worker.py); without Redis, or when Redis does not answer, a direct
write of the view and its roll-ups. If that fails too, the read still answers and the
lost view is logged and counted (``marketplace_views_lost_total``).

A batch of views goes in one transaction: the raw rows, the per-day counts and the
per-day registered viewers, so the roll-ups are never behind the raw rows. Views from the
stream carry their entry id (unique in ``product_views.stream_id``): a batch applied
again after a lost acknowledgement adds nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import NamedTuple

import redis
from flask import current_app
from sqlalchemy import Date, case, delete, func, insert, literal, select
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from app import metrics, streams
from app.extensions import db
from app.models import DailyProductViewer, DailyProductViews, Product, ProductView, utcnow

log = logging.getLogger(__name__)


class View(NamedTuple):
    product_id: int
    user_id: int | None  # None: anonymous
    viewed_at: datetime
    stream_id: str | None = None


# ---------------------------------------------------------------- writing


def _upsert_counts(session: Session, counts: Counter) -> None:
    table = DailyProductViews.__table__
    rows = [
        {"product_id": pid, "day": day, "anonymous_views": anon, "registered_views": reg}
        for (pid, day), (anon, reg) in sorted(counts.items())
    ]
    if session.get_bind().dialect.name == "sqlite":
        stmt = sqlite.insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["product_id", "day"],
            set_={
                "anonymous_views": table.c.anonymous_views + stmt.excluded.anonymous_views,
                "registered_views": table.c.registered_views + stmt.excluded.registered_views,
            },
        )
    else:
        stmt = mysql.insert(table)
        stmt = stmt.on_duplicate_key_update(
            anonymous_views=table.c.anonymous_views + stmt.inserted.anonymous_views,
            registered_views=table.c.registered_views + stmt.inserted.registered_views,
        )
    session.execute(stmt, rows)


def _add_viewers(session: Session, viewers: set[tuple[int, date, int]]) -> None:
    table = DailyProductViewer.__table__
    rows = [{"product_id": p, "day": d, "user_id": u} for p, d, u in sorted(viewers)]
    if session.get_bind().dialect.name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:
        stmt = mysql.insert(table).prefix_with("IGNORE")
    session.execute(stmt, rows)


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
    stream_ids = [view.stream_id for view in views if view.stream_id is not None]
    if stream_ids:
        applied = set(
            session.scalars(
                select(ProductView.stream_id).where(ProductView.stream_id.in_(stream_ids))
            )
        )
        views = [view for view in views if view.stream_id not in applied]
    if not views:
        return 0
    session.execute(
        insert(ProductView),
        [
            {
                "product_id": v.product_id,
                "user_id": v.user_id,
                "viewed_at": v.viewed_at,
                "stream_id": v.stream_id,
            }
            # One order for every writer: concurrent batches take their locks alike.
            for v in sorted(views, key=lambda v: (v.product_id, v.stream_id or ""))
        ],
    )
    _add_to_rollups(session, views)
    return len(views)


def write_views(views: list[View]) -> int:
    """Write views and their roll-ups in one transaction of their own; return how many
    were new (a stream entry already applied is skipped).

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
                # Another writer applied some of these entries at the same moment (a
                # reclaimed batch): read what it applied and write the rest.
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


class RecentViewers:
    """The (client, product) pairs seen in the last ``seconds``, in this process only:
    without Redis, each web process de-duplicates on its own (so with N processes a
    client can count up to N times per window). At most ``size`` pairs are kept."""

    def __init__(self, size: int = 100_000):
        self.size = size
        self.seen: OrderedDict[str, float] = OrderedDict()
        self.lock = threading.Lock()

    def first(self, key: str, seconds: float) -> bool:
        now = time.monotonic()
        with self.lock:
            while self.seen and next(iter(self.seen.values())) <= now:
                self.seen.popitem(last=False)  # the oldest expires first
            if key in self.seen:
                return False
            self.seen[key] = now + seconds
            if len(self.seen) > self.size:
                self.seen.popitem(last=False)
            return True


def first_view_in_window(product_id: int, user_id: int | None, client: str | None) -> bool:
    """Whether this view counts under ``VIEW_DEDUP_SECONDS``: the first from this user
    (or, anonymous, this address) for this product in the window."""
    seconds = current_app.config["VIEW_DEDUP_SECONDS"]
    if not seconds:
        return True
    who = f"u{user_id}" if user_id is not None else f"a{client or '-'}"
    key = f"{product_id}:{who}"
    if (conn := streams.client()) is not None:
        try:
            return bool(conn.set(f"{streams.VIEWED_PREFIX}{key}", 1, nx=True, ex=seconds))
        except redis.RedisError as exc:
            log.warning("views de-duplication falls back to this process: %s", exc)
    return current_app.extensions.setdefault("recent_viewers", RecentViewers()).first(key, seconds)


def streams_each_view() -> bool:
    """Whether a read's view goes straight into the stream: ``auto`` with Redis and no
    de-duplication window (the product cache then adds it in the read's own round trip)."""
    config = current_app.config
    return (
        config["VIEW_RECORDING"] == "auto"
        and not config["VIEW_DEDUP_SECONDS"]
        and streams.client() is not None
    )


def record_view(product_id: int, user_id: int | None, client: str | None = None) -> str:
    """Record one consultation before the read answers; return how ("stream", "direct",
    "off", "repeat" (inside VIEW_DEDUP_SECONDS) or "lost")."""
    mode = current_app.config["VIEW_RECORDING"]
    if mode == "off":
        return "off"
    if not first_view_in_window(product_id, user_id, client):
        metrics.VIEWS_REPEATED.inc()
        return "repeat"
    now = utcnow()
    if mode == "auto" and streams.client() is not None:
        try:
            streams.append_view(product_id, user_id, now)
            return streamed()
        except redis.RedisError as exc:
            if not stream_failed(product_id, exc):
                return "unconfirmed"
            return write_directly(product_id, user_id, now, fell_back=True)
    return write_directly(product_id, user_id, now)


def streamed() -> str:
    """Count a view the stream took."""
    metrics.VIEWS_STREAMED.inc()
    return "stream"


def stream_failed(product_id: int, exc: redis.RedisError) -> bool:
    """After an XADD (or a script ending with one) raised: True when the view is not in
    the stream and must be written directly; False when it may be there."""
    if streams.may_have_run(exc):
        # The XADD went out and no answer came: it may be in the stream, so a direct
        # write could count the read twice. Marked, not guessed.
        metrics.VIEWS_RECORDED.labels("stream-unconfirmed").inc()
        log.warning("view of product %s: the stream did not confirm it", product_id)
        return False
    log.warning("views stream unavailable, writing the view directly: %s", exc)
    return True


def write_directly(
    product_id: int, user_id: int | None, at: datetime, fell_back: bool = False
) -> str:
    """Write one view in a transaction of its own ("direct"), or count it lost;
    ``fell_back``: because the stream failed."""
    try:
        write_views([View(product_id, user_id, at)])
    except Exception:
        # The read itself succeeded: answer it, and say what was not recorded.
        metrics.VIEWS_LOST.inc()
        log.exception("view of product %s by %s lost", product_id, user_id or "anonymous")
        return "lost"
    metrics.VIEWS_RECORDED.labels("direct").inc()
    if fell_back:
        metrics.VIEWS_FALLBACK.inc()
    return "direct"


# ---------------------------------------------------------------- reading (statistics)


@contextmanager
def stats_session():
    """A session on the statistics database (``STATS_DATABASE_URL``, a read replica)."""
    engine = db.engines.get("stats") or db.engine
    with Session(engine) as session:
        yield session


def _same_sku(sku: str):
    """Every product row that ever carried this sku: a deleted and re-created product
    keeps one history (sku comparison is case-insensitive on both databases)."""
    return select(Product.id).where(Product.sku == sku).scalar_subquery()


def _days(start: date, end: date, per_day: dict[date, tuple[int, int]]) -> list[dict]:
    """Every day of [start, end] with its views (0 on a day without any)."""
    by_day = []
    day = start
    while day <= end:
        anon, reg = per_day.get(day, (0, 0))
        by_day.append(
            {"date": day, "views": anon + reg, "anonymous_views": anon, "registered_views": reg}
        )
        day += timedelta(days=1)
    return by_day


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
    """Views of the whole catalog per day (deleted products included), from the roll-ups."""
    with stats_session() as session:
        per_day = _views_per_day(session, DailyProductViews.day.between(start, end))
    by_day = _days(start, end, per_day)
    return {"start": start, "end": end, **_totals(by_day), "by_day": by_day}


def product_stats(product: Product, start: date, end: date) -> dict:
    ids = _same_sku(product.sku)
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
        .group_by(Product.sku)
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
            .where(Product.sku.in_([r.sku for r in ranked]))
            .order_by(Product.deleted_at.is_not(None), Product.id.desc())
        ):
            names.setdefault(product.sku.lower(), product.name)
    return [
        {
            "sku": r.sku,
            "name": names.get(r.sku.lower(), ""),
            "views": int(r.anon) + int(r.reg),
            "anonymous_views": int(r.anon),
            "registered_views": int(r.reg),
        }
        for r in ranked
    ]


# ---------------------------------------------------------------- maintenance


def rebuild_rollups(
    start: date, end: date, progress: Callable[[int], object] | None = None
) -> tuple[int, date | None]:
    """Recompute the roll-ups of [start, end] from the raw rows (`flask stats rollup`).

    Days before the oldest raw row are left alone: their raw rows may have been pruned,
    and their roll-ups are then the only record. Returns (views rolled up, first day).
    ``progress(days)`` is told of each day done (skipped days included).
    """
    progress = progress or (lambda _days: None)
    oldest = db.session.scalar(select(func.min(ProductView.viewed_at)))
    first = max(start, oldest.date()) if oldest is not None else end + timedelta(days=1)
    progress(min((first - start).days, (end - start).days + 1))
    if first > end:
        return 0, None
    count = 0
    # One transaction, computed by the database (a year of views never goes through
    # Python), a day at a time so that the operator sees it advance.
    for offset in range((end - first).days + 1):
        count += _rebuild_day(first + timedelta(days=offset))
        progress(1)
    db.session.commit()
    return count, first


def _rebuild_day(day: date) -> int:
    lo = datetime.combine(day, datetime.min.time())
    in_range = (ProductView.viewed_at >= lo, ProductView.viewed_at < lo + timedelta(days=1))
    anonymous = case((ProductView.user_id.is_(None), 1), else_=0)
    for model in (DailyProductViews, DailyProductViewer):
        db.session.execute(delete(model).where(model.day == day))
    db.session.execute(
        insert(DailyProductViews).from_select(
            ["product_id", "day", "anonymous_views", "registered_views"],
            select(
                ProductView.product_id,
                literal(day, Date),
                func.sum(anonymous),
                func.sum(1 - anonymous),
            )
            .where(*in_range)
            .group_by(ProductView.product_id),
        )
    )
    db.session.execute(
        insert(DailyProductViewer).from_select(
            ["product_id", "day", "user_id"],
            select(ProductView.product_id, literal(day, Date), ProductView.user_id)
            .where(*in_range, ProductView.user_id.is_not(None))
            .distinct(),
        )
    )
    return db.session.scalar(select(func.count()).select_from(ProductView).where(*in_range))


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
