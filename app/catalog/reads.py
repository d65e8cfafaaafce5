"""A product read: ``read_product`` answers ``GET /api/products/<sku>``, for the route and
for the fast layer ahead of Flask (app/catalog/fast.py) alike: the body, its ETag, a 304
for a matching ``If-None-Match``, and the read's view.

The answer comes from the Redis product cache when it holds it (app/catalog/cache.py),
else from the database (and is then cached). When views ride on the cache
(app/views/recorder.py), the script that reads or fills the entry also adds the view to
the stream, and the recorder is told how that went; otherwise the recorder records the
view once the product is known.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import redis
from sqlalchemy import bindparam, select
from werkzeug.http import parse_etags

from app.catalog import cache
from app.catalog.cache import Answer
from app.catalog.models import Product
from app.catalog.schemas import dump_product, products_json
from app.core.cache import seconds
from app.core.extensions import db
from app.views.recorder import recorder
from app.views.stream import view_fields

PRODUCTS = Product.__table__
# What a read shows, as plain rows (no ORM objects): its JSON, its ETag.
SHOWN = (PRODUCTS.c.sku, PRODUCTS.c.name, PRODUCTS.c.price, PRODUCTS.c.mark)
SHOWN += (PRODUCTS.c.quantity, PRODUCTS.c.created_at, PRODUCTS.c.updated_at)
READ_ONE = select(PRODUCTS.c.id, PRODUCTS.c.version, *SHOWN).where(
    PRODUCTS.c.sku_key == bindparam("sku_key")
)
JSON = "application/json"

log = logging.getLogger(__name__)


class ProductRead(NamedTuple):
    """The answer to a product read: 200 with the product, or 304."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]


def read_product(
    sku: str,
    reader_id: int | None,
    client: str | None,
    if_none_match: str | None,
    record: bool = True,
) -> ProductRead | None:
    """The answer to a read of the live product ``sku`` (None: there is none), its view
    recorded when ``record`` (a GET, not a HEAD): by ``reader_id`` (None: anonymous) from
    the address ``client``."""
    answer = _answer(sku, reader_id, client, record)
    if answer is None:
        return None
    etag = answer.etag
    headers = [("ETag", f'"{etag}"')]
    if if_none_match and parse_etags(if_none_match).contains_weak(etag):
        return ProductRead(304, b"", headers)
    body = answer.body.encode()
    headers += [("Content-Type", JSON), ("Content-Length", str(len(body)))]
    return ProductRead(200, body, headers)


def _row(key: str):
    return db.session.execute(READ_ONE, {"sku_key": key}).first()


def _answer_of(row) -> Answer:
    return Answer(row.id, row.version, products_json(dump_product(row)))


def _answer(sku: str, reader_id: int | None, client: str | None, record: bool) -> Answer | None:
    key = Product.key_of(sku)
    views = recorder()
    if not seconds() or not cache.CACHEABLE_SKU.fullmatch(sku):
        row = _row(key)
        if row is not None and record:
            views.record(row.id, reader_id, client)
        return None if row is None else _answer_of(row)
    pending = views.pending(reader_id) if record else None
    fields = view_fields(pending) if pending is not None else None

    def settle(product_id: int, failure: redis.RedisError | None = None) -> None:
        """The view of this read, once its product is known."""
        if pending is None:
            if record:
                views.record(product_id, reader_id, client)
        elif failure is None:
            views.taken(pending)
        else:
            views.unconfirmed(pending, product_id, failure)

    try:
        found = cache.read(key, fields)
    except redis.RedisError as exc:
        row = _row(key)
        if row is None:
            return None
        settle(row.id, exc)
        return _answer_of(row)
    except cache.Unreadable:
        # Found, so its view went in with the read: answered from the database.
        log.exception("product read %r: the cached copy cannot be read", sku)
        row = _row(key)
        if row is None:
            return None
        settle(row.id)
        return _answer_of(row)
    if isinstance(found, Answer):
        settle(found.product_id)
        return found
    row = _row(key)
    if row is None:
        return None
    answer = _answer_of(row)
    try:
        cache.fill(key, found, answer, fields)
    except redis.RedisError as exc:
        settle(row.id, exc)
        return answer
    settle(row.id)
    return answer
