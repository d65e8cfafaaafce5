"""Users: creation, changes, deletion, login and the last-admin rule."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select

from app.accounts.cache import note_changed
from app.accounts.models import RevokedToken, Role, User
from app.accounts.passwords import hash_password, verify_password
from app.core.addresses import BadEmail, canonical_email
from app.core.columns import utcnow
from app.core.dialect import insert_ignore, locked_rows
from app.core.errors import RuleError
from app.core.extensions import db
from app.events import journal
from app.events.models import EventType


def _ensure_free(email: str | None, username: str | None, exclude: User | None = None) -> None:
    for lookup, value, label in (
        (User.by_email, email, "email"),
        (User.by_username, username, "username"),
    ):
        if value is None:
            continue
        other = lookup(value)
        if other is not None and other is not exclude:
            raise RuleError(409, f"A user with this {label} already exists.", label)


# An account's fields as its events name them (the API's names: ``rol`` for the role).
SHOWN = {"fullname": "fullname", "username": "username", "email": "email", "role": "rol"}


def _shown(user: User) -> dict:
    """The account as its events keep it (never the password or its hash)."""
    return {"id": user.id, **{name: getattr(user, field) for field, name in SHOWN.items()}}


def _changed(user: User, type_: str, actor: User | None, changes: dict) -> None:
    snapshot = None if user.deleted_at else _shown(user)
    journal.record(type_, journal.actor_of(actor), changes, user_id=user.id, snapshot=snapshot)


def create_user(
    *,
    fullname: str,
    username: str,
    email: str,
    password: str,
    role: int = Role.READER,
    actor: User | None = None,
) -> User:
    _ensure_free(email, username)
    user = User(
        fullname=fullname,
        username=username,
        email=email,
        password_hash=hash_password(password),
        role=int(role),
    )
    db.session.add(user)
    db.session.flush()
    changes = {name: {"old": None, "new": getattr(user, f)} for f, name in SHOWN.items()}
    _changed(user, EventType.USER_CREATED, actor, changes)
    return user


def _active_admin_ids_locked() -> list[int]:
    """Active admins, locked so two concurrent demotions or deletions cannot both pass."""
    return list(
        locked_rows(select(User.id).where(User.role == Role.ADMIN, User.is_active)).scalars()
    )


def _guard_last_admin(user: User, action: str) -> None:
    if user.role != Role.ADMIN or not user.is_active:
        return
    if _active_admin_ids_locked() == [user.id]:
        raise RuleError(409, f"The last active admin cannot be {action}.")


def update_user(user: User, changes: dict, actor: User | None = None) -> User:
    _ensure_free(changes.get("email"), changes.get("username"), exclude=user)
    if "role" in changes and changes["role"] != user.role:
        if changes["role"] != Role.ADMIN:
            _guard_last_admin(user, "demoted")
        user.token_version += 1
    diff = {}
    if "password" in changes:
        user.password_hash = hash_password(changes["password"])
        user.token_version += 1
        diff["password"] = {"changed": True}
    for field, name in SHOWN.items():
        if field in changes and changes[field] != getattr(user, field):
            diff[name] = {"old": getattr(user, field), "new": changes[field]}
            setattr(user, field, changes[field])
    db.session.flush()  # the answer is built from the flushed row (updated_at)
    if diff:
        _changed(user, EventType.USER_UPDATED, actor, diff)
    return user


def delete_user(user: User, actor: User | None = None) -> None:
    """Soft delete: the row stays for history, its email and username become free again."""
    _guard_last_admin(user, "deleted")
    changes = {name: {"old": getattr(user, f), "new": None} for f, name in SHOWN.items()}
    user.soft_delete()
    _changed(user, EventType.USER_DELETED, actor, changes)


class WrongPassword(RuleError):
    def __init__(self):
        super().__init__(422, "The current password is wrong.", "current_password")


def check_password(user: User, password: str) -> bool:
    """Whether this is the user's password (keeping a rehash, as a login does)."""
    ok, new_hash = verify_password(password, user.password_hash)
    if ok and new_hash:
        user.password_hash = new_hash
    return ok


def change_own_account(user: User, changes: dict) -> User:
    """The user's own changes: a name, or a new password once the current one was checked
    (check_password). A new password revokes every token of the account."""
    allowed = {key: changes[key] for key in ("fullname", "password") if key in changes}
    return update_user(user, allowed, actor=user)


# ---------------------------------------------------------------- revoked tokens
# A whole account's tokens die by User.token_version (deletion, demotion, new password);
# one token dies by a row here (log out), kept until the token would have expired anyway.
# Both live in the database, so every web worker and instance sees them at once.


def revoke_token(jti: str, user_id: int, expires: int | None) -> None:
    """Refuse this token from now on; revoking it twice is one revocation."""
    expires_at = datetime.fromtimestamp(expires, UTC) if expires else utcnow() + timedelta(days=366)
    row = {"jti": jti, "user_id": user_id, "expires_at": expires_at, "created_at": utcnow()}
    db.session.execute(insert_ignore(RevokedToken.__table__), [row])
    note_changed(db.session, [user_id])  # its token checks change: no copy may pass it


def prune_revoked_tokens() -> int:
    """Forget revocations of tokens that have expired (the worker's housekeeping)."""
    done = db.session.execute(delete(RevokedToken).where(RevokedToken.expires_at < utcnow()))
    db.session.commit()
    return done.rowcount


def authenticate(email: str, password: str) -> User | None:
    """The active user with these credentials, or None (same cost either way)."""
    user = User.by_email(email)
    ok, new_hash = verify_password(password, user.password_hash if user else None)
    if not ok or user is None or not user.is_active:
        return None
    if new_hash:
        user.password_hash = new_hash
    return user


@dataclass
class FirstAdmin:
    user: User
    generated_password: str | None


def username_from_email(email: str) -> str:
    """A free username in the API's format, made from the part of the email before @."""
    username = re.sub(r"[^A-Za-z0-9_.-]", "-", email.split("@", 1)[0])[:64].strip("-._")
    username = username if len(username) >= 2 else "admin"
    if User.by_username(username) is not None:
        username = f"{username[:55]}-{secrets.token_hex(4)}"
    return username


def admin_count() -> int:
    return db.session.scalar(
        select(func.count()).select_from(User).where(User.role == Role.ADMIN, User.is_active)
    )


def make_admin(
    email: str, password: str, *, fullname: str = "Administrator", username: str | None = None
) -> User:
    """Promote the account with this email and set its password, or create a new admin."""
    try:
        email = canonical_email(email)
    except BadEmail as exc:
        raise RuleError(422, f"{email!r}: {exc}", "email") from exc
    existing = User.by_email(email)
    if existing is not None:
        return update_user(existing, {"role": Role.ADMIN, "password": password})
    return create_user(
        fullname=fullname,
        username=username or username_from_email(email),
        email=email,
        password=password,
        role=Role.ADMIN,
    )


def ensure_first_admin(email: str | None, password: str | None) -> FirstAdmin | None:
    """Make an admin when none exists; a generated password is returned to be shown once."""
    if admin_count():
        return None
    email = email or "admin@example.com"
    generated = None if password else secrets.token_urlsafe(12)
    return FirstAdmin(make_admin(email, password or generated), generated)
