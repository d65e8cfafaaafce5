"""Conditional requests (ETag, If-None-Match, If-Match) and safe retries (Idempotency-Key)."""

from __future__ import annotations

from datetime import timedelta

from app.catalog.models import Product
from app.core import idempotency
from app.core.columns import utcnow
from app.core.extensions import db
from app.core.models import IdempotencyKey
from app.notifications.models import Notification

SEED = {"sku": "d7iy6euiue", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}


def test_a_read_sends_a_strong_etag_that_changes_with_the_product(client, make, admin):
    make.product("abc", price=10)
    first = client.get("/api/products/abc").headers["ETag"]
    assert first.startswith('"') and not first.startswith("W/")
    assert client.get("/api/products/abc").headers["ETag"] == first
    changed = client.put("/api/products/abc", json={"price": 11}, headers=admin["headers"])
    assert changed.headers["ETag"] != first
    assert client.get("/api/products/abc").headers["ETag"] == changed.headers["ETag"]


def test_if_none_match_answers_304_until_the_product_changes(client, make, admin):
    make.product("abc", price=10)
    tag = client.get("/api/products/abc").headers["ETag"]
    cached = client.get("/api/products/abc", headers={"If-None-Match": tag})
    assert cached.status_code == 304 and cached.data == b""
    client.patch("/api/products/abc", json={"quantity": 9}, headers=admin["headers"])
    fresh = client.get("/api/products/abc", headers={"If-None-Match": tag})
    assert fresh.status_code == 200 and fresh.json["quantity"] == 9


def test_a_stale_if_match_gets_412_and_changes_nothing(app, client, make, admin, rows):
    make.product("abc", price=10)
    stale = client.get("/api/products/abc").headers["ETag"]
    client.put("/api/products/abc", json={"price": 20}, headers=admin["headers"])

    for send in (client.put, client.patch):
        refused = send(
            "/api/products/abc",
            json={"price": 30},
            headers={**admin["headers"], "If-Match": stale},
        )
        assert refused.status_code == 412
        assert refused.json["code"] == 412 and "If-Match" in refused.json["message"]
    gone = client.delete("/api/products/abc", headers={**admin["headers"], "If-Match": stale})
    assert gone.status_code == 412
    assert client.get("/api/products/abc").json["price"] == 20
    assert len(rows(Notification)) == 1  # the one real change


def test_a_current_if_match_applies_the_change(client, make, admin):
    make.product("abc", price=10)
    tag = client.get("/api/products/abc").headers["ETag"]
    changed = client.put(
        "/api/products/abc", json={"price": 30}, headers={**admin["headers"], "If-Match": tag}
    )
    assert changed.status_code == 200 and changed.json["price"] == 30
    deleted = client.delete(
        "/api/products/abc",
        headers={**admin["headers"], "If-Match": changed.headers["ETag"]},
    )
    assert deleted.status_code == 204


# ---------------------------------------------------------------- Idempotency-Key


def test_a_retried_create_answers_the_first_answer_and_creates_once(app, client, admin, rows):
    headers = {**admin["headers"], "Idempotency-Key": "create-zapatos-1"}
    first = client.post("/api/products", json=SEED, headers=headers)
    again = client.post("/api/products", json=SEED, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(rows(Product)) == 1
    assert len(rows(Notification)) == 1  # one admin, one email


def test_the_same_key_with_another_body_gets_422(client, admin, rows):
    headers = {**admin["headers"], "Idempotency-Key": "k-1"}
    assert client.post("/api/products", json=SEED, headers=headers).status_code == 201
    other = client.post("/api/products", json={**SEED, "sku": "other"}, headers=headers)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json["message"]
    assert len(rows(Product)) == 1


def test_a_key_whose_request_is_still_running_gets_409(app, client, admin):
    body = b'{"sku": "abc"}'
    with app.app_context():  # the first request with this key has not finished
        db.session.add(
            IdempotencyKey(
                user_id=admin["id"],
                key="busy",
                fingerprint=idempotency.fingerprint("POST", "/api/products", body),
                locked_until=utcnow() + timedelta(seconds=60),
                expires_at=utcnow() + timedelta(hours=24),
            )
        )
        db.session.commit()
    answer = client.post(
        "/api/products",
        data=body,
        content_type="application/json",
        headers={**admin["headers"], "Idempotency-Key": "busy"},
    )
    assert answer.status_code == 409
    assert "still being processed" in answer.json["message"]


def test_keys_are_per_user_and_a_failed_request_frees_its_key(client, make, admin, rows):
    other = make.admin(email="other@example.com")
    key = {"Idempotency-Key": "same-key"}
    refused = client.post(
        "/api/products", json={**SEED, "price": -1}, headers={**admin["headers"], **key}
    )
    assert refused.status_code == 422
    assert (
        client.post("/api/products", json=SEED, headers={**admin["headers"], **key}).status_code
        == 201
    )
    theirs = client.post(
        "/api/products", json={**SEED, "sku": "theirs"}, headers={**other["headers"], **key}
    )
    assert theirs.status_code == 201
    assert len(rows(Product)) == 2


def test_a_retried_delete_and_update_do_nothing_twice(client, make, admin, rows):
    make.product("abc", price=10)
    put = {**admin["headers"], "Idempotency-Key": "put-1"}
    assert client.put("/api/products/abc", json={"price": 20}, headers=put).status_code == 200
    assert client.put("/api/products/abc", json={"price": 20}, headers=put).status_code == 200
    delete = {**admin["headers"], "Idempotency-Key": "delete-1"}
    assert client.delete("/api/products/abc", headers=delete).status_code == 204
    assert client.delete("/api/products/abc", headers=delete).status_code == 204
    events = [n.event.type for n in rows(Notification)]
    assert events == ["product.updated", "product.deleted"]


def test_an_unusable_key_is_refused_naming_the_header(client, admin):
    answer = client.post(
        "/api/products", json=SEED, headers={**admin["headers"], "Idempotency-Key": "x" * 300}
    )
    assert answer.status_code == 400
    assert "Idempotency-Key" in answer.json["errors"]["headers"]


def test_a_reservation_whose_commit_answer_was_lost_frees_its_key(client, admin, rows, monkeypatch):
    """The key's row committed but the database's answer to the COMMIT was lost: the
    request answers 503 (nothing of the change committed) and a retry with the same key
    runs at once, instead of finding the key held by a request that is over."""
    from sqlalchemy.exc import OperationalError

    real_reserve = idempotency.reserve

    def answer_lost(*args, **kwargs):
        real_reserve(*args, **kwargs)
        raise OperationalError("COMMIT", {}, Exception("Lost connection during query"))

    key = {"Idempotency-Key": "cut-commit"}
    monkeypatch.setattr(idempotency, "reserve", answer_lost)
    lost = client.post("/api/products", json=SEED, headers={**admin["headers"], **key})
    monkeypatch.setattr(idempotency, "reserve", real_reserve)
    assert lost.status_code == 503 and lost.headers["Retry-After"]
    assert rows(Product) == []
    retried = client.post("/api/products", json=SEED, headers={**admin["headers"], **key})
    assert retried.status_code == 201
    assert len(rows(Product)) == 1
