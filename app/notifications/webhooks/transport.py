"""One webhook POST: to the addresses that were checked, within the timeout, redirects not
followed, at most a few KiB of the answer read.

The connection goes to a checked address (``Destination.addresses``), never to a second
resolution of the name; the name is still what the request says (Host) and, for https,
what the certificate is verified against (SNI). The whole exchange, from connecting to
the end of the answer, has ``timeout`` seconds: past it the socket is shut, whatever the
server is doing.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from app.core.text import one_line
from app.notifications.webhooks.destinations import Destination

# What is read of an answer's body, and kept of it in the attempt's log.
READ_LIMIT = 4096
EXCERPT_LIMIT = 500
USER_AGENT = "Marketplace-Webhooks/1.0"


@dataclass(frozen=True)
class Answer:
    """What came of one POST: the status (None without an answer), or why none came."""

    status_code: int | None
    duration_ms: int
    error: str | None = None
    excerpt: str | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        """A 2xx within the timeout."""
        return self.error is None and self.status_code is not None


class _Pinned(http.client.HTTPConnection):
    """An HTTP connection to one chosen address, the host name kept for the request."""

    def __init__(self, destination: Destination, address: str, timeout: float):
        super().__init__(destination.host, destination.port, timeout=timeout)
        self.address = address

    def _socket(self) -> socket.socket:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def connect(self) -> None:
        self.sock = self._socket()


class _PinnedTLS(_Pinned):
    context = ssl.create_default_context()

    def connect(self) -> None:
        self.sock = self.context.wrap_socket(self._socket(), server_hostname=self.host)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff decides


def post(destination: Destination, headers: dict[str, str], body: bytes, timeout: float) -> Answer:
    """POST ``body`` once; an Answer whatever happens (errors are answers without status)."""
    started = time.monotonic()
    deadline = started + timeout
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Connection": "close",
        **headers,
    }

    def took() -> int:
        return round((time.monotonic() - started) * 1000)

    connection_class = _PinnedTLS if destination.scheme == "https" else _Pinned
    errors = []
    for address in destination.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        conn = connection_class(destination, address, remaining)
        try:
            conn.connect()
        except (OSError, ssl.SSLError) as exc:
            errors.append(f"{address}: {exc}")
            conn.close()
            continue
        return _exchange(conn, destination, headers, body, deadline, took)
    reason = "; ".join(errors) or "no address left to try"
    return Answer(None, took(), error=one_line(f"could not connect: {reason}")[:1000])


def _exchange(conn, destination, headers, body, deadline, took) -> Answer:
    # The deadline holds for the whole exchange: a server that answers a byte at a time
    # cannot keep the sender past it.
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0), _shut, (conn,))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", destination.target, body=body, headers=headers)
        answer = conn.getresponse()
        raw = answer.read(READ_LIMIT)
        retry_after = _retry_after(answer.getheader("Retry-After"))
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        if time.monotonic() >= deadline:
            return Answer(None, took(), error="no answer within the timeout")
        return Answer(None, took(), error=one_line(f"{type(exc).__name__}: {exc}")[:1000])
    finally:
        watchdog.cancel()
        conn.close()
    if time.monotonic() > deadline:
        return Answer(answer.status, took(), error="answered after the timeout")
    excerpt = one_line(raw.decode("utf-8", errors="replace"))[:EXCERPT_LIMIT] or None
    error = None
    if not 200 <= answer.status < 300:
        error = one_line(f"answered {answer.status} {answer.reason}")[:1000]
    return Answer(answer.status, took(), error, excerpt, retry_after)


def _shut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
