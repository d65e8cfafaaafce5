"""Marshmallow schemas: every input and output of the API."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from app.models import NotificationStatus, Role

MAX_PRICE = Decimal("9999999999.99")
MAX_QUANTITY = 2_147_483_647
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$"
CENT = Decimal("0.01")


def json_number(value: Decimal) -> int | float:
    """A money amount as JSON shows it: 300, 19.99 (never "300.00")."""
    value = Decimal(value)
    return int(value) if value == value.to_integral_value() else float(value)


class Price(fields.Field):
    """Exact money: a JSON number with at most two decimal places, returned as a number.

    In a query string (``from_text=True``) the number arrives as text.
    """

    def __init__(self, *, from_text: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.from_text = from_text

    def _deserialize(self, value, attr, data, **kwargs):
        if self.from_text and isinstance(value, str):
            try:
                value = Decimal(value.strip())
            except InvalidOperation as exc:
                raise ValidationError("Must be a number, for example 300 or 19.99.") from exc
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            raise ValidationError("Must be a number, for example 300 or 19.99.")
        try:
            amount = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        except InvalidOperation as exc:
            raise ValidationError("Must be a number, for example 300 or 19.99.") from exc
        if not amount.is_finite():
            raise ValidationError("Must be a finite number.")
        if amount < 0:
            raise ValidationError("Must be 0 or more.")
        if amount > MAX_PRICE:
            raise ValidationError(f"Must be at most {MAX_PRICE}.")
        if amount != amount.quantize(CENT):
            raise ValidationError("Must have at most two decimal places.")
        return amount.quantize(CENT)

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else json_number(value)


def price_properties(self, field, **kwargs) -> dict:
    """OpenAPI for Price: a number of cents, 0 to MAX_PRICE (apispec attribute function)."""
    if isinstance(field, Price):
        return {"minimum": 0, "maximum": float(MAX_PRICE), "multipleOf": 0.01}
    return {}


class Count(fields.Integer):
    """A whole number given as a JSON integer (not 5.0, not true)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("validate", validate.Range(min=0, max=MAX_QUANTITY))
        super().__init__(strict=True, **kwargs)

    def _validated(self, value):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class Text(fields.String):
    """A string with surrounding spaces removed."""

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).strip()


class LowerEmail(fields.Email):
    """An email address, lowercased; at most 254 characters (RFC 5321, the column's size)."""

    def __init__(self, **kwargs):
        super().__init__(validate=validate.Length(max=254), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        return (
            super()
            ._deserialize(value.strip() if isinstance(value, str) else value, attr, data, **kwargs)
            .lower()
        )


def text(max_length: int, **kwargs) -> Text:
    return Text(validate=validate.Length(min=1, max=max_length), **kwargs)


# ---------------------------------------------------------------- errors and auth


class LoginSchema(Schema):
    email = LowerEmail(required=True, metadata={"example": "admin@example.com"})
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


# ---------------------------------------------------------------- users

ROLES = validate.OneOf([Role.ADMIN.value, Role.ANONYMOUS.value], error="Must be 1 (admin) or 2.")


class UserSchema(Schema):
    id = fields.Integer()
    fullname = fields.String(metadata={"example": "arnoldo"})
    username = fields.String(metadata={"example": "marado"})
    email = fields.String(metadata={"example": "josuecevedo@xd.com"})
    rol = fields.Integer(metadata={"example": 2, "description": "1 = admin, 2 = read-only."})
    created_at = fields.DateTime(format="iso")
    updated_at = fields.DateTime(format="iso")


def password_field(**kwargs) -> fields.String:
    return fields.String(
        load_only=True,
        validate=validate.Length(min=8, max=1024, error="Must be 8 to 1024 characters."),
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
    rol = Count(load_default=Role.ANONYMOUS.value, validate=ROLES, metadata={"example": 2})


class UserUpdateSchema(Schema):
    fullname = text(120)
    password = password_field()
    username = username_field()
    email = LowerEmail()
    rol = Count(validate=ROLES, metadata={"example": 1})


# ---------------------------------------------------------------- notifications


class NotificationSchema(Schema):
    id = fields.Integer()
    recipient = fields.String(metadata={"example": "admin@example.com"})
    sku = fields.String(metadata={"example": "d7iy6euiue"})
    event = fields.String(metadata={"example": "updated"})
    changes = fields.Dict(
        metadata={
            "example": {"price": {"old": 300, "new": 500}},
            "description": "Each changed field as {old, new}.",
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
    viewer = fields.String(
        load_default="all", validate=validate.OneOf(["all", "anonymous", "registered"])
    )


class DayStatsSchema(Schema):
    date = fields.Date()
    views = fields.Integer()
    anonymous_views = fields.Integer()
    registered_views = fields.Integer()


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
