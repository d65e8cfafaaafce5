"""Field types of the API: exact money, strict counts, trimmed text, lowercased emails."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from marshmallow import ValidationError, fields, validate

from app.core.addresses import BadEmail, canonical_email, lookup_email
from app.core.text import CONTROL_CHARACTERS, CONTROL_RANGES

MAX_PRICE = Decimal("9999999999.99")
MAX_QUANTITY = 2_147_483_647
CENT = Decimal("0.01")


def json_number(value: Decimal) -> int | float:
    """A money amount as JSON shows it: 300, 19.99 (never "300.00")."""
    if type(value) is not Decimal:
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
    """One line of text, surrounding spaces removed; control characters are refused."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs).strip()
        if CONTROL_CHARACTERS.search(value):
            raise ValidationError("Must be one line without control characters.")
        return value


class LowerEmail(fields.Email):
    """An email address in its canonical form (app/emails.py); at most 254 characters
    (RFC 5321, the column's size). ``lookup=True`` (the login) only normalises: an address
    no account can have is simply not found."""

    def __init__(self, *, lookup: bool = False, **kwargs):
        super().__init__(validate=validate.Length(max=254), **kwargs)
        self.lookup = lookup

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if self.lookup:
            return lookup_email(value)
        try:
            return canonical_email(value)
        except BadEmail as exc:
            raise ValidationError(str(exc)) from exc


def text_properties(self, field, **kwargs) -> dict:
    """OpenAPI for Text: one line without control characters (unless a stricter pattern,
    a Regexp validator, already says what is allowed)."""
    if isinstance(field, Text) and not any(
        isinstance(v, validate.Regexp) for v in field.validators
    ):
        return {"pattern": "^[^" + CONTROL_RANGES + "]*$"}
    return {}


def text(max_length: int, **kwargs) -> Text:
    return Text(validate=validate.Length(min=1, max=max_length), **kwargs)
