"""GET /metrics: Prometheus' text format, for the operator's network only."""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.core import config
from app.worker import Worker

ROOT = Path(__file__).resolve().parent.parent

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


def moved(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_failed_logins_and_429s_are_counted(client, admin):
    before = samples(client)
    wrong = {"email": admin["email"], "password": "wrong-password"}
    answers = [
        client.post("/users/login", json=wrong, environ_base={"REMOTE_ADDR": "10.7.0.1"})
        for _ in range(12)
    ]
    assert [a.status_code for a in answers] == [401] * 10 + [429] * 2
    after = samples(client)
    assert moved(before, after, "marketplace_login_failures_total") == 10
    assert moved(before, after, "marketplace_login_limited_total") == 2
    login = {"route": "/users/login", "method": "POST"}
    assert moved(before, after, "marketplace_http_requests_total", **login, status="429") == 2


def test_database_errors_and_their_503s_are_counted(client):
    before = samples(client)
    # Port 1 on loopback: nothing listens there.
    broken = create_app(config.TestConfig("mysql://root@127.0.0.1:1/marketplace"))
    assert broken.test_client().get("/api/products/abc").status_code == 503
    after = samples(client)  # one registry per process: the broken app's counts too
    assert moved(before, after, "marketplace_database_errors_total") == 1
    read = {"route": "/api/products/<string:sku>", "method": "GET", "status": "503"}
    assert moved(before, after, "marketplace_http_requests_total", **read) == 1


def test_sent_emails_are_counted_and_the_outbox_gauges_follow(app, client, admin):
    client.post("/api/products", json=SEED, headers=admin["headers"])
    before = samples(client)
    assert value(before, "marketplace_notifications", status="pending") == 1
    assert value(before, "marketplace_notifications", status="sent") == 0
    Worker(app).drain()
    after = samples(client)
    assert moved(before, after, "marketplace_emails_total", outcome="sent") == 1
    assert value(after, "marketplace_notifications", status="pending") == 0
    assert value(after, "marketplace_notifications", status="sent") == 1
    assert value(after, "marketplace_notifications_oldest_pending_seconds") == 0
    for status in ("failed", "unknown", "sending"):
        assert ("marketplace_notifications", (("status", status),)) in after


def test_the_views_stream_backlog_is_the_consumer_lag(app, client, make, streamed):
    make.product("abc")
    before = samples(client)
    for _ in range(3):
        assert client.get("/api/products/abc").status_code == 200
    waiting = samples(client)
    assert moved(before, waiting, "marketplace_views_recorded_total", path="stream") == 3
    assert value(waiting, "marketplace_views_stream_lag") == 3
    Worker(app).drain()
    done = samples(client)
    assert value(done, "marketplace_views_stream_lag") == 0
    assert value(done, "marketplace_views_stream_pending") == 0
    assert moved(waiting, done, "marketplace_views_applied_total") == 3


def test_a_view_written_directly_because_the_stream_is_down_is_counted(app, client, make):
    from app.core import redis_client
    from app.views import recorder

    make.product("abc")
    app.config.update(REDIS_URL="redis://127.0.0.1:1/0", REDIS_TIMEOUT=0.2)  # nothing there
    redis_client.init_app(app)
    recorder.init_app(app)
    before = samples(client)
    assert client.get("/api/products/abc").status_code == 200
    after = samples(client)
    assert moved(before, after, "marketplace_views_fallback_total") == 1
    assert moved(before, after, "marketplace_views_recorded_total", path="direct") == 1
    assert moved(before, after, "marketplace_views_lost_total") == 0
    assert ("marketplace_views_stream_lag", ()) not in after, "no stream to read: no gauge"


def test_the_workers_counts_are_in_the_web_processes_scrape(app, client, admin, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR, as the image sets it: `flask worker` is another process."""
    client.post("/api/products", json=SEED, headers=admin["headers"])
    database = app.config["SQLALCHEMY_DATABASE_URI"]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DATABASE_URL": database}
    worker = (
        "from app import create_app\n"
        "from app.core.config import TestConfig\n"
        "from app.worker import Worker\n"
        "import os\n"
        "print(Worker(create_app(TestConfig(os.environ['DATABASE_URL']))).drain())\n"
    )
    scrape = (
        "from app import create_app\n"
        "from app.core.config import TestConfig\n"
        "import os\n"
        "app = create_app(TestConfig(os.environ['DATABASE_URL']))\n"
        "print(app.test_client().get('/metrics').get_data(as_text=True))\n"
    )
    run = {"cwd": ROOT, "env": env, "capture_output": True, "text": True, "timeout": 120}
    drained = subprocess.run([sys.executable, "-c", worker], **run)
    assert drained.returncode == 0 and drained.stdout.strip() == "(0, 1)", drained.stderr
    scraped = subprocess.run([sys.executable, "-c", scrape], **run)
    assert scraped.returncode == 0, scraped.stderr
    found = {}
    for family in text_string_to_metric_families(scraped.stdout):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(found, "marketplace_emails_total", outcome="sent") == 1
    assert value(found, "marketplace_notifications", status="sent") == 1


def test_metrics_are_not_for_the_public(app, client):
    public = {"REMOTE_ADDR": "8.8.8.8"}  # a global address (only a value here)
    refused = client.get("/metrics", environ_base=public)
    assert refused.status_code == 404 and refused.json["code"] == 404
    app.config["METRICS_TOKEN"] = "scrape-token-1234567890"
    token = {"Authorization": "Bearer scrape-token-1234567890"}
    assert client.get("/metrics", environ_base=public, headers=token).status_code == 200
    wrong = {"Authorization": "Bearer not-it"}
    assert client.get("/metrics", environ_base=public, headers=wrong).status_code == 404


@pytest.mark.parametrize(
    ("address", "served"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("172.31.0.9", True),
        ("192.168.1.1", True),
        ("fd12:3456::1", True),
        ("::ffff:10.0.0.1", True),  # an IPv4 client seen through IPv6: its IPv4 counts
        ("8.8.8.8", False),
        ("::ffff:8.8.8.8", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo: a tunnelled client
        ("2002:808:808::1", False),  # 6to4: a tunnelled client
        ("2002:a00:1::1", False),  # 6to4 naming a private address: still the internet
        ("64:ff9b::808:808", False),  # NAT64
        ("100.64.0.1", False),  # carrier-grade NAT: the carrier's network, not ours
        ("100.127.255.254", False),
        ("192.0.0.8", False),
        ("198.18.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("not-an-address", False),
    ],
)
def test_only_the_hosts_and_the_operators_networks_scrape_without_a_token(client, address, served):
    answer = client.get("/metrics", environ_base={"REMOTE_ADDR": address})
    assert answer.status_code == (200 if served else 404), address


def test_made_up_methods_and_paths_cannot_grow_the_metrics(client):
    """Labels come from closed sets: 1,000 requests with random methods (to real routes and
    to made-up paths) add no series; only the counts' digits change."""
    rng = random.Random(20261206)

    def made_up() -> str:
        return "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 20)))

    # From here on, the series of the "other" method and of the scrape itself exist.
    client.open("/x", method=made_up())  # 404
    client.open("/api/products", method=made_up())  # 405
    client.get("/metrics")
    before = client.get("/metrics").get_data(as_text=True)
    for n in range(1000):
        path = rng.choice(["/api/products", "/users/login", f"/{made_up().lower()}-{n}"])
        assert client.open(path, method=made_up()).status_code in (404, 405)
    after = client.get("/metrics").get_data(as_text=True)

    def series(text: str) -> set:
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line[:1] != "#"}

    assert series(after) == series(before)
    assert len(after) - len(before) < 1000, (len(before), len(after))
    counted = samples(client)
    assert (
        value(
            counted,
            "marketplace_http_requests_total",
            route="unmatched",
            method="other",
            status="404",
        )
        >= 1
    )
