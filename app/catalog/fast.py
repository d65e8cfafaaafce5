"""Product reads answered ahead of Flask: transport only.

``GET /api/products/<sku>`` without a query string or CORS is the catalog's busiest
request. Flask's request context, routing, flask-smorest's wrappers and the token loaders
cost such a read more CPU than answering it, so this WSGI layer takes it first and answers
with what the route would: the token checked as the route checks it (flask-jwt-extended's
decoding, the account's state from app/accounts/cache.py), the one product read
(app/catalog/reads.py: body, ETag, 304, the view, registered or anonymous) and the one
response finisher (app/core/http.py: security headers, X-Request-ID, metrics, the log
line). It decides nothing of its own.

Everything else goes on to Flask, and so does a read this layer could not answer (no such
product, a token it does not take, or an error: the route then answers it, with its 401,
404 or 503).
"""

from __future__ import annotations

import logging
import time

from flask import Flask
from werkzeug.datastructures import Headers

from app.accounts.cache import token_holder
from app.accounts.tokens import decoded
from app.catalog.cache import CACHEABLE_SKU
from app.catalog.reads import read_product
from app.core import http, logs

log = logging.getLogger(__name__)

ENDPOINT = "products.ProductsBySku"
STATUS_LINES = {200: "200 OK", 304: "304 NOT MODIFIED"}


class FastReads:
    """WSGI middleware in front of the app's own ``wsgi_app`` (``flask``)."""

    def __init__(self, app: Flask, flask):
        self.app = app
        self.flask = flask
        self.route = next(rule.rule for rule in app.url_map.iter_rules(ENDPOINT))
        self.prefix = self.route.split("<", 1)[0]

    def __call__(self, environ, start_response):
        sku = self._product_read(environ)
        if sku is None:
            return self.flask(environ, start_response)
        started = time.perf_counter()
        request_id = logs.kept_or_new(environ.get("HTTP_X_REQUEST_ID", ""))
        # If the route answers after all, it answers with the same id.
        environ["HTTP_X_REQUEST_ID"] = request_id
        with self.app.app_context():
            headers = self._answer(sku, environ, request_id, started)
        if headers is None:
            return self.flask(environ, start_response)
        status, headers, body = headers
        start_response(STATUS_LINES[status], headers.to_wsgi_list())
        return [body]

    def _answer(self, sku: str, environ, request_id: str, started: float):
        """(status, headers, body) of the read, finished; None for the route to answer."""
        header = environ.get("HTTP_AUTHORIZATION")
        reader = None if header is None else _token_holder(header)
        if reader is False:
            return None
        try:
            read = read_product(
                sku, reader, environ.get("REMOTE_ADDR"), environ.get("HTTP_IF_NONE_MATCH")
            )
        except Exception:
            with logs.bind(request_id=request_id, method="GET", route=self.route):
                log.exception("product read %r: answered by the route instead", sku)
            return None
        if read is None:
            return None
        headers = Headers(read.headers)
        http.finish(
            headers,
            method="GET",
            path=environ["PATH_INFO"],
            route=self.route,
            status=read.status,
            secure=environ.get("wsgi.url_scheme") == "https",
            authorized=header is not None,
            request_id=request_id,
            started=started,
            user_id=reader,
        )
        return read.status, headers, read.body

    def _product_read(self, environ) -> str | None:
        """The sku of a read this layer may answer, else None."""
        path = environ.get("PATH_INFO", "")
        if (
            environ.get("REQUEST_METHOD") != "GET"  # HEAD is not a consultation
            or not path.startswith(self.prefix)
            or environ.get("QUERY_STRING")  # the route refuses unknown parameters
            or self.app.config["CORS_ORIGINS"]  # flask-cors adds its headers
        ):
            return None
        sku = path[len(self.prefix) :]
        return sku if CACHEABLE_SKU.fullmatch(sku) else None


def _token_holder(header: str) -> int | bool:
    """The reader behind ``Authorization: Bearer <token>``: their id when the token is good,
    False for anything else (the route then answers with its own 401)."""
    scheme, _, token = header.partition(" ")
    if scheme != "Bearer" or not token or " " in token:
        return False
    try:
        claims = decoded(token)
    except Exception:
        return False
    if claims.get("type") != "access":
        return False
    holder = token_holder(claims)
    return False if holder is None else holder.id
