"""The unit of work of a write: how it commits, and what follows its commit.

``@transaction`` wraps a write view (below the role guard, above ``@blp.arguments``): the
view changes the session and returns its answer; the answer is serialised before the
commit, so nothing after a successful commit can fail, and a 5xx means nothing was
committed. It honours ``Idempotency-Key`` (app/core/idempotency.py): a retry with the same
key and body gets the first answer again, with ``Idempotent-Replayed: true``.

Committing (``commit``): each write's transaction also inserts a receipt (a random token).
If the database's answer to COMMIT is lost (a dropped connection, a timeout), the commit
may or may not have happened: the original connection is killed (so it cannot still
commit later), then the receipt is looked for on a new connection. Found: the write
committed, and its answer goes out. Not found: it did not, and the client gets 503. If the
database cannot be asked within a few seconds, the outcome is unknown: the client gets a
503 that says so, and the log and ``marketplace_commits_unconfirmed_total`` count it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from functools import wraps

from flask import Response, request
from flask_jwt_extended import current_user
from flask_smorest import abort
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from app.catalog import cache
from app.core import dialect, idempotency, metrics
from app.core.extensions import db
from app.core.models import WriteReceipt
from app.core.redis_client import wake_worker

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


def transaction(view):
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
            commit()
            # Committed: before the answer leaves, no cached copy of what changed remains.
            cache.invalidate(cache.changed(db.session))
        except _Refused as refused:
            _abandon(reservation)
            return refused.response
        except CommitUnconfirmed:
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


# ---------------------------------------------------------------- committing

CHECK_SECONDS = 8.0


class CommitUnconfirmed(OperationalError):
    """The database did not confirm a commit and could not be asked whether it happened."""

    def __init__(self, token: str):
        super().__init__("COMMIT", {}, Exception(f"commit {token} unconfirmed"))


def _end_and_look(token: str, thread_id: int | None) -> bool:
    """Kill the connection that sent COMMIT, wait until it is gone, look for the receipt."""
    with db.engine.connect() as conn:
        if thread_id is not None:
            deadline = time.monotonic() + CHECK_SECONDS
            while dialect.end_connection(conn, thread_id):
                if time.monotonic() > deadline:
                    raise OperationalError("KILL", {}, Exception("connection still alive"))
                time.sleep(0.05)
        found = conn.scalar(select(WriteReceipt.token).where(WriteReceipt.token == token))
        conn.rollback()
        return found is not None


def commit() -> None:
    """Commit the request's session; raise OperationalError only if it did not commit,
    CommitUnconfirmed if that cannot be known."""
    session = db.session
    if dialect.is_sqlite():
        session.commit()  # a local file: the answer cannot be lost on the way
        return
    token = uuid.uuid4().hex
    session.add(WriteReceipt(token=token))
    session.flush()
    thread_id = dialect.connection_id(session)
    try:
        session.commit()
        return
    except OperationalError as exc:
        if not exc.connection_invalidated:
            raise  # the server answered with an error: nothing was committed
        failure = exc
    if thread_id is None:
        # No way to end the connection that sent COMMIT: it may still commit later.
        metrics.COMMITS_UNCONFIRMED.labels("unknown").inc()
        raise CommitUnconfirmed(token) from failure
    try:
        session.rollback()
    except SQLAlchemyError:
        session.close()
    deadline = time.monotonic() + CHECK_SECONDS
    while True:
        try:
            committed = _end_and_look(token, thread_id)
            break
        except OperationalError as exc:
            if time.monotonic() > deadline:
                metrics.COMMITS_UNCONFIRMED.labels("unknown").inc()
                log.error("commit %s: no answer, and no way to check: outcome unknown", token)
                raise CommitUnconfirmed(token) from exc
            time.sleep(0.5)
    metrics.COMMITS_UNCONFIRMED.labels("committed" if committed else "not committed").inc()
    if committed:
        log.warning("commit %s: the answer was lost but the write committed", token)
        wake_worker()  # the after-commit listener did not run
        return
    log.warning("commit %s: the answer was lost and the write did not commit", token)
    raise failure
