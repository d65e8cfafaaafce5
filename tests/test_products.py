"""Products: the seed's routes and bodies, as a client uses them."""

from __future__ import annotations

import json

import pytest

from app.catalog.models import Product

SEED = {"sku": "d7iy6euiue", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}
PRODUCT_KEYS = {"sku", "name", "price", "mark", "quantity", "created_at", "updated_at"}


def live(rows):
    return rows(Product, Product.deleted_at.is_(None))


def test_admin_creates_reads_updates_and_deletes_a_product(client, admin, rows):
    created = client.post("/api/products", json=SEED, headers=admin["headers"])
    assert created.status_code == 201
    assert created.headers["Location"].endswith("/api/products/d7iy6euiue")
    assert set(created.json) == PRODUCT_KEYS
    assert created.json["price"] == 300 and created.json["quantity"] == 5

    read = client.get("/api/products/d7iy6euiue")
    assert read.status_code == 200
    assert read.json["name"] == "zapatos"

    updated = client.put("/api/products/d7iy6euiue/", json={"price": 500}, headers=admin["headers"])
    assert updated.status_code == 200
    assert updated.json["price"] == 500
    assert updated.json["name"] == "zapatos"  # untouched fields stay

    deleted = client.delete("/api/products/d7iy6euiue/", headers=admin["headers"])
    assert deleted.status_code == 204
    assert deleted.data == b""
    assert client.get("/api/products/d7iy6euiue").status_code == 404
    assert client.get("/api/products").json == []
    # the row stays for its history, out of the API
    assert [p.sku for p in rows(Product)] == ["d7iy6euiue"]


@pytest.mark.parametrize("path", ["/api/products/abc", "/api/products/abc/"])
def test_item_routes_answer_with_and_without_trailing_slash(client, make, path):
    make.product("abc")
    response = client.get(path)
    assert response.status_code == 200
    assert response.json["sku"] == "abc"


def test_list_route_answers_with_trailing_slash(client, make):
    make.product("abc")
    assert client.get("/api/products/").json[0]["sku"] == "abc"


def test_patch_is_a_partial_update_like_put(client, admin, make):
    make.product("abc", quantity=3)
    response = client.patch("/api/products/abc", json={"quantity": 7}, headers=admin["headers"])
    assert response.status_code == 200
    assert response.json["quantity"] == 7
    assert client.get("/api/products/abc").json["quantity"] == 7


@pytest.mark.parametrize(
    ("sent", "returned"), [(300, 300), (19.99, 19.99), (19.9, 19.9), (0, 0), (1234567.5, 1234567.5)]
)
def test_prices_are_exact_numbers_in_and_out(client, admin, sent, returned):
    body = {**SEED, "price": sent}
    response = client.post("/api/products", json=body, headers=admin["headers"])
    assert response.status_code == 201
    raw = client.get("/api/products/d7iy6euiue").data.decode()
    assert json.loads(raw)["price"] == returned
    assert '"price": "' not in raw and '"price":"' not in raw  # a number, never a string


def test_price_with_more_than_two_decimals_is_refused(client, admin):
    response = client.post(
        "/api/products", json={**SEED, "price": 19.999}, headers=admin["headers"]
    )
    assert response.status_code == 422
    assert "price" in response.json["errors"]["json"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price", -1),
        ("price", "300"),
        ("price", True),
        ("price", 10**12),
        ("quantity", -1),
        ("quantity", 2.5),
        ("quantity", "5"),
        ("quantity", True),
        ("name", ""),
        ("name", "x" * 201),
        ("mark", None),
        ("sku", "../etc/passwd"),
        ("sku", "has space"),
        ("sku", ""),
    ],
)
def test_bad_fields_are_named_and_nothing_is_written(client, admin, rows, field, value):
    response = client.post("/api/products", json={**SEED, field: value}, headers=admin["headers"])
    assert response.status_code == 422
    assert response.json["code"] == 422
    assert response.json["status"] == "Unprocessable Entity"
    assert field in response.json["errors"]["json"]
    assert field in response.json["message"]
    assert rows(Product) == []


def test_missing_and_unknown_fields_are_all_named(client, admin, rows):
    response = client.post(
        "/api/products", json={"sku": "x1", "colour": "red"}, headers=admin["headers"]
    )
    assert response.status_code == 422
    assert set(response.json["errors"]["json"]) == {"name", "price", "mark", "colour"}
    assert rows(Product) == []


def test_quantity_defaults_to_zero(client, admin):
    body = {key: value for key, value in SEED.items() if key != "quantity"}
    assert client.post("/api/products", json=body, headers=admin["headers"]).json["quantity"] == 0


def test_malformed_json_is_400_and_writes_nothing(client, admin, rows):
    response = client.post(
        "/api/products",
        data='{"sku": "x",',
        headers={**admin["headers"], "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json["code"] == 400
    assert "JSON" in response.json["message"]
    assert rows(Product) == []


def test_form_body_is_415_with_a_hint(client, admin):
    response = client.post("/api/products", data={"sku": "x"}, headers=admin["headers"])
    assert response.status_code == 415
    assert "application/json" in response.json["message"]


def test_an_update_cannot_change_the_sku(client, admin, make):
    make.product("abc", price=300)
    response = client.put(
        "/api/products/abc", json={"sku": "xyz", "price": 1}, headers=admin["headers"]
    )
    assert response.status_code == 422
    assert "sku" in response.json["errors"]["json"]
    assert client.get("/api/products/abc").json["price"] == 300
    assert client.get("/api/products/xyz").status_code == 404


def test_an_update_may_repeat_the_same_sku(client, admin, make):
    make.product("abc")
    response = client.put(
        "/api/products/abc", json={"sku": "abc", "name": "botas"}, headers=admin["headers"]
    )
    assert response.status_code == 200
    assert response.json["name"] == "botas"


def test_unknown_product_is_404_on_every_item_route(client, admin):
    assert client.get("/api/products/nope").status_code == 404
    assert (
        client.put("/api/products/nope", json={"price": 1}, headers=admin["headers"]).status_code
        == 404
    )
    assert (
        client.patch("/api/products/nope", json={"price": 1}, headers=admin["headers"]).status_code
        == 404
    )
    response = client.delete("/api/products/nope", headers=admin["headers"])
    assert response.status_code == 404
    assert response.json["message"] == "No product with sku 'nope'."


def test_skus_are_unique_whatever_the_case(client, admin, rows):
    assert client.post("/api/products", json=SEED, headers=admin["headers"]).status_code == 201
    again = client.post(
        "/api/products", json={**SEED, "sku": "D7IY6EUIUE"}, headers=admin["headers"]
    )
    assert again.status_code == 409
    assert "sku" in again.json["errors"]["json"]
    assert len(rows(Product)) == 1
    # and looked up whatever the case, keeping the case it was created with
    assert client.get("/api/products/D7iy6EUIUE").json["sku"] == "d7iy6euiue"


def test_a_deleted_products_sku_can_be_used_again(client, admin, rows):
    client.post("/api/products", json=SEED, headers=admin["headers"])
    client.delete("/api/products/d7iy6euiue", headers=admin["headers"])
    again = client.post("/api/products", json={**SEED, "price": 450}, headers=admin["headers"])
    assert again.status_code == 201
    assert client.get("/api/products/d7iy6euiue").json["price"] == 450
    assert len(rows(Product)) == 2
    assert len(live(rows)) == 1


# ---------------------------------------------------------------- the list


def skus(response) -> list[str]:
    return [product["sku"] for product in response.json]


def test_list_is_a_json_array_paginated_with_headers(client, make):
    for n in range(25):
        make.product(f"p{n:02}")
    first = client.get("/api/products")
    assert first.status_code == 200
    assert isinstance(first.json, list) and len(first.json) == 20
    meta = json.loads(first.headers["X-Pagination"])
    assert meta["total"] == 25
    assert meta["total_pages"] == 2
    assert meta["next_page"] == 2
    assert 'rel="next"' in first.headers["Link"]
    assert "page=2" in first.headers["Link"]

    second = client.get("/api/products?page=2")
    assert len(second.json) == 5
    assert set(skus(first)).isdisjoint(skus(second))


def test_page_size_is_capped_at_100(client, make):
    assert client.get("/api/products?page_size=101").status_code == 422
    make.product("one")
    assert len(client.get("/api/products?page_size=100").json) == 1


def test_list_keeps_query_filters_in_link_header(client, make):
    for n in range(3):
        make.product(f"p{n}", mark="nike")
    response = client.get("/api/products?mark=nike&page_size=1")
    assert "mark=nike" in response.headers["Link"]


def test_filters(client, make):
    make.product("a", name="Zapatos rojos", mark="Nike", price=100, quantity=0)
    make.product("b", name="zapatillas", mark="nike", price=250, quantity=3)
    make.product("c", name="Camisa", mark="Adidas", price=50, quantity=9)

    assert sorted(skus(client.get("/api/products?q=ZAPAT"))) == ["a", "b"]
    assert sorted(skus(client.get("/api/products?mark=NIKE"))) == ["a", "b"]
    assert skus(client.get("/api/products?min_price=60&max_price=200")) == ["a"]
    assert sorted(skus(client.get("/api/products?in_stock=true"))) == ["b", "c"]
    assert skus(client.get("/api/products?in_stock=false")) == ["a"]
    assert skus(client.get("/api/products?q=%25")) == []  # % is a character, not a wildcard


def test_sorting_in_both_directions(client, make):
    make.product("a", name="banana", price=20)
    make.product("b", name="Apple", price=30)
    make.product("c", name="cherry", price=10)
    assert skus(client.get("/api/products?sort=price")) == ["c", "a", "b"]
    assert skus(client.get("/api/products?sort=-price")) == ["b", "a", "c"]
    assert skus(client.get("/api/products?sort=name")) == ["b", "a", "c"]
    assert skus(client.get("/api/products?sort=-name")) == ["c", "a", "b"]
    assert skus(client.get("/api/products?sort=created")) == ["a", "b", "c"]
    assert skus(client.get("/api/products?sort=-created")) == ["c", "b", "a"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("sort=colour", "sort"),
        ("min_price=-1", "min_price"),
        ("min_price=abc", "min_price"),
        ("min_price=50&max_price=10", "min_price"),
        ("in_stock=maybe", "in_stock"),
        ("page=0", "page"),
        ("page_size=abc", "page_size"),
    ],
)
def test_bad_list_parameters_are_named(client, query, field):
    response = client.get(f"/api/products?{query}")
    assert response.status_code == 422
    assert field in response.json["errors"]["query"]


def test_deleted_products_are_not_listed(client, admin, make):
    make.product("keep")
    make.product("gone")
    client.delete("/api/products/gone", headers=admin["headers"])
    assert skus(client.get("/api/products")) == ["keep"]
    assert json.loads(client.get("/api/products").headers["X-Pagination"])["total"] == 1


def test_strings_are_stored_verbatim_never_executed(client, admin):
    hostile = "'; DROP TABLE products; -- <script>alert(1)</script>"
    response = client.post(
        "/api/products", json={**SEED, "name": hostile, "mark": hostile}, headers=admin["headers"]
    )
    assert response.status_code == 201
    assert client.get("/api/products/d7iy6euiue").json["name"] == hostile
    assert skus(client.get("/api/products", query_string={"q": "DROP TABLE"})) == ["d7iy6euiue"]


def test_an_oversized_body_is_413_and_writes_nothing(client, admin, rows):
    body = {**SEED, "name": "x" * 100_000}
    response = client.post("/api/products", json=body, headers=admin["headers"])
    assert response.status_code == 413
    assert response.json["code"] == 413
    assert rows(Product) == []
