"""Every committed change is an event: product and account history, as_of, revert, a feed
that never skips, the chain that `flask events verify` checks, and emails that reference
their event and keep every try."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, select, text, update

from app.catalog import service
from app.catalog.models import Product
from app.core.extensions import db
from app.events.models import Event
from app.notifications.models import Notification
from app.worker import Worker
from tests.test_notifications import SEED, inbox, ses  # noqa: F401 (fixture)

SHOE = {"sku": "shoe", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}


def feed(client, headers, after=0, **params) -> dict:
    answer = client.get("/api/events", query_string={"after": after, **params}, headers=headers)
    assert answer.status_code == 200, answer.json
    return answer.json


def product_events(client, headers) -> list[dict]:
    return [e for e in feed(client, headers, limit=1000)["events"] if "sku" in e]


def test_a_product_change_is_one_event_with_who_when_and_old_and_new(client, admin):
    headers = admin["headers"]
    assert client.post("/api/products", json=SHOE, headers=headers).status_code == 201
    assert client.put("/api/products/shoe", json={"price": 500}, headers=headers).status_code == 200
    assert client.delete("/api/products/shoe", headers=headers).status_code == 204

    created, updated, deleted = product_events(client, headers)
    assert created["type"] == "product.created" and created["version"] == 1
    assert created["changes"]["price"] == {"old": None, "new": 300}
    assert updated == {
        "id": updated["id"],
        "type": "product.updated",
        "at": updated["at"],
        "actor": {"id": admin["id"], "email": "admin@example.com"},
        "sku": "shoe",
        "changes": {"price": {"old": 300, "new": 500}},
        "version": 2,
    }
    assert deleted["type"] == "product.deleted" and deleted["version"] == 3
    assert deleted["changes"]["name"] == {"old": "zapatos", "new": None}
    assert created["id"] < updated["id"] < deleted["id"]
    assert datetime.fromisoformat(updated["at"]) <= datetime.now(UTC)


def test_a_change_that_changes_nothing_writes_no_event(client, admin, make):
    make.product("shoe", name="zapatos")
    before = feed(client, admin["headers"])["last_id"]
    answer = client.put("/api/products/shoe", json={"name": "zapatos"}, headers=admin["headers"])
    assert answer.status_code == 200
    assert feed(client, admin["headers"], after=before)["events"] == []


def test_a_rolled_back_change_leaves_no_event(app, make, rows):
    make.product("shoe", price=300)
    with app.app_context():
        product = Product.by_sku("shoe", lock=True)
        service.update_product(product, {"price": 999}, actor=None)
        db.session.flush()
        db.session.rollback()
    assert rows(Event, Event.sku == "shoe") == []
    assert rows(Notification) == []


def test_account_events_never_hold_a_password(client, admin):
    headers = admin["headers"]
    body = {
        "fullname": "Ana",
        "username": "ana",
        "email": "ana@example.com",
        "password": "secret-123",
    }
    user = client.post("/api/users", json=body, headers=headers).json
    changed = {"rol": 1, "password": "another-secret-4", "fullname": "Ana M."}
    assert client.put(f"/api/users/{user['id']}", json=changed, headers=headers).status_code == 200
    assert client.delete(f"/api/users/{user['id']}", headers=headers).status_code == 204

    history = client.get(f"/api/users/{user['id']}/history", headers=headers).json
    assert [e["type"] for e in history] == ["user.deleted", "user.updated", "user.created"]
    _deleted, updated, created = history
    assert created["user_id"] == user["id"] and "sku" not in created
    assert created["changes"]["email"] == {"old": None, "new": "ana@example.com"}
    assert updated["changes"] == {
        "password": {"changed": True},
        "rol": {"old": 2, "new": 1},
        "fullname": {"old": "Ana", "new": "Ana M."},
    }
    assert created["actor"] == {"id": admin["id"], "email": admin["email"]}
    raw = str(feed(client, headers, limit=1000))
    assert "secret-123" not in raw and "another-secret-4" not in raw and "argon2" not in raw


def test_a_change_made_on_the_command_line_has_no_actor(app, runner, client, admin):
    result = runner.invoke(
        args=["users", "create-admin", "--email", "ops@example.com", "--password", "ops-password-1"]
    )
    assert result.exit_code == 0, result.output
    last = feed(client, admin["headers"])["events"][-1]
    assert last["type"] == "user.created" and last["actor"] is None


def test_a_catalog_import_of_n_rows_writes_n_events(client, admin, make):
    make.product("shoe", name="zapatos", price=300, mark="chabelo", quantity=5)
    csv = "sku,name,price,mark,quantity\nshoe,zapatos,400,chabelo,5\n"
    csv += "".join(f"new-{n},item {n},1,acme,1\n" for n in range(5))
    before = feed(client, admin["headers"])["last_id"]
    answer = client.post(
        "/api/catalog/import",
        data=csv,
        headers={**admin["headers"], "Content-Type": "text/csv"},
    )
    assert answer.status_code == 200, answer.json
    found = feed(client, admin["headers"], after=before)["events"]
    assert [e["type"] for e in found] == ["product.updated"] + ["product.created"] * 5
    assert found[0]["changes"] == {"price": {"old": 300, "new": 400}}
    assert [e["id"] for e in found] == list(range(before + 1, before + 7))
    history = client.get("/api/products/new-3/history", headers=admin["headers"]).json
    assert [e["changes"]["name"]["new"] for e in history] == ["item 3"]


def test_the_feed_pages_and_filters_by_type(client, admin, make):
    headers = admin["headers"]
    for n in range(5):
        client.post("/api/products", json={**SHOE, "sku": f"p{n}"}, headers=headers)
    client.delete("/api/products/p0", headers=headers)
    first = feed(client, headers, limit=2)
    assert len(first["events"]) == 2 and first["last_id"] == first["events"][-1]["id"]
    rest = feed(client, headers, after=first["last_id"], limit=1000)
    ids = [e["id"] for e in first["events"] + rest["events"]]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    empty = feed(client, headers, after=rest["last_id"])
    assert empty == {"events": [], "last_id": rest["last_id"]}
    deletions = feed(client, headers, type="product.deleted")["events"]
    assert [e["sku"] for e in deletions] == ["p0"]
    assert client.get("/api/events?type=nope", headers=headers).status_code == 422


def test_the_feed_is_for_admins(client, reader):
    assert client.get("/api/events").status_code == 401
    assert client.get("/api/events", headers=reader["headers"]).status_code == 403


def test_a_reader_polling_the_feed_sees_each_of_many_concurrent_changes_once_in_order(
    app, admin, make
):
    """8 threads make 200 changes at once; a reader polls the feed all along: its union
    has each change once, and every page follows the last one's ids."""
    skus = [f"c{n}" for n in range(8)]
    for sku in skus:
        make.product(sku, price=1)
    start = feed(app.test_client(), admin["headers"])["last_id"]
    done = threading.Event()
    seen: list[int] = []

    def poll() -> None:
        client, after = app.test_client(), start
        while True:
            finished = done.is_set()
            page = feed(client, admin["headers"], after=after, limit=50)
            seen.extend(e["id"] for e in page["events"])
            after = page["last_id"]
            if finished and not page["events"]:
                return

    def change(sku: str) -> None:
        client = app.test_client()
        for n in range(25):
            answer = client.put(
                f"/api/products/{sku}", json={"price": n + 2}, headers=admin["headers"]
            )
            assert answer.status_code == 200

    reader = threading.Thread(target=poll)
    writers = [threading.Thread(target=change, args=(sku,)) for sku in skus]
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(300)
    done.set()
    reader.join(120)
    assert seen == sorted(seen), "never an event with a smaller id after a larger one"
    assert seen == list(range(start + 1, start + 201)), "each of the 200 changes once"


def test_history_is_newest_first_paginated_and_keeps_a_deleted_products(client, admin):
    headers = admin["headers"]
    client.post("/api/products", json=SHOE, headers=headers)
    for price in (310, 320, 330):
        client.put("/api/products/shoe", json={"price": price}, headers=headers)
    client.delete("/api/products/shoe", headers=headers)
    client.post("/api/products", json={**SHOE, "sku": "SHOE", "price": 1}, headers=headers)

    page = client.get("/api/products/shoe/history?page_size=4", headers=headers)
    assert page.status_code == 200
    assert '"total": 6' in page.headers["X-Pagination"] and 'rel="next"' in page.headers["Link"]
    types = [e["type"] for e in page.json]
    assert types == ["product.created", "product.deleted", "product.updated", "product.updated"]
    rest = client.get("/api/products/shoe/history?page=2&page_size=4", headers=headers).json
    assert [e["changes"]["price"]["new"] for e in rest] == [310, 300]
    assert client.get("/api/products/never/history", headers=headers).status_code == 404
    assert client.get("/api/users/999999/history", headers=headers).status_code == 404


def test_as_of_answers_the_product_as_it_was(client, admin):
    headers = admin["headers"]
    before = datetime.now(UTC)
    time.sleep(0.01)
    client.post("/api/products", json=SHOE, headers=headers)
    time.sleep(0.01)
    first = datetime.now(UTC)
    time.sleep(0.01)
    client.put("/api/products/shoe", json={"price": 500, "name": "botas"}, headers=headers)
    time.sleep(0.01)
    second = datetime.now(UTC)
    time.sleep(0.01)
    client.delete("/api/products/shoe", headers=headers)

    def at(moment: datetime):
        return client.get(
            "/api/products/shoe", query_string={"as_of": moment.isoformat()}, headers=headers
        )

    assert at(before).status_code == 404
    assert (at(first).json["price"], at(first).json["name"]) == (300, "zapatos")
    assert (at(second).json["price"], at(second).json["name"]) == (500, "botas")
    assert at(datetime.now(UTC)).status_code == 404  # deleted by now
    assert (
        client.get("/api/products/shoe", query_string={"as_of": first.isoformat()}).status_code
        == 401
    )


def test_revert_sets_the_values_right_after_an_event_as_one_emailed_change(
    app,
    client,
    admin,
    ses,  # noqa: F811
):
    headers = admin["headers"]
    client.post("/api/products", json=SHOE, headers=headers)
    client.put("/api/products/shoe", json={"price": 500}, headers=headers)
    client.put("/api/products/shoe", json={"price": 700, "quantity": 1}, headers=headers)
    created = client.get("/api/products/shoe/history", headers=headers).json[-1]

    answer = client.post("/api/products/shoe/revert", json={"to": created["id"]}, headers=headers)
    assert answer.status_code == 200
    assert (answer.json["price"], answer.json["quantity"]) == (300, 5)
    last = client.get("/api/products/shoe/history", headers=headers).json[0]
    assert last["type"] == "product.updated" and last["reverted_to"] == created["id"]
    assert last["changes"] == {"price": {"old": 700, "new": 300}, "quantity": {"old": 1, "new": 5}}
    Worker(app).drain()
    [email] = [m for m in inbox(ses)["admin@example.com"] if "revert" in m.text]
    assert "price: 700 -> 300" in email.text and "revert" in email.text


def test_revert_restores_a_deleted_product_unless_its_sku_is_taken(client, admin, make):
    headers = admin["headers"]
    client.post("/api/products", json=SHOE, headers=headers)
    client.put("/api/products/shoe", json={"price": 450}, headers=headers)
    updated = client.get("/api/products/shoe/history", headers=headers).json[0]
    client.delete("/api/products/shoe", headers=headers)

    restored = client.post("/api/products/shoe/revert", json={"to": updated["id"]}, headers=headers)
    assert restored.status_code == 201 and restored.json["price"] == 450
    assert client.get("/api/products/shoe").json["price"] == 450
    last = client.get("/api/products/shoe/history", headers=headers).json[0]
    assert last["type"] == "product.created" and last["reverted_to"] == updated["id"]

    client.delete("/api/products/shoe", headers=headers)
    client.post("/api/products", json={**SHOE, "price": 1}, headers=headers)  # another product
    taken = client.post("/api/products/shoe/revert", json={"to": updated["id"]}, headers=headers)
    assert taken.status_code == 409


def test_revert_refuses_an_event_it_cannot_use_naming_to(client, admin, make):
    headers = admin["headers"]
    client.post("/api/products", json=SHOE, headers=headers)
    client.post("/api/products", json={**SHOE, "sku": "other"}, headers=headers)
    other = client.get("/api/products/other/history", headers=headers).json[0]
    account = client.get(f"/api/users/{admin['id']}/history", headers=headers).json[0]
    for to in (other["id"], account["id"], 10**9):
        answer = client.post("/api/products/shoe/revert", json={"to": to}, headers=headers)
        assert answer.status_code == 422 and "to" in answer.json["errors"]["json"]
    assert client.post("/api/products/shoe/revert", json={}, headers=headers).status_code == 422


def test_revert_honours_if_match_and_idempotency_key(client, admin):
    headers = admin["headers"]
    client.post("/api/products", json=SHOE, headers=headers)
    created = client.get("/api/products/shoe/history", headers=headers).json[0]
    client.put("/api/products/shoe", json={"price": 500}, headers=headers)
    stale = client.post(
        "/api/products/shoe/revert",
        json={"to": created["id"]},
        headers={**headers, "If-Match": '"1-1"'},
    )
    assert stale.status_code == 412
    keyed = {**headers, "Idempotency-Key": "revert-1"}
    first = client.post("/api/products/shoe/revert", json={"to": created["id"]}, headers=keyed)
    again = client.post("/api/products/shoe/revert", json={"to": created["id"]}, headers=keyed)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    reverts = [
        e
        for e in client.get("/api/products/shoe/history", headers=headers).json
        if "reverted_to" in e
    ]
    assert len(reverts) == 1


def test_each_email_references_its_event_and_keeps_its_tries(app, client, admin, ses):  # noqa: F811
    client.post("/api/products", json=SEED, headers=admin["headers"])
    event = feed(client, admin["headers"])["events"][-1]
    [row] = client.get("/api/notifications", headers=admin["headers"]).json
    assert row["event_id"] == event["id"] and row["event"] == "created"
    Worker(app).drain()
    detail = client.get(f"/api/notifications/{row['id']}", headers=admin["headers"]).json
    [tried] = detail["tries"]
    assert tried["outcome"] == "sent" and tried["error"] is None and tried["duration_ms"] >= 0
    assert detail["attempts"] == 1 and detail["status"] == "sent"
    assert client.get("/api/notifications/999999", headers=admin["headers"]).status_code == 404


# ---------------------------------------------------------------- the chain


def verify(runner):
    return runner.invoke(args=["events", "verify"])


@pytest.fixture
def chain(client, admin):
    for n in range(4):
        client.post("/api/products", json={**SHOE, "sku": f"p{n}"}, headers=admin["headers"])
    return feed(client, admin["headers"], limit=1000)["events"]


def test_the_chain_holds_as_written(runner, chain):
    result = verify(runner)
    assert result.exit_code == 0 and f"{chain[-1]['id']} event(s) checked" in result.output


def test_verify_names_an_edited_event(app, runner, chain):
    target = chain[2]["id"]
    with app.app_context():
        db.session.execute(
            update(Event).where(Event.id == target).values(changes={"price": {"old": 1, "new": 2}})
        )
        db.session.commit()
    result = verify(runner)
    assert result.exit_code != 0 and f"event {target}: its content" in result.output


def test_verify_names_a_deleted_event(app, runner, chain):
    target = chain[2]["id"]
    with app.app_context():
        db.session.execute(
            delete(Notification).where(
                Notification.event_row_id.in_(select(Event.row_id).where(Event.id == target))
            )
        )
        db.session.execute(delete(Event).where(Event.id == target))
        db.session.commit()
    result = verify(runner)
    assert result.exit_code != 0 and f"event {target}: missing" in result.output


def test_verify_names_an_inserted_event(app, runner, chain):
    forged = chain[-1]["id"] + 1
    with app.app_context():
        last = db.session.scalar(select(Event).where(Event.id == forged - 1))
        db.session.add(
            Event(
                id=forged,
                type="product.updated",
                at=datetime.now(UTC),
                sku="p0",
                changes={"price": {"old": 300, "new": 0}},
                prev_hash=last.hash,
                hash="f" * 64,
            )
        )
        db.session.commit()
    result = verify(runner)
    assert result.exit_code != 0 and f"event {forged}" in result.output


def test_ids_given_at_commit_follow_the_commits(app, make, rows):
    """Two transactions: the one that inserts its event first but commits last gets the
    larger id."""
    make.product("a")
    make.product("b")
    with app.app_context():
        first = db.session.get_bind()
    assert first is not None
    with app.app_context():
        a = Product.by_sku("a")
        service.update_product(a, {"price": 5}, actor=None)
        db.session.flush()  # inserted first...
        db.session.rollback()
    with app.app_context():
        b = Product.by_sku("b")
        service.update_product(b, {"price": 6}, actor=None)
        db.session.commit()
    with app.app_context():
        a = Product.by_sku("a")
        service.update_product(a, {"price": 7}, actor=None)
        db.session.commit()
    found = sorted(rows(Event, Event.sku.in_(["a", "b"])), key=lambda e: e.id)
    assert [(e.sku, e.changes["price"]["new"]) for e in found] == [("b", 6), ("a", 7)]
    assert [e.id for e in found] == [found[0].id, found[0].id + 1], "no gap: dense ids"


def test_events_are_migrated_from_the_emails_of_earlier_versions(tmp_path, capsys):
    """Emails written before events existed become events (one per change, not per
    admin), each email references its event, and the chain holds."""
    from flask_migrate import upgrade

    from app import create_app
    from app.core import config
    from app.events import journal

    app = create_app(config.TestConfig(f"sqlite:///{tmp_path / 'old.db'}"))
    with app.app_context():
        upgrade(revision="0009_one_key_rule")
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, fullname, username, email, username_key, email_key,"
                    " password_hash, rol, token_version, created_at, updated_at) VALUES"
                    " (1, 'A', 'a', 'a@example.com', 'a', 'a@example.com', 'x', 1, 1,"
                    " '2026-01-01', '2026-01-01'), (2, 'B', 'b', 'b@example.com', 'b',"
                    " 'b@example.com', 'x', 1, 1, '2026-01-01', '2026-01-01')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO products (id, sku, sku_lower, sku_key, name, price, mark,"
                    " quantity, version, created_at, updated_at) VALUES (1, 'shoe', 'shoe',"
                    " 'shoe', 'z', 500, 'm', 1, 2, '2026-01-01', '2026-01-02')"
                )
            )
            for n, (recipient, event, changes, at, status) in enumerate(
                [
                    (
                        "a@example.com",
                        "created",
                        '{"price": {"old": null, "new": 300}}',
                        "2026-01-01 10:00:00",
                        "sent",
                    ),
                    (
                        "b@example.com",
                        "created",
                        '{"price": {"old": null, "new": 300}}',
                        "2026-01-01 10:00:00",
                        "failed",
                    ),
                    (
                        "a@example.com",
                        "updated",
                        '{"price": {"old": 300, "new": 500}}',
                        "2026-01-02 10:00:00",
                        "unknown",
                    ),
                    (
                        "b@example.com",
                        "updated",
                        '{"price": {"old": 300, "new": 500}}',
                        "2026-01-02 10:00:00",
                        "pending",
                    ),
                ],
                start=1,
            ):
                conn.execute(
                    text(
                        "INSERT INTO notifications (id, recipient, product_id, sku, product_name,"
                        " event, changes, actor_id, actor_name, actor_email, occurred_at, status,"
                        " attempts, last_error, next_attempt_at, created_at) VALUES (:id, :r, 1,"
                        " 'shoe', 'z', :e, :c, 1, 'A', 'a@example.com', :at, :s, :n, NULL,"
                        " :at, :at)"
                    ),
                    {
                        "id": n,
                        "r": recipient,
                        "e": event,
                        "c": changes,
                        "at": at,
                        "s": status,
                        "n": 0 if status == "pending" else 1,
                    },
                )
        upgrade()
        found = list(db.session.scalars(select(Event).order_by(Event.id)))
        assert [(e.id, e.type, e.changes["price"]["new"]) for e in found] == [
            (1, "product.created", 300),
            (2, "product.updated", 500),
        ]
        emails = list(db.session.scalars(select(Notification).order_by(Notification.id)))
        assert [(n.event.id, n.status, len(n.tries)) for n in emails] == [
            (1, "sent", 1),
            (1, "failed", 1),
            (2, "unknown", 1),
            (2, "pending", 0),
        ]
        assert journal.verify() == (2, None)
        db.engine.dispose()
