"""Products: create, change (with the diff of what changed), delete, revert, list, and a
product as it was at a moment.

Every change writes its event (app/events/) and its emails (app/notifications/) in the
change's own transaction.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime
from decimal import Decimal

from flask import current_app
from sqlalchemy import and_, func, or_, select

from app.accounts.models import User
from app.catalog import cache, search
from app.catalog.models import Product
from app.catalog.reads import PRODUCTS, SHOWN
from app.catalog.schemas import cursor_of, dump_product, products_json
from app.core import dialect
from app.core.errors import RuleError
from app.core.extensions import db
from app.core.fields import json_number
from app.events import journal
from app.events.models import Event, EventType
from app.notifications.service import notify

EDITABLE = ("name", "price", "mark", "quantity")


def plain(value):
    """A field's value as events and emails show it (prices as numbers)."""
    return json_number(value) if isinstance(value, Decimal) else value


def _changed(product: Product, type_: str, actor: User | None, changes: dict, **fields) -> Event:
    """The change's event and its emails, in the change's transaction."""
    event = journal.record(
        type_,
        journal.actor_of(actor),
        changes,
        product_id=product.id,
        sku=product.sku,
        version=product.version,
        snapshot=None if product.deleted_at else dump_product(product),
        **fields,
    )
    notify(event)
    return event


def create_product(data: dict, actor: User | None) -> Product:
    if Product.by_sku(data["sku"]) is not None:
        raise RuleError(409, f"A product with sku {data['sku']!r} already exists.", "sku")
    product = Product(sku=data["sku"], **{field: data[field] for field in EDITABLE})
    db.session.add(product)
    db.session.flush()
    changes = {field: {"old": None, "new": plain(getattr(product, field))} for field in EDITABLE}
    _changed(product, EventType.PRODUCT_CREATED, actor, changes)
    return product


def update_product(
    product: Product, data: dict, actor: User | None, reverted_to: int | None = None
) -> Event | None:
    """Apply the fields that differ; the change's event, or None when nothing changed.
    ``product`` was read locked (``Product.by_sku(..., lock=True)``), so the old values
    are the last committed ones."""
    if "sku" in data and Product.key_of(data["sku"]) != product.sku_key:
        raise RuleError(422, "The sku cannot be changed.", "sku")
    changes = {}
    for field in EDITABLE:
        if field in data and data[field] != getattr(product, field):
            changes[field] = {"old": plain(getattr(product, field)), "new": plain(data[field])}
            setattr(product, field, data[field])
    if not changes:
        return None
    product.touch()
    db.session.flush()
    return _changed(product, EventType.PRODUCT_UPDATED, actor, changes, reverted_to=reverted_to)


def delete_product(product: Product, actor: User | None) -> Event:
    """Soft delete: the row keeps its history; the sku can be used again."""
    changes = {field: {"old": plain(getattr(product, field)), "new": None} for field in EDITABLE}
    product.soft_delete()
    db.session.flush()
    return _changed(product, EventType.PRODUCT_DELETED, actor, changes)


# ---------------------------------------------------------------- history


def values_after(event: Event) -> dict | None:
    """The product's fields right after ``event`` (None: it was deleted then)."""
    if event.type == EventType.PRODUCT_DELETED:
        return None
    if event.snapshot is not None:
        return {field: event.snapshot[field] for field in EDITABLE}
    # Recorded without the values after it: the row's values now, each later change undone.
    product = db.session.get(Product, event.product_id)
    values = {field: plain(getattr(product, field)) for field in EDITABLE}
    later = select(Event).where(Event.product_id == product.id, Event.id > event.id)
    for change in db.session.scalars(later.order_by(Event.id.desc())):
        for field, values_of in change.changes.items():
            if field in values:
                values[field] = values_of["old"]
    return values


def as_of(sku: str, moment: datetime) -> dict | None:
    """The product with this sku as the API showed it at ``moment``; None if none was
    live then."""
    rows = db.session.scalars(select(Product).where(Product.sku_lower == Product.key_of(sku)))
    live = [
        p
        for p in rows
        if p.created_at <= moment and (p.deleted_at is None or p.deleted_at > moment)
    ]
    if not live:
        return None
    product = max(live, key=lambda p: p.created_at)
    last = db.session.scalar(
        select(Event)
        .where(Event.product_id == product.id, Event.at <= moment)
        .order_by(Event.id.desc())
        .limit(1)
    )
    if last is not None and last.snapshot is not None:
        return last.snapshot
    shown = dump_product(product)
    later = select(Event).where(Event.product_id == product.id, Event.at > moment)
    for change in db.session.scalars(later.order_by(Event.id.desc())):
        for field, values_of in change.changes.items():
            if field in EDITABLE:
                shown[field] = values_of["old"]
    shown["updated_at"] = (last.at if last is not None else product.created_at).isoformat()
    return shown


def revert_product(sku: str, event_id: int, actor: User | None) -> tuple[Product, bool]:
    """Set the product's fields to their values right after event ``event_id``, as one
    ordinary change (its event names ``reverted_to``). A deleted product is restored.
    (The product, whether it was restored.)"""
    event = journal.by_id(event_id)
    if event is None or event.product_id is None:
        raise RuleError(422, f"No product event with id {event_id}.", "to")
    if Product.key_of(event.sku) != Product.key_of(sku):
        raise RuleError(422, f"Event {event_id} is about another product ({event.sku}).", "to")
    values = values_after(event)
    if values is not None:
        values["price"] = Decimal(str(values["price"])).quantize(Decimal("0.01"))
    if values is None:
        raise RuleError(
            422, f"The product was deleted by event {event_id}: nothing to restore.", "to"
        )
    live = Product.by_sku(sku, lock=True)
    if live is not None and live.id != event.product_id:
        raise RuleError(409, f"The sku {sku!r} is now another product's.", "to")
    if live is not None:
        update_product(live, values, actor, reverted_to=event.id)
        return live, False
    product = db.session.get(Product, event.product_id)
    product.restore()
    for field, value in values.items():
        setattr(product, field, value)
    db.session.flush()
    changes = {field: {"old": None, "new": plain(getattr(product, field))} for field in EDITABLE}
    _changed(product, EventType.PRODUCT_CREATED, actor, changes, reverted_to=event.id)
    return product, True


SORT_COLUMNS = {
    "name": PRODUCTS.c.name,
    "price": PRODUCTS.c.price,
    "created": PRODUCTS.c.created_at,
}


def product_filters(filters: dict) -> list:
    """WHERE clauses of the product list (the live products matching the filters)."""
    clauses = [Product.live()]
    if q := filters.get("q"):
        clauses.append(search.matching(PRODUCTS.c.id, search.terms(q)))
    if mark := filters.get("mark"):
        clauses.append(PRODUCTS.c.mark == mark)
    if (low := filters.get("min_price")) is not None:
        clauses.append(PRODUCTS.c.price >= low)
    if (high := filters.get("max_price")) is not None:
        clauses.append(PRODUCTS.c.price <= high)
    if (in_stock := filters.get("in_stock")) is not None:
        clauses.append(PRODUCTS.c.quantity > 0 if in_stock else PRODUCTS.c.quantity == 0)
    return clauses


def sort_order(sort: str | None) -> tuple:
    """(column, descending) of one of the list's sorts (``created`` by default)."""
    sort = sort or "created"
    return SORT_COLUMNS[sort.lstrip("-")], sort.startswith("-")


def ordered_by(sort: str | None) -> tuple:
    """The ORDER BY of one of the list's column sorts: its column, then the id."""
    column, descending = sort_order(sort)
    ids = PRODUCTS.c.id
    return (column.desc(), ids.desc()) if descending else (column, ids)


def rows_after(
    where: list, sort: str | None, position: tuple | None, limit: int, read: Callable
) -> list:
    """Up to ``limit`` rows matching ``where``, in the list's order ``sort`` (its column,
    then the id), after ``position``: the ``(sort key, id)`` of the last row seen (None:
    from the first). ``read(from_, order)`` reads them: ``from_`` is the products joined
    to the ids of the rows (see ``sorted_rows`` and ``dialect.ordered_rows``; on MariaDB,
    where this is one statement, what ``read`` gives is returned as it is, such as
    ``dialect.csv_lines``'s lines).

    Each statement finds the ids first, from the index alone, then reads just those rows
    (MariaDB, asked for more columns than the index holds, walks the index from the first
    live product, testing the key on each entry; for the ids alone it seeks to the key).
    MariaDB reads "after the position", ``key > k OR (key = k AND id > i)``, as one index
    range; SQLite reads that as a walk of the live products from the first, so there it
    is two statements, each one range: the rows that tie with the last key (after its
    id), then the rows beyond the key."""
    column, descending = sort_order(sort)
    ids, order = PRODUCTS.c.id, ordered_by(sort)

    def rows(conditions: list, order_by: tuple, count: int) -> list:
        page = select(ids).where(*conditions).order_by(*order_by).limit(count).subquery()
        return read(PRODUCTS.join(page, page.c.id == ids), order)

    if position is None:
        return rows(where, order, limit)
    key, last = position
    tie = and_(column == key, ids < last if descending else ids > last)
    beyond = column < key if descending else column > key
    if dialect.ranges_after_a_position():
        return rows([*where, or_(beyond, tie)], order, limit)
    ties = rows([*where, tie], (ids.desc() if descending else ids,), limit)
    if len(ties) >= limit:
        return ties
    return ties + rows([*where, beyond], order, limit - len(ties))


def sorted_rows(sort: str | None, columns) -> Callable:
    """A ``read`` for ``rows_after``: rows of the id, the sort key (``sort_key``), then
    ``columns``."""
    key = sort_order(sort)[0].label("sort_key")

    def read(from_, order: tuple) -> list:
        query = select(PRODUCTS.c.id, key, *columns).select_from(from_).order_by(*order)
        return db.session.execute(query).all()

    return read


# Pages by number reach this many matches of a list, no further: the page's ids come from
# the sort's index, but the ones it skips are still read (at a million products, the
# middle page took 100 ms). A walk by cursor goes anywhere at the cost of its first page.
DEEPEST_PAGED = 50_000


def list_page(filters: dict, page: int, page_size: int) -> tuple[int, str, str | None]:
    """The total and the JSON of one page of the list, from the Redis cache (by the query
    as read: however its query string was spelt, the same query is one entry) or the
    database; and the search answered instead of ``q`` when ``q`` found nothing and was
    corrected (``corrected_search``), else None."""

    def cached(filters: dict) -> tuple[int, str]:
        def answer() -> tuple[int, str]:
            items, total = list_products(filters, page, page_size)
            return total, products_json(items)

        query = {**filters, "page": page, "page_size": page_size}
        key = json.dumps(query, sort_keys=True, default=str, ensure_ascii=False)
        return cache.page(key, answer)

    total, body = cached(filters)
    if total == 0 and (better := corrected_search(filters)) is not None:
        found, body_found = cached({**filters, "q": better})
        if found:
            return found, body_found, better
    return total, body, None


def corrected_search(filters: dict) -> str | None:
    """``q`` with the words that start no word of the catalog corrected
    (``search.corrected``), or None: no ``q``, or nothing to correct."""
    if not (q := filters.get("q")):
        return None
    words = search.corrected(search.terms(q))
    return " ".join(words) if words else None


def count_matching(filters: dict, where: list) -> int:
    """How many live products match ``where`` (the list's ``filters``)."""
    if len(where) == 1:
        # All live products: the database would count the whole index each time.
        return cache.live_count(live_products)
    if len(where) == 2 and filters.get("q"):
        # A search alone: counted from the search's index, not the products.
        return count_found(search.terms(filters["q"]))
    return db.session.scalar(select(func.count()).select_from(PRODUCTS).where(*where))


def count_found(words: list[str]) -> int:
    """How many live products a search alone finds (``search.ranked``)."""

    def count() -> int:  # planned after the version is read: the plan reads the index too
        ranks = search.ranked(words).subquery()
        return db.session.scalar(select(func.count()).select_from(ranks))

    return kept_count(("q", *words), count)


# The catalog's version: the last event (every change to a product records one, numbered
# in commit order: app/events/journal.py) and the last product row.
CATALOG_VERSION = select(
    select(func.max(Event.id)).scalar_subquery(), select(func.max(PRODUCTS.c.id)).scalar_subquery()
)
LIVE_PRODUCTS = select(func.count()).select_from(PRODUCTS).where(Product.live())


def live_products() -> int:
    """How many live products there are (``kept_count``)."""
    return kept_count("live", lambda: db.session.scalar(LIVE_PRODUCTS))


# How many counts each process keeps, the most recently used.
COUNTS_KEPT = 1000
_counts_lock = threading.Lock()


def kept_count(key: Hashable, count: Callable[[], int]) -> int:
    """``count()`` (a number of products, ``key`` naming which), counted again only after a
    change to the catalog.

    Counting a million reads the whole index (150 ms in MariaDB), a word in a tenth of
    the names 111,000 entries of the search's (20 to 35 ms), so each process keeps the
    last ``COUNTS_KEPT`` counts with the catalog's version each was taken at, and counts
    again once the version moves (whichever process made the change). The version is
    read before the count: a count is never older than the version it is kept with."""
    version = tuple(db.session.execute(CATALOG_VERSION).one())
    kept = current_app.extensions.setdefault("catalog_counts", OrderedDict())
    with _counts_lock:
        found = kept.get(key)
        if found is not None and found[0] == version:
            kept.move_to_end(key)
            return found[1]
    number = count()
    with _counts_lock:
        kept[key] = (version, number)
        kept.move_to_end(key)
        while len(kept) > COUNTS_KEPT:
            kept.popitem(last=False)
    return number


def list_after(
    filters: dict, position: tuple | None, page_size: int, count: bool
) -> tuple[str, str | None, int | None, str | None]:
    """A page of a cursor walk of the list: the JSON of the ``page_size`` live products
    matching ``filters`` after ``position`` (None: the first), the cursor of the next
    page (None: this is the last), how many match in all when ``count`` (else None: a
    walk never counts the catalog unless asked), and the search answered instead of
    ``q`` when ``q`` found nothing and was corrected (else None; each page decides
    again, from ``q`` as sent).

    Not cached: each page is one or two index ranges, as cheap at the millionth product
    as at the first, and a position is seldom asked twice."""
    sort = filters.get("sort") or "created"

    def rows_of(filters: dict) -> list:
        where = product_filters(filters)
        return rows_after(where, sort, position, page_size + 1, sorted_rows(sort, SHOWN))

    rows, answered = rows_of(filters), None
    better = None if rows else corrected_search(filters)
    if better is not None and (rows := rows_of({**filters, "q": better})):
        filters, answered = {**filters, "q": better}, better
    shown, more = rows[:page_size], len(rows) > page_size
    next_cursor = cursor_of(sort, shown[-1].sort_key, shown[-1].id) if more else None
    total = count_matching(filters, product_filters(filters)) if count else None
    return products_json([dump_product(row) for row in shown]), next_cursor, total, answered


def list_products(filters: dict, page: int, page_size: int) -> tuple[list[dict], int]:
    """One page of the live products matching ``filters``, as the API shows them, and
    how many match in all.

    A sorted page finds its ids first, from the sort's index alone, then reads just those
    rows: the products it skips cost an index entry each, not a row each (page 10,000 of
    a million: 30 ms instead of 210 ms in MariaDB)."""
    skipped = (page - 1) * page_size
    sort = filters.get("sort") or "created"
    if sort == "relevance":
        return ranked_page(filters, skipped, page_size)
    where = product_filters(filters)
    total = count_matching(filters, where)
    if skipped >= total:
        return [], total  # past the last page
    ids, order = PRODUCTS.c.id, ordered_by(sort)
    page_ids = (
        select(ids).where(*where).order_by(*order).limit(page_size).offset(skipped)
    ).subquery()
    query = select(*SHOWN).join_from(PRODUCTS, page_ids, page_ids.c.id == ids).order_by(*order)
    rows = db.session.execute(query)
    return [dump_product(row) for row in rows], total


def ranked_page(filters: dict, skipped: int, page_size: int) -> tuple[list[dict], int]:
    """``list_products`` by relevance (``app/catalog/search.py``): a search alone ranks and
    counts from the search's index, then reads the page's rows; with other filters, the
    matches are read to test them, and counted by the same statement."""
    words = search.terms(filters["q"])
    ranks = search.ranked(words).subquery()
    where = product_filters({**filters, "q": None})
    if len(where) == 1:  # the live products: the index holds just those
        total = count_found(words)
        if skipped >= total:
            return [], total
        page = select(ranks).order_by(*search.best_first(ranks))
        page = page.limit(page_size).offset(skipped).subquery()
        query = select(*SHOWN).join_from(PRODUCTS, page, page.c.product_id == PRODUCTS.c.id)
        query = query.where(*where).order_by(*search.best_first(page))
        rows = db.session.execute(query)
        return [dump_product(row) for row in rows], total
    query = (
        select(*SHOWN, func.count().over().label("matches"))
        .join_from(PRODUCTS, ranks, ranks.c.product_id == PRODUCTS.c.id)
        .where(*where)
        .order_by(*search.best_first(ranks))
        .limit(page_size)
        .offset(skipped)
    )
    rows = db.session.execute(query).all()
    total = rows[0].matches if rows else count_matching(filters, product_filters(filters))
    return [dump_product(row) for row in rows], total
