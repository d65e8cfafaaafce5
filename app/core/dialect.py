"""Every statement that SQLite and MariaDB spell differently, in one place.

The service runs on both (SQLite for `make run` and a single host, MariaDB in production)
and the same suite tests both. Everything else is portable SQLAlchemy; what follows is
not, and each function says what it does on each database.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    Numeric,
    String,
    Table,
    and_,
    bindparam,
    column,
    false,
    func,
    literal_column,
    null,
    select,
    table,
    text,
    update,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.core.extensions import db


def is_sqlite(session: Session | None = None) -> bool:
    bind = (session or db.session).get_bind()
    return bind.dialect.name == "sqlite"


# ---------------------------------------------------------------- inserts


def insert_ignore(table: Table, session: Session | None = None):
    """INSERT that skips rows whose key exists (SQLite ON CONFLICT DO NOTHING, MariaDB
    INSERT IGNORE)."""
    if is_sqlite(session):
        return sqlite.insert(table).on_conflict_do_nothing()
    return mysql.insert(table).prefix_with("IGNORE")


def upsert_adding(table: Table, keys: list[str], added: list[str], session: Session | None = None):
    """INSERT of counts that, where the key exists, adds them to the stored ones."""
    if is_sqlite(session):
        statement = sqlite.insert(table)
        return statement.on_conflict_do_update(
            index_elements=keys,
            set_={name: table.c[name] + statement.excluded[name] for name in added},
        )
    statement = mysql.insert(table)
    return statement.on_duplicate_key_update(
        {name: table.c[name] + statement.inserted[name] for name in added}
    )


def update_by_id(table: Table, rows: list[dict], columns: list[str]) -> None:
    """Update rows that exist, each by its ``id`` with its own values, in one statement
    (MariaDB: a multi-row INSERT ... ON DUPLICATE KEY UPDATE, which only ever updates
    here; SQLite, in-process: an UPDATE per row costs no round trip)."""
    if not rows:
        return
    if is_sqlite():
        db.session.execute(
            update(table)
            .where(table.c.id == _bound("id"))
            .values({name: _bound(name) for name in columns}),
            [{f"b_{key}": value for key, value in row.items()} for row in rows],
        )
        return
    statement = mysql.insert(table)
    statement = statement.on_duplicate_key_update(
        {name: statement.inserted[name] for name in columns}
    )
    db.session.execute(statement, rows)


def _bound(name: str):
    return bindparam(f"b_{name}")


# ---------------------------------------------------------------- locks


def _take_sqlite_write_lock(model, session: Session) -> None:
    """SQLite has no row locks and pysqlite begins a transaction at the first write: a
    write that changes nothing takes the database's write lock, so what follows is read
    by one writer at a time."""
    if is_sqlite(session):
        session.execute(
            update(model)
            .where(model.id == -1)
            .values(id=model.id)
            .execution_options(synchronize_session=False)
        )


def locked(query, session: Session | None = None):
    """The one row ``query`` selects, read as committed now and locked until the
    transaction ends, so that concurrent changes of it take turns (MariaDB: FOR UPDATE;
    SQLite: the database's write lock)."""
    session = session or db.session
    _take_sqlite_write_lock(query.column_descriptions[0]["entity"], session)
    return session.scalar(query.with_for_update().execution_options(populate_existing=True))


def locked_rows(query, session: Session | None = None):
    """Every row ``query`` selects (entities or columns), locked as ``locked`` locks one."""
    session = session or db.session
    _take_sqlite_write_lock(query.column_descriptions[0]["entity"], session)
    return session.execute(query.with_for_update())


def claim(model, due, order, limit: int, values: dict) -> list[int]:
    """Mark up to ``limit`` rows matching ``due`` with ``values`` (a claim token and its
    lease) so that no other claimer takes them; their ids. Commits.

    MariaDB locks due rows, skipping those another claimer is locking (SKIP LOCKED), then
    marks them. SQLite has one writer at a time: a conditional UPDATE is the claim."""
    if is_sqlite():
        candidates = select(model.id).where(due).order_by(order).limit(limit)
        target = and_(model.id.in_(candidates.scalar_subquery()), due)
        marker = next(iter(values))
        db.session.execute(
            update(model).where(target).values(values).execution_options(synchronize_session=False)
        )
        ids = list(
            db.session.scalars(select(model.id).where(getattr(model, marker) == values[marker]))
        )
        db.session.commit()
        return ids
    query = select(model.id).where(due).order_by(order).limit(limit)
    ids = list(db.session.scalars(query.with_for_update(skip_locked=True)))
    if ids:
        db.session.execute(
            update(model)
            .where(model.id.in_(ids))
            .values(values)
            .execution_options(synchronize_session=False)
        )
    db.session.commit()
    return ids


@contextmanager
def named_lock(name: str, timeout: int):
    """Hold a server-wide named lock (MariaDB GET_LOCK) while the block runs, so that
    processes that start together take turns; yields False if it was not had in
    ``timeout`` seconds. SQLite (one host, one writer at a time): nothing to take."""
    if db.engine.dialect.name == "sqlite":
        yield True
        return
    with db.engine.connect() as conn:
        got = conn.scalar(
            text("SELECT GET_LOCK(:name, :timeout)"), {"name": name, "timeout": timeout}
        )
        try:
            yield got == 1
        finally:
            if got == 1:
                conn.scalar(text("SELECT RELEASE_LOCK(:name)"), {"name": name})


# ---------------------------------------------------------------- reads


def begin_snapshot() -> None:
    """Read what follows from one snapshot of the database: MariaDB's REPEATABLE READ for
    this session's next transaction (the pool's default is READ COMMITTED); SQLite's
    reads in a transaction see one snapshot already (WAL)."""
    if not is_sqlite():
        db.session.rollback()  # end any transaction this session began
        db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


# Bytes of one aggregated answer. MariaDB's default (1 MiB) cuts it short: a chunk of
# 1,000 products with the longest names and marks of four-byte characters takes 1.3 MB
# (tests/test_catalog_import.py), 2.1 MB sorted by name (the name twice). This is four
# times that, and half the largest packet the server sends (max_allowed_packet, 16 MiB).
LONGEST_AGGREGATE = 8 * 1024 * 1024


def ordered_rows(columns: list, from_, order: tuple) -> list:
    """The values of ``columns`` (text, integers, exact numbers, times) of the rows of
    ``from_``, in ``order``, as sequences: for thousands of rows at a time.

    MariaDB sends them as one JSON array (``JSON_ARRAYAGG``) that Python's json module
    reads, because pymysql reads a row's values in Python, one at a time: 25 ms for a
    chunk of 1,000 products, of which the database took 2 (one value: 7 ms). Numbers with
    decimals come back as Decimal, and times (JSON text) as their column's type makes
    them. SQLite runs in-process: its rows as they come."""
    kinds = [getattr(c.type, "impl_instance", c.type) for c in columns]
    if unread := [c for c, kind in zip(columns, kinds, strict=True) if not _from_json(kind)]:
        raise TypeError(f"not read back from JSON as the driver reads them: {unread}")
    if is_sqlite():
        return db.session.execute(select(*columns).select_from(from_).order_by(*order)).all()
    connection = db.session.connection()
    # Once per connection (it keeps the setting, which changes nothing else it runs).
    if connection.info.get("longest_aggregate") != LONGEST_AGGREGATE:
        connection.exec_driver_sql(f"SET SESSION group_concat_max_len = {LONGEST_AGGREGATE}")
        connection.info["longest_aggregate"] = LONGEST_AGGREGATE
    aggregated = func.json_arrayagg(func.json_array(*columns)).aggregate_order_by(*order)
    document, count = connection.execute(select(aggregated, func.count()).select_from(from_)).one()
    rows = json.loads(document, parse_float=Decimal) if document else []
    # Longer than group_concat_max_len, the text is cut: JSON that does not parse, or, cut
    # at a product's end, a short chunk (which would end an export early).
    if len(rows) != count:
        raise RuntimeError(f"{count} rows, {len(rows)} read: longer than {LONGEST_AGGREGATE}")
    for n, (selected, kind) in enumerate(zip(columns, kinds, strict=True)):
        if isinstance(kind, DateTime):
            loaded = getattr(selected.type, "process_result_value", lambda value, _d: value)
            for row in rows:
                if row[n] is not None:
                    row[n] = loaded(datetime.fromisoformat(row[n]), connection.dialect)
    return rows


def _from_json(kind) -> bool:
    """Whether JSON gives a column of this type back as the driver would (times as text,
    turned back by ``ordered_rows``; a float would come back as a Decimal)."""
    return isinstance(kind, (String, Integer, Numeric, DateTime)) and not isinstance(kind, Float)


def as_date(value) -> date:
    """A DATE() result: a date on MariaDB, its ISO text on SQLite."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


# ---------------------------------------------------------------- full-text search

# Each word of a searched column is stored behind this mark, and cut at WORD_MAX
# characters: MariaDB's FULLTEXT index, with the server's defaults, leaves out words
# shorter than innodb_ft_min_token_size (3) or longer than innodb_ft_max_token_size (84),
# and its stopwords ("the", "with", "und"...); "ww" + word is never one of those. SQLite's
# FTS5 index reads the same text.
WORD_MARK = "ww"
WORD_MAX = 80
# SQLite's FTS5 table of a searched column, kept by triggers (the migration that adds it).
FTS_SUFFIX = "_fts"


def search_document(words: list[str]) -> str:
    """The text a full-text index reads for these words (``text.search_words``)."""
    return " ".join(WORD_MARK + word[:WORD_MAX] for word in words)


def full_text(searched, words: list[str]) -> tuple:
    """(WHERE clause, relevance: higher is better) of a search of the column ``searched``
    (stored with ``search_document``) for rows holding every word, each as a whole word
    or the start of one. MariaDB: MATCH ... AGAINST ('+wwzapa* +wwrojo*' IN BOOLEAN MODE) on the
    column's FULLTEXT index; SQLite: the column's FTS5 table (``<table>_fts``, rowid the
    row's id), ranked by bm25."""
    if not words:
        return false(), null()  # not 0: ORDER BY 0 would name a column
    terms = [WORD_MARK + word[:WORD_MAX] for word in words]
    if not is_sqlite():
        match = searched.match(" ".join(f"+{term}*" for term in terms))
        return match, match
    fts = table(searched.table.name + FTS_SUFFIX, column("rowid"), column("rank"))
    query = " AND ".join(f'"{term}"*' for term in terms)

    def matching():
        return literal_column(fts.name).op("MATCH")(query)

    ids = searched.table.c.id
    where = ids.in_(select(fts.c.rowid).where(matching()))
    rank = select(fts.c.rank).where(matching(), fts.c.rowid == ids).scalar_subquery()
    return where, -rank


def in_models(obj, name, type_, reflected, compare_to) -> bool:
    """Whether a schema object is the models' (alembic's include_object): SQLite's FTS5
    tables (and their shadow tables) and MariaDB's FULLTEXT indexes are the migrations'
    own, kept beside the models' tables."""
    if type_ == "table":
        return FTS_SUFFIX not in name
    return not (type_ == "index" and name.startswith("ft_"))


# ---------------------------------------------------------------- connections


def connection_id(session: Session) -> int | None:
    """The server's id of the session's connection (MariaDB), None on SQLite."""
    dbapi = session.connection().connection.dbapi_connection
    getter = getattr(dbapi, "thread_id", None)
    return getter() if getter else None


def end_connection(conn, connection: int) -> bool:
    """Kill a server connection (MariaDB KILL CONNECTION), so that it can no longer commit
    anything; whether it is still listed (call until False)."""
    try:
        conn.execute(text(f"KILL CONNECTION {int(connection)}"))
    except OperationalError as exc:
        if "Unknown thread id" not in str(exc.orig):
            raise
    return bool(
        conn.scalar(
            text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = :id"),
            {"id": connection},
        )
    )
