"""Login, tokens and accounts: inputs and outputs."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.accounts.models import Role
from app.accounts.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from app.core.fields import Count, LowerEmail, Text, text

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$"


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


ROLES = validate.OneOf(Role.values(), error="Must be 1 (admin) or 2.")


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
