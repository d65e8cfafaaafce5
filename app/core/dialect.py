"""Every statement that SQLite and MariaDB spell differently, in one place.

The service runs on both (SQLite for `make run` and a single host, MariaDB in production)
and the same suite tests both. Everything else is portable SQLAlchemy; what follows is
not, and each function says what it does on each database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
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
    case,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnElement, UnaryExpression
from sqlalchemy.sql.visitors import InternalTraversal

from app.core.extensions import db
from app.core.spreadsheets import NEEDS_QUOTES, QUOTE, QUOTED_STARTS


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


def ranges_after_a_position() -> bool:
    """Whether the database reads the index entries after a position in a sort,
    ``key > k OR (key = k AND id > i)``, as one range from the position (MariaDB, for a
    query of the ids alone); SQLite walks the index from its first entry instead."""
    return not is_sqlite()


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
    decimals come back as Decimal; times as JSON's text, which ``read_back`` turns into
    what the driver gives (only where a caller needs one: for a chunk, its last row's).
    SQLite runs in-process: its rows as they come."""
    kinds = [getattr(c.type, "impl_instance", c.type) for c in columns]
    if unread := [c for c, kind in zip(columns, kinds, strict=True) if not _from_json(kind)]:
        raise TypeError(f"not read back from JSON as the driver reads them: {unread}")
    if is_sqlite():
        return db.session.execute(select(*columns).select_from(from_).order_by(*order)).all()
    connection = _aggregating()
    aggregated = func.json_arrayagg(func.json_array(*columns)).aggregate_order_by(*order)
    document, count = connection.execute(select(aggregated, func.count()).select_from(from_)).one()
    rows = json.loads(document, parse_float=Decimal) if document else []
    # Longer than group_concat_max_len, the text is cut: JSON that does not parse, or, cut
    # at a product's end, a short chunk (which would end an export early).
    if len(rows) != count:
        raise RuntimeError(f"{count} rows, {len(rows)} read: longer than {LONGEST_AGGREGATE}")
    return rows


def _aggregating():
    """The session's connection, its aggregates allowed LONGEST_AGGREGATE bytes."""
    connection = db.session.connection()
    # Once per connection (it keeps the setting, which changes nothing else it runs).
    if connection.info.get("longest_aggregate") != LONGEST_AGGREGATE:
        connection.exec_driver_sql(f"SET SESSION group_concat_max_len = {LONGEST_AGGREGATE}")
        connection.info["longest_aggregate"] = LONGEST_AGGREGATE
    return connection


@dataclass(frozen=True)
class Lines:
    """Rows as CSV lines (``csv_lines``): their text (the lines joined by CRLF, none after
    the last), how many rows, and the last row's values of the columns asked for."""

    text: str
    count: int
    last: list

    def __len__(self) -> int:
        return self.count


def csv_lines(cells: list, last: list) -> Callable[..., Lines]:
    """A ``read`` for ``rows_after`` (``read(from_, order)``) giving the rows of ``from_``,
    in ``order``, as the lines of a CSV file of the values of ``cells`` (text, integers,
    exact numbers with decimals), written by MariaDB as ``core/spreadsheets.py``
    ``csv_document`` writes them: text a spreadsheet would run as a formula after a
    quote, a cell holding a comma, a quote or a line end quoted, a number with decimals
    as the API shows it (300, 19.9); with the values of ``last`` in the last row, as
    ``ordered_rows`` gives them.

    For the export of a million products: Python's CSV writer and its per-cell checks
    were most of the export's time, which the database does here for about a millisecond
    a thousand rows. MariaDB only (SQLite runs in the process: ``csv_document``)."""
    line = func.concat(*[part for cell in cells for part in (_csv_cell(cell), ",")][:-1])
    final = func.json_array(*last)

    def read(from_, order: tuple) -> Lines:
        lines = _Concatenated(line, order, "\r\n")
        last_row = _Concatenated(final, tuple(map(_reversed, order)), "", 1)
        text_, count, last_values = (
            _aggregating().execute(select(lines, func.count(), last_row).select_from(from_)).one()
        )
        if not count:
            return Lines("", 0, [])
        # Cut at group_concat_max_len, the text would end early (a chunk's last lines lost).
        if len(text_.encode()) > LONGEST_AGGREGATE - 4:
            raise RuntimeError(f"{count} rows: their CSV may be longer than {LONGEST_AGGREGATE}")
        return Lines(text_, count, json.loads(last_values, parse_float=Decimal))

    return read


# The patterns anchor at the text's start and end (\A, \z), not at a line's, whatever
# the server's default_regex_flags.
NUMBER_ZEROS = r"\.?0+\z"
# A pattern of the first characters spreadsheets.quoted_start quotes (one bound value,
# where a list would be one each), and one of the characters that make a cell quoted.
QUOTED_START = r"\A[" + "".join("\\" + c if c in "\\]^-" else c for c in QUOTED_STARTS) + "]"
QUOTED_CELL = "[" + "".join(NEEDS_QUOTES) + "]"


def _csv_cell(value):
    """A value as its CSV cell, in MariaDB's SQL (``csv_lines``). The patterns hold no
    letter, so a collation that ignores case matches them as they are."""
    kind = getattr(value.type, "impl_instance", value.type)
    if isinstance(kind, String):
        guarded = case((value.regexp_match(QUOTED_START), func.concat(QUOTE, value)), else_=value)
        quoted = func.concat('"', func.replace(guarded, '"', '""'), '"')
        return func.coalesce(case((value.regexp_match(QUOTED_CELL), quoted), else_=guarded), "")
    if isinstance(kind, Integer):
        return func.coalesce(value, "")
    if isinstance(kind, Numeric) and not isinstance(kind, Float) and kind.scale:
        # Its text always has the decimals: 300.00 -> 300, 19.90 -> 19.9.
        return func.coalesce(func.regexp_replace(value, NUMBER_ZEROS, ""), "")
    raise TypeError(f"no CSV cell for {value} ({kind})")


def _reversed(term):
    if isinstance(term, UnaryExpression) and term.modifier is operators.desc_op:
        return term.element.asc()
    return term.desc()


class _Concatenated(ColumnElement):
    """MariaDB's ``GROUP_CONCAT(value ORDER BY ... SEPARATOR ... [LIMIT n])``."""

    # Its parts make the statement's cache key, so that SQLAlchemy compiles a chunk's
    # statement once, not again for every chunk.
    _traverse_internals = [
        ("value", InternalTraversal.dp_clauseelement),
        ("order", InternalTraversal.dp_clauseelement_tuple),
        ("separator", InternalTraversal.dp_string),
        ("limit", InternalTraversal.dp_plain_obj),
    ]
    inherit_cache = True

    def __init__(self, value, order: tuple, separator: str, limit: int | None = None) -> None:
        self.value, self.order, self.separator, self.limit = value, order, separator, limit
        self.type = String()


@compiles(_Concatenated)
def _compile_concatenated(element, compiler, **kw) -> str:
    order = ", ".join(compiler.process(term, **kw) for term in element.order)
    # A literal (SEPARATOR takes no expression), its characters as they are: a line end
    # in quotes is read the same whatever the server's sql_mode.
    if "'" in element.separator or "\\" in element.separator:
        raise ValueError(f"not a plain separator: {element.separator!r}")
    limit = f" LIMIT {int(element.limit)}" if element.limit else ""
    value = compiler.process(element.value, **kw)
    return f"GROUP_CONCAT({value} ORDER BY {order} SEPARATOR '{element.separator}'{limit})"


def read_back(column, value):
    """A value of ``column`` from ``ordered_rows`` as the driver gives it: a time's JSON
    text (MariaDB) as its column's type makes it; anything else as it is."""
    if not isinstance(value, str) or not isinstance(
        getattr(column.type, "impl_instance", column.type), DateTime
    ):
        return value
    loaded = getattr(column.type, "process_result_value", lambda value, _d: value)
    return loaded(datetime.fromisoformat(value), db.session.get_bind().dialect)


def _from_json(kind) -> bool:
    """Whether JSON gives a column of this type back as the driver would (times as text,
    turned back by ``read_back``; a float would come back as a Decimal)."""
    return isinstance(kind, (String, Integer, Numeric, DateTime)) and not isinstance(kind, Float)


def as_date(value) -> date:
    """A DATE() result: a date on MariaDB, its ISO text on SQLite."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


# ---------------------------------------------------------------- schema

# The full-text indexes of migration 0013 (SQLite's FTS5 table products_fts, MariaDB's
# FULLTEXT ft_products_search) stay until a later release's migration drops them: the
# release before 0017 searches through them while the next one is rolled out.
FTS_SUFFIX = "_fts"


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
