"""Password hashing through passlib (the maintained libpass fork) with argon2id.

The parameters come from the configuration (``ARGON2_*``), OWASP's current recommendation
by default: 19 MiB of memory, 2 passes, 1 lane (about 30 ms of one core here). A hash
made with other parameters is replaced at the owner's next successful login
(passlib's ``needs_update``, through ``verify_and_update``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

from flask import current_app, has_app_context, has_request_context
from passlib.context import CryptContext

from app.core.config import ARGON2_MEMORY_KIB, ARGON2_PARALLELISM, ARGON2_TIME_COST

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

# Set while the password guard (app/accounts/guard.py) runs a verification.
_guarded: ContextVar[bool] = ContextVar("password_guarded", default=False)


class Unguarded(RuntimeError):
    """A request verified a password without the password guard."""


@contextmanager
def guarded() -> Iterator[None]:
    """The guard's verification runs inside this block."""
    token = _guarded.set(True)
    try:
        yield
    finally:
        _guarded.reset(token)


@lru_cache(maxsize=8)
def _hasher(memory_kib: int, time_cost: int, parallelism: int) -> tuple[CryptContext, str]:
    """The context for these parameters, and a dummy hash made with them: verified
    against when the email is unknown, so both failures take the same time."""
    context = CryptContext(
        schemes=["argon2"],
        deprecated="auto",
        argon2__type="ID",
        argon2__memory_cost=memory_kib,
        argon2__rounds=time_cost,
        argon2__parallelism=parallelism,
    )
    return context, context.hash("not-a-real-password")


def _current() -> tuple[CryptContext, str]:
    if not has_app_context():  # scripts and test fixtures: the defaults
        return _hasher(ARGON2_MEMORY_KIB, ARGON2_TIME_COST, ARGON2_PARALLELISM)
    config = current_app.config
    return _hasher(
        config["ARGON2_MEMORY_KIB"], config["ARGON2_TIME_COST"], config["ARGON2_PARALLELISM"]
    )


def hash_password(password: str) -> str:
    return _current()[0].hash(password)


def verify_password(password: str, password_hash: str | None) -> tuple[bool, str | None]:
    """(matches, new hash or None); with no hash, spend the same time and fail. Inside a
    request only through the password guard: a route that skipped it fails loudly."""
    if has_request_context() and not _guarded.get():
        raise Unguarded("a password was verified outside app.accounts.guard.verify")
    context, dummy = _current()
    if password_hash is None:
        context.verify(password, dummy)
        return False, None
    return context.verify_and_update(password, password_hash)
