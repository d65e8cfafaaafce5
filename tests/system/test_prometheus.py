"""Debian's Prometheus scraping the service as deployed (the entrypoint: uWSGI's workers and
the worker daemon counting into one /metrics behind nginx) every second on loopback; what
it stored, read back through its HTTP query API. Also the request id through nginx and the
JSON log lines (LOG_FORMAT=json, the image's default) of the web and worker processes.

The tests of this module share one stack and one Prometheus, in file order.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.system import harness as h
from tests.system.conftest import ADMINS, need

PROMETHEUS = "/usr/bin/prometheus"
DASHBOARD = h.ROOT / "deploy" / "grafana" / "dashboards" / "marketplace.json"
SEED = {"sku": "prom-sku-1", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}
READ = 'route="/api/products/<string:sku>", method="GET", status="200"'
READS = 7


class Prometheus:
    """A private ``prometheus`` scraping one target every second; ``value(query)``."""

    def __init__(self, reaper: h.Reaper, workdir: Path, target_port: int) -> None:
        self.port = h.free_port()
        self.http = h.Http(self.port)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: marketplace\n    static_configs:\n"
            f"      - targets: ['{h.HOST}:{target_port}']\n"
        )
        self.process = reaper.start(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address={h.HOST}:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            "prometheus.log",
        )
        self.reaper = reaper
        h.wait_until("prometheus ready", lambda: self.http.status("/-/ready") == 200, 60)

    def query(self, promql: str) -> list[dict]:
        answer = self.http.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        body = answer.json
        assert answer.status == 200 and body["status"] == "success", (promql, body)
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The single value of an instant query; None when it has no result."""
        result = self.query(promql)
        assert len(result) <= 1, (promql, result)
        return float(result[0]["value"][1]) if result else None

    def settles_at(self, promql: str, expected: float, timeout: float = 30) -> None:
        """Wait until the stored value is ``expected`` (scrapes come every second)."""
        seen = []

        def reached() -> bool:
            seen.append(self.value(promql))
            return seen[-1] == expected

        try:
            h.wait_until(f"{promql} == {expected}", reached, timeout, every=0.5)
        except h.HarnessError as exc:
            raise AssertionError(f"{promql}: expected {expected}, saw {seen[-5:]}") from exc

    def stop(self) -> None:
        self.reaper.stop(self.process, timeout=30)


@pytest.fixture(scope="module")
def observed(deployment, mariadb, moto, reaper):
    need(PROMETHEUS)
    moto.reset()
    name = "marketplace_prometheus"
    env = deployment.env(
        mariadb.create_database(name),
        moto.url,
        ADMIN_EMAIL=ADMINS[0][0],
        ADMIN_PASSWORD=ADMINS[0][1],
        LOG_FORMAT="json",
        WEBHOOK_ALLOWED_HOSTS=h.HOST,
        WEBHOOK_ALLOW_HTTP="true",
    )
    stack = h.Stack(deployment, "prometheus", env, entrypoint=True).start()
    # An endpoint that never answers: its deliveries wait, and the dashboard shows them.
    token = stack.http.login(*ADMINS[0])
    hook = {"url": f"http://{h.HOST}:{h.free_port()}/hooks"}
    assert stack.http.request("POST", "/api/webhooks", hook, token=token).status == 201
    workdir = reaper.workdir / "prometheus"
    workdir.mkdir()
    prometheus = Prometheus(reaper, workdir, stack.port)
    yield SimpleNamespace(stack=stack, prometheus=prometheus, moto=moto)
    prometheus.stop()
    stack.stop(timeout=30)
    mariadb.drop_database(name)


def test_prometheus_scrapes_the_service(observed):
    prometheus = observed.prometheus
    prometheus.settles_at('up{job="marketplace"}', 1)
    families = {r["metric"]["__name__"] for r in prometheus.query('{__name__=~"marketplace_.+"}')}
    assert {
        "marketplace_http_requests_total",
        "marketplace_http_request_duration_seconds_bucket",
        "marketplace_notifications",
        "marketplace_views_stream_lag",
        "marketplace_emails_total",
    } <= families


def test_product_reads_are_counted_once_each_across_every_process(observed):
    stack, prometheus = observed.stack, observed.prometheus
    token = stack.http.login(*ADMINS[0])
    assert stack.http.request("POST", "/api/products", SEED, token=token).status == 201
    prometheus.settles_at(f"sum(marketplace_http_requests_total{{{READ}}}) or vector(0)", 0)
    for _ in range(READS):
        assert stack.http.get(f"/api/products/{SEED['sku']}").status == 200
    # uWSGI's four workers answered them: one sum, as Prometheus stored it.
    prometheus.settles_at(f"sum(marketplace_http_requests_total{{{READ}}})", READS)
    prometheus.settles_at(
        f"sum(marketplace_http_request_duration_seconds_count{{{READ.rsplit(',', 1)[0]}}})",
        READS,
    )
    prometheus.settles_at('sum(marketplace_views_recorded_total{path="stream"})', READS)
    # The worker daemon wrote them from the stream: nothing left behind.
    prometheus.settles_at("sum(marketplace_views_applied_total)", READS)
    prometheus.settles_at("max(marketplace_views_stream_lag)", 0)


def test_the_workers_sent_email_is_counted(observed):
    prometheus = observed.prometheus
    # One admin: the product created above is one email, sent by the worker daemon.
    prometheus.settles_at('sum(marketplace_emails_total{outcome="sent"})', 1)
    prometheus.settles_at('max(marketplace_notifications{status="sent"})', 1)
    prometheus.settles_at('max(marketplace_notifications{status="pending"})', 0)
    assert [m.to for m in observed.moto.emails()] == [ADMINS[0][0]]


def test_failed_logins_are_counted(observed):
    stack, prometheus = observed.stack, observed.prometheus
    wrong = {"email": ADMINS[0][0], "password": "not-the-password"}
    before = prometheus.value("sum(marketplace_login_failures_total)")
    for _ in range(3):
        assert stack.http.request("POST", "/users/login", wrong).status == 401
    prometheus.settles_at("sum(marketplace_login_failures_total)", before + 3)


def test_every_dashboard_query_has_data(observed):
    """The Grafana dashboard's queries, as Grafana would send them (all instances)."""
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$instance", ".*").replace("$__rate_interval", "10s")
            assert observed.prometheus.query(expr), f"{panel['title']}: no data for {expr}"


def log_lines(stack: h.Stack) -> list[str]:
    return stack.log.read_text(errors="replace").splitlines()


def json_lines(stack: h.Stack) -> list[dict]:
    """The app's and the worker's lines (LOG_FORMAT=json), among nginx's and uWSGI's."""
    found = []
    for line in log_lines(stack):
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_nginx_and_the_app_log_the_same_request_id(observed):
    stack = observed.stack
    path = "/api/products?q="  # a declared parameter marks each request's line
    fresh = stack.http.get(path + "case-fresh").headers["X-Request-ID"]
    kept = stack.http.get(path + "case-kept", headers={"X-Request-ID": "client-id-42"})
    replaced = stack.http.get(path + "case-bad", headers={"X-Request-ID": "bad id;"})
    assert re.fullmatch(r"[0-9a-f]{32}", fresh), "nginx's $request_id"
    assert kept.headers["X-Request-ID"] == "client-id-42"
    new = replaced.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", new)

    def both_logged() -> bool:
        lines = log_lines(stack)
        app_ids = {line.get("request_id") for line in json_lines(stack)}
        return all(
            any(f"request_id={rid}" in line and "case-" in line for line in lines)
            and rid in app_ids
            for rid in (fresh, "client-id-42", new)
        )

    h.wait_until("the id in nginx's and the app's lines", both_logged, 10)
    [app_line] = [line for line in json_lines(stack) if line.get("request_id") == fresh]
    assert app_line["logger"] == "app.requests" and app_line["status"] == 200
    assert app_line["route"] == "/api/products" and app_line["method"] == "GET"
    assert isinstance(app_line["duration_ms"], float) and app_line["time"]


def test_nginx_s_own_error_pages_carry_the_request_id(observed):
    """A body announced far over client_max_body_size: nginx answers 413 from the headers."""
    conn = http.client.HTTPConnection(h.HOST, observed.stack.port, timeout=10)
    try:
        conn.putrequest("POST", "/api/products")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(2 * 1024 * 1024))
        conn.putheader("X-Request-ID", "big-body-1")
        conn.endheaders()
        answer = conn.getresponse()
        body = json.loads(answer.read())
    finally:
        conn.close()
    assert answer.status == 413 and body["code"] == 413
    assert body["request_id"] == answer.getheader("X-Request-ID") == "big-body-1"
    h.wait_until(
        "nginx's line of its 413",
        lambda: any(
            '" 413 ' in line and "request_id=big-body-1" in line
            for line in log_lines(observed.stack)
        ),
        10,
    )


def test_the_worker_daemon_logs_json_lines(observed):
    lines = json_lines(observed.stack)
    worker = [line for line in lines if line["logger"] == "app.worker"]
    assert any("sender(s)" in line["message"] for line in worker), worker
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
