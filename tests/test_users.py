"""Accounts: admins list, create, change and delete users."""

import json

import pytest

from app.accounts.models import Role, User
from app.core.addresses import BadEmail, canonical_email
from tests.conftest import bearer, login

SEED_USER = {
    "fullname": "arnoldo",
    "password": "cheutere",
    "username": "marado",
    "email": "josuecevedo@xd.com",
    "rol": 2,
}
PUBLIC_FIELDS = {"id", "fullname", "username", "email", "rol", "created_at", "updated_at"}


def public(user: dict) -> dict:
    """Fail unless a user in a response shows exactly the public fields (no password, no hash)."""
    assert set(user) == PUBLIC_FIELDS
    return user


def create(client, admin, **changes):
    return client.post("/api/users", json=SEED_USER | changes, headers=admin["headers"])


def live_users(rows):
    return rows(User, User.is_active)


# ---------------------------------------------------------------- reading


def test_list_users_is_paginated(client, make, admin):
    make.reader()
    make.reader()

    response = client.get("/api/users?page_size=2", headers=admin["headers"])

    assert response.status_code == 200
    assert json.loads(response.headers["X-Pagination"])["total"] == 3
    body = response.get_json()
    assert isinstance(body, list)
    assert len(body) == 2
    assert body[0]["email"] == "admin@example.com"
    for user in body:
        public(user)


@pytest.mark.parametrize("suffix", ["", "/"])
def test_get_one_user_with_or_without_trailing_slash(client, admin, reader, suffix):
    response = client.get(f"/api/users/{reader['id']}{suffix}", headers=admin["headers"])

    assert response.status_code == 200
    body = public(response.get_json())
    assert body["id"] == reader["id"]
    assert body["email"] == "reader@example.com"
    assert body["rol"] == 2


# ---------------------------------------------------------------- creating


def test_create_the_seed_user(client, admin, rows):
    response = create(client, admin)

    assert response.status_code == 201
    body = public(response.get_json())
    assert body["email"] == "josuecevedo@xd.com"
    assert body["username"] == "marado"
    assert body["rol"] == 2
    assert response.headers["Location"].endswith(f"/api/users/{body['id']}")
    fetched = client.get(response.headers["Location"], headers=admin["headers"])
    assert fetched.get_json() == body
    [stored] = rows(User, User.id == body["id"])
    assert stored.password_hash != "cheutere"
    assert "cheutere" not in response.get_data(as_text=True)


def test_the_created_reader_can_log_in_and_only_read(client, admin):
    create(client, admin)

    response = login(client, "josuecevedo@xd.com", "cheutere")

    assert response.status_code == 200
    headers = bearer(response.get_json()["Token"])
    assert client.get("/api/products", headers=headers).status_code == 200
    assert client.get("/api/users", headers=headers).status_code == 403


def test_no_user_response_reveals_a_password(client, admin, reader):
    created = create(client, admin)
    user_id = created.get_json()["id"]
    responses = [
        created,
        client.get("/api/users", headers=admin["headers"]),
        client.get(f"/api/users/{user_id}", headers=admin["headers"]),
        client.put(f"/api/users/{user_id}", json={"fullname": "A"}, headers=admin["headers"]),
        client.patch(
            f"/api/users/{user_id}", json={"password": "another-pass"}, headers=admin["headers"]
        ),
    ]

    for response in responses:
        assert response.status_code in (200, 201)
        body = response.get_json()
        for user in body if isinstance(body, list) else [body]:
            public(user)
        text = response.get_data(as_text=True)
        assert "argon2" not in text
        assert "cheutere" not in text
        assert "another-pass" not in text


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"email": "JOSUECEVEDO@XD.COM"}, "email"),
        ({"email": "josuecevedo@xd.com", "username": "someone-else"}, "email"),
        ({"email": "new@xd.com", "username": "MARADO"}, "username"),
    ],
)
def test_duplicate_email_or_username_is_409(client, admin, rows, changes, field):
    assert create(client, admin).status_code == 201
    before = len(rows(User))

    response = create(client, admin, **changes)

    assert response.status_code == 409
    assert field in response.get_json()["errors"]["json"]
    assert len(rows(User)) == before


def test_changing_to_a_taken_email_is_409(client, admin, reader):
    response = client.patch(
        f"/api/users/{reader['id']}", json={"email": "Admin@Example.com"}, headers=admin["headers"]
    )

    assert response.status_code == 409
    assert "email" in response.get_json()["errors"]["json"]


def test_the_email_of_a_deleted_user_can_be_used_again(client, admin):
    first = create(client, admin).get_json()
    client.delete(f"/api/users/{first['id']}", headers=admin["headers"])

    again = create(client, admin)

    assert again.status_code == 201
    assert again.get_json()["id"] != first["id"]
    assert login(client, "josuecevedo@xd.com", "cheutere").status_code == 200


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"email": "not-an-email"}, "email"),
        ({"password": "short"}, "password"),
        ({"rol": 3}, "rol"),
        ({"is_admin": True}, "is_admin"),
        ({"username": ""}, "username"),
    ],
)
def test_invalid_user_is_422_and_nothing_is_written(client, admin, rows, changes, field):
    before = len(rows(User))

    response = create(client, admin, **changes)

    assert response.status_code == 422
    assert field in response.get_json()["errors"]["json"]
    assert len(rows(User)) == before


def test_missing_fields_are_all_named(client, admin):
    response = client.post("/api/users", json={}, headers=admin["headers"])

    assert response.status_code == 422
    assert {"fullname", "password", "username", "email"} <= set(
        response.get_json()["errors"]["json"]
    )


# ---------------------------------------------------------------- changing


def test_put_rol_1_promotes_a_reader_who_can_then_create_a_product(client, admin, reader, rows):
    response = client.put(f"/api/users/{reader['id']}", json={"rol": 1}, headers=admin["headers"])

    assert response.status_code == 200
    assert public(response.get_json())["rol"] == 1
    assert rows(User, User.id == reader["id"])[0].role == Role.ADMIN

    token = login(client, "reader@example.com", "correct-horse-42").get_json()["Token"]
    product = {"sku": "zap-1", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}
    created = client.post("/api/products", json=product, headers=bearer(token))
    assert created.status_code == 201


def test_patch_changes_only_the_fields_sent(client, admin, reader):
    before = client.get(f"/api/users/{reader['id']}", headers=admin["headers"]).get_json()

    response = client.patch(
        f"/api/users/{reader['id']}", json={"fullname": "Arnoldo M."}, headers=admin["headers"]
    )

    assert response.status_code == 200
    after = public(response.get_json())
    assert after["fullname"] == "Arnoldo M."
    unchanged = ("id", "username", "email", "rol", "created_at")
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert client.get(f"/api/users/{reader['id']}", headers=admin["headers"]).get_json() == after


def test_put_can_change_email_and_password(client, admin, reader):
    response = client.put(
        f"/api/users/{reader['id']}",
        json={"email": "New.Reader@Example.com", "password": "new-password-1"},
        headers=admin["headers"],
    )

    assert response.status_code == 200
    assert response.get_json()["email"] == "new.reader@example.com"
    assert login(client, "reader@example.com", "correct-horse-42").status_code == 401
    assert login(client, "new.reader@example.com", "new-password-1").status_code == 200


def test_invalid_update_is_422_and_changes_nothing(client, admin, reader, rows):
    response = client.patch(
        f"/api/users/{reader['id']}",
        json={"fullname": "Changed", "rol": 3},
        headers=admin["headers"],
    )

    assert response.status_code == 422
    assert "rol" in response.get_json()["errors"]["json"]
    assert rows(User, User.id == reader["id"])[0].fullname != "Changed"


# ---------------------------------------------------------------- deleting


def test_delete_user(client, admin, reader, rows):
    response = client.delete(f"/api/users/{reader['id']}", headers=admin["headers"])

    assert response.status_code == 204
    assert response.get_data() == b""
    assert client.get(f"/api/users/{reader['id']}", headers=admin["headers"]).status_code == 404
    listed = client.get("/api/users", headers=admin["headers"])
    assert reader["id"] not in [user["id"] for user in listed.get_json()]
    assert json.loads(listed.headers["X-Pagination"])["total"] == 1
    assert [user.id for user in live_users(rows)] == [admin["id"]]


def test_the_last_admin_cannot_be_deleted(client, admin, reader, rows):
    response = client.delete(f"/api/users/{admin['id']}", headers=admin["headers"])

    assert response.status_code == 409
    assert "last active admin" in response.get_json()["message"]
    [stored] = rows(User, User.id == admin["id"])
    assert stored.is_active
    assert stored.role == Role.ADMIN
    assert client.get("/api/users", headers=admin["headers"]).status_code == 200


@pytest.mark.parametrize("method", ["put", "patch"])
def test_the_last_admin_cannot_be_demoted(client, admin, reader, rows, method):
    send = getattr(client, method)

    response = send(f"/api/users/{admin['id']}", json={"rol": 2}, headers=admin["headers"])

    assert response.status_code == 409
    assert rows(User, User.id == admin["id"])[0].role == Role.ADMIN
    assert client.get("/api/users", headers=admin["headers"]).status_code == 200


def test_with_two_admins_one_can_delete_the_other(client, admin, make, rows):
    other = make.admin()

    response = client.delete(f"/api/users/{other['id']}", headers=admin["headers"])

    assert response.status_code == 204
    assert [user.id for user in live_users(rows)] == [admin["id"]]
    # Now the remaining one is the last admin.
    assert client.delete(f"/api/users/{admin['id']}", headers=admin["headers"]).status_code == 409


def test_with_two_admins_one_can_be_demoted(client, admin, make, rows):
    other = make.admin()

    response = client.patch(f"/api/users/{other['id']}", json={"rol": 2}, headers=admin["headers"])

    assert response.status_code == 200
    assert rows(User, User.id == other["id"])[0].role == Role.READER


def test_a_deleted_user_cannot_be_changed_or_deleted_again(client, admin, reader):
    client.delete(f"/api/users/{reader['id']}", headers=admin["headers"])

    url = f"/api/users/{reader['id']}"
    assert client.patch(url, json={"rol": 1}, headers=admin["headers"]).status_code == 404
    assert client.delete(url, headers=admin["headers"]).status_code == 404


# ---------------------------------------------------------------- unknown ids and guards


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_unknown_user_id_is_404(client, admin, method):
    send = getattr(client, method)
    kwargs = {"json": {"fullname": "x"}} if method in ("put", "patch") else {}

    response = send("/api/users/999999", headers=admin["headers"], **kwargs)

    assert response.status_code == 404
    assert response.get_json()["message"] == "No user with id 999999."


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/users"),
        ("post", "/api/users"),
        ("get", "/api/users/1"),
        ("put", "/api/users/1"),
        ("delete", "/api/users/1"),
    ],
)
def test_readers_and_anonymous_cannot_manage_users(client, admin, reader, rows, method, path):
    send = getattr(client, method)
    kwargs = {"json": SEED_USER} if method in ("post", "put") else {}
    before = [(u.id, u.role, u.is_active) for u in rows(User)]

    assert send(path, **kwargs).status_code == 401
    assert send(path, headers=reader["headers"], **kwargs).status_code == 403
    assert [(u.id, u.role, u.is_active) for u in rows(User)] == before


def test_two_admins_demoting_each_other_at_once_leave_one_admin(app, make, rows):
    """The last-admin rule holds under concurrency (row locks; SQLite's write lock)."""
    import threading

    from app.accounts import service as accounts
    from app.accounts.models import Role, User
    from app.core.errors import RuleError
    from app.core.extensions import db

    first, second = make.admin(email="a1@example.com"), make.admin(email="a2@example.com")
    start = threading.Barrier(2)
    outcomes = []

    def demote(target_id):
        with app.app_context():
            user = db.session.get(User, target_id)
            start.wait()
            try:
                accounts.update_user(user, {"role": Role.READER})
                db.session.commit()
                outcomes.append("demoted")
            except RuleError:
                db.session.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=demote, args=(t["id"],)) for t in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["demoted", "refused"]
    assert len(rows(User, User.role == Role.ADMIN, User.is_active)) == 1


# ---------------------------------------------------------------- lookalike emails

FULLWIDTH_ADMIN = "\uff41\uff44\uff4d\uff49\uff4e@example.com"  # "admin" in fullwidth letters
CYRILLIC_A_DOMAIN = "admin@ex\u0430mple.com"  # a Cyrillic a
LOOKALIKES = [
    FULLWIDTH_ADMIN,
    CYRILLIC_A_DOMAIN,
    "admin@xn--exmple-4nf.com",  # the same Cyrillic a, in IDNA's ASCII form
    "admin@XN--EXMPLE-4NF.COM",
    "admin@[127.0.0.1]",
    "admin@127.0.0.1",
    "\u0430dmin@example.com",  # a Cyrillic a before @
    '"admin"@example.com',
    "ADMIN@EXAMPLE.COM",
]


def new_user(client, admin, email):
    body = {"fullname": "Twin", "password": "long-enough-1", "username": "twin", "email": email}
    return client.post("/api/users", json=body, headers=admin["headers"])


@pytest.mark.parametrize("email", LOOKALIKES)
def test_no_account_can_differ_from_another_only_by_lookalike_characters(
    client, admin, rows, email
):
    response = new_user(client, admin, email)

    assert response.status_code in (409, 422)
    if response.status_code == 422:
        assert list(response.json["errors"]["json"]) == ["email"]
    assert [user.email for user in rows(User)] == ["admin@example.com"]


def test_emails_are_stored_in_one_canonical_form(client, admin):
    wide = new_user(client, admin, "\uff2a\uff4f@B\u00fccher.Example")  # "Jo" in fullwidth
    assert wide.status_code == 201
    assert wide.json["email"] == "jo@xn--bcher-kva.example"
    again = client.post(
        "/api/users",
        json={
            "fullname": "Jo",
            "password": "long-enough-1",
            "username": "jo2",
            "email": "jo@xn--bcher-kva.example",
        },
        headers=admin["headers"],
    )
    assert again.status_code == 409
    assert login(client, "JO@bücher.example", "long-enough-1").status_code == 200


@pytest.mark.parametrize(
    ("email", "why"),
    [
        ("a@xn--exmple-4nf.com", "mixes alphabets"),  # ex + Cyrillic a + mple
        ("a@shop.xn--pypal-4ve.com", "mixes alphabets"),  # p + Cyrillic a + ypal
        ("a@xn--zz.com", "not a valid domain name"),  # not punycode at all
        ("a@xn--.com", "not a valid domain name"),
    ],
)
def test_a_domain_in_idna_form_is_checked_as_what_it_spells(email, why):
    with pytest.raises(BadEmail, match=why):
        canonical_email(email)
    # one script, in either form, is one address
    assert canonical_email("a@xn--bcher-kva.example") == canonical_email("a@bücher.example")


def test_a_lookalike_email_at_login_is_just_a_wrong_email(client, admin):
    for email in (CYRILLIC_A_DOMAIN, "admin@[127.0.0.1]"):
        assert login(client, email).status_code == 401
    fullwidth = login(client, FULLWIDTH_ADMIN)
    assert fullwidth.status_code == 200  # the same account, written in fullwidth letters


def test_create_admin_refuses_a_lookalike_email(runner, rows):
    result = runner.invoke(
        args=["users", "create-admin", "--email", CYRILLIC_A_DOMAIN, "--password", "long-enough-1"]
    )
    assert result.exit_code == 1
    assert "mixes alphabets" in result.output
    assert rows(User) == []
