"""Request ids (X-Request-ID) and log lines (app/core/logs.py): kept, replaced, in every error
body and every log record of the request; LOG_FORMAT=json as one object a line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import boto3
import pytest
from moto import mock_aws
from werkzeug.serving import make_server

from app.core import config, logs
from app.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
NEW_ID = re.compile(r"[0-9a-f]{32}")
SEED = {"sku": "d7iy6euiue", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}
PRODUCT_ROUTE = "/api/products/<string:sku>"


def records_of(caplog, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "request_id", None) == request_id]


@pytest.mark.parametrize("incoming", ["abc-123_XYZ", "a" * 128, "0"])
def test_a_valid_incoming_request_id_is_kept(client, incoming):
    answer = client.get("/healthz", headers={"X-Request-ID": incoming})
    assert answer.headers["X-Request-ID"] == incoming


def test_without_a_request_id_the_answer_gets_a_new_one_each_time(client):
    first = client.get("/healthz").headers["X-Request-ID"]
    second = client.get("/healthz").headers["X-Request-ID"]
    assert NEW_ID.fullmatch(first) and NEW_ID.fullmatch(second) and first != second


@pytest.mark.parametrize(
    "incoming", ["a" * 129, "has space", "semi;colon", 'quote"d', "ünïcode", "x/y", ""]
)
def test_an_invalid_request_id_is_replaced_by_a_new_one(client, caplog, incoming):
    caplog.set_level(logging.INFO)
    answer = client.get("/api/products/nope", headers={"X-Request-ID": incoming})
    given = answer.headers["X-Request-ID"]
    assert given != incoming and NEW_ID.fullmatch(given)
    assert answer.json["request_id"] == given
    assert records_of(caplog, given), "the log lines carry the replacement"
    assert not any(getattr(r, "request_id", None) == incoming for r in caplog.records)


def test_every_error_body_names_the_request_id(client, admin, app):
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/boom")
    def boom():
        raise RuntimeError("internals")

    answers = [
        client.get("/api/nothing-here"),  # 404
        client.post("/api/products", json={**SEED, "price": -1}, headers=admin["headers"]),
        client.post("/api/products", json=SEED),  # 401
        client.delete("/users/login"),  # 405
        client.get("/boom", headers={"X-Request-ID": "crash-1"}),  # 500
    ]
    assert [a.status_code for a in answers] == [404, 422, 401, 405, 500]
    for answer in answers:
        assert answer.json["request_id"] == answer.headers["X-Request-ID"], answer.json
    assert answers[-1].json["request_id"] == "crash-1"
    assert answers[1].json["errors"]["json"]["price"], "the rest of the shape is unchanged"


def test_every_log_record_of_a_request_carries_its_id_route_and_user(client, admin, app, caplog):
    caplog.set_level(logging.INFO)
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/boom")
    def boom():
        logging.getLogger("app.somewhere").warning("about to fail")
        raise RuntimeError("internals")

    client.get("/boom", headers={"X-Request-ID": "req-boom", **admin["headers"]})
    boom_records = records_of(caplog, "req-boom")
    messages = [r.getMessage() for r in boom_records]
    assert "about to fail" in messages and "unhandled error" in messages
    assert all(r.route == "/boom" and r.method == "GET" for r in boom_records)

    client.post("/api/products", json=SEED, headers={"X-Request-ID": "req-1", **admin["headers"]})
    [line] = [r for r in records_of(caplog, "req-1") if r.name == "app.requests"]
    assert (line.method, line.route, line.status) == ("POST", "/api/products", 201)
    assert line.user_id == admin["id"] and line.duration_ms >= 0

    client.get("/api/products/d7iy6euiue", headers={"X-Request-ID": "req-2"})
    [line] = [r for r in records_of(caplog, "req-2") if r.name == "app.requests"]
    assert (line.route, line.status) == (PRODUCT_ROUTE, 200)
    assert not hasattr(line, "user_id"), "an anonymous read has no user"


@pytest.mark.parametrize(
    ("log_probes", "logged"), [(False, {"list"}), (True, {"probe", "scrape", "list"})]
)
def test_probes_and_scrapes_get_a_request_line_only_without_nginx(
    app, client, caplog, log_probes, logged
):
    """Behind nginx (production: LOG_PROBES false) nginx logs them; `make run` logs all."""
    app.config["LOG_PROBES"] = log_probes
    caplog.set_level(logging.INFO)
    client.get("/healthz", headers={"X-Request-ID": "probe"})
    client.get("/metrics", headers={"X-Request-ID": "scrape"})
    client.get("/api/products", headers={"X-Request-ID": "list"})
    lines = {r.request_id for r in caplog.records if r.name == "app.requests"}
    assert lines == logged


def test_production_leaves_probes_to_nginx(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "x")
    monkeypatch.delenv("LOG_PROBES", raising=False)
    assert config.ProductionConfig().LOG_PROBES is False
    assert config.Config().LOG_PROBES is True


def test_the_development_server_logs_each_request_once(app, caplog):
    """`make run` (Flask's development server): the app's line, not the server's too."""
    caplog.set_level(logging.INFO)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for path in ("/api/products", "/healthz", "/nope"):
            request = Request(f"http://127.0.0.1:{server.port}{path}")
            with contextlib.suppress(HTTPError):
                urlopen(request, timeout=10).close()
    finally:
        server.shutdown()
        server.server_close()
    lines = [r.getMessage() for r in caplog.records if r.name in ("app.requests", "werkzeug")]
    assert lines == ["GET /api/products 200", "GET /healthz 200", "GET /nope 404"]


def test_json_lines_parse_and_carry_the_fields(client, admin, caplog):
    caplog.set_level(logging.INFO)
    headers = {"X-Request-ID": "json-1", **admin["headers"]}
    client.put("/api/products/nope", json={"price": 1}, headers=headers)
    [record] = [r for r in records_of(caplog, "json-1") if r.name == "app.requests"]
    line = logs.formatter("json").format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert list(fields)[:4] == ["time", "level", "logger", "message"]
    assert fields["level"] == "INFO" and fields["logger"] == "app.requests"
    assert fields["message"] == "PUT /api/products/nope 404"
    assert fields["request_id"] == "json-1" and fields["user_id"] == admin["id"]
    assert (fields["method"], fields["route"], fields["status"]) == ("PUT", PRODUCT_ROUTE, 404)
    assert isinstance(fields["duration_ms"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", fields["time"])


def test_text_lines_end_with_the_fields(client, caplog):
    caplog.set_level(logging.INFO)
    client.get("/api/products/nope", headers={"X-Request-ID": "text-1"})
    [record] = [r for r in records_of(caplog, "text-1") if r.name == "app.requests"]
    line = logs.formatter("text").format(record)
    assert re.search(r" INFO app\.requests: GET /api/products/nope 404 request_id=text-1 ", line)
    assert f"route={PRODUCT_ROUTE}" in line and "status=404" in line


def test_log_format_json_writes_only_json_lines_to_stderr(tmp_path):
    """A fresh process as uWSGI starts it: no handler yet, LOG_FORMAT=json."""
    script = (
        "from app import create_app\n"
        "from app.core.config import TestConfig\n"
        "import logging\n"
        f"app = create_app(TestConfig('sqlite:///{tmp_path / 'x.db'}'))\n"
        "client = app.test_client()\n"
        "client.get('/nowhere', headers={'X-Request-ID': 'fresh-1'})\n"
        "logging.getLogger('app.elsewhere').warning('outside a request')\n"
    )
    env = {**os.environ, "LOG_FORMAT": "json", "LOG_REQUESTS": "true"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    [request_line] = [line for line in lines if line["logger"] == "app.requests"]
    assert request_line["request_id"] == "fresh-1" and request_line["status"] == 404
    [outside] = [line for line in lines if line["logger"] == "app.elsewhere"]
    assert outside["level"] == "WARNING" and "request_id" not in outside


def test_the_workers_lines_name_the_notification(app, client, admin, caplog, monkeypatch):
    """SES refuses the send (sender not verified): the worker's warning says which email."""
    caplog.set_level(logging.INFO)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    app.config.update(MAIL_BACKEND="ses", EMAIL_SOURCE="catalog@example.com")
    with mock_aws():
        boto3.client("ses", region_name="us-east-1")  # nothing verified: every send fails
        client.post("/api/products", json=SEED, headers=admin["headers"])
        Worker(app).drain()
    failed = [r for r in caplog.records if "attempt 1 failed" in r.getMessage()]
    assert failed, [r.getMessage() for r in caplog.records]
    for record in failed:
        assert f"notification {record.notification_id} " in record.getMessage()
        assert not hasattr(record, "request_id")


def test_an_unknown_log_format_is_refused(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(config.ConfigError, match="LOG_FORMAT"):
        config.TestConfig().validate()


def test_a_path_cannot_forge_a_log_line(client, caplog):
    caplog.set_level(logging.INFO)
    client.get("/api/products/x%0A2026-01-01 INFO app.requests: GET / 200")
    [record] = [r for r in caplog.records if r.name == "app.requests"]
    line = logs.formatter("text").format(record)
    assert "\n" not in line and "x\\n2026-01-01" in line


def test_a_method_cannot_colour_or_forge_a_log_line(app, caplog):
    """`make run` (flask run): a request line `G<ESC>[31mET /x HTTP/1.1` sent as it is
    (werkzeug upper-cases the method). Neither the text line (message and fields) nor the
    JSON line holds the escape: it is written as `\x1b`."""
    import socket
    import threading

    from werkzeug.serving import make_server

    caplog.set_level(logging.INFO)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(
                b"G\x1b[31mET /x HTTP/1.1\r\nHost: a\r\nX-Request-ID: escaped-1\r\n"
                b"Connection: close\r\n\r\n"
            )
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
    finally:
        server.shutdown()
        thread.join(10)
    assert answer.startswith(b"HTTP/1.1 404")
    [record] = [r for r in records_of(caplog, "escaped-1") if r.name == "app.requests"]
    text = logs.formatter("text").format(record)
    assert "\x1b" not in text
    assert "G\\x1b[31MET /x 404" in text and "method=G\\x1b[31MET" in text
    line = logs.formatter("json").format(record)
    assert "\x1b" not in line
    assert json.loads(line)["message"] == "G\\x1b[31MET /x 404"
