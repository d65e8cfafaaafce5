"""Products: create, change (with the diff of what changed), delete, list."""

from __future__ import annotations

import json
from decimal import Decimal

from sqlalchemy import func, select

from app.accounts.models import User
from app.catalog import cache
from app.catalog.models import Product
from app.catalog.reads import PRODUCTS, SHOWN
from app.catalog.schemas import dump_product, products_json
from app.core.errors import RuleError
from app.core.extensions import db
from app.core.fields import json_number
from app.notifications.service import Change, notify

EDITABLE = ("name", "price", "mark", "quantity")


def _plain(value):
    """A field's value as the change log and the email show it (prices as numbers)."""
    return json_number(value) if isinstance(value, Decimal) else value


def create_product(data: dict, actor: User | None) -> Change:
    if Product.by_sku(data["sku"]) is not None:
        raise RuleError(409, f"A product with sku {data['sku']!r} already exists.", "sku")
    product = Product(sku=data["sku"], **{field: data[field] for field in EDITABLE})
    db.session.add(product)
    db.session.flush()
    snapshot = {field: [None, _plain(getattr(product, field))] for field in EDITABLE}
    return _notify_admins(Change(product, "created", actor, snapshot))


def update_product(product: Product, data: dict, actor: User | None) -> Change | None:
    """Apply the fields that differ; None when nothing changed. ``product`` was read
    locked (``Product.by_sku(..., lock=True)``), so the old values are the last committed
    ones."""
    if "sku" in data and Product.key_of(data["sku"]) != product.sku_key:
        raise RuleError(422, "The sku cannot be changed.", "sku")
    diff = {}
    for field in EDITABLE:
        if field in data and data[field] != getattr(product, field):
            diff[field] = [_plain(getattr(product, field)), _plain(data[field])]
            setattr(product, field, data[field])
    if not diff:
        return None
    product.touch()
    db.session.flush()
    return _notify_admins(Change(product, "updated", actor, diff))


def delete_product(product: Product, actor: User | None) -> Change:
    """Soft delete: the row keeps its history; the sku can be used again."""
    snapshot = {field: [_plain(getattr(product, field)), None] for field in EDITABLE}
    product.soft_delete()
    db.session.flush()
    return _notify_admins(Change(product, "deleted", actor, snapshot))


def _notify_admins(change: Change) -> Change:
    """Every committed change emails the admins: the rows join the change's transaction."""
    notify(change)
    return change


SORT_COLUMNS = {
    "name": PRODUCTS.c.name,
    "price": PRODUCTS.c.price,
    "created": PRODUCTS.c.created_at,
}


def product_filters(filters: dict) -> list:
    """WHERE clauses of the product list (the live products matching the filters)."""
    clauses = [Product.live()]
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


def list_page(filters: dict, page: int, page_size: int) -> tuple[int, str]:
    """The total and the JSON of one page of the list, from the Redis cache (by the query
    as read: however its query string was spelt, the same query is one entry) or the
    database."""

    def answer() -> tuple[int, str]:
        items, total = list_products(filters, page, page_size)
        return total, products_json(items)

    query = {**filters, "page": page, "page_size": page_size}
    return cache.page(json.dumps(query, sort_keys=True, default=str, ensure_ascii=False), answer)


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
