"""What a token's check needs of its account, kept in Redis: a reader's product read needs no
database.

A token is good while its account is active, its ``ver`` claim is the account's
``token_version`` (a new password, a change of role or a deletion moves it on), and its
``jti`` is not one the account gave up (log out). The entry of an account,
``marketplace:account:v1:<id>``, holds exactly that, with what routes need of the holder:
``{"v": version, "r": role, "e": email, "out": [jti, ...]}`` (the revocations not yet
expired), or ``-`` for no active account. It is
filled from the database on a miss and invalidated after every commit that changes the
account or revokes one of its tokens, before that write answers (the unit of work, as for
products: app/core/cache.py); entries live ``PRODUCT_CACHE_SECONDS`` at most. Without
Redis, or when it fails, the database answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from flask import Flask, g, has_app_context
from sqlalchemy import event, select

from app.accounts.models import RevokedToken, User
from app.core import unit_of_work
from app.core.cache import cached
from app.core.columns import utcnow
from app.core.extensions import db

ENTRY_PREFIX = "marketplace:account:v1:"
GENERATION_PREFIX = "marketplace:account-gen:"
NONE = "-"


def init_app(app: Flask) -> None:
    session_class = db.session.session_factory.class_
    if not event.contains(session_class, "before_flush", note_changes):
        event.listen(session_class, "before_flush", note_changes)


def _pair(user_id: int) -> tuple[str, str]:
    return ENTRY_PREFIX + str(user_id), GENERATION_PREFIX + str(user_id)


def note_changes(session, _flush_context, _instances) -> None:
    """Before every flush: the accounts it changes are stale once it commits."""
    note_changed(
        session,
        (
            instance.id
            for instance in (*session.dirty, *session.deleted)
            if isinstance(instance, User) and instance.id is not None
        ),
    )


def note_changed(session, user_ids: Iterable[int]) -> None:
    """Accounts whose token checks change with this transaction (a bulk statement, such as
    a revocation, must say so itself)."""
    pairs = [_pair(user_id) for user_id in user_ids]
    if pairs:
        unit_of_work.note_stale(session, pairs)


def _entry(user_id: int) -> str:
    user = db.session.get(User, user_id)
    if user is None or not user.is_active:
        return NONE
    out = db.session.scalars(
        select(RevokedToken.jti).where(
            RevokedToken.user_id == user_id, RevokedToken.expires_at > utcnow()
        )
    )
    state = {"v": user.token_version, "r": user.role, "e": user.email, "out": sorted(out)}
    return json.dumps(state)


@dataclass(frozen=True)
class Principal:
    """Whom a good token stands for, as the routes need them (a route that changes the
    account reads its row)."""

    id: int
    email: str
    role: int


def _state(user_id: int) -> dict | None:
    """The account's state (cached, else from the database), once per request."""
    memo = g.setdefault("account_states", {}) if has_app_context() else {}
    if user_id not in memo:
        found = cached(_pair(user_id), lambda: _entry(user_id))
        memo[user_id] = None if found == NONE else json.loads(found)
    return memo[user_id]


def _user_id(claims: dict) -> int | None:
    try:
        return int(claims["sub"])
    except (KeyError, TypeError, ValueError):
        return None


def revoked(claims: dict) -> bool:
    """Whether the token was given up at log out (a token without a jti cannot be
    revoked, so it is not accepted)."""
    jti, user_id = claims.get("jti"), _user_id(claims)
    if jti is None or user_id is None:
        return True
    state = _state(user_id)
    return state is not None and jti in state["out"]


def token_holder(claims: dict) -> Principal | None:
    """Whom a decoded token stands for, or None when it is no longer good: revoked, or
    older than its account's last new password, change of role or deletion."""
    user_id = _user_id(claims)
    if user_id is None or revoked(claims):
        return None
    state = _state(user_id)
    if state is None or claims.get("ver") != state["v"]:
        return None
    return Principal(user_id, state["e"], state["r"])
