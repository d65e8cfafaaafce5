"""How a write request ends: its answer is built first, then the transaction commits.

``@writes`` wraps a flask-smorest write view (below the role guard, above
``@blp.arguments``): the view changes the session and returns its answer; the answer is
serialised before the commit, so nothing after a successful commit can fail, and a 5xx
means nothing was committed (app/commits.py). It also honours ``Idempotency-Key``
(app/services/idempotency.py): a retry with the same key and body gets the first answer
again, with ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import logging
import re
from functools import wraps

from flask import Response, request
from flask_jwt_extended import current_user
from flask_smorest import abort
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from app import cache, commits
from app.extensions import db
from app.services import idempotency

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
# What a replay repeats besides the status and the body.
REPLAYED_HEADERS = ("Location", "ETag", "Content-Type")
KEY_FORMAT = re.compile(rf"[\x21-\x7e]{{1,{idempotency.MAX_KEY_LENGTH}}}")


def _key() -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    # The draft's form is a quoted string; a bare token is accepted too.
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not KEY_FORMAT.fullmatch(key):
        abort(
            400,
            message=f"{HEADER} must be 1 to {idempotency.MAX_KEY_LENGTH} visible ASCII characters.",
            errors={"headers": {HEADER: ["Invalid value."]}},
        )
    return key


def _reserve(key: str) -> idempotency.Reservation:
    body = request.get_data(cache=True)
    print_ = idempotency.fingerprint(request.method, request.path, body)
    reservation = idempotency.reserve(current_user.id, key, print_)
    if reservation.conflict:
        abort(409, message=f"A request with this {HEADER} is still being processed; retry later.")
    if reservation.mismatch:
        abort(
            422,
            message=f"This {HEADER} was used for a different request; use a new key.",
            errors={"headers": {HEADER: ["Used for a different request."]}},
        )
    return reservation


def _replay(stored: idempotency.Stored) -> Response:
    response = Response(stored.body, status=stored.status, headers=stored.headers or {})
    response.headers["Idempotent-Replayed"] = "true"
    return response


def writes(view):
    """Commit after the answer is built; honour Idempotency-Key."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        key = _key()
        reservation = _reserve(key) if key is not None else None
        if reservation is not None and reservation.stored is not None:
            return _replay(reservation.stored)
        try:
            response = _run(view, args, kwargs)
            if response.status_code >= 400:
                raise _Refused(response)
            if reservation is not None:
                headers = {
                    h: response.headers[h] for h in REPLAYED_HEADERS if h in response.headers
                }
                body = response.get_data(as_text=True)
                idempotency.store(reservation, response.status_code, body, headers)
            commits.commit()
            # Committed: before the answer leaves, no cached copy of what changed remains.
            cache.invalidate(cache.changed(db.session))
        except _Refused as refused:
            _abandon(reservation)
            return refused.response
        except commits.CommitUnconfirmed:
            # It may have committed: the client is told to read it, so drop the cached
            # copies all the same. The key stays reserved until its lease ends: a retry
            # then finds the stored answer if the write committed, or runs it if not.
            cache.invalidate(cache.changed(db.session))
            raise
        except BaseException:
            _abandon(reservation)
            raise
        return response

    return wrapper


# MySQL's "try restarting transaction": the transaction was rolled back whole.
RESTARTABLE = {1213}  # deadlock found when trying to get lock
ATTEMPTS = 3


def _run(view, args, kwargs) -> Response:
    """The view, run again (up to ATTEMPTS times) when the database chose its
    transaction as a deadlock's victim: nothing of it was kept."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return view(*args, **kwargs)
        except OperationalError as exc:
            code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
            if code not in RESTARTABLE or attempt == ATTEMPTS:
                raise
            log.info("write restarted after a deadlock (attempt %s)", attempt)
            db.session.rollback()
    raise AssertionError("unreachable")


def _abandon(reservation: idempotency.Reservation | None) -> None:
    """Nothing of this request commits; its key (if any) is free again."""
    try:
        db.session.rollback()
    except SQLAlchemyError:
        db.session.close()
    if reservation is not None:
        try:
            idempotency.release(reservation)
        except SQLAlchemyError as exc:
            # The database is away: the key's lease runs out by itself.
            log.warning("could not free an idempotency key: %s", exc)


class _Refused(Exception):
    def __init__(self, response: Response):
        self.response = response
