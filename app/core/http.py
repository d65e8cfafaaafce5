"""The HTTP pieces every route shares: security headers, CORS for /api/*, no cookie
sessions, and optional trailing slashes."""

from __future__ import annotations

import logging

from flask import Flask, current_app, request
from flask.sessions import SessionInterface
from flask_cors import CORS

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
            expose_headers=["X-Pagination", "Link", "Location"],
        )
    app.after_request(_security_headers)


ALWAYS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def _security_headers(response):
    """Add each header the view did not set itself (one pass over the response's)."""
    wanted = headers_for(
        request.path,
        current_app.config["HSTS_MAX_AGE"] if request.is_secure else 0,
        request.authorization is not None,
    )
    headers = response.headers
    present = {name.lower() for name, _value in headers.items()}
    for name, value in wanted:
        if name.lower() not in present:
            headers.add(name, value)
    return response


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
