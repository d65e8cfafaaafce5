"""Committing a write so that a client is never told 5xx about a change that committed.

Each write's transaction also inserts a receipt (a random token). If the database's
answer to COMMIT is lost (a dropped connection, a timeout), the commit may or may not
have happened: the original connection is killed (so it cannot still commit later), then
the receipt is looked for on a new connection. Found: the write committed, and its answer
(built before the commit) goes out. Not found: it did not, and the client gets 503.
If the database cannot be asked within a few seconds, the outcome is unknown: the client
gets a 503 that says so, and the log and ``marketplace_commits_unconfirmed_total`` count it.
"""

from __future__ import annotations

import logging
import time
import uuid

from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from app import metrics, streams
from app.extensions import db
from app.models import WriteReceipt

log = logging.getLogger(__name__)

CHECK_SECONDS = 8.0


class CommitUnconfirmed(OperationalError):
    """The database did not confirm a commit and could not be asked whether it happened."""

    def __init__(self, token: str):
        super().__init__("COMMIT", {}, Exception(f"commit {token} unconfirmed"))


def _thread_id() -> int | None:
    dbapi = db.session.connection().connection.dbapi_connection
    getter = getattr(dbapi, "thread_id", None)
    return getter() if getter else None


def _end_and_look(token: str, thread_id: int | None) -> bool:
    """Kill the connection that sent COMMIT, wait until it is gone, look for the receipt."""
    with db.engine.connect() as conn:
        if thread_id is not None:
            try:
                conn.execute(text(f"KILL CONNECTION {int(thread_id)}"))
            except OperationalError as exc:
                if "Unknown thread id" not in str(exc.orig):
                    raise
            deadline = time.monotonic() + CHECK_SECONDS
            while conn.scalar(
                text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = :id"),
                {"id": thread_id},
            ):
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
    if db.engine.dialect.name == "sqlite":
        session.commit()  # a local file: the answer cannot be lost on the way
        return
    token = uuid.uuid4().hex
    session.add(WriteReceipt(token=token))
    session.flush()
    thread_id = _thread_id()
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
        streams.wake_worker()  # the after-commit listener did not run
        return
    log.warning("commit %s: the answer was lost and the write did not commit", token)
    raise failure
