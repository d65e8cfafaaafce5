"""Webhooks: endpoints, signed deliveries (Standard Webhooks) to a real HTTP receiver on
loopback, retries, order per product, the delivery log, replay, and the SSRF rules."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.core.columns import utcnow
from app.core.extensions import db
from app.notifications.messages import render
from app.notifications.models import Notification
from app.notifications.webhooks import destinations, sender
from app.notifications.webhooks.models import WebhookDelivery, WebhookEndpoint
from app.worker import Worker
from tests.system import harness as h
from tests.system.receiver import Answer, Receiver, verified
from tests.test_catalog_import import Statements
from tests.test_notifications import admins, inbox, ses  # noqa: F401 (fixtures)

SHOE = {"sku": "shoe", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}
HAT = {"sku": "hat", "name": "sombrero", "price": 50, "mark": "chabelo", "quantity": 1}
PRODUCT_TYPES = ["product.created", "product.updated", "product.deleted"]


@pytest.fixture
def receiver(app):
    """A receiver on loopback, which the service may reach (WEBHOOK_ALLOWED_HOSTS)."""
    app.config.update(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"], WEBHOOK_TIMEOUT_SECONDS=2.0)
    found = Receiver()
    yield found
    found.close()


def register(client, headers, url, **fields) -> dict:
    answer = client.post("/api/webhooks", json={"url": url, **fields}, headers=headers)
    assert answer.status_code == 201, answer.json
    return answer.json


def send(app) -> int:
    """What the running worker would do next: attempt every webhook due now."""
    return Worker(app).drain_webhooks()


def deliveries(client, headers, webhook_id, **query) -> list[dict]:
    answer = client.get(
        f"/api/webhooks/{webhook_id}/deliveries", query_string=query, headers=headers
    )
    assert answer.status_code == 200, answer.json
    return answer.json


def due_now(app, **where) -> None:
    """Let the backoff pass: every open delivery is due now."""
    with app.app_context():
        db.session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow(), **where))
        db.session.commit()


# ---------------------------------------------------------------- endpoints


def test_registering_answers_the_secret_once_and_stores_it_sealed(app, client, admin, receiver):
    headers = admin["headers"]
    answer = client.post(
        "/api/webhooks", json={"url": receiver.url(), "description": "ERP"}, headers=headers
    )

    assert answer.status_code == 201
    body = answer.json
    assert answer.headers["Location"].endswith(f"/api/webhooks/{body['id']}")
    assert {"id", "url", "events", "description", "active", "created_at", "secret"} <= set(body)
    assert body["events"] == PRODUCT_TYPES  # every product.* type by default
    assert (body["url"], body["description"], body["active"]) == (receiver.url(), "ERP", True)
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) >= 24

    shown = client.get(f"/api/webhooks/{body['id']}", headers=headers).json
    listed = client.get("/api/webhooks", headers=headers).json
    assert "secret" not in shown and [e["id"] for e in listed] == [body["id"]]
    assert "secret" not in listed[0]
    assert shown["health"]["state"] == "healthy"
    with app.app_context():
        stored = db.session.get(WebhookEndpoint, body["id"])
        # A database reader finds neither the secret nor its key material.
        raw_key = body["secret"].removeprefix("whsec_")
        assert body["secret"] not in stored.secret and raw_key not in stored.secret


def test_only_admins_manage_webhooks(client, reader):
    assert client.get("/api/webhooks").status_code == 401
    assert client.get("/api/webhooks", headers=reader["headers"]).status_code == 403
    answer = client.post(
        "/api/webhooks", json={"url": "https://example.com/h"}, headers=reader["headers"]
    )
    assert answer.status_code == 403


@pytest.mark.parametrize(
    ("events", "named"),
    [
        (["product.updated", "product.sold"], "product.sold"),
        (["user.created"], "user.created"),
        ([], None),
        ("product.updated", None),
    ],
)
def test_unknown_event_types_are_refused_naming_the_field(client, admin, receiver, events, named):
    answer = client.post(
        "/api/webhooks", json={"url": receiver.url(), "events": events}, headers=admin["headers"]
    )

    assert answer.status_code == 422
    assert "events" in answer.json["errors"]["json"]
    if named:
        assert named in str(answer.json["errors"]["json"]["events"])
    assert client.get("/api/webhooks", headers=admin["headers"]).json == []


def test_patch_changes_events_url_and_active_and_delete_removes(client, admin, receiver):
    headers = admin["headers"]
    hook = register(client, headers, receiver.url())
    path = f"/api/webhooks/{hook['id']}"

    changed = client.patch(
        path,
        json={"events": ["product.deleted"], "url": receiver.url("/other"), "active": False},
        headers=headers,
    )

    assert changed.status_code == 200
    assert (changed.json["events"], changed.json["url"]) == (
        ["product.deleted"],
        receiver.url("/other"),
    )
    assert changed.json["active"] is False
    assert changed.json["health"]["state"] == "disabled"
    assert client.patch(path, json={"active": "yes"}, headers=headers).status_code == 422
    assert client.delete(path, headers=headers).status_code == 204
    assert client.get(path, headers=headers).status_code == 404
    assert client.post(f"{path}/rotate-secret", headers=headers).status_code == 404
    assert client.get("/api/webhooks", headers=headers).json == []


# ---------------------------------------------------------------- SSRF


def resolving(monkeypatch, table: dict[str, list[str]]):
    """Names resolve through ``table`` (no network): what a DNS answer would say; an
    address stands for itself."""

    def fake(host, port):
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host))]
        if host not in table:
            raise OSError(f"unknown host {host}")
        return list(table[host])

    monkeypatch.setattr(destinations, "getaddrinfo", fake)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:9/h", "loopback"),
        ("http://[::1]/h", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/h", "private"),
        ("http://192.168.0.10/h", "private"),
        ("http://[fd00::1]/h", "private"),
        ("http://224.0.0.1/h", "multicast"),
        ("http://240.0.0.1/h", "reserved"),
        ("http://0.0.0.0/h", "unspecified"),
        ("http://100.64.0.1/h", "non-public"),
        ("http://[::ffff:127.0.0.1]/h", "loopback"),
        ("http://[64:ff9b::a9fe:a9fe]/h", "link-local"),
        ("http://localhost/h", "loopback"),
        ("http://metadata.internal/h", "link-local"),
        ("http://half.example/h", "private"),
    ],
)
def test_addresses_that_are_not_public_are_refused_with_a_422_naming_url(
    client, admin, monkeypatch, url, kind
):
    resolving(
        monkeypatch,
        {
            "localhost": ["127.0.0.1"],
            "metadata.internal": ["169.254.169.254"],
            # one public address and one private: refused all the same
            "half.example": ["93.184.215.14", "10.0.0.7"],
        },
    )
    answer = client.post("/api/webhooks", json={"url": url}, headers=admin["headers"])

    assert answer.status_code == 422, answer.json
    assert list(answer.json["errors"]["json"]) == ["url"]
    assert f"a {kind} address" in answer.json["errors"]["json"]["url"][0]
    assert client.get("/api/webhooks", headers=admin["headers"]).json == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/h", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("https://user:pw@example.com/h", "user name or password"),
        ("https://nowhere.invalid/h", "does not resolve"),
        ("https:///h", "name a host"),
        ("https://example.com/h#frag", "fragment"),
        ("https://example.com:99999/h", "not a valid URL"),
        ("https://example.com/" + "a" * 2000, "between 1 and 2000"),
    ],
)
def test_urls_that_are_not_web_addresses_are_refused(client, admin, monkeypatch, url, why):
    resolving(monkeypatch, {"example.com": ["93.184.215.14"]})
    answer = client.post("/api/webhooks", json={"url": url}, headers=admin["headers"])
    assert answer.status_code == 422
    assert why in str(answer.json["errors"]["json"]["url"])


def test_production_requires_https_unless_allowed(app, client, admin, monkeypatch):
    resolving(monkeypatch, {"erp.example.com": ["93.184.215.14"]})
    app.config["WEBHOOK_ALLOW_HTTP"] = False
    plain = client.post(
        "/api/webhooks", json={"url": "http://erp.example.com/h"}, headers=admin["headers"]
    )
    secure = client.post(
        "/api/webhooks", json={"url": "https://erp.example.com/h"}, headers=admin["headers"]
    )
    app.config["WEBHOOK_ALLOW_HTTP"] = True
    allowed = client.post(
        "/api/webhooks", json={"url": "http://erp.example.com/h"}, headers=admin["headers"]
    )

    assert plain.status_code == 422 and "https" in plain.json["errors"]["json"]["url"][0]
    assert (secure.status_code, allowed.status_code) == (201, 201)


def test_production_defaults_to_https_only(monkeypatch):
    from app.core.config import Config, ProductionConfig

    monkeypatch.delenv("WEBHOOK_ALLOW_HTTP", raising=False)
    assert ProductionConfig().WEBHOOK_ALLOW_HTTP is False
    assert Config().WEBHOOK_ALLOW_HTTP is True
    monkeypatch.setenv("WEBHOOK_ALLOW_HTTP", "true")
    assert ProductionConfig().WEBHOOK_ALLOW_HTTP is True


def test_allowed_hosts_exempt_a_name_or_a_block(app, client, admin, monkeypatch):
    resolving(monkeypatch, {"erp.internal": ["10.0.0.5"], "crm.internal": ["10.9.0.5"]})
    headers = admin["headers"]
    app.config["WEBHOOK_ALLOWED_HOSTS"] = ["erp.internal", "10.9.0.0/16"]

    by_name = client.post("/api/webhooks", json={"url": "http://erp.internal/h"}, headers=headers)
    by_block = client.post("/api/webhooks", json={"url": "http://crm.internal/h"}, headers=headers)
    other = client.post("/api/webhooks", json={"url": "http://10.8.0.1/h"}, headers=headers)

    assert (by_name.status_code, by_block.status_code, other.status_code) == (201, 201, 422)


def test_a_bad_allowed_hosts_entry_stops_start_up(monkeypatch):
    from app.core.config import Config, ConfigError

    monkeypatch.setenv("WEBHOOK_ALLOWED_HOSTS", "erp.internal, 10.0.0.0/33")
    with pytest.raises(ConfigError, match="WEBHOOK_ALLOWED_HOSTS"):
        Config().validate()


def test_each_delivery_checks_the_address_again_dns_rebinding(
    app, client, admin, receiver, monkeypatch
):
    """Registered while the name pointed at a public address; by the time of the delivery
    it points at loopback: nothing is sent."""
    app.config["WEBHOOK_ALLOWED_HOSTS"] = []
    table = {"hooks.example": ["93.184.215.14"]}
    resolving(monkeypatch, table)
    hook = register(client, admin["headers"], f"http://hooks.example:{receiver.port}/h")
    table["hooks.example"] = ["127.0.0.1"]

    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)

    assert receiver.received == []
    [delivery] = deliveries(client, admin["headers"], hook["id"])
    assert delivery["status"] == "retrying"
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] is None
    assert "not sent" in attempt["error"] and "loopback" in attempt["error"]


def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(
    app, client, admin, receiver, monkeypatch
):
    """The name is resolved once per attempt, checked, and that address is the one
    connected to; the request still names the host."""
    resolving(monkeypatch, {"receiver.test": ["127.0.0.1"]})
    app.config["WEBHOOK_ALLOWED_HOSTS"] = ["receiver.test"]
    register(client, admin["headers"], f"http://receiver.test:{receiver.port}/h?x=1")

    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)

    [got] = receiver.received
    assert got.headers["host"] == f"receiver.test:{receiver.port}"
    assert got.path == "/h?x=1"


# ---------------------------------------------------------------- deliveries


def test_a_change_is_delivered_signed_with_the_product_after_it(app, client, admin, receiver):
    headers = admin["headers"]
    hook = register(client, headers, receiver.url())
    client.post("/api/products", json=SHOE, headers=headers)
    client.put("/api/products/shoe", json={"price": 500}, headers=headers)
    client.delete("/api/products/shoe", headers=headers)

    assert send(app) == 3

    created, updated, deleted = receiver.received
    assert all(verified(hook["secret"], r) for r in receiver.received)
    assert created.headers["content-type"] == "application/json"
    assert updated.json == {
        "type": "product.updated",
        "timestamp": updated.json["timestamp"],
        "data": {
            "event_id": updated.event_id,
            "sku": "shoe",
            "version": 2,
            "changes": {"price": {"old": 300, "new": 500}},
            "actor": {"id": admin["id"], "email": "admin@example.com"},
            "product": {**SHOE, "price": 500}
            | {k: updated.json["data"]["product"][k] for k in ("created_at", "updated_at")},
        },
    }
    events = client.get("/api/events?type=product.created", headers=headers).json["events"]
    events += client.get("/api/events?type=product.updated", headers=headers).json["events"]
    events += client.get("/api/events?type=product.deleted", headers=headers).json["events"]
    assert [r.event_id for r in receiver.received] == [e["id"] for e in events]
    assert updated.json["timestamp"] == events[1]["at"]
    assert deleted.json["type"] == "product.deleted" and deleted.json["data"]["product"] is None
    assert created.json["data"]["changes"]["price"] == {"old": None, "new": 300}
    assert len({r.webhook_id for r in receiver.received}) == 3
    assert all(
        r.webhook_id.startswith("msg_") and "." not in r.webhook_id for r in receiver.received
    )
    log = deliveries(client, headers, hook["id"])
    assert [d["status"] for d in log] == ["delivered"] * 3
    assert [d["event_id"] for d in log] == [e["id"] for e in reversed(events)]  # newest first
    assert log[0]["webhook_id"] == deleted.webhook_id
    assert log[0]["attempts"][0]["status_code"] == 204


def test_a_claim_reads_its_deliveries_with_their_events_and_endpoints_at_once(
    app, client, admin, receiver
):
    """However many deliveries and endpoints a claim takes, it reads what their attempts
    need (event, URL, secrets) in one statement, beside the claim's own three."""
    hooks = [register(client, admin["headers"], receiver.url(f"/h{n}")) for n in range(3)]
    for n in range(4):
        product = {**SHOE, "sku": f"shoe-{n}"}
        assert (
            client.post("/api/products", json=product, headers=admin["headers"]).status_code == 201
        )

    with app.app_context(), Statements(app) as read:
        claimed = sender.claim(20)

    assert len(claimed) == 12
    assert read.count == 4  # the endpoints' ids, the claim (two), the deliveries
    secrets = {hook["id"]: hook["secret"] for hook in hooks}
    by_url = {receiver.url(f"/h{n}"): hook["id"] for n, hook in enumerate(hooks)}
    assert {row.url for row in claimed} == set(by_url)
    assert all(row.secrets == (secrets[by_url[row.url]],) for row in claimed)


def test_attempts_finished_together_are_recorded_in_one_transaction(app, client, admin, receiver):
    """The attempts that finish while the worker records the ones before are recorded
    together, in as many statements as one: the deliveries, their attempts, the
    endpoint's health."""
    hook = register(client, admin["headers"], receiver.url())
    for n in range(5):
        product = {**SHOE, "sku": f"shoe-{n}"}
        assert (
            client.post("/api/products", json=product, headers=admin["headers"]).status_code == 201
        )
    with app.app_context():
        posted = [sender.post(row) for row in sender.claim(5)]
        with Statements(app) as wrote:
            outcomes = sender.record(posted)
        db.session.remove()

    assert outcomes == ["delivered"] * 5
    assert wrote.count == 3
    found = deliveries(client, admin["headers"], hook["id"])
    assert [d["status"] for d in found] == ["delivered"] * 5
    assert [[a["status_code"] for a in d["attempts"]] for d in found] == [[204]] * 5


def test_attempts_recorded_together_each_get_their_own_result(app, client, admin, receiver):
    hook = register(client, admin["headers"], receiver.url())
    for n in range(4):
        product = {**SHOE, "sku": f"shoe-{n}"}
        client.post("/api/products", json=product, headers=admin["headers"])
    receiver.answer = lambda got: Answer(503 if got.json["data"]["sku"] == "shoe-2" else 204)
    with app.app_context():
        posted = [sender.post(row) for row in sender.claim(5)]
        assert sender.record(posted) == ["delivered", "delivered", "retrying", "delivered"]
        db.session.remove()

    found = {d["id"]: d for d in deliveries(client, admin["headers"], hook["id"])}
    retried = found[posted[2].row.id]
    assert retried["status"] == "retrying"
    assert [a["status_code"] for a in retried["attempts"]] == [503]
    # The endpoint's last answer was a success: it is healthy.
    health = client.get(f"/api/webhooks/{hook['id']}", headers=admin["headers"]).json
    assert health["health"]["state"] == "healthy", health


def test_attempts_recorded_together_keep_only_the_deliveries_still_held(
    app, client, admin, receiver
):
    """When another sender has taken one of the deliveries meanwhile (its lease ran out),
    the others keep their results and that one's attempt is left out of the log."""
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    client.post("/api/products", json=HAT, headers=admin["headers"])
    with app.app_context():
        late, held = sender.claim(5)
        db.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == late.id)
            .values(claimed_until=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
        [taken] = sender.claim(5)
        assert sender.record([sender.post(late), sender.post(held)]) == ["lost", "delivered"]
        assert sender.record([sender.post(taken)]) == ["delivered"]
        db.session.remove()

    assert len(receiver.received) == 3
    found = deliveries(client, admin["headers"], hook["id"])
    assert [d["status"] for d in found] == ["delivered", "delivered"]
    assert [len(d["attempts"]) for d in found] == [1, 1]


def test_only_the_chosen_event_types_are_delivered(app, client, admin, receiver):
    register(client, admin["headers"], receiver.url(), events=["product.deleted"])
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    client.delete("/api/products/shoe", headers=admin["headers"])
    send(app)
    assert [r.json["type"] for r in receiver.received] == ["product.deleted"]


def test_deliveries_are_written_in_the_changes_transaction(app, client, admin, receiver, rows):
    register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    refused = client.put(
        "/api/products/shoe", json={"price": 1}, headers={**admin["headers"], "If-Match": '"x"'}
    )

    assert refused.status_code == 412
    assert len(rows(WebhookDelivery)) == 1  # the creation only
    assert receiver.received == []  # the web request only wrote the row


def test_a_refused_attempt_is_retried_under_the_same_webhook_id(app, client, admin, receiver):
    answers = iter([Answer(503, b"busy, try later"), Answer(500), Answer(200, b"ok")])
    receiver.answer = lambda _r: next(answers)
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])

    send(app)
    [retrying] = deliveries(client, admin["headers"], hook["id"], status="retrying")
    assert send(app) == 0  # its backoff has not passed
    due_now(app)
    send(app)
    due_now(app)
    send(app)

    first, second, third = receiver.received
    assert first.webhook_id == second.webhook_id == third.webhook_id == retrying["webhook_id"]
    [delivered] = deliveries(client, admin["headers"], hook["id"], status="delivered")
    assert [a["status_code"] for a in delivered["attempts"]] == [503, 500, 200]
    assert delivered["attempts"][0]["response_excerpt"] == "busy, try later"
    assert delivered["attempts"][0]["error"] == "answered 503 Service Unavailable"
    assert delivered["attempts"][2]["error"] is None
    assert deliveries(client, admin["headers"], hook["id"], status="retrying") == []


def test_the_backoff_doubles_from_the_base_with_jitter_and_honours_retry_after(app):
    with app.app_context():
        app.config["WEBHOOK_RETRY_BASE_SECONDS"] = 30
        for attempts, low in ((1, 30), (2, 60), (5, 480), (30, 6 * 3600)):
            seconds = sender.delay(attempts).total_seconds()
            assert low <= seconds <= low * 1.25, (attempts, seconds)
        assert sender.delay(1, retry_after=600).total_seconds() == 600
        assert sender.delay(1, retry_after=10**9).total_seconds() <= 6 * 3600 * 1.25


def test_redirects_are_not_followed(app, client, admin, receiver):
    receiver.answer = lambda r: (
        Answer(301, headers={"Location": receiver.url("/moved")})
        if r.path == "/hooks"
        else Answer()
    )
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)

    assert [r.path for r in receiver.received] == ["/hooks"]
    [delivery] = deliveries(client, admin["headers"], hook["id"])
    assert delivery["status"] == "retrying"
    assert delivery["attempts"][0]["status_code"] == 301


def test_an_answer_after_the_timeout_is_a_failure(app, client, admin, receiver):
    app.config["WEBHOOK_TIMEOUT_SECONDS"] = 0.5
    receiver.answer = lambda _r: Answer(200, delay=1.5)
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])

    began = time.monotonic()
    send(app)

    assert time.monotonic() - began < 1.4
    [delivery] = deliveries(client, admin["headers"], hook["id"])
    [attempt] = delivery["attempts"]
    assert delivery["status"] == "retrying"
    assert attempt["status_code"] is None and attempt["error"] == "no answer within the timeout"
    assert 450 <= attempt["duration_ms"] < 1400


def test_a_long_answer_is_read_only_up_to_a_small_cap(app, client, admin, receiver):
    receiver.answer = lambda _r: Answer(200, b"x" * 2_000_000)
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)

    [delivery] = deliveries(client, admin["headers"], hook["id"])
    assert delivery["status"] == "delivered"
    assert delivery["attempts"][0]["response_excerpt"] == "x" * 500


def test_after_the_retry_window_a_delivery_is_failed(app, client, admin, receiver):
    receiver.answer = lambda _r: Answer(500)
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)
    long_ago = utcnow() - timedelta(hours=72, minutes=1)
    due_now(app, first_attempt_at=long_ago)
    send(app)
    due_now(app)

    assert send(app) == 0  # failed: not tried again by itself
    [failed] = deliveries(client, admin["headers"], hook["id"], status="failed")
    assert len(failed["attempts"]) == 2 == len(receiver.received)


def test_a_410_disables_the_endpoint_and_emails_the_admins(
    app,
    client,
    admins,  # noqa: F811
    receiver,
    ses,  # noqa: F811
):
    receiver.answer = lambda _r: Answer(410)
    headers = admins[0]["headers"]
    hook = register(client, headers, receiver.url())
    client.post("/api/products", json=SHOE, headers=headers)
    Worker(app).drain()  # the creation emails

    send(app)
    client.post("/api/products", json=HAT, headers=headers)
    send(app)

    shown = client.get(f"/api/webhooks/{hook['id']}", headers=headers).json
    assert shown["active"] is False
    assert shown["health"]["disabled_reason"] == "it answered 410 Gone"
    assert len(receiver.received) == 1  # nothing more is sent to it
    Worker(app).drain()
    mail = inbox(ses)
    told = [m for messages in mail.values() for m in messages if "Webhook" in m.subject]
    assert sorted(m.to for m in told) == sorted(a["email"] for a in admins)
    assert told[0].subject == f"[Marketplace] Webhook {hook['id']} disabled: it answered 410 Gone"
    assert receiver.url() in told[0].text and "PATCH /api/webhooks" in told[0].text
    log = client.get("/api/notifications?status=sent", headers=headers).json
    assert {n["event"] for n in log} == {"created", "webhook_disabled"}

    # turned on again, the delivery still open is sent (and a replay fills the gap)
    receiver.answer = lambda _r: Answer(204)
    client.patch(f"/api/webhooks/{hook['id']}", json={"active": True}, headers=headers)
    due_now(app)
    send(app)
    assert [r.sku for r in receiver.received] == ["shoe", "shoe"]


def test_an_endpoint_failing_for_five_days_is_disabled_and_the_admins_told(
    app, client, admin, receiver, rows
):
    receiver.answer = lambda _r: Answer(500)
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)
    assert (
        client.get(f"/api/webhooks/{hook['id']}", headers=admin["headers"]).json["health"]["state"]
        == "failing"
    )
    with app.app_context():
        db.session.execute(
            update(WebhookEndpoint).values(failing_since=utcnow() - timedelta(days=5, minutes=1))
        )
        db.session.commit()
    due_now(app)
    send(app)

    shown = client.get(f"/api/webhooks/{hook['id']}", headers=admin["headers"]).json
    assert shown["active"] is False
    assert shown["health"]["disabled_reason"] == "every attempt failed for 5 days"
    [email] = rows(Notification, Notification.kind == "webhook_disabled")
    with app.app_context():
        message = render(db.session.get(Notification, email.id))
    assert message.subject.endswith("disabled: every attempt failed for 5 days")


def test_a_success_ends_the_failing_state(app, client, admin, receiver):
    answers = iter([Answer(500), Answer(204)])
    receiver.answer = lambda _r: next(answers)
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)
    due_now(app)
    send(app)
    health = client.get(f"/api/webhooks/{hook['id']}", headers=admin["headers"]).json["health"]
    assert health["state"] == "healthy" and health["failing_since"] is None
    assert health["last_success_at"] is not None


# ---------------------------------------------------------------- order


def test_one_products_events_wait_for_the_one_being_retried_others_do_not(
    app, client, admin, receiver
):
    refused = {"n": 0}

    def answer(got):
        if got.sku == "shoe" and got.json["type"] == "product.updated" and refused["n"] < 2:
            refused["n"] += 1
            return Answer(500)
        return Answer(204)

    receiver.answer = answer
    headers = admin["headers"]
    register(client, headers, receiver.url())
    client.post("/api/products", json=SHOE, headers=headers)
    client.post("/api/products", json=HAT, headers=headers)
    send(app)
    for price in (301, 302, 303):
        client.put("/api/products/shoe", json={"price": price}, headers=headers)
    client.put("/api/products/hat", json={"price": 51}, headers=headers)

    send(app)  # shoe's first update is refused; the two after it wait; the hat goes on
    sent = [
        (r.sku, r.json["data"]["changes"].get("price", {}).get("new")) for r in receiver.received
    ]
    assert sent == [("shoe", 300), ("hat", 50), ("shoe", 301), ("hat", 51)]
    due_now(app)
    send(app)  # refused again: still nothing after it
    assert len(receiver.received) == 5
    due_now(app)
    send(app)

    shoe = [r.json["data"]["changes"]["price"]["new"] for r in receiver.received if r.sku == "shoe"]
    assert shoe == [300, 301, 301, 301, 302, 303]
    versions = [r.json["data"]["version"] for r in receiver.received if r.sku == "shoe"]
    assert versions == sorted(versions)


def test_an_import_delivers_each_event_in_order(app, client, admin, receiver, rows):
    register(client, admin["headers"], receiver.url(), events=["product.created"])
    csv = "sku,name,price,mark,quantity\n" + "".join(
        f"imp-{n},Item {n},{n}.50,acme,{n}\n" for n in range(25)
    )
    answer = client.post(
        "/api/catalog/import",
        data=csv.encode(),
        headers={**admin["headers"], "Content-Type": "text/csv"},
    )
    assert answer.status_code == 200, answer.json

    assert len(rows(WebhookDelivery)) == 25
    send(app)
    assert [r.sku for r in receiver.received] == [f"imp-{n}" for n in range(25)]
    assert [r.event_id for r in receiver.received] == sorted(r.event_id for r in receiver.received)


# ---------------------------------------------------------------- retry and replay


def test_retry_sends_again_now_under_the_same_webhook_id(app, client, admin, receiver):
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)
    [delivery] = deliveries(client, admin["headers"], hook["id"])

    answer = client.post(
        f"/api/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry", headers=admin["headers"]
    )
    assert answer.status_code == 202 and answer.json["status"] == "pending"
    send(app)

    first, again = receiver.received
    assert first.webhook_id == again.webhook_id == delivery["webhook_id"]
    assert first.body == again.body
    [done] = deliveries(client, admin["headers"], hook["id"])
    assert done["status"] == "delivered" and len(done["attempts"]) == 2
    other = register(client, admin["headers"], receiver.url("/b"))
    wrong = client.post(
        f"/api/webhooks/{other['id']}/deliveries/{delivery['id']}/retry", headers=admin["headers"]
    )
    assert wrong.status_code == 404


def test_replay_sends_every_later_event_again_with_the_same_webhook_ids(
    app, client, admin, receiver
):
    headers = admin["headers"]
    hook = register(client, headers, receiver.url())
    client.post("/api/products", json=SHOE, headers=headers)
    for price in (301, 302):
        client.put("/api/products/shoe", json={"price": price}, headers=headers)
    send(app)
    first_ids = {r.event_id: r.webhook_id for r in receiver.received}
    created = min(first_ids)
    late = register(client, headers, receiver.url("/late"))  # registered after the events

    replayed = client.post(
        f"/api/webhooks/{hook['id']}/replay", json={"after": created}, headers=headers
    )
    filled = client.post(f"/api/webhooks/{late['id']}/replay", json={"after": 0}, headers=headers)
    assert (replayed.status_code, replayed.json) == (202, {"queued": 2})
    assert (filled.status_code, filled.json) == (202, {"queued": 3})
    send(app)

    again = [r for r in receiver.received[3:] if r.path == "/hooks"]
    assert [(r.event_id, r.webhook_id) for r in again] == sorted(
        (e, w) for e, w in first_ids.items() if e > created
    )
    to_late = [r for r in receiver.received if r.path == "/late"]
    assert [r.event_id for r in to_late] == sorted(first_ids)
    assert all(verified(late["secret"], r) for r in to_late)
    assert not {r.webhook_id for r in to_late} & set(first_ids.values())
    bad = client.post(f"/api/webhooks/{hook['id']}/replay", json={"after": -1}, headers=headers)
    assert bad.status_code == 422 and "after" in bad.json["errors"]["json"]


def test_retry_and_replay_of_a_disabled_endpoint_are_refused(app, client, admin, receiver):
    hook = register(client, admin["headers"], receiver.url())
    client.patch(f"/api/webhooks/{hook['id']}", json={"active": False}, headers=admin["headers"])
    answer = client.post(
        f"/api/webhooks/{hook['id']}/replay", json={"after": 0}, headers=admin["headers"]
    )
    assert answer.status_code == 409 and "PATCH" in answer.json["message"]


def test_a_disabled_endpoint_gets_nothing_new(app, client, admin, receiver, rows):
    hook = register(client, admin["headers"], receiver.url())
    client.patch(f"/api/webhooks/{hook['id']}", json={"active": False}, headers=admin["headers"])
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)
    assert rows(WebhookDelivery) == [] and receiver.received == []


def test_the_delivery_log_filters_by_status_and_pages(app, client, admin, receiver):
    receiver.answer = lambda r: Answer(500) if r.sku == "hat" else Answer(204)
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    client.post("/api/products", json=HAT, headers=admin["headers"])
    send(app)

    assert [d["status"] for d in deliveries(client, admin["headers"], hook["id"])] == [
        "retrying",
        "delivered",
    ]
    assert len(deliveries(client, admin["headers"], hook["id"], status="delivered")) == 1
    assert deliveries(client, admin["headers"], hook["id"], status="pending") == []
    paged = client.get(
        f"/api/webhooks/{hook['id']}/deliveries?page_size=1", headers=admin["headers"]
    )
    assert len(paged.json) == 1 and "X-Pagination" in paged.headers
    bad = client.get(f"/api/webhooks/{hook['id']}/deliveries?status=sent", headers=admin["headers"])
    assert bad.status_code == 422


# ---------------------------------------------------------------- secrets


def test_after_a_rotation_both_secrets_sign_for_24_hours(app, client, admin, receiver):
    headers = admin["headers"]
    hook = register(client, headers, receiver.url())
    rotated = client.post(f"/api/webhooks/{hook['id']}/rotate-secret", headers=headers)
    assert rotated.status_code == 200 and rotated.json["secret"] != hook["secret"]
    client.post("/api/products", json=SHOE, headers=headers)
    send(app)
    with app.app_context():
        db.session.execute(
            update(WebhookEndpoint).values(previous_secret_until=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
    client.put("/api/products/shoe", json={"price": 1}, headers=headers)
    send(app)

    during, after = receiver.received
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert verified(hook["secret"], during) and verified(rotated.json["secret"], during)
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert verified(rotated.json["secret"], after) and not verified(hook["secret"], after)


def test_secrets_sealed_under_another_secret_key_fail_the_attempt_saying_so(
    app, client, admin, receiver
):
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    app.config["SECRET_KEY"] = "another-secret-key-that-is-long-enough-for-hs256"
    send(app)

    assert receiver.received == []
    [delivery] = deliveries(client, admin["headers"], hook["id"])
    assert "rotate the secret" in delivery["attempts"][0]["error"]


# ---------------------------------------------------------------- the worker


def test_the_running_worker_sends_a_change_without_being_asked(app, client, admin, receiver):
    app.config["WORKER_POLL_SECONDS"] = 0.2
    register(client, admin["headers"], receiver.url())
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        client.post("/api/products", json=SHOE, headers=admin["headers"])
        [got] = receiver.wait_for(1, timeout=10)
        assert got.sku == "shoe"
    finally:
        worker.stop()
        thread.join(20)
    assert not thread.is_alive()


def test_the_running_worker_sends_the_changes_that_gather_behind_one_together(
    app, client, admin, receiver, monkeypatch
):
    """The first change after a quiet spell goes at once; the changes made while it is
    sent gather (WEBHOOK_LINGER_SECONDS) and are claimed and recorded together."""
    app.config.update(WORKER_POLL_SECONDS=0.01, WEBHOOK_LINGER_SECONDS=2.0)
    hook = register(client, admin["headers"], receiver.url())
    recorded = []
    record = sender.record
    monkeypatch.setattr(
        sender, "record", lambda posted: recorded.append(len(posted)) or record(posted)
    )
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        client.post("/api/products", json=SHOE, headers=admin["headers"])
        receiver.wait_for(1, timeout=10)
        for n in range(4):
            client.post(
                "/api/products", json={**SHOE, "sku": f"shoe-{n}"}, headers=admin["headers"]
            )
        got = receiver.wait_for(5, timeout=10)
        h.wait_until("recorded", lambda: sum(recorded) == 5, 10)
    finally:
        worker.stop()
        thread.join(20)
    assert not thread.is_alive()
    assert got[0].sku == "shoe"
    assert sorted(r.sku for r in got[1:]) == ["shoe-0", "shoe-1", "shoe-2", "shoe-3"]
    assert recorded == [1, 4]
    found = deliveries(client, admin["headers"], hook["id"])
    assert [d["status"] for d in found] == ["delivered"] * 5


def test_a_lease_left_by_a_dead_sender_runs_out_and_the_same_id_is_sent(
    app, client, admin, receiver
):
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    with app.app_context():
        [held] = sender.claim(5)  # a sender that then died
        db.session.remove()
    assert send(app) == 0  # still leased
    with app.app_context():
        db.session.execute(
            update(WebhookDelivery).values(claimed_until=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
    send(app)

    [got] = receiver.received
    assert got.webhook_id == held.webhook_id
    assert deliveries(client, admin["headers"], hook["id"])[0]["status"] == "delivered"


def test_the_metrics_show_deliveries_by_status_and_each_endpoints_oldest(
    app, client, admin, receiver
):
    receiver.answer = lambda _r: Answer(500)
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)

    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'marketplace_webhook_deliveries{status="retrying"} 1.0' in scrape
    assert f'marketplace_webhook_oldest_pending_seconds{{endpoint="{hook["id"]}"}}' in scrape
    assert 'marketplace_webhook_attempts_total{outcome="retrying"}' in scrape
    assert "marketplace_webhook_attempt_duration_seconds_bucket" in scrape


def test_a_second_claim_skips_what_the_first_holds(app, client, admin, receiver):
    register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    client.post("/api/products", json=HAT, headers=admin["headers"])
    with app.app_context():
        first = sender.claim(1)
        second = sender.claim(5)
        third = sender.claim(5)
        ids = db.session.scalars(select(WebhookDelivery.id).order_by(WebhookDelivery.id)).all()
    assert [r.id for r in first + second] == ids and third == []


def test_an_international_host_name_is_resolved_in_its_ascii_form(client, admin, monkeypatch):
    resolving(monkeypatch, {"xn--bcher-kva.example": ["93.184.215.14"]})
    answer = client.post(
        "/api/webhooks", json={"url": "https://bücher.example/h"}, headers=admin["headers"]
    )
    assert answer.status_code == 201, answer.json


def test_retry_after_is_honoured(app, client, admin, receiver, rows):
    receiver.answer = lambda _r: Answer(429, headers={"Retry-After": "600"})
    register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    before = utcnow()
    send(app)

    [delivery] = rows(WebhookDelivery)
    assert delivery.status == "retrying"
    assert delivery.next_attempt_at >= before + timedelta(seconds=599)


def test_a_result_kept_after_its_lease_ran_out_is_not_recorded_twice(app, client, admin, receiver):
    """A sender too slow for its lease: another takes the delivery and sends it again,
    under the same webhook-id; the late one's result is left out of the log."""
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    with app.app_context():
        [slow] = sender.claim(5)
        db.session.execute(
            update(WebhookDelivery).values(claimed_until=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
        [fast] = sender.claim(5)
        assert sender.record([sender.post(fast)]) == ["delivered"]
        assert sender.record([sender.post(slow)]) == ["lost"]
        db.session.remove()

    first, second = receiver.received
    assert first.webhook_id == second.webhook_id == slow.webhook_id
    [delivery] = deliveries(client, admin["headers"], hook["id"])
    assert delivery["status"] == "delivered" and len(delivery["attempts"]) == 1


def test_recording_an_attempt_waits_for_the_database(app, monkeypatch):
    from sqlalchemy.exc import OperationalError

    calls = []

    def work():
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE", {}, Exception("server has gone away"))
        return "delivered"

    monkeypatch.setattr(sender.time, "sleep", lambda _s: None)
    with app.app_context():
        assert sender._until_the_database_answers(work, "msg_x") == "delivered"
    assert len(calls) == 2


# ---------------------------------------------------------------- https


@pytest.fixture
def tls_receiver(app, tmp_path, monkeypatch):
    """A receiver on loopback speaking TLS with a certificate for ``receiver.test``, signed
    by a CA of the test's own; the name resolves to loopback, which may receive."""
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(subject, issuer, key, signer, ca: bool):
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("Test CA", "Test CA", ca_key, ca_key, ca=True)
    leaf = certificate("receiver.test", "Test CA", key, ca_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    found = Receiver()
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
    found.server.socket = server_side.wrap_socket(found.server.socket, server_side=True)
    app.config["WEBHOOK_ALLOWED_HOSTS"] = ["receiver.test"]
    resolving(monkeypatch, {"receiver.test": ["127.0.0.1"]})
    found.ca = str(tmp_path / "ca.pem")
    yield found
    found.close()


def test_https_is_sent_to_the_checked_address_and_the_certificate_checked_for_the_name(
    app, client, admin, tls_receiver, monkeypatch
):
    import ssl

    from app.notifications.webhooks import transport

    hook = register(client, admin["headers"], f"https://receiver.test:{tls_receiver.port}/h")
    client.post("/api/products", json=SHOE, headers=admin["headers"])

    send(app)  # the service does not know the test's CA: refused, nothing sent
    [refused] = deliveries(client, admin["headers"], hook["id"])
    assert "CERTIFICATE_VERIFY_FAILED" in refused["attempts"][0]["error"]
    assert tls_receiver.received == []

    monkeypatch.setattr(
        transport._PinnedTLS, "context", ssl.create_default_context(cafile=tls_receiver.ca)
    )
    due_now(app)
    send(app)
    [got] = tls_receiver.received
    assert got.headers["host"] == f"receiver.test:{tls_receiver.port}"
    assert verified(hook["secret"], got)


def test_the_documented_check_verifies_a_delivery(app, client, admin, receiver):
    """docs/webhooks.md shows receivers how to check a delivery: that code, run as shown."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "webhooks.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", page, re.S)
    documented: dict = {}
    exec(compile(code, "docs/webhooks.md", "exec"), documented)
    hook = register(client, admin["headers"], receiver.url())
    client.post("/api/products", json=SHOE, headers=admin["headers"])
    send(app)

    [got] = receiver.received
    assert documented["verified"](hook["secret"], got.headers, got.body)
    assert not documented["verified"](hook["secret"], got.headers, got.body + b" ")
    other = register(client, admin["headers"], receiver.url("/other"))
    assert not documented["verified"](other["secret"], got.headers, got.body)
