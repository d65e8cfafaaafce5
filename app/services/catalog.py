"""Products: create, change (with the diff of what changed), delete, list."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from app.database import locked
from app.extensions import db
from app.fields import json_number
from app.models import Product, User
from app.services import RuleError, notifications
from app.services.notifications import Change

EDITABLE = ("name", "price", "mark", "quantity")


def _plain(value):
    """A field's value as the change log and the email show it (prices as numbers)."""
    return json_number(value) if isinstance(value, Decimal) else value


def find_product(sku: str) -> Product | None:
    """The live product with this sku (any case), or None."""
    return db.session.scalar(select(Product).where(Product.sku_key == sku.lower()))


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


SORT_COLUMNS = {"name": Product.name, "price": Product.price, "created": Product.created_at}


def product_filters(filters: dict) -> list:
    """WHERE clauses of the product list (the live products matching the filters)."""
    clauses = [Product.deleted_at.is_(None)]
    if q := filters.get("q"):
        # A substring search: no index can serve it, it scans the live products.
        clauses.append(Product.name.contains(q, autoescape=True))
    if mark := filters.get("mark"):
        clauses.append(Product.mark == mark)
    if (low := filters.get("min_price")) is not None:
        clauses.append(Product.price >= low)
    if (high := filters.get("max_price")) is not None:
        clauses.append(Product.price <= high)
    if (in_stock := filters.get("in_stock")) is not None:
        clauses.append(Product.quantity > 0 if in_stock else Product.quantity == 0)
    return clauses


def list_products(filters: dict, page: int, page_size: int) -> tuple[list[Product], int]:
    where = product_filters(filters)
    total = db.session.scalar(select(func.count()).select_from(Product).where(*where))
    if (page - 1) * page_size >= total:
        return [], total  # past the last page
    sort = filters.get("sort") or "created"
    column = SORT_COLUMNS[sort.lstrip("-")]
    order = (column.desc(), Product.id.desc()) if sort.startswith("-") else (column, Product.id)
    rows = db.session.scalars(
        select(Product)
        .where(*where)
        .order_by(*order)
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    return list(rows), total
