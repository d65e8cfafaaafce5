"""The product routes' and the catalog import/export's inputs and outputs."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from flask import current_app
from marshmallow import (
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from app.core.fields import Count, Price, Text, json_number, text
from app.core.pagination import decode_cursor, encode_cursor

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ProductSchema(Schema):
    sku = fields.String(metadata={"example": "d7iy6euiue"})
    name = fields.String(metadata={"example": "zapatos"})
    price = Price(metadata={"example": 300})
    mark = fields.String(metadata={"example": "chabelo"})
    quantity = fields.Integer(metadata={"example": 5})
    created_at = fields.DateTime(format="iso")
    updated_at = fields.DateTime(format="iso")


def dump_product(row) -> dict:
    """A product as the API shows it (``ProductSchema`` documents it): the one serialiser
    of every answer that holds products, from an ORM object or a plain row."""
    return {
        "sku": row.sku,
        "name": row.name,
        "price": None if row.price is None else json_number(row.price),
        "mark": row.mark,
        "quantity": row.quantity,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def products_json(value) -> str:
    """The JSON text of ``dump_product`` output (one product or a list), written exactly
    as Flask's ``json.response`` writes an answer (without building one)."""
    provider = current_app.json
    if (provider.compact is None and current_app.debug) or provider.compact is False:
        return provider.dumps(value, indent=2) + "\n"
    return provider.dumps(value, separators=(",", ":")) + "\n"


class AsOfQuerySchema(Schema):
    as_of = fields.AwareDateTime(
        format="iso",
        default_timezone=UTC,
        metadata={
            "description": "Admin only: the product as it was at this moment (ISO 8601; UTC "
            "when no offset is given). Not counted as a view.",
            "example": "2026-12-01T12:00:00Z",
        },
    )


class RevertSchema(Schema):
    to = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=1, max=2**63 - 1),
        metadata={"description": "One of this product's events: its values right after it."},
    )


class ProductCreateSchema(Schema):
    sku = Text(
        required=True,
        validate=validate.Regexp(
            SKU_PATTERN,
            error="Use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        ),
        metadata={"example": "d7iy6euiue"},
    )
    name = text(200, required=True, metadata={"example": "zapatos"})
    price = Price(required=True, metadata={"example": 300})
    mark = text(100, required=True, metadata={"example": "chabelo"})
    quantity = Count(load_default=0, metadata={"example": 5})


class ProductUpdateSchema(Schema):
    """Any subset of the fields; the sku may be repeated but never changed."""

    sku = Text(metadata={"description": "Must equal the product's sku if sent."})
    name = text(200, metadata={"example": "zapatos"})
    price = Price(metadata={"example": 500})
    mark = text(100, metadata={"example": "chabelo"})
    quantity = Count(metadata={"example": 5})


SORTS = ("name", "-name", "price", "-price", "created", "-created")


class ProductQuerySchema(Schema):
    q = Text(
        validate=validate.Length(max=200),
        metadata={
            "description": "Search the names: every word, as a whole word or the start of "
            "one (zapa finds zapatos), accents and case aside."
        },
    )
    mark = text(100, metadata={"description": "Brand, exact match (any case)."})
    min_price = Price(from_text=True)
    max_price = Price(from_text=True)
    in_stock = fields.Boolean(metadata={"description": "true: quantity > 0; false: quantity = 0."})
    sort = fields.String(
        load_default="created",
        validate=validate.OneOf(SORTS),
        metadata={"description": "name, price or created; prefix with '-' for descending."},
    )

    @validates_schema
    def price_range(self, data, **kwargs):
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            raise ValidationError("Must not be more than max_price.", field_name="min_price")


# How each sort's key is written in a cursor, and read back.
CURSOR_KEYS = {"name": str, "price": Decimal, "created": datetime.fromisoformat}
NOT_A_CURSOR = (
    "Not a cursor of this list: send the next_cursor of the previous page, or an empty "
    "cursor to start a walk."
)


def cursor_of(sort: str, key, product_id: int) -> str:
    """The opaque cursor of the position after a product: the list's sort, the product's
    sort key and its id (the tiebreak)."""
    text = key.isoformat() if isinstance(key, datetime) else str(key)
    return encode_cursor({"sort": sort, "key": text, "id": product_id})


def position_of(cursor: str, sort: str) -> tuple | None:
    """The ``(sort key, id)`` a cursor names (None: an empty cursor, the first page);
    ValidationError naming ``cursor`` for a cursor the list did not give, or one of
    another sort."""
    if cursor == "":
        return None
    found = decode_cursor(cursor)
    if (
        found is None
        or set(found) != {"sort", "key", "id"}
        or found["sort"] not in SORTS
        or not isinstance(found["key"], str)
        or type(found["id"]) is not int
        or found["id"] < 0
    ):
        raise ValidationError(NOT_A_CURSOR, "cursor")
    if found["sort"] != sort:
        raise ValidationError(
            f"This cursor walks the list by sort={found['sort']}: send that sort with it, "
            "or an empty cursor to start a walk.",
            "cursor",
        )
    try:
        key = CURSOR_KEYS[sort.lstrip("-")](found["key"])
    except (ValueError, InvalidOperation):
        raise ValidationError(NOT_A_CURSOR, "cursor") from None
    if isinstance(key, Decimal) and not key.is_finite():
        raise ValidationError(NOT_A_CURSOR, "cursor")
    return key, found["id"]


class ProductListQuerySchema(ProductQuerySchema):
    sort = fields.String(
        validate=validate.OneOf([*SORTS, "relevance"]),
        metadata={
            "description": "name, price or created; prefix with '-' for descending; "
            "relevance (with q: the best match first). Default: relevance with q, else "
            "created."
        },
    )
    cursor = fields.String(
        validate=validate.Length(max=1000),
        metadata={
            "description": "A keyset walk instead of page numbers: empty for the first "
            'page, then the next_cursor of X-Pagination (or follow Link rel="next"). '
            "Each page costs the same however deep; not with page. Opaque: it holds the "
            "sort, which must stay the same during a walk.",
            "example": "",
        },
    )
    count = fields.Boolean(
        load_default=False,
        metadata={
            "description": "With cursor: true adds total to X-Pagination (a count of every "
            "matching product, not made otherwise). Pages by number always carry it."
        },
    )

    @post_load
    def position(self, data, **kwargs):
        if "sort" not in data:
            data["sort"] = "relevance" if data.get("q") else "created"
        if data["sort"] == "relevance" and not data.get("q"):
            raise ValidationError("relevance ranks the matches of q: send q with it.", "sort")
        if "cursor" in data:
            if data["sort"] == "relevance":
                raise ValidationError(
                    "A walk by cursor needs a position: send sort=name, price or created "
                    "(with or without '-') with q.",
                    "cursor",
                )
            data["cursor"] = position_of(data["cursor"], data["sort"])
        return data


# ---------------------------------------------------------------- catalog import and export

# The columns of an import or export file, in order; quantity may be left out of an import.
CATALOG_COLUMNS = ("sku", "name", "price", "mark", "quantity")


class ProductImportSchema(ProductCreateSchema):
    """One row of an import: the create route's fields and rules. Without quantity, a new
    product gets 0 and an existing one keeps its own."""

    quantity = Count(metadata={"example": 5})


class ImportQuerySchema(Schema):
    dry_run = fields.Boolean(
        load_default=False,
        metadata={
            "description": "true: check the file and report what would change; "
            "nothing is written and nobody is emailed."
        },
    )


class ImportedSchema(Schema):
    count = fields.Integer(metadata={"example": 2})
    skus = fields.List(
        fields.String(),
        metadata={"example": ["d7iy6euiue", "k2"], "description": "The first 100, in file order."},
    )


class ImportReportSchema(Schema):
    dry_run = fields.Boolean(metadata={"description": "true: nothing was written."})
    rows = fields.Integer(metadata={"example": 3, "description": "Products in the file."})
    created = fields.Nested(ImportedSchema)
    updated = fields.Nested(ImportedSchema)
    unchanged = fields.Nested(ImportedSchema)


class RowErrorSchema(Schema):
    row = fields.Integer(
        metadata={
            "example": 3,
            "description": "CSV: the line number (the header is line 1). "
            "JSON: the index in the array (from 0).",
        }
    )
    field = fields.String(allow_none=True, metadata={"example": "price"})
    message = fields.String(metadata={"example": "Must be 0 or more."})


class RowErrorsSchema(Schema):
    class Meta:
        # A 422 from elsewhere (an Idempotency-Key reused) names its own location.
        unknown = INCLUDE

    rows = fields.List(
        fields.Nested(RowErrorSchema),
        metadata={"description": "The first 100 errors (the message counts them all)."},
    )


class ImportRefusedSchema(Schema):
    """A refused import: nothing was written."""

    code = fields.Integer(metadata={"example": 422})
    status = fields.String(metadata={"example": "Unprocessable Entity"})
    message = fields.String(metadata={"example": "2 errors in 2 rows; nothing was imported."})
    errors = fields.Nested(RowErrorsSchema)
    request_id = fields.String(
        metadata={"description": "The answer's X-Request-ID (app/errors.py)."}
    )


class ExportQuerySchema(ProductQuerySchema):
    format = fields.String(
        load_default="csv",
        validate=validate.OneOf(["csv", "json"]),
        metadata={"description": "csv (the default) or json: the columns the import takes."},
    )
    bom = fields.Boolean(
        load_default=False,
        metadata={"description": "CSV only: start with a UTF-8 byte order mark (Excel)."},
    )
