"""Tokens: issuing them, turning them into the current user, and the role guards.

Each guard also marks its view (``app.openapi.requires``): the OpenAPI document takes the
operation's ``security`` and its 401/403 answers from the guard, never from the route.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from functools import wraps

from flask import Flask, current_app, request
from flask_jwt_extended import (
    create_access_token,
    current_user,
    decode_token,
    verify_jwt_in_request,
)
from flask_smorest import abort
from jwt import ExpiredSignatureError

from app.accounts import cache as account_states
from app.accounts.models import Role, User
from app.core.errors import error_response
from app.core.extensions import jwt
from app.core.openapi import ADMIN, SECURITY, TOKEN_OPTIONAL, TOKEN_REQUIRED, requires

# What the guards document, for a route that must say it by hand (``@blp.doc``).
BEARER = SECURITY[TOKEN_REQUIRED]
PUBLIC = SECURITY[TOKEN_OPTIONAL]


def issue_token(user: User) -> str:
    # The version claim lets a deletion, demotion or new password revoke old tokens at once.
    return create_access_token(
        identity=str(user.id), additional_claims={"ver": user.token_version, "rol": user.role}
    )


# Tokens this process has decoded lately, with their claims: a client sends the same token
# with every request, and decoding it (three passes over it in PyJWT) costs a product read
# more than the rest of it. The signature and claims are checked the first time, the
# expiry at every use; whether the token still stands (logged out, the account changed)
# is the account's state, read at every use (app/accounts/cache.py).
DECODED_TOKENS = 4096
_decoded: OrderedDict[tuple[str, str], dict] = OrderedDict()
_decoded_lock = threading.Lock()


def decoded(token: str) -> dict:
    """The claims of ``token`` as flask-jwt-extended decodes them (its signature,
    algorithm, expiry and claims checked); raises as ``decode_token`` does."""
    key = (current_app.config["JWT_SECRET_KEY"], token)
    with _decoded_lock:
        claims = _decoded.get(key)
        if claims is not None:
            _decoded.move_to_end(key)
    if claims is None:
        claims = decode_token(token)
        with _decoded_lock:
            _decoded[key] = claims
            while len(_decoded) > DECODED_TOKENS:
                _decoded.popitem(last=False)
    elif "exp" in claims and claims["exp"] <= time.time():
        raise ExpiredSignatureError("Signature has expired")
    return claims


def optional_user() -> User | None:
    """The user behind the request's token, or None when the request carries none."""
    return current_user if request.headers.get("Authorization") else None


def admin_required(fn):
    """Refuse without a valid token (401) or without the admin role (403)."""

    @requires(ADMIN)
    @wraps(fn)
    def wrapper(*args, **kwargs):
        verify_jwt_in_request()
        if current_user.role != Role.ADMIN:
            abort(403, message="This action requires an admin account (rol 1).")
        return fn(*args, **kwargs)

    return wrapper


def login_required(fn):
    """Any signed-in account, admin or read-only: refuse without a valid token (401)."""

    @requires(TOKEN_REQUIRED)
    @wraps(fn)
    def wrapper(*args, **kwargs):
        verify_jwt_in_request()
        return fn(*args, **kwargs)

    return wrapper


def token_optional(fn):
    """Public route: no header is anonymous, but a header that does not verify is 401."""

    @requires(TOKEN_OPTIONAL)
    @wraps(fn)
    def wrapper(*args, **kwargs):
        if request.headers.get("Authorization"):
            verify_jwt_in_request()
        return fn(*args, **kwargs)

    return wrapper


def init_app(app: Flask) -> None:
    jwt.init_app(app)
    account_states.init_app(app)  # what a token's check reads, kept exact by every write
    jwt.user_lookup_loader(_load_user)
    jwt.user_lookup_error_loader(_unknown_user)
    jwt.unauthorized_loader(_missing_token)
    jwt.invalid_token_loader(_invalid_token)
    jwt.expired_token_loader(_expired_token)
    jwt.token_in_blocklist_loader(_is_revoked)
    jwt.revoked_token_loader(_revoked_token)
    jwt.token_verification_failed_loader(_verification_failed)


def _unauthorized(message: str):
    response = error_response(401, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="marketplace"'
    return response


def _load_user(_header: dict, payload: dict) -> account_states.Principal | None:
    return account_states.token_holder(payload)


def _is_revoked(_header: dict, payload: dict) -> bool:
    return account_states.revoked(payload)


def _missing_token(reason: str):
    return _unauthorized(f"Authentication is required: {reason.rstrip('.')}.")


def _invalid_token(reason: str):
    return _unauthorized("The token is invalid; log in again.")


def _expired_token(_header, _payload):
    return _unauthorized("The token has expired; log in again.")


def _revoked_token(_header, _payload):
    return _unauthorized("The token has been revoked; log in again.")


def _unknown_user(_header, _payload):
    return _unauthorized("The token is no longer valid for this account; log in again.")


def _verification_failed(_header, _payload):
    return _unauthorized("The token is invalid; log in again.")
