"""Log lines and request ids.

Every answer carries ``X-Request-ID``: the client's own when it is a valid one (at most
128 letters, digits, ``-`` or ``_``; nginx sends its own when the client sent none),
otherwise a new one. Every log record made while a request is served carries that id,
its method and route and the user's id; the worker binds the notification id or the
views stream entries it is working on (``bind``). ``LOG_FORMAT=json`` (the image's
default) writes one JSON object a line (python-json-logger), ``text`` (the default of
``make run``) a readable line with the same fields at its end. One line per answered
request (``app.requests``: status and duration_ms) unless ``LOG_REQUESTS=false``; under
Flask's development server (``make run``) it replaces the server's own access line.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from flask import Flask, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

from app.core.text import printable

HEADER = "X-Request-ID"
VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Probes and scrapes, every few seconds: behind nginx (LOG_PROBES false, production's
# default) no line of their own, since nginx logs them.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# The fields a record may carry beyond the message, in the order lines show them.
FIELDS = (
    "request_id", "method", "route", "status", "duration_ms", "user_id",
    "notification_id", "stream_ids",
)  # fmt: skip
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_bound: ContextVar[dict | None] = ContextVar("log_fields", default=None)
requests_log = logging.getLogger("app.requests")
_dev_server = logging.getLogger("werkzeug")


def configure(app: Flask) -> None:
    """One handler on the root logger (stderr) in the configured format, the request
    fields on every record, and X-Request-ID on every answer."""
    _install_record_factory()
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "marketplace", False)]
    # Someone else's handlers (pytest's, a WSGI server's) are left as they are.
    if ours or not root.handlers:
        handler = ours[0] if ours else logging.StreamHandler(sys.stderr)
        handler.marketplace = True
        handler.setFormatter(formatter(app.config["LOG_FORMAT"]))
        if not ours:
            root.addHandler(handler)
    root.setLevel(app.config["LOG_LEVEL"])
    if not any(isinstance(f, DevServerAccessLines) for f in _dev_server.filters):
        _dev_server.addFilter(DevServerAccessLines())


class DevServerAccessLines(logging.Filter):
    """Drop the access line of Flask's development server: the app's own request line
    (with its request id) is the one line of each request."""

    def filter(self, record: logging.LogRecord) -> bool:
        # werkzeug.serving.WSGIRequestHandler.log_request: '<address> - - [<date>] "%s" %s %s'
        return not (isinstance(record.msg, str) and record.msg.endswith('] "%s" %s %s'))


def formatter(kind: str) -> logging.Formatter:
    return JsonLines() if kind == "json" else TextLines(TEXT_FORMAT)


class JsonLines(JsonFormatter):
    """{"time", "level", "logger", "message", then the fields the record has}."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )

    def process_log_record(self, log_data: dict) -> dict:
        ordered = {"time": log_data.pop("time")}
        ordered.update((key, value) for key, value in log_data.items() if value is not None)
        return ordered


class TextLines(logging.Formatter):
    """The usual line, then ``key=value`` for each field the record has, its control
    characters escaped (a request's method is the client's text)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(
            f"{name}={printable(str(value))}"
            for name in FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        if not extra:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below
        return f"{first} {extra}{newline}{rest}"


# ---------------------------------------------------------------- request ids


def request_id() -> str:
    """This request's id: the incoming X-Request-ID when valid, else a new one."""
    current = g.get("request_id")
    if current is None:
        current = g.request_id = kept_or_new(request.headers.get(HEADER, ""))
    return current


def kept_or_new(incoming: str) -> str:
    """The client's X-Request-ID when it is a valid one, else a new id."""
    return incoming if VALID_ID.fullmatch(incoming) else uuid.uuid4().hex


def request_line(method: str, path: str, status: int, seconds: float | None) -> None:
    """The line of one answered request (``app.requests``)."""
    duration = round(seconds * 1000, 2) if seconds is not None else None
    requests_log.info(
        "%s %s %s",
        printable(method),
        printable(path),
        status,
        extra={"status": status, "duration_ms": duration},
    )


# ---------------------------------------------------------------- fields on every record


@contextmanager
def bind(**fields) -> Iterator[None]:
    """Add fields (notification_id=..., stream_ids=...) to every record made inside."""
    token = _bound.set({**(_bound.get() or {}), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


def request_fields() -> dict:
    if not has_request_context():
        return {}
    return {
        "request_id": request_id(),
        "method": request.method,
        "route": request.url_rule.rule if request.url_rule is not None else None,
        "user_id": _user_id(),
    }


def _user_id() -> int | None:
    from flask_jwt_extended import get_jwt_identity

    try:
        identity = get_jwt_identity()  # only once a token was verified
    except RuntimeError:
        return None
    return int(identity) if identity and str(identity).isdigit() else None


def _install_record_factory() -> None:
    previous = logging.getLogRecordFactory()
    if getattr(previous, "marketplace", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        # Only the fields known here: a call's own extra={"status": ...} must not clash.
        for name, value in {**request_fields(), **(_bound.get() or {})}.items():
            if value is not None:
                setattr(record, name, value)
        return record

    factory.marketplace = True
    logging.setLogRecordFactory(factory)
