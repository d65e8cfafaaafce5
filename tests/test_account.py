"""Self-service: read your account, change your name or password, log out (rol 1 or 2)."""

from __future__ import annotations

import pytest
from limits import parse
from sqlalchemy import select

from app.accounts.models import RevokedToken, User
from app.core.extensions import db
from tests.conftest import PASSWORD, bearer, login


@pytest.mark.parametrize("who", ["admin", "reader"])
def test_me_shows_your_own_account(client, admin, reader, who):
    user = {"admin": admin, "reader": reader}[who]
    answer = client.get("/users/me", headers=user["headers"])
    assert answer.status_code == 200
    assert answer.json["id"] == user["id"]
    assert answer.json["email"] == user["email"]
    assert answer.json["rol"] == user["role"]
    assert "password" not in answer.json and "password_hash" not in answer.json


def test_me_without_a_token_is_401(client):
    answer = client.get("/users/me")
    assert answer.status_code == 401
    assert answer.json["code"] == 401


def test_a_reader_changes_their_own_name(client, reader, rows):
    answer = client.patch("/users/me", headers=reader["headers"], json={"fullname": "Ana B."})
    assert answer.status_code == 200
    assert answer.json["fullname"] == "Ana B."
    assert [u.fullname for u in rows(User, User.id == reader["id"])] == ["Ana B."]
    # A new name keeps the session.
    assert client.get("/users/me", headers=reader["headers"]).json["fullname"] == "Ana B."


@pytest.mark.parametrize(
    "field, value", [("rol", 1), ("email", "x@example.com"), ("username", "x1")]
)
def test_me_cannot_change_role_email_or_username(client, reader, rows, field, value):
    answer = client.patch("/users/me", headers=reader["headers"], json={field: value})
    assert answer.status_code == 422
    assert field in answer.json["errors"]["json"]
    assert [u.role for u in rows(User, User.id == reader["id"])] == [2]


def test_a_new_password_needs_the_current_one(client, reader):
    answer = client.patch("/users/me", headers=reader["headers"], json={"password": "new-pass-123"})
    assert answer.status_code == 422
    assert "current_password" in answer.json["errors"]["json"]
    assert login(client, reader["email"]).status_code == 200  # the old password still works


def test_a_wrong_current_password_is_refused_and_nothing_changes(client, reader, rows):
    before = rows(User, User.id == reader["id"])[0]
    answer = client.patch(
        "/users/me",
        headers=reader["headers"],
        json={"fullname": "Mallory", "password": "new-pass-123", "current_password": "guess-1"},
    )
    assert answer.status_code == 422
    assert answer.json["errors"]["json"] == {"current_password": ["The current password is wrong."]}
    after = rows(User, User.id == reader["id"])[0]
    assert (after.fullname, after.password_hash) == (before.fullname, before.password_hash)
    assert client.get("/users/me", headers=reader["headers"]).status_code == 200


def test_wrong_current_passwords_count_against_the_accounts_failed_logins(app, client, reader):
    # The address's and the token's own limits are tested in tests/test_password_guard.py:
    # raised here, so that the account's limit (50 a minute) is the one that binds.
    limits = app.extensions["login_limits"]
    limits.client, limits.token = parse("1000 per minute"), parse("1000 per minute")
    budget = limits.account.amount
    body = {"password": "new-pass-123", "current_password": "wrong-guess"}
    codes = [
        client.patch("/users/me", headers=reader["headers"], json=body).status_code
        for _ in range(budget + 1)
    ]
    assert codes[:budget] == [422] * budget
    assert codes[budget] == 429
    # the account's limit never refuses the right password from another address
    answer = client.post(
        "/users/login",
        json={"email": reader["email"], "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.77.0.1"},
    )
    assert answer.status_code == 200


def test_a_new_password_ends_every_session_and_the_new_one_logs_in(client, reader, rows):
    other_session = bearer(login(client, reader["email"]).json["Token"])
    answer = client.patch(
        "/users/me",
        headers=reader["headers"],
        json={"password": "new-pass-123", "current_password": PASSWORD},
    )
    assert answer.status_code == 200
    for headers in (reader["headers"], other_session):
        refused = client.get("/users/me", headers=headers)
        assert refused.status_code == 401
    assert login(client, reader["email"]).status_code == 401
    fresh = bearer(login(client, reader["email"], "new-pass-123").json["Token"])
    assert client.get("/users/me", headers=fresh).json["id"] == reader["id"]


def test_a_new_password_too_short_is_422(client, reader):
    answer = client.patch(
        "/users/me",
        headers=reader["headers"],
        json={"password": "short", "current_password": PASSWORD},
    )
    assert answer.status_code == 422
    assert "password" in answer.json["errors"]["json"]


def test_logout_revokes_only_the_token_sent(client, admin):
    first = bearer(login(client, admin["email"]).json["Token"])
    second = bearer(login(client, admin["email"]).json["Token"])
    answer = client.post("/users/logout", headers=first)
    assert answer.status_code == 204
    assert answer.data == b""
    refused = client.get("/users/me", headers=first)
    assert refused.status_code == 401
    assert "revoked" in refused.json["message"]
    assert client.get("/api/products", headers=first).status_code == 401
    assert client.get("/users/me", headers=second).status_code == 200
    assert client.post("/users/logout", headers=first).status_code == 401


def test_logout_without_a_token_is_401(client):
    assert client.post("/users/logout").status_code == 401


def test_a_revoked_token_is_refused_by_another_instance(app, database, admin):
    """Another process (uWSGI worker, instance) shares only the database."""
    from app import create_app
    from app.core.config import TestConfig

    headers = admin["headers"]
    assert app.test_client().post("/users/logout", headers=headers).status_code == 204
    other = create_app(TestConfig(database))
    try:
        assert other.test_client().get("/users/me", headers=headers).status_code == 401
    finally:
        with other.app_context():
            db.engine.dispose()


def test_expired_revocations_are_pruned_and_live_ones_kept(app, admin, reader):
    from datetime import timedelta

    from app.accounts import service as accounts
    from app.core.columns import utcnow

    with app.app_context():
        accounts.revoke_token(
            "expired-jti", admin["id"], int((utcnow() - timedelta(seconds=5)).timestamp())
        )
        accounts.revoke_token(
            "live-jti", reader["id"], int((utcnow() + timedelta(hours=1)).timestamp())
        )
        accounts.revoke_token(
            "live-jti", reader["id"], int((utcnow() + timedelta(hours=1)).timestamp())
        )
        db.session.commit()
        assert accounts.prune_revoked_tokens() == 1
        assert list(db.session.scalars(select(RevokedToken.jti))) == ["live-jti"]


def test_a_token_without_a_jti_is_refused(app, client, admin):
    from flask_jwt_extended import create_access_token

    with app.app_context():
        user = db.session.get(User, admin["id"])
        token = create_access_token(
            identity=str(user.id),
            additional_claims={"ver": user.token_version, "rol": 1, "jti": None},
        )
    assert client.get("/users/me", headers=bearer(token)).status_code == 401
