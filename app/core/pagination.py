"""One page of a query, with the total flask-smorest puts in X-Pagination and Link; and
the opaque cursors of a keyset walk (a position in a list, not a page number)."""

from __future__ import annotations

import base64
import binascii
import json

from flask_smorest import abort
from sqlalchemy import Select, func, select

from app.core.extensions import db
from app.core.openapi import NOT_COUNTED


def page_of(query: Select, pagination_parameters) -> list:
    """Count the matching rows, then fetch the requested page (none past the last page)."""
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    pagination_parameters.item_count = total
    if pagination_parameters.first_item >= total:
        return []
    return list(
        db.session.scalars(
            query.limit(pagination_parameters.page_size).offset(pagination_parameters.first_item)
        )
    )


def within_reach(pagination_parameters, deepest: int) -> None:
    """Pages by number of a list that answers them for its first ``deepest`` items only
    (an OFFSET reads and drops every item it skips): a page that starts past them is a
    422 naming ``page`` and pointing to the cursor, and the answer's last and next pages
    stop at the last page in reach (app/core/openapi.py)."""
    size = pagination_parameters.page_size
    pagination_parameters.deepest = (deepest - 1) // size + 1
    if pagination_parameters.page > pagination_parameters.deepest:
        abort(
            422,
            message=f"Pages by number reach the first {deepest:,} products of a list.",
            messages={
                "query": {
                    "page": [
                        f"At page_size={size}, page can be at most "
                        f"{pagination_parameters.deepest}: walk further by cursor "
                        "(cursor= empty starts a walk; each page gives the next cursor)."
                    ]
                }
            },
        )


def cursor_page(pagination_parameters, next_cursor: str | None, total: int | None) -> None:
    """Mark the answer as a page of a cursor walk: X-Pagination then holds ``page_size``,
    ``next_cursor`` (none on the last page) and ``total`` only when counted, and Link
    only the ``next`` page (app/core/openapi.py)."""
    pagination_parameters.next_cursor = next_cursor
    pagination_parameters.item_count = NOT_COUNTED if total is None else total


def encode_cursor(position: dict) -> str:
    """A position as an opaque text for a query string (URL-safe base64 of its JSON)."""
    text = json.dumps(position, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict | None:
    """The position ``encode_cursor`` wrote, or None for any other text."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw.decode())
    except (binascii.Error, ValueError):
        return None
    return position if isinstance(position, dict) else None
