"""Response headers that every answer carries, CORS for /api/*, and the login limits."""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, current_app, request
from flask_cors import CORS
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)

API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# Swagger UI: its own files, an inline start-up script and inline styles.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    app.extensions["login_limits"] = LoginLimits(
        app.config["LOGIN_FAILURES_LIMIT"],
        app.config["LOGIN_ACCOUNT_FAILURES_LIMIT"],
        app.config["RATELIMIT_STORAGE_URI"],
    )
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
    max_age = current_app.config["HSTS_MAX_AGE"]
    if request.is_secure and max_age:
        # Only over HTTPS (browsers ignore it over HTTP): behind the load balancer, nginx
        # passes its X-Forwarded-Proto on as the request's scheme.
        headers.setdefault("Strict-Transport-Security", f"max-age={max_age}")
    if request.authorization is not None or request.path.startswith("/users/login"):
        # Answers to authenticated requests and tokens are never cached by a proxy.
        headers.setdefault("Cache-Control", "no-store")
    return response


class LoginLimits:
    """Failed logins per client address and per account.

    The ``limits`` library (Flask-Limiter's engine) used from the login view alone:
    Flask-Limiter's own hook runs on every request (0.6 ms of each product read). The
    account limit is higher than the address limit, so one client cannot lock an admin
    out; several addresses guessing one account are still slowed down. If the storage
    (Redis) is unreachable, logins go on unlimited and the error is logged.
    """

    def __init__(self, per_client: str, per_account: str, storage_uri: str):
        self.limits = {"client": parse(per_client), "account": parse(per_account)}
        self.window = MovingWindowRateLimiter(storage_from_string(storage_uri))

    @staticmethod
    def _keys(address: str | None, email: str) -> dict[str, str]:
        return {"client": address or "-", "account": email.strip().lower()}

    def retry_after(self, address: str | None, email: str) -> int:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        wait = 0.0
        try:
            for kind, key in self._keys(address, email).items():
                limit = self.limits[kind]
                if not self.window.test(limit, "login", kind, key):
                    reset = self.window.get_window_stats(limit, "login", kind, key).reset_time
                    wait = max(wait, reset - time.time())
        except Exception:
            log.exception("login limits unavailable; this attempt is not limited")
            return 0
        return max(1, math.ceil(wait)) if wait else 0

    def failed(self, address: str | None, email: str) -> None:
        try:
            for kind, key in self._keys(address, email).items():
                self.window.hit(self.limits[kind], "login", kind, key)
        except Exception:
            log.exception("login limits unavailable; this failure is not counted")
