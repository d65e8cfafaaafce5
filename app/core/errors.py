"""The one JSON error shape: {"code", "status", "message"[, "errors"], "request_id"}.

Every failure (validation, auth, 404, 405, 409, 413, 415, 500, 503) is rendered by
``error_response``; the database's own errors are mapped to it in ``app.database``.
``request_id`` is the answer's X-Request-ID (app/logs.py): the key to its log lines.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, g, has_request_context, jsonify
from marshmallow import Schema, fields
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


class RuleError(Exception):
    """A business rule refused the request; ``code`` is the HTTP status that fits and
    ``field`` the input it names."""

    def __init__(self, code: int, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class ErrorSchema(Schema):
    """The body of every error response."""

    code = fields.Integer(metadata={"example": 422})
    status = fields.String(metadata={"example": "Unprocessable Entity"})
    message = fields.String(metadata={"example": "Invalid value for: price."})
    errors = fields.Dict(metadata={"example": {"json": {"price": ["Must be 0 or more."]}}})
    request_id = fields.String(
        metadata={
            "example": "3f2c9a1e0b7d4c55a6e8f90b12c34d56",
            "description": "The answer's X-Request-ID: quote it to find the request's log lines.",
        }
    )


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
    # Set first thing in every request (app.logs); errors imports nothing of the app.
    if has_request_context() and (request_id := g.get("request_id")) is not None:
        payload["request_id"] = request_id
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
    @app.errorhandler(InternalServerError)
    def internal_error(error):
        original = getattr(error, "original_exception", None)
        if original is not None:
            log.error("unhandled error", exc_info=original)
        return error_response(500)
