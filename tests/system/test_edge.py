"""The edge, through the shipped nginx.conf: nginx's own error answers in the service's JSON
error shape, and with a dead or silent uWSGI."""

from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.errors import payload_for
from tests.system import harness as h


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def raw(port: int, data: bytes, source: str = h.HOST, timeout: float = 30) -> Answer:
    """Send ``data`` as it is (malformed or not) from ``source`` and read the answer to the
    connection's end."""
    with socket.create_connection((h.HOST, port), timeout, source_address=(source, 0)) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def get(port: int, path: str, **headers: str) -> Answer:
    fields = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    return raw(
        port, f"GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n{fields}\r\n".encode()
    )


def assert_json_error(answer: Answer, code: int) -> dict:
    """The app's error shape: {"code", "status", "message"}, the status as the app words it."""
    assert answer.status == code, answer
    assert answer.headers.get("content-type") == "application/json", answer.headers
    body = json.loads(answer.body)
    assert list(body) == ["code", "status", "message"], body
    assert body["code"] == code and body["status"] == payload_for(code)["status"], body
    assert body["message"], body
    return body


def listening(port: int) -> bool:
    try:
        socket.create_connection((h.HOST, port), 1).close()
    except OSError:
        return False
    return True


@dataclass
class BareNginx:
    port: int
    upstream: socket.socket
    socket_path: Path


@pytest.fixture
def bare_nginx(deployment, reaper):
    """nginx.conf (the harness's copy) alone, in front of a socket that accepts connections
    and never answers: no uWSGI behind it."""
    run = deployment.runtime_dir(f"run-edge-bare-{os.urandom(3).hex()}")
    path = run / "uwsgi.sock"
    upstream = socket.socket(socket.AF_UNIX)
    upstream.bind(str(path))
    path.chmod(0o666)  # nginx's workers (www-data) connect to it
    upstream.listen(64)
    port = h.free_port()
    conf = deployment.nginx_conf(f"nginx-{run.name}", port, [path])
    nginx = reaper.start(
        [h.NGINX, "-c", conf, "-e", "stderr", "-g", "daemon off;"],
        f"{run.name}.log",
        {"PATH": h.SYSTEM_PATH},
    )
    try:
        h.wait_until("nginx", lambda: nginx.poll() is not None or listening(port), 30)
        assert nginx.poll() is None, h.tail(reaper.workdir / f"{run.name}.log")
        yield BareNginx(port, upstream, path)
    finally:
        reaper.stop(nginx, signal.SIGQUIT)
        upstream.close()


# ---------------------------------------------------------------- nginx's own errors


def test_nginx_answers_malformed_and_oversized_requests_in_the_json_error_shape(bare_nginx):
    port = bare_nginx.port
    close = b"Connection: close\r\n"
    cases = {
        "no Host header": (b"GET / HTTP/1.1\r\n" + close + b"\r\n", 400),
        "a malformed request line": (b"GARBAGE\r\n\r\n", 400),
        "a header too large": (
            b"GET / HTTP/1.1\r\nHost: edge\r\n" + close + b"Cookie: " + b"c" * 9000 + b"\r\n\r\n",
            400,
        ),
        "a URI too long": (b"GET /" + b"u" * 10_000 + b" HTTP/1.1\r\nHost: edge\r\n\r\n", 414),
        "a body over 1 MiB": (
            b"POST /api/products HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
            + close
            + b"Content-Length: 2097152\r\n\r\n",
            413,
        ),
        "an unknown transfer coding": (
            b"POST /api/products HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: gzip\r\n"
            + close
            + b"\r\n",
            501,
        ),
        "HTTP/2 in plain text": (b"GET / HTTP/2.0\r\nHost: edge\r\n\r\n", 505),
        "the error page itself": (b"GET /.error HTTP/1.1\r\nHost: edge\r\n" + close + b"\r\n", 404),
    }
    for what, (data, code) in cases.items():
        answer = raw(port, data)
        assert answer.status == code, (what, answer)
        assert_json_error(answer, code)


def test_a_silent_upstream_gives_a_json_504_and_a_dead_one_a_json_502(bare_nginx):
    port = bare_nginx.port
    # /healthz gives uWSGI 10 s (uwsgi_read_timeout); the socket accepts and never answers.
    assert_json_error(get(port, "/healthz"), 504)
    bare_nginx.upstream.close()
    bare_nginx.socket_path.unlink()  # uWSGI gone: connect() fails
    dead = get(port, "/api/products")
    assert_json_error(dead, 502)
    assert dead.headers.get("retry-after") == "5"
