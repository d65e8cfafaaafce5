"""The one JSON error shape: {"code", "status", "message"[, "errors"]}.

Every failure (validation, auth, 404, 405, 409, 413, 415, 500, 503) is rendered here.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, jsonify
from marshmallow import Schema, fields
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

DEFAULT_MESSAGES = {
    400: "The request could not be understood.",
    401: "Authentication is required: send 'Authorization: Bearer <token>'.",
    403: "This action requires an admin account.",
    404: "Nothing exists at this address.",
    405: "This method is not allowed here.",
    409: "The request conflicts with existing data.",
    412: "The resource changed since it was read (If-Match).",
    413: "The request body is too large.",
    415: "Send the body as JSON with 'Content-Type: application/json'.",
    422: "The request body or parameters are invalid.",
    429: "Too many requests; slow down.",
    500: "The server failed to handle the request; it has been logged.",
    503: "The service is temporarily unavailable; try again shortly.",
}


class ErrorSchema(Schema):
    """The body of every error response."""

    code = fields.Integer(metadata={"example": 422})
    status = fields.String(metadata={"example": "Unprocessable Entity"})
    message = fields.String(metadata={"example": "Invalid value for: price."})
    errors = fields.Dict(metadata={"example": {"json": {"price": ["Must be 0 or more."]}}})


def _fields(errors: dict) -> list[str]:
    """Field names from flask-smorest's {"json": {"price": [...]}} layout."""
    names: list[str] = []
    for location in errors.values():
        if isinstance(location, dict):
            names.extend(str(name) for name in location)
    return names


def payload_for(code: int, message: str | None = None, errors: dict | None = None) -> dict:
    payload = {"code": code, "status": HTTPStatus(code).phrase}
    if not message and errors and (fields := _fields(errors)):
        message = "Invalid value for: " + ", ".join(fields) + "."
    payload["message"] = message or DEFAULT_MESSAGES.get(code, HTTPStatus(code).description)
    if errors:
        payload["errors"] = errors
    return payload


def error_payload(error: HTTPException) -> tuple[dict, dict]:
    """Payload and headers for an HTTPException, including webargs' abort(..., **data)."""
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    message = data.get("message")
    if not message and error.code not in DEFAULT_MESSAGES and error.description:
        message = error.description
    headers = dict(data.get("headers") or {})
    if error.code == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    return payload_for(error.code or 500, message, errors), headers


def error_response(code: int, message: str | None = None, errors: dict | None = None):
    response = jsonify(payload_for(code, message, errors))
    response.status_code = code
    return response


def register_error_handlers(app: Flask) -> None:
    from app.extensions import db

    @app.errorhandler(IntegrityError)
    def integrity_error(error):
        # Reached only by a race the services' own checks could not see (two requests
        # creating the same sku at once): the database's constraint decides.
        db.session.rollback()
        log.info("integrity conflict: %s", error.orig)
        return error_response(409, "The change conflicts with a row written at the same time.")

    from app.commits import CommitUnconfirmed

    @app.errorhandler(CommitUnconfirmed)
    def commit_unconfirmed(error):
        db.session.close()
        response = error_response(
            503,
            "The database did not confirm the change, which may or may not have been "
            "applied: read it before trying again, or retry with the same Idempotency-Key.",
        )
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(OperationalError)
    def database_unavailable(error):
        try:
            db.session.rollback()
        except OperationalError:
            db.session.close()
        log.error("database unavailable: %s", error.orig)
        response = error_response(503, "The database is unavailable; try again shortly.")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(InternalServerError)
    def internal_error(error):
        original = getattr(error, "original_exception", None)
        if original is not None:
            log.error("unhandled error", exc_info=original)
        return error_response(500)


def register_rule_errors(app: Flask) -> None:
    from app.extensions import db
    from app.services import RuleError

    @app.errorhandler(RuleError)
    def rule_error(error: RuleError):
        db.session.rollback()
        errors = {"json": {error.field: [error.message]}} if error.field else None
        return error_response(error.code, error.message, errors)


def remove_session_safely(_exc=None) -> None:
    """End the request's session without letting a dead connection raise: teardown runs
    after the response has started, so an error here would cut the answer off."""
    from app.extensions import db

    try:
        db.session.remove()
    except SQLAlchemyError as exc:
        log.warning("closing the database session failed: %s", exc)
        db.session.registry.clear()
