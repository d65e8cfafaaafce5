"""Marshmallow schemas: every input and output of the API."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from marshmallow import (
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from app.fields import Count, LowerEmail, Price, Text, json_number, text
from app.models import NotificationStatus, Role
from app.services.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$"


# ---------------------------------------------------------------- errors and auth


class LoginSchema(Schema):
    email = LowerEmail(lookup=True, required=True, metadata={"example": "admin@example.com"})
    password = fields.String(
        required=True, load_only=True, validate=validate.Length(min=1, max=1024)
    )


class TokenSchema(Schema):
    Token = fields.String(metadata={"description": "The access token (the seed's key)."})
    access_token = fields.String()
    token_type = fields.String(metadata={"example": "Bearer"})
    expires_in = fields.Integer(metadata={"description": "Seconds until the token expires."})


# ---------------------------------------------------------------- products


class ProductSchema(Schema):
    sku = fields.String(metadata={"example": "d7iy6euiue"})
    name = fields.String(metadata={"example": "zapatos"})
    price = Price(metadata={"example": 300})
    mark = fields.String(metadata={"example": "chabelo"})
    quantity = fields.Integer(metadata={"example": 5})
    created_at = fields.DateTime(format="iso")
    updated_at = fields.DateTime(format="iso")


def dump_product(row) -> dict:
    """``ProductSchema().dump(row)`` without marshmallow's per-field machinery, for the
    read paths (a product, a page of them); tests keep the two byte for byte equal."""
    return {
        "sku": row.sku,
        "name": row.name,
        "price": None if row.price is None else json_number(row.price),
        "mark": row.mark,
        "quantity": row.quantity,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


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
        validate=validate.Length(max=200), metadata={"description": "Name contains (any case)."}
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
        fields.Nested(RowErrorSchema), metadata={"description": "The first 1000 errors."}
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


# ---------------------------------------------------------------- users

ROLES = validate.OneOf([Role.ADMIN.value, Role.READER.value], error="Must be 1 (admin) or 2.")


class UserSchema(Schema):
    id = fields.Integer()
    fullname = fields.String(metadata={"example": "arnoldo"})
    username = fields.String(metadata={"example": "marado"})
    email = fields.String(metadata={"example": "josuecevedo@xd.com"})
    role = fields.Integer(
        data_key="rol", metadata={"example": 2, "description": "1 = admin, 2 = read-only."}
    )
    created_at = fields.DateTime(format="iso")
    updated_at = fields.DateTime(format="iso")


def password_field(**kwargs) -> fields.String:
    return fields.String(
        load_only=True,
        validate=validate.Length(
            min=MIN_PASSWORD_LENGTH,
            max=MAX_PASSWORD_LENGTH,
            error=f"Must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters.",
        ),
        **kwargs,
    )


def username_field(**kwargs) -> Text:
    return Text(
        validate=validate.Regexp(
            USERNAME_PATTERN,
            error="Use 2 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        ),
        **kwargs,
    )


class UserCreateSchema(Schema):
    fullname = text(120, required=True, metadata={"example": "arnoldo"})
    password = password_field(required=True, metadata={"example": "cheutere"})
    username = username_field(required=True, metadata={"example": "marado"})
    email = LowerEmail(required=True, metadata={"example": "josuecevedo@xd.com"})
    role = Count(
        data_key="rol", load_default=Role.READER.value, validate=ROLES, metadata={"example": 2}
    )


class UserUpdateSchema(Schema):
    fullname = text(120)
    password = password_field()
    username = username_field()
    email = LowerEmail()
    role = Count(data_key="rol", validate=ROLES, metadata={"example": 1})


class MeUpdateSchema(Schema):
    """What users may change of their own account: the name, and the password once they
    give the current one."""

    fullname = text(120, metadata={"example": "Arnoldo M."})
    password = password_field(metadata={"description": "The new password; needs current_password."})
    current_password = fields.String(
        load_only=True,
        validate=validate.Length(min=1, max=MAX_PASSWORD_LENGTH),
        metadata={"description": "The password in use now; required with password."},
    )

    @validates_schema
    def _current_password_with_password(self, data, **_kwargs):
        if "password" in data and "current_password" not in data:
            raise ValidationError("Required to set a new password.", field_name="current_password")


# ---------------------------------------------------------------- notifications


class NotificationSchema(Schema):
    id = fields.Integer()
    recipient = fields.String(metadata={"example": "admin@example.com"})
    sku = fields.String(
        allow_none=True,
        metadata={"example": "d7iy6euiue", "description": "null for an import's summary."},
    )
    event = fields.String(
        metadata={"example": "updated", "description": "created, updated, deleted or imported."}
    )
    changes = fields.Dict(
        metadata={
            "example": {"price": {"old": 300, "new": 500}},
            "description": "Each changed field as {old, new}; for an import's summary, the "
            "counts (created, updated, unchanged) and the first products changed "
            "(products: [{sku, event, changes}]).",
        }
    )
    status = fields.String(
        metadata={
            "example": "sent",
            "description": "pending, sending, sent, failed (SES refused it every time) or "
            "unknown (SES may or may not have taken it; resent only on purpose).",
        }
    )
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime(format="iso")
    sent_at = fields.DateTime(format="iso", allow_none=True)


class NotificationQuerySchema(Schema):
    status = fields.String(validate=validate.OneOf([s.value for s in NotificationStatus]))
    sku = Text(validate=validate.Length(min=1, max=64))


MAX_SUMMARY_DAYS = 366


class NotificationSummaryQuerySchema(Schema):
    days = fields.Integer(
        load_default=7,
        validate=validate.Range(min=1, max=MAX_SUMMARY_DAYS),
        metadata={"description": "How many UTC days, today included (7 by default)."},
    )


def status_count(description: str) -> fields.Integer:
    return fields.Integer(metadata={"description": description})


class DeliveryCountsSchema(Schema):
    pending = status_count("Due, or waiting for a retry.")
    sending = status_count("Handed to SES, its answer not yet recorded.")
    sent = status_count("Accepted by SES.")
    failed = status_count("Refused by SES every time.")
    unknown = status_count("SES may or may not have taken it.")


class DeliveryDaySchema(DeliveryCountsSchema):
    date = fields.Date(metadata={"description": "The UTC day the emails were written."})


class NotificationSummarySchema(DeliveryCountsSchema):
    start = fields.Date(data_key="from")
    end = fields.Date(data_key="to")
    days = fields.Integer()
    by_day = fields.List(fields.Nested(DeliveryDaySchema))


# ---------------------------------------------------------------- statistics

MAX_RANGE_DAYS = 366
# Days the statistics can be asked about (the calendar's ends would overflow).
DAYS = validate.Range(min=date(1970, 1, 1), max=date(9998, 12, 31))


class StatsQuerySchema(Schema):
    """A range of UTC days, both ends included; the last 30 days by default."""

    start = fields.Date(data_key="from", validate=DAYS, metadata={"example": "2026-11-01"})
    end = fields.Date(data_key="to", validate=DAYS, metadata={"example": "2026-11-30"})
    format = fields.String(
        validate=validate.OneOf(["json", "csv"]),
        metadata={"description": "csv for a spreadsheet (or send 'Accept: text/csv')."},
    )
    bom = fields.Boolean(
        load_default=False,
        metadata={"description": "CSV only: start with a UTF-8 byte order mark (Excel)."},
    )

    @post_load
    def default_range(self, data, **kwargs):
        today = datetime.now(UTC).date()
        end = data.get("end") or today
        start = data.get("start") or min(end, today) - timedelta(days=29)
        if start > end:
            raise ValidationError("Must not be after 'to'.", field_name="from")
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise ValidationError(
                f"The range may span at most {MAX_RANGE_DAYS} days.", field_name="to"
            )
        return {**data, "start": start, "end": end}


class TopQuerySchema(StatsQuerySchema):
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))
    # Whose views rank the products ("viewer" on the wire).
    audience = fields.String(
        data_key="viewer",
        load_default="all",
        validate=validate.OneOf(["all", "anonymous", "registered"]),
    )


class DayStatsSchema(Schema):
    date = fields.Date()
    views = fields.Integer()
    anonymous_views = fields.Integer()
    registered_views = fields.Integer()


class CatalogStatsSchema(Schema):
    start = fields.Date(data_key="from")
    end = fields.Date(data_key="to")
    views = fields.Integer()
    anonymous_views = fields.Integer()
    registered_views = fields.Integer()
    by_day = fields.List(fields.Nested(DayStatsSchema))


class ProductStatsSchema(Schema):
    sku = fields.String(metadata={"example": "d7iy6euiue"})
    name = fields.String(metadata={"example": "zapatos"})
    start = fields.Date(data_key="from")
    end = fields.Date(data_key="to")
    views = fields.Integer()
    anonymous_views = fields.Integer()
    registered_views = fields.Integer()
    unique_registered_viewers = fields.Integer()
    by_day = fields.List(fields.Nested(DayStatsSchema))


class TopProductSchema(Schema):
    sku = fields.String(metadata={"example": "d7iy6euiue"})
    name = fields.String(metadata={"example": "zapatos"})
    views = fields.Integer()
    anonymous_views = fields.Integer()
    registered_views = fields.Integer()
