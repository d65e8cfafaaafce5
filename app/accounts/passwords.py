"""Password hashing through passlib (the maintained libpass fork) with argon2id.

The parameters come from the configuration (``ARGON2_*``), OWASP's current recommendation
by default: 19 MiB of memory, 2 passes, 1 lane (about 30 ms of one core here). A hash
made with other parameters is replaced at the owner's next successful login
(passlib's ``needs_update``, through ``verify_and_update``).
"""

from __future__ import annotations

from functools import lru_cache

from flask import current_app, has_app_context
from passlib.context import CryptContext

from app.core.config import ARGON2_MEMORY_KIB, ARGON2_PARALLELISM, ARGON2_TIME_COST

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


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
    """(matches, new hash or None); with no hash, spend the same time and fail."""
    context, dummy = _current()
    if password_hash is None:
        context.verify(password, dummy)
        return False, None
    return context.verify_and_update(password, password_hash)
