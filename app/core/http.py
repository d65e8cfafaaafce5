"""The HTTP pieces every answer shares: the one response finisher (security headers,
request id, metrics, the request's log line), CORS for /api/*, no cookie sessions, and
optional trailing slashes.

``finish`` is run for every answer, by Flask's hook and by the fast layer ahead of Flask
(app/catalog/fast.py) alike, so both answer with the same headers, count the same metrics
and log the same line.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, current_app, g, request
from flask.sessions import SessionInterface
from flask_cors import CORS
from werkzeug.datastructures import Headers

from app.core import logs, metrics

log = logging.getLogger(__name__)

API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# Swagger UI: its own files, an inline start-up script and inline styles.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
)


class NoCookieSessions(SessionInterface):
    """The API authenticates with tokens and keeps no cookie session: none is read,
    signed or saved (Flask's default opens one on every request)."""

    def open_session(self, app, request):
        return None  # Flask then uses its null session, which nothing here touches

    def save_session(self, app, session, response) -> None:
        return None


def init_app(app: Flask) -> None:
    app.session_interface = NoCookieSessions()
    origins = app.config["CORS_ORIGINS"]
    if origins:
        CORS(
            app,
            resources={r"/api/*": {"origins": origins}},
            expose_headers=["X-Pagination", "Link", "Location", "X-Corrected-Query"],
        )
    app.before_request(_start)
    app.after_request(_finish)


ALWAYS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def _start() -> None:
    g.started = time.perf_counter()
    logs.request_id()


def _finish(response):
    finish(
        response.headers,
        method=request.method,
        path=request.path,
        route=request.url_rule.rule if request.url_rule is not None else None,
        status=response.status_code,
        secure=request.is_secure,
        authorized=request.authorization is not None,
        request_id=logs.request_id(),
        started=g.get("started"),
    )
    return response


def finish(
    headers: Headers,
    *,
    method: str,
    path: str,
    route: str | None,
    status: int,
    secure: bool,
    authorized: bool,
    request_id: str,
    started: float | None,
    user_id: int | None = None,
) -> None:
    """What every answer gets before it leaves: the security headers its view did not set,
    its X-Request-ID, no body headers on a 204 or 304 (RFC 9110 15.3.5, 15.4.5), its
    metrics, and its log line (``route``: the URL rule, None when none matched)."""
    config = current_app.config
    for name, value in headers_for(path, config["HSTS_MAX_AGE"] if secure else 0, authorized):
        if name not in headers:
            headers.add(name, value)
    headers[logs.HEADER] = request_id
    if status in (204, 304):
        headers.pop("Content-Type", None)
        headers.pop("Content-Length", None)
    seconds = time.perf_counter() - started if started is not None else None
    metrics.count(route, method, status, seconds)
    if config["LOG_REQUESTS"] and (config["LOG_PROBES"] or route not in logs.QUIET_ROUTES):
        fields = {"request_id": request_id, "method": method, "route": route}
        if user_id is not None:
            fields["user_id"] = user_id
        with logs.bind(**fields):
            logs.request_line(method, path, status, seconds)


def headers_for(path: str, hsts_max_age: int, authorized: bool) -> list[tuple[str, str]]:
    """The headers an answer to ``path`` carries; ``hsts_max_age`` 0 over plain HTTP."""
    policy = DOCS_POLICY if path.startswith("/api/docs") else API_POLICY
    wanted = [*ALWAYS, ("Content-Security-Policy", policy)]
    if hsts_max_age:
        # Only over HTTPS (browsers ignore it over HTTP): behind the load balancer, nginx
        # passes its X-Forwarded-Proto on as the request's scheme.
        wanted.append(("Strict-Transport-Security", f"max-age={hsts_max_age}"))
    if authorized or path.startswith("/users/login"):
        # Answers to authenticated requests and tokens are never cached by a proxy.
        wanted.append(("Cache-Control", "no-store"))
    return wanted


class TrailingSlashOptional:
    """Serve ``/x/<id>/`` exactly as ``/x/<id>`` (the seed's clients use both), no redirect."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if len(path) > 1 and path.endswith("/"):
            environ["PATH_INFO"] = path.rstrip("/") or "/"
        return self.wsgi_app(environ, start_response)
