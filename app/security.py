"""Response headers that every answer carries, CORS for /api/*, and the login limits."""

from __future__ import annotations

from flask import Flask, current_app, request
from flask_cors import CORS

from app.extensions import limiter

API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# Swagger UI: its own files, an inline start-up script and inline styles.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    limiter.init_app(app)
    origins = app.config["CORS_ORIGINS"]
    if origins:
        CORS(
            app,
            resources={r"/api/*": {"origins": origins}},
            expose_headers=["X-Pagination", "Link", "Location"],
        )
    app.after_request(_security_headers)


def _security_headers(response):
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    docs = request.path.startswith("/api/docs")
    headers.setdefault("Content-Security-Policy", DOCS_POLICY if docs else API_POLICY)
    if request.authorization is not None or request.path.startswith("/users/login"):
        # Answers to authenticated requests and tokens are never cached by a proxy.
        headers.setdefault("Cache-Control", "no-store")
    return response


def login_failures_limit() -> str:
    return current_app.config["LOGIN_FAILURES_LIMIT"]
