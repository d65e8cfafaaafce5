"""The journal of changes: recording events, sealing them at commit, reading them back.

``record`` adds an event to the caller's session: it commits with the change or not at
all. Its public id is given by ``seal``, which runs just before every commit that holds
new events (a session listener: it must run whoever commits): it locks the chain's one
row (``event_chain``), numbers the transaction's events after the last sealed one, and
chains their hashes. The lock is held only from there to the COMMIT, so writers take turns
only for that moment, and an event with a smaller id can never become visible after a
larger one (the feed never skips; docs/events.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import event as orm_event
from sqlalchemy import func, insert, select

from app.core.columns import utcnow
from app.core.dialect import locked
from app.core.extensions import db
from app.core.text import key
from app.events.models import Event, EventChain

GENESIS = "0" * 64
# Set on a session that added events: its commit seals them.
UNSEALED = "unsealed_events"


@dataclass(frozen=True)
class Actor:
    """Who made a change (None for an operator on the command line)."""

    id: int
    email: str


def actor_of(user) -> Actor | None:
    return None if user is None else Actor(user.id, user.email)


def _event(type_: str, actor: Actor | None, changes: dict, **fields) -> Event:
    sku = fields.get("sku")
    fields.setdefault("at", utcnow())  # set now: the hash covers it, maybe before the insert
    return Event(
        type=type_,
        actor_id=actor.id if actor else None,
        actor_email=actor.email if actor else None,
        sku_key=None if sku is None else key(sku),
        changes=changes,
        **fields,
    )


def record(
    type_: str,
    actor: Actor | None,
    changes: dict,
    *,
    product_id: int | None = None,
    sku: str | None = None,
    user_id: int | None = None,
    version: int | None = None,
    snapshot: dict | None = None,
    reverted_to: int | None = None,
) -> Event:
    """Add an event to the session: it commits with the change (and is sealed then)."""
    row = _event(
        type_,
        actor,
        changes,
        product_id=product_id,
        sku=sku,
        user_id=user_id,
        version=version,
        snapshot=snapshot,
        reverted_to=reverted_to,
    )
    db.session.add(row)
    db.session.info.setdefault(UNSEALED, []).append(row)
    return row


def record_many(actor: Actor | None, events: list[dict]) -> Event | None:
    """Add many events at once (a catalog import), each a dict of ``record``'s keyword
    fields and ``type``/``changes``: sealed at once, the chain staying locked until the
    commit (one statement per thousand events, not one per event). The first event."""
    if not events:
        return None
    session = db.session
    chain = _chain(session)
    now = utcnow()
    rows = []
    for fields in events:
        row = _event(fields.pop("type"), actor, fields.pop("changes"), at=now, **fields)
        chain.last_id += 1
        row.id, row.prev_hash = chain.last_id, chain.last_hash
        row.hash = chain.last_hash = digest(chain.last_hash, row)
        rows.append(row)
    columns = [c.key for c in Event.__table__.columns if c.key != "row_id"]
    for start in range(0, len(rows), 1000):
        session.execute(
            insert(Event.__table__),
            [{name: getattr(row, name) for name in columns} for row in rows[start : start + 1000]],
        )
    session.flush()
    return session.scalar(select(Event).where(Event.id == rows[0].id))


# ---------------------------------------------------------------- sealing


def digest(prev_hash: str, row: Event) -> str:
    """The hash of an event: of the one before it and of everything stored of it."""
    content = {**row.public(), "product_id": row.product_id, "snapshot": row.snapshot}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{text}".encode()).hexdigest()


def init_app(app: Flask) -> None:
    session_class = db.session.session_factory.class_
    if not orm_event.contains(session_class, "before_commit", seal):
        orm_event.listen(session_class, "before_commit", seal)


def seal(session) -> None:
    """Number and chain the transaction's new events, just before its commit. Events not
    flushed yet are inserted numbered and chained (one statement, not an insert and an
    update)."""
    added = session.info.pop(UNSEALED, None)
    if not added:
        return
    # Those still in the session (a rollback meanwhile left none), in the order written:
    # the flushed ones (by row id) before those added since the last flush.
    order = {id(row): n for n, row in enumerate(added)}
    pending = sorted(
        (row for row in added if row in session and row.id is None),
        key=lambda r: (r.row_id is None, r.row_id or 0, order[id(r)]),
    )
    if not pending:
        return
    with session.no_autoflush:
        chain = _chain(session)
    for row in pending:
        chain.last_id += 1
        row.id = chain.last_id
        row.prev_hash = chain.last_hash
        row.hash = digest(chain.last_hash, row)
        chain.last_hash = row.hash
    session.flush()


def _chain(session) -> EventChain:
    """The chain's row, locked until the commit; made again from the events if missing."""
    chain = locked(select(EventChain).where(EventChain.id == 1), session)
    if chain is not None:
        return chain
    last = session.scalar(select(Event).where(Event.id.is_not(None)).order_by(Event.id.desc()))
    chain = EventChain(
        id=1,
        last_id=last.id if last else 0,
        last_hash=last.hash if last else GENESIS,
    )
    session.add(chain)
    session.flush()
    return chain


# ---------------------------------------------------------------- reading


def feed(after: int, limit: int, types: Iterable[str] | None = None) -> list[Event]:
    """Sealed events after ``after``, oldest first."""
    query = select(Event).where(Event.id > after)
    if types:
        query = query.where(Event.type.in_(list(types)))
    return list(db.session.scalars(query.order_by(Event.id).limit(limit)))


def by_id(event_id: int) -> Event | None:
    return db.session.scalar(select(Event).where(Event.id == event_id))


def of_products(product_ids) -> select:
    """The events of these product rows, newest first (a query to page)."""
    return select(Event).where(Event.product_id.in_(product_ids)).order_by(Event.id.desc())


def of_user(user_id: int) -> select:
    """An account's events, newest first (a query to page)."""
    return select(Event).where(Event.user_id == user_id).order_by(Event.id.desc())


def last_id() -> int:
    return db.session.scalar(select(func.max(Event.id))) or 0


# ---------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Broken:
    """The first event (by id) where the chain does not hold, and why."""

    event_id: int
    reason: str


def verify(batch: int = 1000) -> tuple[int, Broken | None]:
    """Walk the chain in id order: (events checked, the first break or None)."""
    expected_id, prev_hash, checked = 1, GENESIS, 0
    after = 0
    while True:
        rows = list(
            db.session.scalars(
                select(Event).where(Event.id > after).order_by(Event.id).limit(batch)
            )
        )
        if not rows:
            break
        for row in rows:
            if row.id != expected_id:
                return checked, Broken(expected_id, f"missing: the next event is {row.id}")
            if row.prev_hash != prev_hash:
                return checked, Broken(row.id, "its previous hash does not match the event before")
            if digest(prev_hash, row) != row.hash:
                return checked, Broken(row.id, "its content does not match its hash")
            prev_hash, expected_id, checked = row.hash, row.id + 1, checked + 1
        after = rows[-1].id
        db.session.expunge_all()
    unsealed = db.session.scalar(select(func.count()).select_from(Event).where(Event.id.is_(None)))
    if unsealed:
        return checked, Broken(expected_id, f"{unsealed} event(s) without an id")
    chain = db.session.get(EventChain, 1)
    if chain is not None and (chain.last_id, chain.last_hash) != (expected_id - 1, prev_hash):
        return checked, Broken(chain.last_id, "the chain's last event is not the last one found")
    return checked, None
