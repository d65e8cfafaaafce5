"""Conditional requests on a product: a strong ``ETag`` from its id and version.

A product's JSON changes only when its version does (every change increments it), so
``"<id>-<version>"`` is a strong validator. ``If-None-Match`` on a read answers 304;
``If-Match`` on a change or a delete answers 412 when the product moved on.
"""

from __future__ import annotations

from flask import request
from flask_smorest import abort

from app.catalog.models import Product


def etag(product: Product) -> str:
    """The entity tag, unquoted (werkzeug quotes it in the header)."""
    return f"{product.id}-{product.version}"


def headers(product: Product) -> dict:
    return {"ETag": f'"{etag(product)}"'}


def not_modified(product: Product) -> bool:
    """The reader's copy (If-None-Match) is current: a 304 will do."""
    return request.if_none_match.contains_weak(etag(product))


def require_current(product: Product | None) -> None:
    """412 when If-Match names another version (or any version of a missing product)."""
    if "If-Match" not in request.headers:
        return
    if product is None or not request.if_match.contains(etag(product)):
        abort(
            412,
            message="The product changed since it was read (If-Match): read it again.",
            errors={"headers": {"If-Match": ["Does not match the current ETag."]}},
        )
