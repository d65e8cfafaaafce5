"""Idempotency keys (the IETF httpapi ``Idempotency-Key`` draft), per user, for 24 hours.

The first request with a key reserves it in a short transaction of its own, under a token
of its own (``owner``); its answer is stored in the same transaction as the change it
made, so a retry either finds the answer (and gets it again, nothing done twice) or finds
no change made (and may run). A request that does not commit frees its key at once (its
own reservation, by its token), whatever failed: the reservation's commit, the work, or
the commit of the change. Only when the database cannot be reached to free it does a key
stay taken, until its lease runs out.
"""

from __future__ import annotations

import hashlib
import uuid
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
    owner: str | None = None
    stored: Stored | None = None
    conflict: bool = False
    mismatch: bool = False


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def new_owner() -> str:
    """The token a request reserves its key under."""
    return uuid.uuid4().hex


def reserve(user_id: int, key: str, print_: str, owner: str) -> Reservation:
    """Take the key for this request (under ``owner``), or say why not (own transaction).
    Raises OperationalError when the database fails, the reservation possibly made: the
    caller then frees it (``release``)."""
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
                owner=owner,
                locked_until=now + LEASE,
                expires_at=now + KEEP,
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                # The same key arrived twice at once: the other request has it.
                return Reservation(conflict=True)
            return Reservation(id=row.id, owner=owner)
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
        row.owner = owner
        return Reservation(id=row.id, owner=owner)


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


def release(user_id: int, key: str, owner: str) -> None:
    """Free a key this request (``owner``) reserved and did not commit anything under: the
    client may use it again. A key another request holds, or that has an answer, stays."""
    with Session(db.engine) as session, session.begin():
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.user_id == user_id,
                IdempotencyKey.key == key,
                IdempotencyKey.owner == owner,
                IdempotencyKey.response_status.is_(None),
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
