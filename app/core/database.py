"""The database: binding the session and migrations, ending sessions, mapping its errors.

Everything that must roll the session back lives here, beside the session it rolls back.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from app.core import metrics
from app.core.errors import RuleError, error_response
from app.core.extensions import db, migrate
from app.core.unit_of_work import CommitUnconfirmed

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def init_app(app: Flask) -> None:
    db.init_app(app)
    # Flask runs teardowns last-registered-first: registered right after Flask-SQLAlchemy's
    # own, this one ends the session first and leaves that one nothing that can raise.
    app.teardown_appcontext(remove_session_safely)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR), render_as_batch=True)
    app.register_error_handler(IntegrityError, integrity_error)
    app.register_error_handler(OperationalError, database_unavailable)
    app.register_error_handler(CommitUnconfirmed, commit_unconfirmed)
    app.register_error_handler(RuleError, rule_error)


def remove_session_safely(_exc=None) -> None:
    """End the request's session without letting a dead connection raise: teardown runs
    after the response has started, so an error here would cut the answer off."""
    try:
        db.session.remove()
    except SQLAlchemyError as exc:
        log.warning("closing the database session failed: %s", exc)
        db.session.registry.clear()


def integrity_error(error: IntegrityError):
    # Reached only by a race the services' own checks could not see (two requests
    # creating the same sku at once): the database's constraint decides.
    db.session.rollback()
    log.info("integrity conflict: %s", error.orig)
    return error_response(409, "The change conflicts with a row written at the same time.")


def database_unavailable(error: OperationalError):
    try:
        db.session.rollback()
    except OperationalError:
        db.session.close()
    metrics.DATABASE_ERRORS.inc()
    log.error("database unavailable: %s", error.orig)
    response = error_response(503, "The database is unavailable; try again shortly.")
    response.headers["Retry-After"] = "5"
    return response


def commit_unconfirmed(error: CommitUnconfirmed):
    metrics.DATABASE_ERRORS.inc()
    db.session.close()
    response = error_response(
        503,
        "The database did not confirm the change, which may or may not have been "
        "applied: read it before trying again, or retry with the same Idempotency-Key.",
    )
    response.headers["Retry-After"] = "5"
    return response


def rule_error(error: RuleError):
    db.session.rollback()
    errors = {"json": {error.field: [error.message]}} if error.field else None
    return error_response(error.code, error.message, errors)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _connection_record) -> None:
    """SQLite behaves like MySQL where it matters: foreign keys enforced, readers not
    blocked by the writer (WAL)."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()
