"""Users: creation, changes, deletion, login and the last-admin rule."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, update

from app.database import locked
from app.emails import BadEmail, canonical_email
from app.extensions import db
from app.models import Role, User
from app.services import RuleError
from app.services.passwords import hash_password, verify_password


def find_user(user_id: int) -> User | None:
    user = db.session.get(User, user_id)
    return user if user is not None and user.is_active else None


def lock_user(user_id: int) -> User | None:
    """The active user, locked for a change (database.locked): of two deletions of one
    user, the second finds nobody."""
    user = locked(select(User).where(User.id == user_id))
    return user if user is not None and user.is_active else None


def find_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email_key == email.strip().lower()))


def _ensure_free(email: str | None, username: str | None, exclude: User | None = None) -> None:
    for column, value, label in (
        (User.email_key, email, "email"),
        (User.username_key, username, "username"),
    ):
        if value is None:
            continue
        other = db.session.scalar(select(User).where(column == value.lower()))
        if other is not None and other is not exclude:
            raise RuleError(409, f"A user with this {label} already exists.", label)


def create_user(
    *, fullname: str, username: str, email: str, password: str, role: int = Role.READER
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
    return user


def _active_admin_ids_locked() -> list[int]:
    """Active admins, locked so two concurrent demotions or deletions cannot both pass."""
    admins = (User.role == Role.ADMIN, User.is_active)
    if db.engine.dialect.name == "sqlite":
        # SQLite has no row locks and pysqlite begins a transaction at the first write:
        # a write that changes nothing takes the database's write lock first, so the
        # count below is read by one writer at a time.
        db.session.execute(
            update(User)
            .where(*admins)
            .values(token_version=User.token_version, updated_at=User.updated_at)
            .execution_options(synchronize_session=False)
        )
    return list(db.session.scalars(select(User.id).where(*admins).with_for_update()))


def _guard_last_admin(user: User, action: str) -> None:
    if user.role != Role.ADMIN or not user.is_active:
        return
    if _active_admin_ids_locked() == [user.id]:
        raise RuleError(409, f"The last active admin cannot be {action}.")


def update_user(user: User, changes: dict) -> User:
    _ensure_free(changes.get("email"), changes.get("username"), exclude=user)
    if "role" in changes and changes["role"] != user.role:
        if changes["role"] != Role.ADMIN:
            _guard_last_admin(user, "demoted")
        user.token_version += 1
    if "password" in changes:
        user.password_hash = hash_password(changes["password"])
        user.token_version += 1
    for field in ("fullname", "role", "username", "email"):
        if field in changes:
            setattr(user, field, changes[field])
    db.session.flush()  # the answer is built from the flushed row (updated_at)
    return user


def delete_user(user: User) -> None:
    """Soft delete: the row stays for history, its email and username become free again."""
    _guard_last_admin(user, "deleted")
    user.soft_delete()


def authenticate(email: str, password: str) -> User | None:
    """The active user with these credentials, or None (same cost either way)."""
    user = find_by_email(email)
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
    if db.session.scalar(select(User).where(User.username_key == username.lower())):
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
    existing = find_by_email(email)
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
