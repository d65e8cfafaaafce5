"""The operators' Grafana dashboard (deploy/grafana): valid, provisioned, its data source a
variable, and every query about metrics the service really exports (its own /metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "marketplace.json"
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "marketplace.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEED = {"sku": "d7iy6euiue", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"instance", "job"}
SELECTOR = re.compile(r"\b(marketplace_[a-z0-9_]+)(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def exported(client) -> dict[str, set[str]]:
    """Sample name -> label names, as a scrape of /metrics shows them now."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(answer.get_data(as_text=True)):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def exercise(app, client, admin) -> None:
    """What a day of traffic does: writes, reads, a refused login, the worker's sends (an
    email, and a webhook to an endpoint that does not answer)."""
    app.config["WEBHOOK_ALLOWED_HOSTS"] = ["127.0.0.1"]
    hook = {"url": "http://127.0.0.1:9/hooks"}
    assert client.post("/api/webhooks", json=hook, headers=admin["headers"]).status_code == 201
    client.post("/api/products", json=SEED, headers=admin["headers"])
    client.get("/api/products/d7iy6euiue")
    client.get("/api/products/nope")
    client.post("/users/login", json={"email": admin["email"], "password": "wrong-password"})
    Worker(app).drain()
    Worker(app).drain_webhooks()


def test_the_dashboard_is_valid_json_with_its_data_source_as_a_variable():
    board = dashboard()
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) >= 8
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    assert variables["instance"]["datasource"] == DATASOURCE


def test_the_dashboard_shows_what_operators_watch():
    exprs = " ".join(expr for _title, expr in queries(dashboard()))
    for needed in (
        "rate(marketplace_http_requests_total",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        'status=~"5.."',
        'marketplace_notifications{instance=~"$instance", status=~"pending|sending"}',
        'marketplace_notifications{instance=~"$instance", status=~"failed|unknown"}',
        "marketplace_views_stream_lag",
        'marketplace_email_bounce_rate{instance=~"$instance"}',
        'marketplace_email_complaint_rate{instance=~"$instance"}',
        'status=~"delivered|bounced|complained|suppressed"',
        "marketplace_notifications_waiting_for_quota",
    ):
        assert needed in exprs, needed


def test_the_dashboard_shows_webhook_deliveries_and_each_endpoints_oldest():
    exprs = " ".join(expr for _title, expr in queries(dashboard()))
    for needed in (
        'marketplace_webhook_deliveries{instance=~"$instance"}',
        "max by (endpoint) (marketplace_webhook_oldest_pending_seconds",
        "sum by (outcome) (rate(marketplace_webhook_attempts_total",
        "marketplace_webhook_attempt_duration_seconds_bucket",
    ):
        assert needed in exprs, needed


def test_every_query_names_metrics_and_labels_the_service_exports(app, client, admin, streamed):
    exercise(app, client, admin)
    names = exported(client)
    for title, expr in queries(dashboard()):
        selectors = SELECTOR.findall(expr)
        assert selectors, f"{title}: {expr} names no metric of the service"
        for name, matchers in selectors:
            assert name in names, f"{title}: {name} is not exported ({sorted(names)})"
            labels = names[name] | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
            used = set(MATCHER.findall(matchers))
            assert used <= labels, f"{title}: {name} has no label {used - labels}"
        for grouping in GROUPING.findall(expr):
            by = {label.strip() for label in grouping.split(",") if label.strip()}
            known = set().union(*(names[n] for n, _ in selectors)) | TARGET_LABELS | {"le"}
            assert by <= known, f"{title}: grouped by unknown {by - known}"


def test_the_provisioning_points_grafana_at_the_dashboards_folder():
    provider = yaml.safe_load(PROVIDER.read_text())
    assert provider["apiVersion"] == 1
    [entry] = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"].startswith("/")
    assert sorted(p.name for p in (GRAFANA / "dashboards").iterdir()) == ["marketplace.json"]
