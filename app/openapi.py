"""flask-smorest, adapted to the service's contract.

- JSON bodies keep exact decimals (prices) and reject NaN/Infinity, non-UTF-8 bytes,
  absurd nesting and non-JSON content types with a clear 4xx.
- Every error leaves through ``app.errors.error_response`` (one shape).
- Paginated lists carry ``X-Pagination`` and an RFC 8288 ``Link`` header.
"""

from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import urlencode

import flask_smorest
from flask import request
from marshmallow import missing
from webargs.flaskparser import FlaskParser, abort

from app.errors import ErrorSchema, error_payload
from app.fields import Price, price_properties, text_properties

MAX_JSON_DEPTH = 32


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _depth(value, limit: int) -> int:
    """Depth of nested containers, stopping as soon as ``limit`` is passed."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def load_json_body(raw: bytes):
    """Decode a request body; raise ValueError with a sentence a client can act on."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("The body is not valid UTF-8.") from exc
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ValueError("The JSON body is nested too deeply.") from exc
    except ValueError as exc:
        raise ValueError(f"The body is not valid JSON: {str(exc).rstrip('.')}.") from exc
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError("The JSON body is nested too deeply.")
    _reject_unencodable(data)
    return data


class NotUnicode(ValueError):
    """A string in the body is not Unicode text (a lone UTF-16 surrogate, ``\\ud800``)."""

    message = "Must be text that UTF-8 can encode (no lone UTF-16 surrogates)."

    def __init__(self, field: str | None):
        super().__init__(self.message if field is None else f"Invalid value for: {field}.")
        self.field = field


def _encodable(value) -> bool:
    """Whether every string in ``value`` (keys included) can be encoded as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _reject_unencodable(data) -> None:
    """JSON's ``\\ud800`` escapes decode to strings no database, log or email can take:
    refuse them here, naming the top-level field when there is one."""
    if _encodable(data):
        return
    if isinstance(data, dict):
        for key, value in data.items():
            if _encodable(key) and not _encodable(value):
                raise NotUnicode(key)
    raise NotUnicode(None)


class Parser(FlaskParser):
    """webargs' parser with the service's JSON decoding, through its public ``load_json``."""

    def load_json(self, req, schema):
        raw = req.get_data(cache=True)
        if not raw:
            return missing
        if not req.is_json:
            abort(415, message="Send the body as JSON with 'Content-Type: application/json'.")
        try:
            return load_json_body(raw)
        except NotUnicode as exc:
            if exc.field is None:
                abort(400, message=NotUnicode.message, messages={"json": [NotUnicode.message]})
            abort(422, messages={"json": {exc.field: [NotUnicode.message]}})
        except ValueError as exc:
            abort(400, message=str(exc), messages={"json": [str(exc)]})


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()
    PAGINATION_ARGUMENTS_PARSER = Parser()
    DEFAULT_PAGINATION_PARAMETERS = {"page": 1, "page_size": 20, "max_page_size": 100}

    @staticmethod
    def _make_pagination_metadata(page, page_size, item_count):
        """flask-smorest's metadata, built without a marshmallow schema per request: the
        same keys, in the same order, all integers."""
        meta = {"total": item_count}
        if not item_count:
            meta["total_pages"] = 0
            return meta
        last = (item_count - 1) // page_size + 1
        meta.update(total_pages=last, first_page=1, last_page=last)
        if page <= last:
            meta["page"] = page
            if page > 1:
                meta["previous_page"] = page - 1
            if page < last:
                meta["next_page"] = page + 1
        return meta

    def _set_pagination_metadata(self, page_params, result, headers):
        result, headers = super()._set_pagination_metadata(page_params, result, headers)
        meta = self._make_pagination_metadata(
            page_params.page, page_params.page_size, page_params.item_count
        )
        links = []
        for rel, key in (
            ("first", "first_page"),
            ("prev", "previous_page"),
            ("next", "next_page"),
            ("last", "last_page"),
        ):
            if key in meta:
                args = request.args.to_dict()
                args.update(page=meta[key], page_size=page_params.page_size)
                # Relative (RFC 8288 allows it): behind the load balancer, this process
                # does not see the scheme and host the client used.
                links.append(f'<{request.path}?{urlencode(args)}>; rel="{rel}"')
        if links:
            headers["Link"] = ", ".join(links)
        return result, headers

    def _document_pagination_metadata(self, spec, resp_doc):
        # The header's value is a JSON object in one string, not OpenAPI's "simple" style.
        resp_doc.setdefault("headers", {})[self.PAGINATION_HEADER_NAME] = {
            "description": "Pagination as a JSON object: total, total_pages, first_page, "
            "last_page, page, previous_page, next_page.",
            "schema": {"type": "string"},
            "example": '{"total": 25, "total_pages": 2, "first_page": 1, "last_page": 2, '
            '"page": 1, "next_page": 2}',
        }
        resp_doc["headers"]["Link"] = {
            "description": "RFC 8288 links to the first, previous, next and last pages.",
            "schema": {"type": "string"},
        }


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorSchema

    def init_app(self, app, *args, **kwargs):
        super().init_app(app, *args, **kwargs)
        self.register_field(Price, "number", None)
        self.ma_plugin.converter.add_attribute_function(price_properties)
        self.ma_plugin.converter.add_attribute_function(text_properties)
        self.spec.components.security_scheme(
            "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        )

    def handle_http_exception(self, error):
        payload, headers = error_payload(error)
        return payload, error.code, headers
