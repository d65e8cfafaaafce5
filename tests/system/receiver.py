"""A webhook receiver: a real HTTP server on loopback that keeps every request it gets,
answers as told, and checks signatures the way a Standard Webhooks receiver does.

Used by the unit tests (tests/test_webhooks.py), the fault runs and the benchmarks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"


@dataclass
class Received:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def event_id(self) -> int:
        return self.json["data"]["event_id"]

    @property
    def sku(self) -> str:
        return self.json["data"]["sku"]


@dataclass
class Answer:
    status: int = 204
    body: bytes = b""
    delay: float = 0.0  # seconds before answering
    headers: dict[str, str] = field(default_factory=dict)


def sign(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """What a receiver computes: base64 HMAC-SHA256 of "{id}.{timestamp}.{body}", keyed
    with the base64-decoded secret after whsec_."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def verified(secret: str, received: Received, tolerance: float = 300) -> bool:
    """The Standard Webhooks check: a v1 signature made with ``secret`` matches, and the
    timestamp is recent."""
    timestamp = received.headers.get("webhook-timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, received.webhook_id, timestamp, received.body)
    return any(
        version == "v1" and hmac.compare_digest(value, expected)
        for version, _, value in (
            part.partition(",") for part in received.headers.get("webhook-signature", "").split()
        )
    )


class Receiver:
    """``answer(received) -> Answer`` decides each answer (204 by default)."""

    def __init__(self, answer: Callable[[Received], Answer] | None = None) -> None:
        self.answer = answer or (lambda _received: Answer())
        self.received: list[Received] = []
        self.answering = 0  # requests arrived and not answered yet
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                got = Received(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                    time.time(),
                )
                with receiver.arrived:
                    receiver.received.append(got)
                    receiver.answering += 1
                    receiver.arrived.notify_all()
                try:
                    answer = receiver.answer(got)
                    if answer.delay:
                        time.sleep(answer.delay)
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass  # the sender gave up waiting (or died)
                finally:
                    with receiver.lock:
                        receiver.answering -= 1
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hooks") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        """Wait until at least ``count`` requests arrived; all of them."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} of {count} webhooks arrived")
                self.arrived.wait(left)
            return list(self.received)

    def per_webhook_id(self) -> Counter:
        with self.lock:
            return Counter(r.webhook_id for r in self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
