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
from contextlib import contextmanager
from functools import wraps

from flask import Response, request
from flask_jwt_extended import current_user
from flask_smorest import abort
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from app.core import cache, dialect, idempotency, metrics
from app.core.extensions import db
from app.core.models import WriteReceipt
from app.core.openapi import handles_header
from app.core.redis_client import wake_worker

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
# What a replay repeats besides the status and the body.
REPLAYED_HEADERS = ("Location", "ETag", "Content-Type")
KEY_FORMAT = re.compile(rf"[\x21-\x7e]{{1,{idempotency.MAX_KEY_LENGTH}}}")
# What the transaction's changes leave for after its commit (in ``session.info``).
STALE = "stale_cache_keys"
WORKER_WORK = "worker_has_work"
# How the decorator documents the header it handles (app/core/openapi.py).
IDEMPOTENCY_KEY_DOC = {
    "in": "header",
    "name": HEADER,
    "schema": {"type": "string", "maxLength": idempotency.MAX_KEY_LENGTH},
    "description": "Retry safely: the same key and body within 24 h answer the first "
    "successful answer again; a different body gets 422, a request still running 409.",
}


# ---------------------------------------------------------------- what follows a commit


def note_stale(session, pairs) -> None:
    """Cache entries (``(entry, generation)`` key pairs) that this transaction's changes
    make stale: invalidated right after its commit."""
    session.info.setdefault(STALE, set()).update(pairs)


def note_worker_work(session, queue: str = "emails") -> None:
    """This transaction adds work for the worker (``queue``: emails or webhooks): the
    worker's threads for it are woken after the commit."""
    session.info.setdefault(WORKER_WORK, set()).add(queue)


def after_commit(session) -> None:
    """What every commit of a change is followed by, before its answer leaves: no cached
    copy of what changed remains, and the worker is woken for the rows it added."""
    cache.invalidate(session.info.pop(STALE, ()))
    if queues := session.info.pop(WORKER_WORK, None):
        wake_worker(queues)


def _forget(session) -> None:
    session.info.pop(STALE, None)
    session.info.pop(WORKER_WORK, None)


def rollback(session=None) -> None:
    """End the transaction without its changes (a dead connection is closed instead)."""
    session = session or db.session
    _forget(session)
    try:
        session.rollback()
    except SQLAlchemyError:
        session.close()


@contextmanager
def unit_of_work():
    """The block's changes commit together, then what follows a commit runs: the worker's
    and the commands' writes (a request's are ``transaction``'s)."""
    session = db.session
    try:
        yield session
        commit()
    except CommitUnconfirmed:
        after_commit(session)  # it may have committed
        raise
    except BaseException:
        rollback(session)
        raise
    after_commit(session)


# ---------------------------------------------------------------- a write request


def transaction(view):
    """A write view's unit of work: its answer is built, then its changes commit, then
    what follows a commit runs. Honours ``Idempotency-Key`` (and documents it)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        key = _key()
        owner = idempotency.new_owner() if key is not None else None
        try:
            reservation = _reserve(key, owner) if key is not None else None
            if reservation is not None and reservation.stored is not None:
                return _replay(reservation.stored)
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
        except _Refused as refused:
            _abandon(key, owner)
            return refused.response
        except CommitUnconfirmed:
            # It may have committed: the client is told to read it, so drop the cached
            # copies all the same. The key stays reserved until its lease ends: a retry
            # then finds the stored answer if the write committed, or runs it if not.
            after_commit(db.session)
            raise
        except BaseException:
            _abandon(key, owner)
            raise
        after_commit(db.session)
        return response

    return handles_header(IDEMPOTENCY_KEY_DOC)(wrapper)


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


def _reserve(key: str, owner: str) -> idempotency.Reservation:
    body = request.get_data(cache=True)
    # The query string counts: a dry run and the real import are two requests.
    query = request.query_string.decode("latin-1")
    path = f"{request.path}?{query}" if query else request.path
    print_ = idempotency.fingerprint(request.method, path, body)
    reservation = idempotency.reserve(current_user.id, key, print_, owner)
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


def _abandon(key: str | None, owner: str | None) -> None:
    """Nothing of this request commits; the key it reserved (if any) is free again."""
    rollback()
    if key is not None:
        try:
            idempotency.release(current_user.id, key, owner)
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
    session.add(WriteReceipt(token=token))  # written by the commit's own flush
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
        return
    log.warning("commit %s: the answer was lost and the write did not commit", token)
    raise failure
