"""The password guard: every route that verifies a password goes through it. Failed
attempts are limited per client address and per account, and each process verifies only a
few passwords at once."""

from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import contextmanager

import click
from flask import Flask
from limits import parse
from limits.storage import MemoryStorage, storage_from_string

from app.core.text import key

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    limits = app.extensions["login_limits"] = LoginLimits(
        app.config["LOGIN_FAILURES_LIMIT"],
        app.config["LOGIN_ACCOUNT_FAILURES_LIMIT"],
        app.config["RATELIMIT_STORAGE_URI"],
    )
    if limits.per_process and serves_requests():
        log.info(
            "login limits: counted in this process's memory (%s): %s per address and %s per "
            "account in each process; set REDIS_URL to share one count between processes "
            "and containers",
            "RATELIMIT_STORAGE_URI" if app.config["REDIS_URL"] else "no REDIS_URL",
            limits.client,
            limits.account,
        )
    app.extensions["password_slots"] = VerificationSlots(app.config["LOGIN_CONCURRENCY"])


def serves_requests() -> bool:
    """True in the web process (uWSGI, `flask run`), which builds the app once at start;
    False in the other `flask` commands (the worker, migrations), which take no logins."""
    command = click.get_current_context(silent=True)
    return command is None or command.info_name == "run"


class LoginLimits:
    """Failed logins per client address and per account.

    Counted with the ``limits`` library's storage (Flask-Limiter's engine; in Redis when
    REDIS_URL is set, so every process and instance shares one count), from the login view
    alone: Flask-Limiter's own hook runs on every request (0.6 ms of each product read).

    - **Per address** (``LOGIN_FAILURES_LIMIT``): each attempt takes a slot *before* its
      password is verified (one atomic increment: concurrent attempts cannot all slip
      under the limit), and a successful login gives it back, so only failures count.
      Past the limit the address waits, whatever it sends.
    - **Per account** (``LOGIN_ACCOUNT_FAILURES_LIMIT``): never refuses a correct
      password, so nobody can lock an admin out. Past it, each further wrong password for
      that account answers 429 and uses up the address's whole allowance: guesses spread
      over many addresses slow down to one per address and window. The first time in a
      window the account limit is reached is logged.

    Windows are fixed and start at the first failure. If the storage is unreachable,
    logins go on unlimited and the error is logged.
    """

    def __init__(self, per_client: str, per_account: str, storage_uri: str):
        self.client = parse(per_client)
        self.account = parse(per_account)
        self.storage = storage_from_string(storage_uri)
        # memory:// counts in this process alone; Redis shares one count.
        self.per_process = isinstance(self.storage, MemoryStorage)

    def _add(self, limit, key: str, amount: int = 1) -> int:
        """Add to the count of ``key`` in its window (atomically); the new count."""
        return self.storage.incr(limit.key_for("login", key), limit.get_expiry(), amount=amount)

    def _wait(self, limit, key: str) -> int:
        reset = self.storage.get_expiry(limit.key_for("login", key))
        return max(1, math.ceil(reset - time.time()))

    def reserve(self, address: str | None) -> int:
        """Take a slot for one attempt from ``address``: 0 when it may go on, else the
        seconds to wait."""
        key = f"client:{address or '-'}"
        try:
            if self._add(self.client, key) <= self.client.amount:
                return 0
            return self._wait(self.client, key)
        except Exception:
            log.exception("login limits unavailable; this attempt is not limited")
            return 0

    def succeeded(self, address: str | None) -> None:
        """Give the attempt's slot back: successful logins never count."""
        try:
            self._add(self.client, f"client:{address or '-'}", -1)
        except Exception:
            log.exception("login limits unavailable; this success is not refunded")

    def failed(self, address: str | None, email: str) -> int:
        """Count a failure against the account (the address's slot stays taken); 0, or
        the seconds the address must now wait when the account is over its limit."""
        account = f"account:{key(email)}"
        try:
            count = self._add(self.account, account)
            if count <= self.account.amount:
                return 0
            if count == self.account.amount + 1:
                log.warning(
                    "login: account %r reached its limit of %s failed logins; further wrong "
                    "passwords for it are refused with 429 (last from %r)",
                    email,
                    self.account,
                    address,
                )
            client = f"client:{address or '-'}"
            self._add(self.client, client, self.client.amount)
            return max(self._wait(self.account, account), self._wait(self.client, client))
        except Exception:
            log.exception("login limits unavailable; this failure is not counted")
            return 0


class VerificationSlots:
    """At most ``size`` password verifications at once in this process; past that a
    login is refused at once (argon2 is CPU-bound: queued logins would hold every worker
    and starve the product reads)."""

    def __init__(self, size: int):
        self.slots = threading.BoundedSemaphore(max(1, size))

    @contextmanager
    def take(self):
        """Yield True with a slot held, or False at once when none is free."""
        got = self.slots.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                self.slots.release()
