"""Products: create, change (with the diff of what changed), delete, list."""

from __future__ import annotations

from decimal import Decimal

import redis
from flask import current_app
from sqlalchemy import bindparam, func, select

from app.accounts.models import User
from app.catalog import cache
from app.catalog.cache import Answer, Miss
from app.catalog.models import Product
from app.catalog.schemas import dump_product
from app.core.columns import utcnow
from app.core.dialect import locked
from app.core.errors import RuleError
from app.core.extensions import db
from app.core.fields import json_number
from app.notifications import service as notifications
from app.notifications.service import Change
from app.views import recorder as tracking

EDITABLE = ("name", "price", "mark", "quantity")


def _plain(value):
    """A field's value as the change log and the email show it (prices as numbers)."""
    return json_number(value) if isinstance(value, Decimal) else value


def find_product(sku: str) -> Product | None:
    """The live product with this sku (any case), or None."""
    return db.session.scalar(select(Product).where(Product.sku_key == sku.lower()))


PRODUCTS = Product.__table__
# What a read shows, as plain rows (no ORM objects): its JSON, its ETag.
SHOWN = (PRODUCTS.c.sku, PRODUCTS.c.name, PRODUCTS.c.price, PRODUCTS.c.mark)
SHOWN += (PRODUCTS.c.quantity, PRODUCTS.c.created_at, PRODUCTS.c.updated_at)
READ_ONE = select(PRODUCTS.c.id, PRODUCTS.c.version, *SHOWN).where(
    PRODUCTS.c.sku_key == bindparam("sku_key")
)


def _answer(row) -> Answer:
    body = current_app.json.response(dump_product(row)).get_data(as_text=True)
    return Answer(row.id, row.version, body)


def read_product(
    sku: str, reader_id: int | None, client: str | None, view: bool, miss: Miss | None = None
):
    """The live product's answer (None if there is none), its view recorded when
    ``view``: from the Redis cache when it has it (the view added in the same round
    trip), else from the database (and then cached). ``miss``: the cache was already
    asked for this read, and did not have it (app/cached_reads.py)."""
    key = sku.lower()
    if not cache.seconds() or not cache.CACHEABLE_SKU.fullmatch(sku):
        return _read_from_database(key, reader_id, client, view)
    now = utcnow()
    streamed = view and tracking.streams_each_view()
    fields = ("" if reader_id is None else str(reader_id), now.timestamp()) if streamed else None
    try:
        found = miss if miss is not None else cache.read(key, fields)
    except redis.RedisError as exc:
        row = db.session.execute(READ_ONE, {"sku_key": key}).first()
        if row is not None and view:
            if not streamed:
                tracking.record_view(row.id, reader_id, client)
            elif tracking.stream_failed(row.id, exc):
                tracking.write_directly(row.id, reader_id, now, fell_back=True)
        return None if row is None else _answer(row)
    if isinstance(found, Answer):
        if streamed:
            tracking.streamed()
        elif view:
            tracking.record_view(found.product_id, reader_id, client)
        return found
    row = db.session.execute(READ_ONE, {"sku_key": key}).first()
    if row is None:
        return None
    answer = _answer(row)
    try:
        cache.fill(key, found, answer, fields)
    except redis.RedisError as exc:
        if streamed and tracking.stream_failed(row.id, exc):
            tracking.write_directly(row.id, reader_id, now, fell_back=True)
        elif view and not streamed:
            tracking.record_view(row.id, reader_id, client)
        return answer
    if streamed:
        tracking.streamed()
    elif view:
        tracking.record_view(row.id, reader_id, client)
    return answer


def _read_from_database(key: str, reader_id: int | None, client: str | None, view: bool):
    row = db.session.execute(READ_ONE, {"sku_key": key}).first()
    if row is None:
        return None
    if view:
        tracking.record_view(row.id, reader_id, client)
    return _answer(row)


def lock_product(sku: str) -> Product | None:
    """The live product with this sku, locked for a change (database.locked):
    concurrent changes of one product take turns, each computed from the one before."""
    return locked(select(Product).where(Product.sku_key == sku.lower()))


def find_product_with_history(sku: str) -> Product | None:
    """The live product with this sku, else the most recently deleted one (its history)."""
    return find_product(sku) or db.session.scalar(
        select(Product)
        .where(Product.sku == sku, Product.deleted_at.is_not(None))
        .order_by(Product.deleted_at.desc())
        .limit(1)
    )


def create_product(data: dict, actor: User | None) -> Change:
    if find_product(data["sku"]) is not None:
        raise RuleError(409, f"A product with sku {data['sku']!r} already exists.", "sku")
    product = Product(sku=data["sku"], **{field: data[field] for field in EDITABLE})
    db.session.add(product)
    db.session.flush()
    snapshot = {field: [None, _plain(getattr(product, field))] for field in EDITABLE}
    return _notify_admins(Change(product, "created", actor, snapshot))


def update_product(product: Product, data: dict, actor: User | None) -> Change | None:
    """Apply the fields that differ; None when nothing changed. ``product`` comes from
    ``lock_product``, so the old values are the last committed ones."""
    if "sku" in data and data["sku"].lower() != product.sku_key:
        raise RuleError(422, "The sku cannot be changed.", "sku")
    diff = {}
    for field in EDITABLE:
        if field in data and data[field] != getattr(product, field):
            diff[field] = [_plain(getattr(product, field)), _plain(data[field])]
            setattr(product, field, data[field])
    if not diff:
        return None
    product.version += 1
    db.session.flush()
    return _notify_admins(Change(product, "updated", actor, diff))


def delete_product(product: Product, actor: User | None) -> Change:
    """Soft delete: the row keeps its history; the sku can be used again."""
    snapshot = {field: [_plain(getattr(product, field)), None] for field in EDITABLE}
    product.soft_delete()
    product.version += 1
    db.session.flush()
    return _notify_admins(Change(product, "deleted", actor, snapshot))


def _notify_admins(change: Change) -> Change:
    """Every committed change emails the admins: the rows join the change's transaction."""
    notifications.notify(change)
    return change


SORT_COLUMNS = {
    "name": PRODUCTS.c.name,
    "price": PRODUCTS.c.price,
    "created": PRODUCTS.c.created_at,
}


def product_filters(filters: dict) -> list:
    """WHERE clauses of the product list (the live products matching the filters)."""
    clauses = [PRODUCTS.c.deleted_at.is_(None)]
    if q := filters.get("q"):
        # A substring search: no index can serve it, it scans the live products.
        clauses.append(PRODUCTS.c.name.contains(q, autoescape=True))
    if mark := filters.get("mark"):
        clauses.append(PRODUCTS.c.mark == mark)
    if (low := filters.get("min_price")) is not None:
        clauses.append(PRODUCTS.c.price >= low)
    if (high := filters.get("max_price")) is not None:
        clauses.append(PRODUCTS.c.price <= high)
    if (in_stock := filters.get("in_stock")) is not None:
        clauses.append(PRODUCTS.c.quantity > 0 if in_stock else PRODUCTS.c.quantity == 0)
    return clauses


def list_page(query: str, filters: dict, page: int, page_size: int) -> tuple[int, str]:
    """The total and the JSON of one page of the list, from the Redis cache (by query
    string: the same query, the same page) or the database."""

    def answer() -> tuple[int, str]:
        items, total = list_products(filters, page, page_size)
        return total, current_app.json.response(items).get_data(as_text=True)

    return cache.page(query, answer)


def list_products(filters: dict, page: int, page_size: int) -> tuple[list[dict], int]:
    """One page of the live products matching ``filters``, as the API shows them, and
    how many match in all."""
    where = product_filters(filters)
    total_query = select(func.count()).select_from(PRODUCTS).where(*where)
    if len(where) == 1:
        # All live products: the database would count the whole index each time.
        total = cache.live_count(lambda: db.session.scalar(total_query))
    else:
        total = db.session.scalar(total_query)
    if (page - 1) * page_size >= total:
        return [], total  # past the last page
    sort = filters.get("sort") or "created"
    column, last = SORT_COLUMNS[sort.lstrip("-")], PRODUCTS.c.id
    order = (column.desc(), last.desc()) if sort.startswith("-") else (column, last)
    rows = db.session.execute(
        select(*SHOWN)
        .where(*where)
        .order_by(*order)
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    return [dump_product(row) for row in rows], total
