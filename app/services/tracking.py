"""Product views: recording them cheaply, rolling them up, and the statistics.

Recording is buffered in each process (see the README's "Views" section for the figures
behind that choice): a read appends to an in-memory list, a background thread writes
batches. A batch goes in one transaction: the raw rows, the per-day counts and the
per-day registered viewers, so the roll-ups are never behind the raw rows. A graceful
stop (atexit, uWSGI shutdown or reload) flushes what is buffered; a hard crash can lose
at most what arrived since the last flush (``VIEWS_FLUSH_SECONDS``, or ``VIEWS_BATCH``
views, whichever comes first).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import Counter
from contextlib import contextmanager
from datetime import date, datetime, timedelta

from flask import Flask, current_app
from sqlalchemy import case, delete, func, insert, select
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.orm import Session

from app.extensions import db
from app.models import DailyProductViewer, DailyProductViews, Product, ProductView, utcnow

log = logging.getLogger(__name__)

View = tuple[int, int | None, datetime]  # product id, user id (None: anonymous), when


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
    for product_id, user_id, at in views:
        anon, reg = counts[(product_id, at.date())] or (0, 0)
        counts[(product_id, at.date())] = (anon + (user_id is None), reg + (user_id is not None))
        if user_id is not None:
            viewers.add((product_id, at.date(), user_id))
    if counts:
        _upsert_counts(session, counts)
    if viewers:
        _add_viewers(session, viewers)


def write_views(views: list[View]) -> None:
    """Write a batch of views and their roll-ups in one transaction of their own.

    A session of its own: a request's session (its objects, its transaction) is never
    touched by the write.
    """
    if not views:
        return
    with Session(db.engine) as session, session.begin():
        session.execute(
            insert(ProductView),
            [{"product_id": p, "user_id": u, "viewed_at": at} for p, u, at in views],
        )
        _add_to_rollups(session, views)


class ViewRecorder:
    """Per-process view buffer with a flusher thread; ``VIEW_RECORDING`` picks the mode:
    ``buffered`` (default), ``direct`` (a write inside each read) or ``off``."""

    def __init__(self, app: Flask):
        self.app = app
        self.mode = app.config["VIEW_RECORDING"]
        self.every = app.config["VIEWS_FLUSH_SECONDS"]
        self.batch = app.config["VIEWS_BATCH"]
        self.limit = app.config["VIEWS_BUFFER_LIMIT"]
        self.buffer: list[View] = []
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.wake = threading.Event()
        self.pid: int | None = None
        self.stopping = False
        self.dropped = 0

    def record(self, product_id: int, user_id: int | None) -> None:
        if self.mode == "off":
            return
        view = (product_id, user_id, utcnow())
        if self.mode == "direct":
            try:
                write_views([view])
            except Exception:
                # The read itself succeeded: answer it, and say what was not recorded.
                log.exception("recording a view of product %s failed", product_id)
            return
        self._ensure_started()
        with self.lock:
            self.buffer.append(view)
            full = len(self.buffer) >= self.batch
        if full:
            self.wake.set()

    def _ensure_started(self) -> None:
        # Threads do not survive a fork (uWSGI forks its workers): one flusher per process.
        if self.pid == os.getpid():
            return
        with self.lock:
            if self.pid == os.getpid():
                return
            self.buffer = []
            self.wake = threading.Event()
            threading.Thread(target=self._run, name="views-flush", daemon=True).start()
            atexit.register(self.stop)
            self.pid = os.getpid()

    def _run(self) -> None:
        while not self.stopping:
            self.wake.wait(self.every)
            self.wake.clear()
            self.flush()

    def stop(self) -> None:
        """Flush what is buffered and let the flusher thread end (graceful shutdown)."""
        self.stopping = True
        self.wake.set()
        self.flush()

    def flush(self) -> int:
        """Write everything buffered so far; on a database error keep it for the next try."""
        with self.flush_lock:
            with self.lock:
                views, self.buffer = self.buffer, []
            if not views:
                return 0
            try:
                with self.app.app_context():
                    write_views(views)
            except Exception:
                with self.lock:
                    self.buffer[:0] = views
                    overflow = len(self.buffer) - self.limit
                    if overflow > 0:
                        # Bounded memory while the database is away: the oldest go first.
                        del self.buffer[:overflow]
                        self.dropped += overflow
                        log.error(
                            "view buffer full: dropped the %s oldest views (%s so far)",
                            overflow,
                            self.dropped,
                        )
                log.exception("writing %s views failed; kept for the next flush", len(views))
                return 0
            return len(views)


def init_app(app: Flask) -> None:
    app.extensions["views"] = ViewRecorder(app)


def record_view(product_id: int, user_id: int | None) -> None:
    current_app.extensions["views"].record(product_id, user_id)


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


def product_stats(product: Product, start: date, end: date) -> dict:
    ids = _same_sku(product.sku)
    in_range = DailyProductViews.day.between(start, end)
    with stats_session() as session:
        per_day = {
            day: (int(anon), int(reg))
            for day, anon, reg in session.execute(
                select(
                    DailyProductViews.day,
                    func.sum(DailyProductViews.anonymous_views),
                    func.sum(DailyProductViews.registered_views),
                )
                .where(DailyProductViews.product_id.in_(ids), in_range)
                .group_by(DailyProductViews.day)
            )
        }
        unique = session.scalar(
            select(func.count(func.distinct(DailyProductViewer.user_id))).where(
                DailyProductViewer.product_id.in_(ids),
                DailyProductViewer.day.between(start, end),
            )
        )
    by_day = []
    day = start
    while day <= end:
        anon, reg = per_day.get(day, (0, 0))
        by_day.append(
            {"date": day, "views": anon + reg, "anonymous_views": anon, "registered_views": reg}
        )
        day += timedelta(days=1)
    anonymous = sum(d["anonymous_views"] for d in by_day)
    registered = sum(d["registered_views"] for d in by_day)
    return {
        "sku": product.sku,
        "name": product.name,
        "start": start,
        "end": end,
        "views": anonymous + registered,
        "anonymous_views": anonymous,
        "registered_views": registered,
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


def rebuild_rollups(start: date, end: date) -> tuple[int, date | None]:
    """Recompute the roll-ups of [start, end] from the raw rows (`flask stats rollup`).

    Days before the oldest raw row are left alone: their raw rows may have been pruned,
    and their roll-ups are then the only record. Returns (views rolled up, first day).
    """
    oldest = db.session.scalar(select(func.min(ProductView.viewed_at)))
    if oldest is None:
        return 0, None
    start = max(start, oldest.date())
    if start > end:
        return 0, None
    lo = datetime.combine(start, datetime.min.time())
    hi = datetime.combine(end + timedelta(days=1), datetime.min.time())
    in_range = (ProductView.viewed_at >= lo, ProductView.viewed_at < hi)
    day = func.date(ProductView.viewed_at)
    anonymous = case((ProductView.user_id.is_(None), 1), else_=0)
    # One transaction, computed by the database (a year of views never goes through Python).
    for model in (DailyProductViews, DailyProductViewer):
        db.session.execute(delete(model).where(model.day.between(start, end)))
    db.session.execute(
        insert(DailyProductViews).from_select(
            ["product_id", "day", "anonymous_views", "registered_views"],
            select(ProductView.product_id, day, func.sum(anonymous), func.sum(1 - anonymous))
            .where(*in_range)
            .group_by(ProductView.product_id, day),
        )
    )
    db.session.execute(
        insert(DailyProductViewer).from_select(
            ["product_id", "day", "user_id"],
            select(ProductView.product_id, day, ProductView.user_id)
            .where(*in_range, ProductView.user_id.is_not(None))
            .distinct(),
        )
    )
    count = db.session.scalar(select(func.count()).select_from(ProductView).where(*in_range))
    db.session.commit()
    return count, start


def prune_views(before: date) -> int:
    """Delete raw views older than ``before`` (their roll-ups stay), in chunks."""
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
