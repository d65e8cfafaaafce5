"""Logging in, and what happens to a token when its account changes."""

import jwt
import pytest

from tests.conftest import PASSWORD, bearer, login

# ---------------------------------------------------------------- logging in


@pytest.mark.parametrize("path", ["/users/login", "/users/login/"])
def test_login_returns_a_bearer_token(client, admin, path):
    response = login(client, "admin@example.com", path=path)

    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["Token"]
    assert body["access_token"] == body["Token"]


def test_the_token_from_login_opens_an_admin_route(client, admin):
    token = login(client, "admin@example.com").get_json()["Token"]

    response = client.get("/api/users", headers=bearer(token))

    assert response.status_code == 200
    assert [user["email"] for user in response.get_json()] == ["admin@example.com"]


def test_email_is_compared_in_any_case(client, admin):
    response = login(client, "  ADMIN@Example.COM ")

    assert response.status_code == 200


def test_wrong_email_and_wrong_password_get_the_same_answer(client, admin):
    wrong_email = login(client, "nobody@example.com")
    wrong_password = login(client, "admin@example.com", "not-the-password")

    assert wrong_email.status_code == wrong_password.status_code == 401
    # Each answer has its own request id; nothing else tells them apart.
    answers = [{**a.get_json(), "request_id": "-"} for a in (wrong_email, wrong_password)]
    assert answers[0] == answers[1]
    assert wrong_email.get_json()["message"] == "Wrong email or password."
    assert "Token" not in wrong_password.get_json()


def test_a_deleted_user_cannot_log_in(client, admin, reader):
    assert login(client, "reader@example.com").status_code == 200

    deleted = client.delete(f"/api/users/{reader['id']}", headers=admin["headers"])

    assert deleted.status_code == 204
    assert login(client, "reader@example.com").status_code == 401


def test_missing_password_is_422_naming_the_field(client, admin):
    response = client.post("/users/login", json={"email": "admin@example.com"})

    assert response.status_code == 422
    body = response.get_json()
    assert "password" in body["errors"]["json"]
    assert "password" in body["message"]


def test_unknown_login_field_is_422(client, admin):
    response = client.post(
        "/users/login",
        json={"email": "admin@example.com", "password": PASSWORD, "remember": True},
    )

    assert response.status_code == 422
    assert "remember" in response.get_json()["errors"]["json"]


def test_login_with_a_malformed_email_is_422(client):
    response = login(client, "not-an-email")

    assert response.status_code == 422
    assert "email" in response.get_json()["errors"]["json"]


# ---------------------------------------------------------------- revocation


def test_token_of_a_deleted_user_is_refused_at_once(client, make):
    boss = make.admin()
    other = make.admin()

    assert client.delete(f"/api/users/{other['id']}", headers=boss["headers"]).status_code == 204

    response = client.get("/api/users", headers=other["headers"])
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_token_of_a_demoted_admin_is_refused_at_once(client, make):
    boss = make.admin()
    other = make.admin()

    demoted = client.put(f"/api/users/{other['id']}", json={"rol": 2}, headers=boss["headers"])
    assert demoted.status_code == 200

    # 401, not 403: the old token no longer counts for anything, not even reading.
    assert client.get("/api/users", headers=other["headers"]).status_code == 401
    assert client.get("/api/products", headers=other["headers"]).status_code == 401


def test_token_is_refused_after_a_password_change(client, admin):
    old_token = login(client, "admin@example.com").get_json()["Token"]

    changed = client.patch(
        f"/api/users/{admin['id']}",
        json={"password": "a-brand-new-password"},
        headers=bearer(old_token),
    )
    assert changed.status_code == 200

    assert client.get("/api/users", headers=bearer(old_token)).status_code == 401
    assert login(client, "admin@example.com").status_code == 401
    new_token = login(client, "admin@example.com", "a-brand-new-password").get_json()["Token"]
    assert client.get("/api/users", headers=bearer(new_token)).status_code == 200


# ---------------------------------------------------------------- bad tokens on public routes


def test_public_catalog_needs_no_token(client):
    assert client.get("/api/products").status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-jwt",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "Bearer ",
        "Basic xxx",
    ],
)
def test_a_bad_authorization_header_is_401_even_on_a_public_route(client, authorization):
    response = client.get("/api/products", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert set(response.get_json()) == {"code", "status", "message", "request_id"}


def test_an_expired_token_is_401_even_on_a_public_route(client, make, admin):
    response = client.get("/api/products", headers=make.expired_headers(admin["id"]))

    assert response.status_code == 401
    assert "expired" in response.get_json()["message"]


def test_a_token_signed_with_another_key_is_401(client, admin):
    forged = jwt.encode(
        {"sub": str(admin["id"]), "ver": 1, "rol": 1, "type": "access"},
        "some-other-secret-key-of-enough-length",
        algorithm="HS256",
    )

    assert client.get("/api/users", headers=bearer(forged)).status_code == 401


def test_a_reader_token_is_forbidden_on_admin_routes(client, reader):
    response = client.get("/api/users", headers=reader["headers"])

    assert response.status_code == 403


def test_no_token_on_an_admin_route_is_401(client, admin):
    response = client.get("/api/users")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# ---------------------------------------------------------------- password hashing


def stored_hash(rows, user_id):
    from app.accounts.models import User

    return rows(User, User.id == user_id)[0].password_hash


def test_new_passwords_are_hashed_at_owasp_argon2id_parameters(client, admin, rows):
    body = {
        "fullname": "New",
        "password": "long-enough-1",
        "username": "new.user",
        "email": "new@example.com",
    }
    created = client.post("/api/users", json=body, headers=admin["headers"])
    assert created.status_code == 201
    assert stored_hash(rows, created.json["id"]).startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_an_older_hash_is_replaced_at_the_next_successful_login(app, client, admin, rows):
    from passlib.context import CryptContext

    from app.accounts.models import User
    from app.core.extensions import db

    old = CryptContext(
        schemes=["argon2"], argon2__memory_cost=65536, argon2__rounds=3, argon2__parallelism=4
    ).hash(PASSWORD)
    with app.app_context():
        db.session.get(User, admin["id"]).password_hash = old
        db.session.commit()

    assert login(client, "admin@example.com", "not-the-password").status_code == 401
    assert stored_hash(rows, admin["id"]) == old  # a failure changes nothing
    assert login(client, "admin@example.com").status_code == 200
    new = stored_hash(rows, admin["id"])
    assert new.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert login(client, "admin@example.com").status_code == 200
    assert stored_hash(rows, admin["id"]) == new  # rehashed once, not at every login


def test_argon2_parameters_are_configurable(database, monkeypatch):
    from app import create_app
    from app.accounts.passwords import hash_password
    from app.core.config import TestConfig

    monkeypatch.setenv("ARGON2_MEMORY_KIB", "32768")
    monkeypatch.setenv("ARGON2_TIME_COST", "3")
    monkeypatch.setenv("ARGON2_PARALLELISM", "2")
    with create_app(TestConfig(database)).app_context():
        assert hash_password("x" * 12).startswith("$argon2id$v=19$m=32768,t=3,p=2$")
