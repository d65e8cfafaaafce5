"""What a token's check needs of its account, kept in Redis: a reader's product read needs no
database.

A token is good while its account is active, its ``ver`` claim is the account's
``token_version`` (a new password, a change of role or a deletion moves it on), and its
``jti`` is not one the account gave up (log out). The entry of an account,
``marketplace:account:v1:<id>``, holds exactly that: ``{"v": version, "r": role, "out":
[jti, ...]}`` (the revocations not yet expired), or ``-`` for no active account. It is
filled from the database on a miss and invalidated after every commit that changes the
account or revokes one of its tokens, before that write answers (the unit of work, as for
products: app/core/cache.py); entries live ``PRODUCT_CACHE_SECONDS`` at most. Without
Redis, or when it fails, the database answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from flask import Flask
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
    return json.dumps({"v": user.token_version, "r": user.role, "out": sorted(out)})


def token_holder(claims: dict) -> int | None:
    """The id of the active account a decoded token stands for, or None when the token is
    no longer good (revoked, older than the account's last password, role or deletion)."""
    try:
        user_id = int(claims["sub"])
    except (KeyError, TypeError, ValueError):
        return None
    found = cached(_pair(user_id), lambda: _entry(user_id))
    if found == NONE:
        return None
    account = json.loads(found)
    if claims.get("ver") != account["v"] or claims.get("jti") in account["out"]:
        return None
    if claims.get("jti") is None:
        return None
    return user_id
