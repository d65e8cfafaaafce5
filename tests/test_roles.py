"""The role matrix: every admin route against every kind of caller.

no token, garbage token, expired token -> 401; a read-only account (rol 2) -> 403;
an admin -> 2xx. A refused request changes nothing in the database.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.accounts.models import User
from app.catalog.models import Product
from app.core.extensions import db

ROUTES = [
    (
        "post",
        "/api/products",
        {"sku": "new-1", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5},
        201,
    ),
    ("put", "/api/products/abc", {"price": 500}, 200),
    ("patch", "/api/products/abc/", {"quantity": 9}, 200),
    ("delete", "/api/products/abc", None, 204),
    (
        "post",
        "/api/users",
        {
            "fullname": "arnoldo",
            "password": "cheutere",
            "username": "marado",
            "email": "josuecevedo@xd.com",
            "rol": 2,
        },
        201,
    ),
    ("put", "/api/users/{target}", {"rol": 1}, 200),
    ("patch", "/api/users/{target}/", {"fullname": "Renamed"}, 200),
    ("delete", "/api/users/{target}", None, 204),
    ("get", "/api/users", None, 200),
    ("get", "/api/users/{target}", None, 200),
]

CALLERS = ["none", "garbage", "expired", "reader", "admin"]
EXPECTED = {"none": 401, "garbage": 401, "expired": 401, "reader": 403}


def snapshot(app) -> list[tuple]:
    """Every column of every product and user: what a refusal must leave untouched."""
    with app.app_context():
        state = []
        for model in (Product, User):
            table = model.__table__
            state += [tuple(row) for row in db.session.execute(select(table).order_by(table.c.id))]
        return state


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("method", "path", "body", "success"), ROUTES, ids=[f"{m.upper()} {p}" for m, p, _, _ in ROUTES]
)
def test_admin_routes_refuse_everyone_but_admins(
    app, client, make, admin, reader, caller, method, path, body, success
):
    make.product("abc", price=300, quantity=5)
    target = make.reader(email="target@example.com")
    headers = {
        "none": {},
        "garbage": {"Authorization": "Bearer not.a.token"},
        "expired": make.expired_headers(admin["id"]),
        "reader": reader["headers"],
        "admin": admin["headers"],
    }[caller]
    before = snapshot(app)

    response = getattr(client, method)(path.format(target=target["id"]), json=body, headers=headers)

    if caller == "admin":
        assert response.status_code == success, response.json
        if method != "get":
            assert snapshot(app) != before
        return
    assert response.status_code == EXPECTED[caller]
    assert response.json["code"] == EXPECTED[caller]
    assert response.json["message"]
    if EXPECTED[caller] == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(app) == before


@pytest.mark.parametrize("caller", ["none", "reader", "admin"])
def test_everyone_reads_products(client, make, admin, reader, caller):
    make.product("abc")
    headers = {"none": {}, "reader": reader["headers"], "admin": admin["headers"]}[caller]
    assert client.get("/api/products", headers=headers).status_code == 200
    assert client.get("/api/products/abc", headers=headers).status_code == 200


@pytest.mark.parametrize("header", ["Bearer not.a.token", "Bearer ", "Basic dXNlcjpwYXNz"])
def test_a_bad_header_on_a_public_route_is_401_not_anonymous(client, make, header):
    make.product("abc")
    assert client.get("/api/products/abc", headers={"Authorization": header}).status_code == 401
    assert client.get("/api/products", headers={"Authorization": header}).status_code == 401


def test_an_expired_token_on_a_public_route_is_401(client, make, admin):
    make.product("abc")
    response = client.get("/api/products/abc", headers=make.expired_headers(admin["id"]))
    assert response.status_code == 401
    assert "expired" in response.json["message"]
