"""Bulk import and export of the catalog.

An import reads a CSV file or a JSON array of products a row at a time, checks every row
with the create route's schema as it is read, and then, in the caller's transaction,
creates the new products and updates the changed ones a thousand rows per statement (no
query per row). Any error refuses the whole file: nothing is written, and the answer lists
the first errors and counts them all, so a hostile file costs no more memory than a good
one. One summary email per admin tells what changed.

An export yields the live products matching the list's filters, in the list's order, a
chunk at a time: each chunk is one short keyset query (after the last row of the previous
chunk), so no statement runs for the length of a download.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from types import SimpleNamespace
from typing import BinaryIO

from marshmallow import ValidationError
from sqlalchemy import insert, select

from app.accounts.models import User
from app.catalog import cache
from app.catalog.models import Product
from app.catalog.schemas import CATALOG_COLUMNS, ProductImportSchema, dump_product
from app.catalog.service import EDITABLE, plain, product_filters, rows_after, sort_order
from app.core import dialect
from app.core.columns import utcnow
from app.core.extensions import db
from app.core.openapi import NotAnArray, NotUnicode, json_array_items
from app.core.spreadsheets import csv_document, plain_cell
from app.core.threads import read_ahead
from app.events import journal
from app.events.models import EventType
from app.notifications.service import notify_import

REQUIRED_COLUMNS = ("sku", "name", "price", "mark")
# The answer lists this many skus of each kind (the counts cover them all) ...
LISTED_SKUS = 100
# ... and this many errors of a refused file (its message counts them all): whatever
# the file holds, a refusal takes no more memory than this.
LISTED_ERRORS = 100
# Skus per locking read, rows per write statement, rows per export query.
CHUNK = 1000
# Bytes of a CSV file read (and decoded) at a time.
READ_SIZE = 64 * 1024

COLUMNS_SENTENCE = "the columns are sku, name, price, mark and (optionally) quantity"
DECIMAL = re.compile(r"-?\d+(\.\d+)?")
INTEGER = re.compile(r"-?\d{1,19}")
# A line of a CSV file with its end (csv's newline="" rule), and what else str.splitlines
# would take for a line end.
LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
OTHER_LINE_BREAKS = re.compile("[\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True)
class RowError:
    row: int | None  # CSV: the line number (header = 1); JSON: the array index
    field: str | None
    message: str


class ImportRefused(Exception):
    """The file cannot be imported; ``code`` is the HTTP status that fits."""

    def __init__(self, code: int, message: str, errors: list[RowError] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.errors = errors or []


# A file is read as it arrives, one row at a time: (its number, its values), or what is
# wrong with it. Nothing keeps every row of a file, or every error.
Row = tuple[int, dict] | RowError


class Errors:
    """What is wrong with a file, whatever its size: the first LISTED_ERRORS errors, and
    how many errors, in how many rows, there are in all."""

    def __init__(self) -> None:
        self.listed: list[RowError] = []
        self.count = 0
        self.rows = 0
        self._last_row: object = None

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, error: RowError) -> None:
        # Rows come in order: a row's errors follow each other.
        self.count += 1
        if self.rows == 0 or error.row != self._last_row:
            self.rows += 1
            self._last_row = error.row
        if len(self.listed) < LISTED_ERRORS:
            self.listed.append(error)

    def refusal(self) -> ImportRefused:
        counted = f"{self.count} errors in {self.rows} rows"
        if self.count > len(self.listed):
            counted += f" (the first {len(self.listed)} are listed)"
        return ImportRefused(422, f"{counted}; nothing was imported.", self.listed)


# ---------------------------------------------------------------- reading a file


def read_csv(stream: BinaryIO, max_rows: int) -> Iterator[Row]:
    """The rows of a UTF-8 CSV file (a byte order mark is allowed) whose first line names
    the columns, read from ``stream`` as it arrives."""
    reader = csv.reader(_lines(stream), strict=True)
    try:
        header = next(reader, None)
        if not header or not "".join(header).strip():
            raise ImportRefused(
                422,
                "The file is empty: its first line must name the columns.",
                [RowError(1, None, f"Missing header: {COLUMNS_SENTENCE}.")],
            )
        names = _header(header)
        line, rows = reader.line_num, 0
        for cells in reader:
            number, line = line + 1, reader.line_num
            if not cells:
                continue  # a blank line
            rows += 1
            if rows > max_rows:
                raise _too_many(max_rows)
            if len(cells) != len(names):
                yield RowError(
                    number, None, f"Has {len(cells)} cells; the header names {len(names)}."
                )
                continue
            yield number, {n: _cell(n, c) for n, c in zip(names, cells, strict=True)}
    except csv.Error as exc:
        raise ImportRefused(
            400, f"The CSV file cannot be read at line {reader.line_num}: {exc}."
        ) from exc


def _lines(stream: BinaryIO) -> Iterator[str]:
    """The lines of a UTF-8 file, each with its line end ("\n", "\r\n" or "\r", csv's
    newline="" rule), decoded READ_SIZE bytes at a time; a byte order mark first is
    skipped. ImportRefused (400) names the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    read, started, carried = 0, False, ""
    while True:
        data = stream.read(READ_SIZE)
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            byte = read - len(decoder.getstate()[0]) + exc.start + 1
            raise ImportRefused(
                400, f"The file is not UTF-8 text (byte {byte}): save it as CSV UTF-8."
            ) from exc
        read += len(data)
        if text and not started:
            started, text = True, text.removeprefix("\ufeff")
        text, carried = carried + text, ""
        # str.splitlines is fast, but ends lines at more characters than csv does.
        pieces = LINE.findall(text) if OTHER_LINE_BREAKS.search(text) else text.splitlines(True)
        if data and pieces and not pieces[-1].endswith("\n"):
            carried = pieces.pop()  # the next piece goes on with it (a "\n" after a "\r")
        yield from pieces
        if not data:
            return


def _header(cells: list[str]) -> list[str]:
    names = [cell.strip().lower() for cell in cells]
    errors = []
    for position, name in enumerate(names, start=1):
        if name not in CATALOG_COLUMNS:
            errors.append(
                RowError(1, name or f"column {position}", f"Unknown column: {COLUMNS_SENTENCE}.")
            )
        elif name in names[: position - 1]:
            errors.append(RowError(1, name, "This column is named twice."))
    errors += [
        RowError(1, column, f"Missing column: {COLUMNS_SENTENCE}.")
        for column in REQUIRED_COLUMNS
        if column not in names
    ]
    if errors:
        raise ImportRefused(422, "The header row must name the columns of a product.", errors)
    return names


def _cell(name: str, text: str):
    """A CSV cell as the JSON value the schema expects (numbers as numbers)."""
    if name == "price":
        return Decimal(text.strip()) if DECIMAL.fullmatch(text.strip()) else text
    if name == "quantity":
        return int(text.strip()) if INTEGER.fullmatch(text.strip()) else text
    return plain_cell(text)


def read_json(raw: bytes, max_rows: int) -> Iterator[Row]:
    """The rows of a JSON array of product objects, decoded one element at a time."""
    if not raw or raw.isspace():
        raise ImportRefused(
            422,
            "The body is empty: send a JSON array of products.",
            [RowError(None, None, "Must be a JSON array of products.")],
        )
    try:
        for index, item in enumerate(json_array_items(raw)):
            if index >= max_rows:
                raise _too_many(max_rows)
            if isinstance(item, dict):
                yield index, item
            else:
                yield RowError(index, None, "Must be an object (one product).")
    except NotAnArray as exc:
        raise ImportRefused(
            422,
            "The body must be a JSON array of products.",
            [RowError(None, None, "Must be a JSON array of products.")],
        ) from exc
    except NotUnicode as exc:
        raise ImportRefused(400, NotUnicode.message) from exc
    except ValueError as exc:
        raise ImportRefused(400, str(exc)) from exc


def _too_many(max_rows: int) -> ImportRefused:
    return ImportRefused(
        422,
        f"An import takes at most {max_rows} products: split the file.",
        [RowError(None, None, f"More than {max_rows} products.")],
    )


# ---------------------------------------------------------------- checking the rows


def check(rows: Iterable[Row]) -> list[tuple[int, dict]]:
    """Every row loaded with the create route's rules, as they are read; ImportRefused
    counts every error and lists the first LISTED_ERRORS. Once a row is wrong the file
    is refused, and the rows after it are only checked, not kept."""
    schema = ProductImportSchema()
    errors = Errors()
    valid = []
    first_row: dict[str, int] = {}
    for row in rows:
        if isinstance(row, RowError):
            errors.add(row)
            continue
        number, values = row
        sku = values.get("sku")
        if isinstance(sku, str) and sku.strip():
            key = Product.key_of(sku.strip())
            if key in first_row:
                errors.add(
                    RowError(
                        number,
                        "sku",
                        f"Duplicate of row {first_row[key]}: each sku may appear once.",
                    )
                )
                continue
            first_row[key] = number
        try:
            data = schema.load(values)
        except ValidationError as exc:
            for error in _row_errors(number, exc.messages):
                errors.add(error)
            continue
        if not errors:
            valid.append((number, data))
    if errors:
        raise errors.refusal()
    return valid


def _row_errors(number: int, messages) -> Iterator[RowError]:
    for field, texts in messages.items():
        for text in texts if isinstance(texts, list) else [texts]:
            yield RowError(number, None if field == "_schema" else field, str(text))


# ---------------------------------------------------------------- writing


def _chunks(items: list, size: int | None = None) -> Iterator[list]:
    size = size or CHUNK
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _current(keys: list[str], lock: bool) -> dict:
    """The live products with these sku keys (locked unless a dry run), by key. Locks are
    taken in sku order, so that two imports of overlapping files wait for each other
    rather than deadlock."""
    columns = (
        Product.id,
        Product.sku_key,
        Product.sku,
        Product.created_at,
        *(getattr(Product, f) for f in EDITABLE),
    )
    found = {}
    for chunk in _chunks(sorted(keys)):
        query = select(*columns, Product.version).where(Product.sku_key.in_(chunk))
        for row in dialect.locked_rows(query) if lock else db.session.execute(query):
            found[row.sku_key] = row
    return found


def import_products(valid: list[tuple[int, dict]], actor: User | None, dry_run: bool) -> dict:
    """Create the new products and update the changed ones (unless a dry run); the report.

    A row's sku names a live product in any case (its own spelling is kept); a sku whose
    product was deleted creates a new product, as the create route does.
    """
    current = _current([Product.key_of(data["sku"]) for _, data in valid], lock=not dry_run)
    now = utcnow()
    created, updated, unchanged = [], [], []
    inserts, updates, changes = [], [], []
    for _, data in valid:
        key = Product.key_of(data["sku"])
        product = current.get(key)
        if product is None:
            values = {field: data.get(field, 0) for field in EDITABLE}
            inserts.append(Product.new_row(data["sku"], values, now))
            created.append(data["sku"])
            diff = {f: {"old": None, "new": plain(v)} for f, v in values.items()}
            changes.append((EventType.PRODUCT_CREATED, inserts[-1], diff))
            continue
        diff = {
            field: {"old": plain(getattr(product, field)), "new": plain(data[field])}
            for field in EDITABLE
            if field in data and data[field] != getattr(product, field)
        }
        if not diff:
            unchanged.append(product.sku)
            continue
        values = {field: data.get(field, getattr(product, field)) for field in EDITABLE}
        updates.append(Product.changed_row(product, values, now))
        updated.append(product.sku)
        changes.append((EventType.PRODUCT_UPDATED, updates[-1], diff))
    if not dry_run and changes:
        _insert(inserts)
        _update(updates)
        cache.note_changed(db.session, [row["sku_key"] for row in (*inserts, *updates)])
        counts = {"created": len(created), "updated": len(updated), "unchanged": len(unchanged)}
        first = journal.record_many(journal.actor_of(actor), _events(inserts, changes, current))
        notify_import(first, len(changes), counts)
    return {
        "dry_run": dry_run,
        "rows": len(valid),
        "created": _listed(created),
        "updated": _listed(updated),
        "unchanged": _listed(unchanged),
    }


def _events(inserts: list[dict], changes: list[tuple], current: dict) -> list[dict]:
    """The import's events, in file order, each with its product as it now is."""
    ids = {}
    for chunk in _chunks([row["sku_key"] for row in inserts]):
        query = select(Product.id, Product.sku_key).where(Product.sku_key.in_(chunk))
        ids.update((key, id_) for id_, key in db.session.execute(query))
    found = []
    for type_, row, diff in changes:
        product_id = row.get("id") or ids[row["sku_key"]]
        created_at = row.get("created_at") or current[row["sku_key"]].created_at
        shown = SimpleNamespace(**{**row, "created_at": created_at})
        found.append(
            {
                "type": type_,
                "changes": diff,
                "product_id": product_id,
                "sku": row["sku"],
                "version": row["version"],
                "snapshot": dump_product(shown),
            }
        )
    return found


def _listed(skus: list[str]) -> dict:
    return {"count": len(skus), "skus": skus[:LISTED_SKUS]}


def _insert(rows: list[dict]) -> None:
    for chunk in _chunks(rows):
        db.session.execute(insert(Product.__table__), chunk)


def _update(rows: list[dict]) -> None:
    """Update products by id (each row is locked), each with its own values, a chunk per
    statement."""
    for chunk in _chunks(rows):
        dialect.update_by_id(
            Product.__table__, chunk, [*EDITABLE, "search", "version", "updated_at"]
        )


# ---------------------------------------------------------------- export


def exported(filters: dict) -> Iterator[list]:
    """Chunks of the live products matching the list's filters, in the list's order: each
    product a sequence of its id, its sort key (as ``dialect.ordered_rows`` gives it),
    then its values in ``CATALOG_COLUMNS``'s order.

    Lazy, for a streamed answer: it starts reading once the view has returned (and its
    session ended). On MariaDB the chunks are read one ahead of the writing, in a thread
    of their own (``read_ahead``); SQLite runs in this process, with no wait to overlap."""
    chunks = partial(_exported_chunks, filters, as_csv=False)
    return _lazily(chunks) if dialect.is_sqlite() else _read_ahead(chunks)


def _lazily(chunks: Callable[[], Iterator]) -> Iterator:
    yield from chunks()


def _read_ahead(chunks: Callable[[], Iterator]) -> Iterator:
    """``read_ahead`` of ``chunks``, the request's own session ended first: the download
    may last a while, and the reading thread has a session and a connection of its own."""
    db.session.close()
    yield from read_ahead(chunks)


def _exported_chunks(filters: dict, as_csv: bool) -> Iterator:
    """The chunks of ``exported``, or (``as_csv``, MariaDB) their CSV lines
    (``dialect.Lines``)."""
    # One snapshot: a product changed during the download is neither skipped nor listed
    # twice.
    dialect.begin_snapshot()
    where, sort = product_filters(filters), filters.get("sort")
    key = sort_order(sort)[0]
    values = [getattr(Product, column) for column in CATALOG_COLUMNS]
    if as_csv:
        read = dialect.csv_lines(values, [key, Product.id])
    else:
        read = partial(dialect.ordered_rows, [Product.id, key, *values])
    position = None
    while True:
        chunk = rows_after(where, sort, position, CHUNK, read)
        if chunk:
            yield chunk
        if len(chunk) < CHUNK:
            return
        last_key, last_id = chunk.last if as_csv else (chunk[-1][1], chunk[-1][0])
        position = (dialect.read_back(key, last_key), last_id)


def product_values(row) -> dict:
    """An exported product (as ``exported`` yields it) by column."""
    return dict(zip(CATALOG_COLUMNS, (plain(value) for value in row[2:]), strict=True))


def csv_text(filters: dict, bom: bool) -> Iterator[str]:
    """The export as CSV: a header line, then a piece of text per chunk. MariaDB writes
    each chunk's lines itself (``dialect.csv_lines``: Python's CSV writer and its checks
    of each cell were most of a million products' export), read one chunk ahead of the
    answer; SQLite's rows go through the CSV writer."""
    if not dialect.is_sqlite():
        return _csv_lines(filters, bom)
    rows = ([[plain(value) for value in row[2:]] for row in chunk] for chunk in exported(filters))
    return csv_document(CATALOG_COLUMNS, rows, bom)


def _csv_lines(filters: dict, bom: bool) -> Iterator[str]:
    yield from csv_document(CATALOG_COLUMNS, [], bom)  # the header line
    for lines in _read_ahead(partial(_exported_chunks, filters, as_csv=True)):
        yield lines.text + "\r\n"


def json_text(filters: dict) -> Iterator[str]:
    """The export as a JSON array, one product a line."""
    yield "["
    separator = "\n"
    for rows in exported(filters):
        lines = [json.dumps(product_values(row), ensure_ascii=False) for row in rows]
        yield separator + ",\n".join(lines)
        separator = ",\n"
    yield "\n]\n"
