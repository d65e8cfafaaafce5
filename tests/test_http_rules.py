"""Rules every route keeps: a query parameter it does not take is a 422 naming it (as an
unknown body field is), and an empty answer (204, 304) is not labelled as JSON."""

from __future__ import annotations

import pytest

from app.catalog.models import Product
from app.views.models import ProductView


def operations(spec: dict):
    for path, ops in spec["paths"].items():
        for method, operation in ops.items():
            if method != "parameters":
                yield method, path, operation


def test_a_misspelt_query_parameter_is_a_422_naming_it(client, make):
    for n in range(3):
        make.product(f"p{n}")
    refused = client.get("/api/products?pagesize=1")
    assert refused.status_code == 422
    assert refused.json["errors"] == {"query": {"pagesize": ["Unknown field."]}}
    assert "pagesize" in refused.json["message"] and "page_size" in refused.json["message"]
    assert len(client.get("/api/products?page_size=1").json) == 1


def test_every_unknown_parameter_is_named_and_known_ones_are_not(client, admin):
    refused = client.get(
        "/api/stats/products?from=2026-11-01&top=5&viewers=all", headers=admin["headers"]
    )
    assert refused.status_code == 422
    assert refused.json["errors"] == {
        "query": {"top": ["Unknown field."], "viewers": ["Unknown field."]}
    }
    # the wire names count (from/to/viewer), not the Python ones (start/end/audience)
    fine = client.get("/api/stats/products?from=2026-11-01&viewer=all", headers=admin["headers"])
    assert fine.status_code == 200


def test_every_operation_refuses_a_query_parameter_it_does_not_declare(client, admin, make, rows):
    spec = client.get("/api/openapi.json").json
    make.product("abc")
    for method, path, operation in operations(spec):
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        assert "nosuch" not in declared
        url = (
            path.replace("{sku}", "abc")
            .replace("{user_id}", str(admin["id"]))
            .replace("{notification_id}", "1")
            .replace("{webhook_id}", "1")
            .replace("{delivery_id}", "1")
        )
        response = getattr(client, method)(f"{url}?nosuch=1", json={}, headers=admin["headers"])
        label = f"{method.upper()} {path}"
        assert response.status_code == 422, label
        assert response.json["errors"] == {"query": {"nosuch": ["Unknown field."]}}, label
        assert "422" in operation["responses"], label
    # refused before anything happened: the product is still there, no view was counted
    assert [p.sku for p in rows(Product, Product.deleted_at.is_(None))] == ["abc"]
    assert rows(ProductView) == []


def test_head_keeps_the_rule_of_get(client, make):
    make.product("abc")
    assert client.head("/api/products/abc?x=1").status_code == 422
    assert client.head("/api/products/abc").status_code == 200


@pytest.mark.parametrize("idempotency_key", [None, "delete-abc-1"])
def test_a_204_carries_no_content_type(client, admin, make, idempotency_key):
    make.product("abc")
    headers = dict(admin["headers"])
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    answers = [client.delete("/api/products/abc", headers=headers)]
    if idempotency_key:  # the replay of the first answer is empty too
        answers.append(client.delete("/api/products/abc", headers=headers))
    for answer in answers:
        assert answer.status_code == 204
        assert answer.data == b""
        assert "Content-Type" not in answer.headers
        assert "Content-Length" not in answer.headers


def test_deleting_a_user_answers_204_without_content_type(client, admin, make):
    reader = make.reader()
    answer = client.delete(f"/api/users/{reader['id']}", headers=admin["headers"])
    assert answer.status_code == 204
    assert "Content-Type" not in answer.headers


def test_a_304_carries_no_content_type(client, make):
    make.product("abc")
    tag = client.get("/api/products/abc").headers["ETag"]
    cached = client.get("/api/products/abc", headers={"If-None-Match": tag})
    assert cached.status_code == 304
    assert "Content-Type" not in cached.headers
    assert cached.headers["ETag"] == tag
