"""GET /metrics: Prometheus' text format, for the operator's network only."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

SEED = {"sku": "d7iy6euiue", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}


def samples(client, **kwargs) -> dict:
    answer = client.get("/metrics", **kwargs)
    assert answer.status_code == 200
    assert answer.mimetype == "text/plain"
    found = {}
    for family in text_string_to_metric_families(answer.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_views_and_the_outbox_show_in_the_metrics(client, admin, make):
    before = samples(client)
    client.post("/api/products", json=SEED, headers=admin["headers"])
    client.get("/api/products/d7iy6euiue")
    client.get("/api/products/nope")
    after = samples(client)

    read = {"route": "/api/products/<string:sku>", "method": "GET"}
    assert value(after, "marketplace_http_requests_total", **read, status="200") == (
        value(before, "marketplace_http_requests_total", **read, status="200") + 1
    )
    assert value(after, "marketplace_http_requests_total", **read, status="404") == (
        value(before, "marketplace_http_requests_total", **read, status="404") + 1
    )
    assert value(after, "marketplace_views_recorded_total", path="direct") == (
        value(before, "marketplace_views_recorded_total", path="direct") + 1
    )
    assert value(after, "marketplace_notifications", status="pending") == 1
    assert value(after, "marketplace_notifications_oldest_pending_seconds") >= 0
    assert value(after, "marketplace_http_request_duration_seconds_count", **read) > 0


def test_failed_logins_are_counted(client, admin):
    before = samples(client)
    client.post("/users/login", json={"email": admin["email"], "password": "wrong-password"})
    after = samples(client)
    assert value(after, "marketplace_login_failures_total") == (
        value(before, "marketplace_login_failures_total") + 1
    )


def test_metrics_are_not_for_the_public(app, client):
    public = {"REMOTE_ADDR": "8.8.8.8"}  # a global address (only a value here)
    refused = client.get("/metrics", environ_base=public)
    assert refused.status_code == 404 and refused.json["code"] == 404
    app.config["METRICS_TOKEN"] = "scrape-token-1234567890"
    token = {"Authorization": "Bearer scrape-token-1234567890"}
    assert client.get("/metrics", environ_base=public, headers=token).status_code == 200
    wrong = {"Authorization": "Bearer not-it"}
    assert client.get("/metrics", environ_base=public, headers=wrong).status_code == 404
