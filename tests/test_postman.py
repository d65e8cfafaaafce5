"""The generated Postman collection touches only what its own run creates (the run itself,
with newman against a database holding real rows, is tests/system/test_postman.py)."""

from __future__ import annotations

import json

import pytest

from tools.postman import postman_collection


@pytest.fixture
def collection(app) -> dict:
    return postman_collection(app.test_client().get("/api/openapi.json").json, "http://shop.test")


def items(collection: dict) -> list[dict]:
    return [item for folder in collection["item"] for item in folder["item"]]


def script(item: dict, listen: str) -> str:
    return "\n".join(
        line
        for event in item.get("event", [])
        if event["listen"] == listen
        for line in event["script"]["exec"]
    )


def named(collection: dict, method: str, raw_path: str) -> list[dict]:
    return [
        i
        for i in items(collection)
        if (i["request"]["method"], i["request"]["url"]["raw"])
        == (method, "{{baseUrl}}" + raw_path)
    ]


def test_no_variable_points_at_existing_data(collection):
    values = {v["key"]: v["value"] for v in collection["variable"]}
    for name in ("sku", "user_id", "user_email", "user_password", "token", "user_token"):
        assert values[name] == ""
    for name in ("webhook_url", "webhook_id", "delivery_id", "event_id"):
        assert values[name] == ""
    text = json.dumps(collection)
    for seed in ("d7iy6euiue", "josuecevedo@xd.com", '"marado"', "cheutere"):
        assert seed not in text


def test_the_creates_send_names_made_fresh_for_each_run(collection):
    (product,) = named(collection, "POST", "/api/products")
    assert json.loads(product["request"]["body"]["raw"])["sku"] == "{{new_sku}}"
    assert 'pm.collectionVariables.unset("sku")' in script(product, "prerequest")
    assert "Math.random()" in script(product, "prerequest")
    (user,) = named(collection, "POST", "/api/users")
    body = json.loads(user["request"]["body"]["raw"])
    assert (body["username"], body["email"], body["password"]) == (
        "{{new_username}}",
        "{{new_email}}",
        "{{new_password}}",
    )
    assert 'pm.collectionVariables.unset("user_id")' in script(user, "prerequest")


def test_every_request_on_a_created_row_is_skipped_without_it(collection):
    for item in items(collection):
        raw = item["request"]["url"]["raw"]
        for part, variable in ((":sku", "sku"), (":user_id", "user_id")):
            if part in raw:
                prerequest = script(item, "prerequest")
                assert f'!pm.collectionVariables.get("{variable}")' in prerequest, raw
                assert "pm.execution.skipRequest()" in prerequest, raw


def test_self_service_runs_as_the_created_user_never_the_admin(collection):
    requests = named(collection, "GET", "/users/me") + named(collection, "PATCH", "/users/me")
    requests += named(collection, "POST", "/users/logout")
    assert len(requests) == 3
    for item in requests:
        assert item["request"]["auth"]["bearer"][0]["value"] == "{{user_token}}"
        assert '!pm.collectionVariables.get("user_token")' in script(item, "prerequest")
    order = [i["name"] for i in items(collection)]
    login_as_new = order.index("Log in as the new user")
    assert login_as_new < min(order.index(i["name"]) for i in requests)
    assert (
        order.index("Create a user (admin); rol 1 makes an admin, rol 2 a read-only account.")
        < login_as_new
    )


def test_deletions_come_last(collection):
    assert collection["item"][-1]["name"] == "clean up"
    methods = [i["request"]["method"] for i in items(collection)]
    first_delete = methods.index("DELETE")
    assert set(methods[first_delete:]) == {"DELETE"}
    assert methods.count("DELETE") == 4


def test_a_suppression_is_lifted_only_when_named_on_purpose(collection):
    values = {v["key"]: v["value"] for v in collection["variable"]}
    assert values["suppressed_email"] == ""
    (lift,) = named(collection, "DELETE", "/api/suppressions/:email")
    assert lift["request"]["url"]["variable"][0]["value"] == "{{suppressed_email}}"
    prerequest = script(lift, "prerequest")
    assert '!pm.collectionVariables.get("suppressed_email")' in prerequest
    assert "pm.execution.skipRequest()" in prerequest


def test_a_deletion_forgets_what_it_deleted(collection):
    """Postman keeps collection variables between runs: a request sent by hand later
    must not aim at a deleted row's sku or id."""
    (product,) = named(collection, "DELETE", "/api/products/:sku")
    assert 'pm.collectionVariables.unset("sku")' in script(product, "test")
    (user,) = named(collection, "DELETE", "/api/users/:user_id")
    assert 'pm.collectionVariables.unset("user_id")' in script(user, "test")


def test_other_bodies_name_the_runs_own_product(collection):
    """The bulk import's example row carries the README's sku: the collection sends the
    product it created instead, and skips the import without one."""
    (imported,) = named(collection, "POST", "/api/catalog/import")
    rows = json.loads(imported["request"]["body"]["raw"])
    assert [row["sku"] for row in rows] == ["{{sku}}"]
    assert '!pm.collectionVariables.get("sku")' in script(imported, "prerequest")


def test_the_webhook_requests_run_only_with_a_webhook_url_and_replay_only_the_runs_events(
    collection,
):
    (create,) = named(collection, "POST", "/api/webhooks")
    assert json.loads(create["request"]["body"]["raw"])["url"] == "{{webhook_url}}"
    assert '!pm.collectionVariables.get("webhook_url")' in script(create, "prerequest")
    (replay,) = named(collection, "POST", "/api/webhooks/:webhook_id/replay")
    assert '"after": {{event_id}}' in replay["request"]["body"]["raw"]
    assert '!pm.collectionVariables.get("event_id")' in script(replay, "prerequest")
    (history,) = named(collection, "GET", "/api/products/:sku/history")
    assert 'set("event_id"' in script(history, "test")
    (retry,) = named(collection, "POST", "/api/webhooks/:webhook_id/deliveries/:delivery_id/retry")
    assert '!pm.collectionVariables.get("delivery_id")' in script(retry, "prerequest")
