"""flask-smorest, adapted to the service's contract.

- JSON bodies keep exact decimals (prices) and reject NaN/Infinity, non-UTF-8 bytes,
  absurd nesting and non-JSON content types with a clear 4xx.
- Every error leaves through ``app.errors.error_response`` (one shape).
- Paginated lists carry ``X-Pagination`` and an RFC 8288 ``Link`` header.
- Who may call an operation is documented from its guard in ``app.auth``: the guard marks
  the view (``requires``) and every blueprint turns the mark into ``security`` and the 401 and
  403 answers, so a new route is documented by the decorator it already needs.
- Query strings are strict: a parameter the operation does not declare is a 422 naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import partial
from typing import TypeVar
from urllib.parse import urlencode

import flask_smorest
from flask import request
from marshmallow import missing
from webargs.flaskparser import FlaskParser, abort

from app.core.errors import ErrorSchema, error_payload
from app.core.fields import Price, price_properties, text_properties

MAX_JSON_DEPTH = 32
T = TypeVar("T")

# Who may call an operation, as its guard marks it (``requires``); unmarked: anyone, no token.
NO_TOKEN = "none"
TOKEN_OPTIONAL = "optional"
TOKEN_REQUIRED = "token"
ADMIN = "admin"
BEARER = [{"bearerAuth": []}]
SECURITY = {
    NO_TOKEN: [],
    # Anonymous, or a token (then checked, and the reader known): Swagger UI sends it.
    TOKEN_OPTIONAL: [{}, *BEARER],
    TOKEN_REQUIRED: BEARER,
    ADMIN: BEARER,
}
# The answers each access level adds to an operation: components/responses of ``Api``.
REFUSALS = {
    NO_TOKEN: {},
    TOKEN_OPTIONAL: {"401": "Unauthorized"},
    TOKEN_REQUIRED: {"401": "Unauthorized"},
    ADMIN: {"401": "Unauthorized", "403": "Forbidden"},
}

DESCRIPTION = """\
The Marketplace catalog: anyone reads products; admins (rol 1) change products and accounts.

**Authorize**: log in with `POST /users/login` (*Try it out*, your email and password), copy
`access_token` from the answer, click **Authorize** at the top of this page, paste the token
(without `Bearer `) and click *Authorize*. Swagger UI then sends `Authorization: Bearer
<token>` with every call that accepts one. A padlock marks the operations that take a token;
those without one need no token.

Every error has one JSON shape: `code`, `status`, `message` and, for invalid input,
`errors` naming each field or query parameter. Unknown body fields and unknown query
parameters are refused with 422.
"""


def requires(level: str):
    """Mark a view with who may call it (``SECURITY``); the blueprint documents it."""

    def mark(fn):
        fn._apidoc = {**getattr(fn, "_apidoc", {}), "access": level}
        return fn

    return mark


def handles_header(parameter: dict):
    """Mark a view with the request header its decorator handles; the blueprint documents
    it."""

    def mark(fn):
        fn._apidoc = {**getattr(fn, "_apidoc", {}), "header": parameter}
        return fn

    return mark


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


# Numbers exactly as sent (prices), no NaN or Infinity.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("The body is not valid UTF-8.") from exc


def _parsed(parse: Callable[[], T]) -> T:
    """What ``parse`` returns; every way JSON can fail to parse as a ValueError with a
    sentence a client can act on."""
    try:
        return parse()
    except RecursionError as exc:
        raise ValueError("The JSON body is nested too deeply.") from exc
    except ArithmeticError as exc:
        # decimal.InvalidOperation: an exponent no decimal can hold (1e9999999999999999999).
        raise ValueError("The body holds a number too large to read.") from exc
    except ValueError as exc:
        raise _not_json(exc) from exc


def _not_json(exc: ValueError) -> ValueError:
    return ValueError(f"The body is not valid JSON: {str(exc).rstrip('.')}.")


def _checked(data, depth: int):
    if _depth(data, depth) > depth:
        raise ValueError("The JSON body is nested too deeply.")
    _reject_unencodable(data)
    return data


def load_json_body(raw: bytes):
    """Decode a request body; raise ValueError with a sentence a client can act on."""
    text = _text(raw)
    return _checked(_parsed(partial(_DECODER.decode, text)), MAX_JSON_DEPTH)


class NotAnArray(ValueError):
    """The body is JSON, but not an array."""


def json_array_items(raw: bytes) -> Iterator:
    """The elements of a body that is a JSON array, one at a time, each decoded and
    checked as ``load_json_body`` does a body: a large array is never held whole.
    NotAnArray for any other JSON; ValueError (as ``load_json_body``) where the body
    stops being JSON."""
    text = _text(raw)
    position = _WHITESPACE.match(text).end()
    if not text.startswith("[", position):
        load_json_body(raw)  # not JSON at all: says why
        raise NotAnArray("The body is not a JSON array.")
    position = _WHITESPACE.match(text, position + 1).end()
    if text.startswith("]", position):
        position += 1
    else:
        while True:
            item, position = _parsed(partial(_DECODER.raw_decode, text, position))
            yield _checked(item, MAX_JSON_DEPTH - 1)
            position = _WHITESPACE.match(text, position).end()
            if text.startswith(",", position):
                position = _WHITESPACE.match(text, position + 1).end()
            elif text.startswith("]", position):
                position += 1
                break
            else:
                raise _not_json(json.JSONDecodeError("Expecting ',' delimiter", text, position))
    position = _WHITESPACE.match(text, position).end()
    if position != len(text):
        raise _not_json(json.JSONDecodeError("Extra data", text, position))


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


# A cursor walk's answer whose total was not asked for (flask-smorest writes the pagination
# headers only once a count is set: app/core/pagination.py cursor_page).
NOT_COUNTED = -1


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()
    PAGINATION_ARGUMENTS_PARSER = Parser()
    DEFAULT_PAGINATION_PARAMETERS = {"page": 1, "page_size": 20, "max_page_size": 100}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(self._prepare_access_doc)
        self._query_names: dict[tuple[str, str], frozenset[str]] = {}
        self.before_request(self._refuse_unknown_query)

    def _declared_query(self, endpoint: str, method: str) -> frozenset[str] | None:
        """The query parameters an operation declares (its query schemas, its pagination,
        its hand-written ``parameters``); None for an operation this blueprint lacks."""
        key = (endpoint, method)
        if key not in self._query_names:
            info = self._docs.get(endpoint, {}).get(method)
            if info is None:
                return None
            params = [
                *info.get("arguments", {}).get("parameters", []),
                *info.get("manual_doc", {}).get("parameters", []),
            ]
            if pagination := info.get("pagination"):
                params.append(pagination["parameters"])
            names: set[str] = set()
            for param in params:
                if param.get("in") not in ("query", "querystring"):
                    continue
                if "name" in param:
                    names.add(param["name"])
                    continue
                schema = param["schema"]
                schema = schema() if isinstance(schema, type) else schema
                names.update(
                    field.data_key or name
                    for name, field in schema.fields.items()
                    if not field.dump_only
                )
            self._query_names[key] = frozenset(names)
        return self._query_names[key]

    def _refuse_unknown_query(self):
        """A query parameter the operation does not declare is a 422 naming it (as an
        unknown body field is): a misspelt ``?pagesize=`` must not silently be ignored."""
        if not request.args or request.url_rule is None:
            return
        method = "get" if request.method == "HEAD" else request.method.lower()
        declared = self._declared_query(request.url_rule.endpoint.rsplit(".", 1)[-1], method)
        if declared is None:
            return  # not a documented operation (OPTIONS, a 405)
        unknown = [name for name in request.args if name not in declared]
        if unknown:
            hint = ", ".join(sorted(declared)) if declared else "none"
            abort(
                422,
                message=f"Unknown query parameter: {', '.join(unknown)} (accepted: {hint}).",
                messages={"query": {name: ["Unknown field."] for name in unknown}},
            )

    @staticmethod
    def _prepare_access_doc(doc, doc_info, **kwargs):
        """``security`` and the 401/403 answers, from the guard's mark (``requires``); the
        request header a decorator handles, from its mark (``handles_header``: the unit of
        work's Idempotency-Key); and the 422 every operation may answer (an unknown query
        parameter). A route's own ``alt_response`` for one of these codes is kept."""
        level = doc_info.get("access", NO_TOKEN)
        doc["security"] = SECURITY[level]
        if (header := doc_info.get("header")) is not None:
            parameters = doc.setdefault("parameters", [])
            if not any(p.get("name") == header["name"] for p in parameters):
                parameters.append(header)
        responses = doc.setdefault("responses", {})
        for code, response in {**REFUSALS[level], "422": "UNPROCESSABLE_ENTITY"}.items():
            if code not in responses and int(code) not in responses:
                responses[code] = response
        return doc

    @staticmethod
    def _make_pagination_metadata(page, page_size, item_count, deepest=None):
        """flask-smorest's metadata, built without a marshmallow schema per request: the
        same keys, in the same order, all integers. ``deepest``: the last page a list
        answers by number (app/core/pagination.py ``within_reach``), if it has one: the
        last and next pages stop there, the total and total_pages do not."""
        meta = {"total": item_count}
        if not item_count:
            meta["total_pages"] = 0
            return meta
        pages = (item_count - 1) // page_size + 1
        last = pages if deepest is None else min(pages, deepest)
        meta.update(total_pages=pages, first_page=1, last_page=last)
        if page <= last:
            meta["page"] = page
            if page > 1:
                meta["previous_page"] = page - 1
            if page < last:
                meta["next_page"] = page + 1
        return meta

    def _set_pagination_metadata(self, page_params, result, headers):
        if hasattr(page_params, "next_cursor"):  # a page of a cursor walk (cursor_page)
            return result, self._cursor_headers(page_params, headers)
        meta = self._make_pagination_metadata(
            page_params.page,
            page_params.page_size,
            page_params.item_count,
            getattr(page_params, "deepest", None),
        )
        headers = {} if headers is None else headers
        headers[self.PAGINATION_HEADER_NAME] = json.dumps(meta)
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

    def _cursor_headers(self, page_params, headers):
        """X-Pagination and Link of a page of a cursor walk: the page size, the next
        page's cursor and link (none after the last page), the total only when counted."""
        headers = {} if headers is None else headers
        meta = {"page_size": page_params.page_size}
        if page_params.item_count != NOT_COUNTED:
            meta["total"] = page_params.item_count
        if page_params.next_cursor is not None:
            meta["next_cursor"] = page_params.next_cursor
            args = request.args.to_dict()
            args["cursor"] = page_params.next_cursor
            headers["Link"] = f'<{request.path}?{urlencode(args)}>; rel="next"'
        headers[self.PAGINATION_HEADER_NAME] = json.dumps(meta)
        return headers

    def _document_pagination_metadata(self, spec, resp_doc):
        # The header's value is a JSON object in one string, not OpenAPI's "simple" style.
        resp_doc.setdefault("headers", {})[self.PAGINATION_HEADER_NAME] = {
            "description": "Pagination as a JSON object: total, total_pages, first_page, "
            "last_page, page, previous_page, next_page; on a list that takes a cursor, a "
            "cursor page's is page_size, next_cursor (none after the last page) and total "
            "only when count=true.",
            "schema": {"type": "string"},
            "example": '{"total": 25, "total_pages": 2, "first_page": 1, "last_page": 2, '
            '"page": 1, "next_page": 2}',
        }
        resp_doc["headers"]["Link"] = {
            "description": "RFC 8288 links to the first, previous, next and last pages (a "
            "cursor page: the next one only).",
            "schema": {"type": "string"},
        }


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorSchema

    def init_app(self, app, *, spec_kwargs=None):
        # Relative: the server that serves this document (the client's scheme and host,
        # whatever the load balancer in front); API_SPEC_OPTIONS may name others.
        defaults = {"servers": [{"url": "/"}], "info": {"description": DESCRIPTION}}
        super().init_app(app, spec_kwargs={**defaults, **(spec_kwargs or {})})
        self.register_field(Price, "number", None)
        self.ma_plugin.converter.add_attribute_function(price_properties)
        self.ma_plugin.converter.add_attribute_function(text_properties)
        self.spec.components.security_scheme(
            "bearerAuth",
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "The access_token of POST /users/login.",
            },
        )
        error = {"application/json": {"schema": ErrorSchema}}
        challenge = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        self.spec.components.response(
            "Unauthorized",
            {
                "description": "No token where one is required, or a token that is invalid, "
                "expired or revoked (a deleted or demoted account, a new password): log in "
                "again.",
                "content": error,
                "headers": challenge,
            },
        )
        self.spec.components.response(
            "Forbidden",
            {"description": "The token is valid but not an admin's (rol 1).", "content": error},
        )

    def handle_http_exception(self, error):
        payload, headers = error_payload(error)
        return payload, error.code, headers
