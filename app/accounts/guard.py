"""The password guard: every route that verifies a password goes through ``verify``.

In this order, for each attempt:

1. **A slot of this process** (``LOGIN_CONCURRENCY``, 1 by default: fewer than a uWSGI
   worker's request threads, so a thread is always left for the product reads). None
   free: 503 at once, uncounted (argon2 is CPU-bound: queued checks would hold every
   thread and starve the reads).
2. **The attempt is counted before its password is verified**, per client address
   (``LOGIN_FAILURES_LIMIT``) and, for a check made with a token (``PATCH /users/me``),
   per token (``LOGIN_TOKEN_FAILURES_LIMIT``, by its ``jti``): one atomic increment each,
   so attempts that arrive together cannot all slip under a limit. Over a limit: 429 with
   ``Retry-After``, the password not even looked at, right or wrong.
3. The password is verified. Right: the attempt's counts are given back (only failures
   count). Wrong: the failure is also counted against the account
   (``LOGIN_ACCOUNT_FAILURES_LIMIT``), which never refuses a correct password: past it,
   each further wrong password uses up the sending address's whole allowance.

A token's count concerns that token only, never the account: a stolen token that guessed
too often cannot lock its owner out of logging in.

``app.accounts.passwords.verify_password`` refuses to run inside a request unless this
guard called it, so a route cannot verify a password around it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

import click
from flask import Flask, current_app
from flask_smorest import abort
from limits import parse
from limits.storage import MemoryStorage, storage_from_string

from app.accounts import passwords
from app.core import metrics
from app.core.text import key

log = logging.getLogger(__name__)

T = TypeVar("T")


def init_app(app: Flask) -> None:
    limits = app.extensions["login_limits"] = LoginLimits(
        app.config["LOGIN_FAILURES_LIMIT"],
        app.config["LOGIN_ACCOUNT_FAILURES_LIMIT"],
        app.config["RATELIMIT_STORAGE_URI"],
        per_token=app.config["LOGIN_TOKEN_FAILURES_LIMIT"],
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


def verify(
    check: Callable[[], T], *, address: str | None, account: str, token: str | None = None
) -> T:
    """Run ``check`` (a password verification: truthy when the password is right) through
    the guard, for an attempt from ``address`` on ``account`` (its email), made with
    ``token`` (a jti) if any. Aborts with 503 (no slot free) or 429 (over a limit, with
    Retry-After); else returns what ``check`` returned."""
    limits: LoginLimits = current_app.extensions["login_limits"]
    with current_app.extensions["password_slots"].take() as free:
        if not free:
            metrics.LOGIN_BUSY.inc()
            abort(
                503,
                message="Too many password checks at once; try again in a second.",
                headers={"Retry-After": "1"},
            )
        if wait := limits.reserve(address, token):
            too_many(wait)
        try:
            with passwords.guarded():
                result = check()
        except BaseException:
            limits.succeeded(address, token)  # nothing was learnt: not a failure
            raise
    if result:
        limits.succeeded(address, token)
        return result
    metrics.LOGIN_FAILURES.inc()
    if wait := limits.failed(address, account):
        too_many(wait)
    return result


def too_many(wait: int):
    metrics.LOGIN_LIMITED.inc()
    abort(
        429,
        message=f"Too many failed password attempts; try again in {wait} s.",
        headers={"Retry-After": str(wait)},
    )


class LoginLimits:
    """Failed password attempts per client address, per token and per account.

    Counted with the ``limits`` library's storage (Flask-Limiter's engine; in Redis when
    REDIS_URL is set, so every process and instance shares one count), from the guard
    alone: Flask-Limiter's own hook runs on every request (0.6 ms of each product read).

    - **Per address** (``LOGIN_FAILURES_LIMIT``) and **per token**
      (``LOGIN_TOKEN_FAILURES_LIMIT``): each attempt takes a slot *before* its password
      is verified, and a right password gives it back, so only failures count. Past the
      limit the address (the token) waits, whatever it sends.
    - **Per account** (``LOGIN_ACCOUNT_FAILURES_LIMIT``): never refuses a correct
      password, so nobody can lock an admin out. Past it, each further wrong password for
      that account answers 429 and uses up the address's whole allowance: guesses spread
      over many addresses slow down to one per address and window. The first time in a
      window the account limit is reached is logged.

    Windows are fixed and start at the first failure. If the storage is unreachable,
    attempts go on unlimited and the error is logged.
    """

    def __init__(
        self, per_client: str, per_account: str, storage_uri: str, per_token: str = "5 per minute"
    ):
        self.client = parse(per_client)
        self.account = parse(per_account)
        self.token = parse(per_token)
        self.storage = storage_from_string(storage_uri)
        # memory:// counts in this process alone; Redis shares one count.
        self.per_process = isinstance(self.storage, MemoryStorage)

    def _add(self, limit, key: str, amount: int = 1) -> int:
        """Add to the count of ``key`` in its window (atomically); the new count."""
        return self.storage.incr(limit.key_for("login", key), limit.get_expiry(), amount=amount)

    def _wait(self, limit, key: str) -> int:
        reset = self.storage.get_expiry(limit.key_for("login", key))
        return max(1, math.ceil(reset - time.time()))

    def _counted(self, address: str | None, token: str | None) -> list[tuple]:
        """The (limit, key) pairs an attempt counts against before it is verified."""
        pairs = [(self.client, f"client:{address or '-'}")]
        if token is not None:
            pairs.append((self.token, f"token:{token}"))
        return pairs

    def reserve(self, address: str | None, token: str | None = None) -> int:
        """Take a slot for one attempt from ``address`` (with ``token``): 0 when it may go
        on, else the seconds to wait (the slots it did take are given back)."""
        taken = []
        try:
            for limit, key in self._counted(address, token):
                if self._add(limit, key) > limit.amount:
                    for other, other_key in taken:
                        self._add(other, other_key, -1)
                    return self._wait(limit, key)
                taken.append((limit, key))
            return 0
        except Exception:
            log.exception("login limits unavailable; this attempt is not limited")
            return 0

    def succeeded(self, address: str | None, token: str | None = None) -> None:
        """Give the attempt's slots back: right passwords never count."""
        try:
            for limit, key in self._counted(address, token):
                self._add(limit, key, -1)
        except Exception:
            log.exception("login limits unavailable; this success is not refunded")

    def failed(self, address: str | None, email: str) -> int:
        """Count a failure against the account (the attempt's slots stay taken); 0, or
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
    """At most ``size`` password verifications at once in this process; past that an
    attempt is refused at once (argon2 is CPU-bound: queued checks would hold every
    request thread and starve the product reads)."""

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
