"""Anonymous product reads the Redis cache can answer, answered ahead of Flask.

``GET /api/products/<sku>`` without a token, a query string or CORS is the catalog's
busiest request, and once its product is in the cache (``app/cache.py``) it needs one
Redis round trip: the Lua script that finds the entry also adds the view to the stream.
Flask's request context, routing, flask-smorest's wrappers and the token check cost
such a read more CPU than that round trip, so this WSGI layer answers it first, with
exactly what the route answers: the same body, status (200, or 304 for If-None-Match),
headers (ETag, security headers, X-Request-ID), request log line and metrics.
``tests/test_cached_reads.py`` compares the two answers.

Everything else goes on to Flask. A read the cache does not hold goes on with what the
script saw (``HANDOFF``: the miss, so the route fills the entry without asking Redis
again, and records the view). If the script's answer was lost (a timeout after it was
sent) the view may be in the stream already: the route answers ``VIEW_TAKEN``, reading
without recording a second view, and the view is counted unconfirmed as the route's
own would be.
"""

from __future__ import annotations

import logging
import time

import redis
from flask import Flask
from werkzeug.http import parse_etags

from app.catalog import cache
from app.catalog.cache import Answer
from app.core import http, logs, metrics, redis_client

log = logging.getLogger(__name__)

ENDPOINT = "products.ProductsBySku"
# The WSGI environ key under which a read that went on to Flask says what it found.
HANDOFF = "marketplace.cached_read"
VIEW_TAKEN = "view taken"
OK, NOT_MODIFIED = "200 OK", "304 NOT MODIFIED"


class FastReads:
    """WSGI middleware in front of the app's own ``wsgi_app`` (``flask``)."""

    def __init__(self, app: Flask, flask):
        self.app = app
        self.flask = flask
        self.route = next(rule.rule for rule in app.url_map.iter_rules(ENDPOINT))
        self.prefix = self.route.split("<", 1)[0]

    def __call__(self, environ, start_response):
        sku = self._cacheable(environ)
        if sku is None:
            return self.flask(environ, start_response)
        started = time.perf_counter()
        config = self.app.config
        request_id = logs.kept_or_new(environ.get("HTTP_X_REQUEST_ID", ""))
        view = ("", time.time()) if config["VIEW_RECORDING"] == "auto" else None
        try:
            found = cache.read(
                sku.lower(), view, self.app.extensions["redis"], config["PRODUCT_CACHE_SECONDS"]
            )
        except redis.RedisError as exc:
            if view is not None and redis_client.may_have_run(exc):
                environ[HANDOFF] = VIEW_TAKEN
                metrics.VIEWS_RECORDED.labels("stream-unconfirmed").inc()
                with logs.bind(request_id=request_id, method="GET", route=self.route):
                    log.warning("view of product %r: the stream did not confirm it", sku)
            return self._flask(environ, start_response, request_id)
        except Exception:
            # Not Redis's doing (an entry this code cannot read): the route answers, and
            # the view the script may have added is not added again.
            with logs.bind(request_id=request_id, method="GET", route=self.route):
                log.exception("cached read of product %r", sku)
            if view is not None:
                environ[HANDOFF] = VIEW_TAKEN
            return self._flask(environ, start_response, request_id)
        if not isinstance(found, Answer):
            environ[HANDOFF] = found
            return self._flask(environ, start_response, request_id)
        if view is not None:
            metrics.VIEWS_STREAMED.inc()
        etag = found.etag
        headers = [("ETag", f'"{etag}"')]
        if parse_etags(environ.get("HTTP_IF_NONE_MATCH")).contains_weak(etag):
            status, body = 304, b""
        else:
            status, body = 200, found.body.encode()
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        secure = environ.get("wsgi.url_scheme") == "https"
        path = environ["PATH_INFO"]
        headers += http.headers_for(path, config["HSTS_MAX_AGE"] if secure else 0, False)
        headers.append((logs.HEADER, request_id))
        start_response(OK if status == 200 else NOT_MODIFIED, headers)
        seconds = time.perf_counter() - started
        metrics.count(self.route, "GET", status, seconds)
        if config["LOG_REQUESTS"]:
            with logs.bind(request_id=request_id, method="GET", route=self.route):
                logs.request_line("GET", path, status, seconds)
        return [body]

    def _cacheable(self, environ) -> str | None:
        """The sku of a read this layer may answer, else None."""
        path = environ.get("PATH_INFO", "")
        if (
            environ.get("REQUEST_METHOD") != "GET"  # HEAD is not a consultation
            or not path.startswith(self.prefix)
            or environ.get("QUERY_STRING")  # the route refuses unknown parameters
            or "HTTP_AUTHORIZATION" in environ
        ):
            return None
        sku = path[len(self.prefix) :]
        config = self.app.config
        if (
            not cache.CACHEABLE_SKU.fullmatch(sku)
            or config["CORS_ORIGINS"]  # flask-cors adds its headers
            # The view of a read goes into the stream in the cache's round trip, or is off
            or config["VIEW_RECORDING"] == "direct"
            or (config["VIEW_RECORDING"] == "auto" and config["VIEW_DEDUP_SECONDS"])
            or not config["PRODUCT_CACHE_SECONDS"]
            or self.app.extensions.get("redis") is None
        ):
            return None
        return sku

    def _flask(self, environ, start_response, request_id: str):
        # The route's answer carries the id this layer's log lines already did.
        environ["HTTP_X_REQUEST_ID"] = request_id
        return self.flask(environ, start_response)
