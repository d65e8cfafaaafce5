"""Idempotency keys (the IETF httpapi ``Idempotency-Key`` draft), per user, for 24 hours.

The first request with a key reserves it in a short transaction of its own; its answer is
stored in the same transaction as the change it made, so a retry either finds the answer
(and gets it again, nothing done twice) or finds no change made (and may run). A key
whose request died mid-way is free again once its lease has run out: that request's
transaction never committed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.columns import utcnow
from app.core.extensions import db
from app.core.models import IdempotencyKey, WriteReceipt

KEEP = timedelta(hours=24)
# Longer than any request may run (uWSGI's harakiri).
LEASE = timedelta(seconds=90)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Stored:
    status: int
    body: str
    headers: dict


@dataclass(frozen=True)
class Reservation:
    """What a key says about this request: run it (``id``), replay ``stored``, or refuse
    with ``conflict`` (409: still running) or ``mismatch`` (422: another request)."""

    id: int | None = None
    stored: Stored | None = None
    conflict: bool = False
    mismatch: bool = False


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def reserve(user_id: int, key: str, print_: str) -> Reservation:
    """Take the key for this request, or say why not (own transaction)."""
    now = utcnow()
    with Session(db.engine) as session, session.begin():
        row = session.scalar(
            select(IdempotencyKey)
            .where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
            .with_for_update()
        )
        if row is not None and row.expires_at <= now:
            session.delete(row)
            session.flush()
            row = None
        if row is None:
            row = IdempotencyKey(
                user_id=user_id,
                key=key,
                fingerprint=print_,
                locked_until=now + LEASE,
                expires_at=now + KEEP,
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                # The same key arrived twice at once: the other request has it.
                return Reservation(conflict=True)
            return Reservation(id=row.id)
        if row.fingerprint != print_:
            return Reservation(mismatch=True)
        if row.response_status is not None:
            return Reservation(
                stored=Stored(row.response_status, row.response_body or "", row.response_headers)
            )
        if row.locked_until is not None and row.locked_until > now:
            return Reservation(conflict=True)
        # Its first request died without committing anything: this one takes over.
        row.locked_until = now + LEASE
        return Reservation(id=row.id)


def store(reservation: Reservation, status: int, body: str, headers: dict) -> None:
    """Keep the answer in the caller's transaction (it commits with the change)."""
    db.session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == reservation.id)
        .values(
            response_status=status,
            response_body=body,
            response_headers=headers,
            locked_until=None,
        )
        .execution_options(synchronize_session=False)
    )


def release(reservation: Reservation) -> None:
    """Free a key whose request changed nothing (it failed): the client may use it again."""
    with Session(db.engine) as session, session.begin():
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.id == reservation.id, IdempotencyKey.response_status.is_(None)
            )
        )


def prune() -> int:
    """Delete expired keys and old commit receipts (the worker's housekeeping)."""
    now = utcnow()
    keys = db.session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
    receipts = db.session.execute(
        delete(WriteReceipt).where(WriteReceipt.created_at < now - timedelta(hours=1))
    )
    db.session.commit()
    return keys.rowcount + receipts.rowcount
