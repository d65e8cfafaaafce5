"""The pace of the emails: two worker processes sharing SES's send rate through Redis.

500 emails are queued at once (one product change's email, copied to 500 recipients),
then two `flask worker` processes, each with its sender threads, send them with
``SES_MAX_SEND_RATE=50`` and one private Redis (the shared token bucket). SES is moto's
server behind a small HTTP proxy that enforces the rate as SES does: a SendRawEmail that
would make more than 50 in the last second (plus the bucket's one token of burst) is
answered with SES's own ``Throttling`` / "Maximum sending rate exceeded." error.

1. From the first send to the last, as the proxy saw them: 500 emails at 50 a second take
   (500 - 1) / 50 = 9.98 s; the target is 10 s within 10% (ratio to 10 s, 0.9 to 1.1).
2. Throttling errors the proxy answered: 0 expected (the bucket never lets the workers
   exceed the rate together); every email sent once.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import (
    HOST,
    MARIADB,
    BenchError,
    Context,
    Result,
    Target,
    app_environment,
    close_in_process_app,
    deployment,
    drop_databases,
    h,
    in_process_app,
    reaper,
    recreate_database,
    redis,
    say,
    scalar,
    start_moto,
)

DATABASE = "bench_ses_pace"
EMAILS = 500
RATE = 50
BURST = 1
WORKERS = 2
SEND_SECONDS = 120
EXPECTED_SECONDS = 10.0
PACE_LOW = Target(">=", 0.9)
PACE_HIGH = Target("<=", 1.1)
THROTTLED_TARGET = Target("==", 0)
THROTTLING = (
    b'<ErrorResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/"><Error><Type>Sender'
    b"</Type><Code>Throttling</Code><Message>Maximum sending rate exceeded.</Message></Error>"
    b"<RequestId>bench-ses-pace</RequestId></ErrorResponse>"
)


class RateProxy:
    """HTTP in front of moto: SendRawEmail beyond RATE in any second (+ BURST) is
    throttled; the times of the sends let through are kept."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.lock = threading.Lock()
        self.recent: deque[float] = deque()
        self.sent: list[float] = []
        self.throttled = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                target = self.headers.get("X-Amz-Target", "")
                if (b"Action=SendRawEmail" in body or target.endswith("SendRawEmail")) and (
                    not proxy.admit()
                ):
                    self.send_response(400)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(THROTTLING)))
                    self.end_headers()
                    self.wfile.write(THROTTLING)
                    return
                conn = http.client.HTTPConnection(HOST, proxy.target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request("POST", self.path, body, headers)
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def admit(self) -> bool:
        now = time.monotonic()
        with self.lock:
            while self.recent and self.recent[0] <= now - 1.0:
                self.recent.popleft()
            if len(self.recent) >= RATE + BURST:
                self.throttled += 1
                return False
            self.recent.append(now)
            self.sent.append(now)
            return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(ctx: Context) -> list[Result]:
    try:
        return measure(ctx)
    finally:
        if not ctx.keep_databases:
            drop_databases(DATABASE)


def queue_emails() -> None:
    """A migrated database holding EMAILS pending emails of one product change."""
    recreate_database(DATABASE)
    app, client, headers = in_process_app(MARIADB.url(DATABASE), MAIL_BACKEND="console")
    try:
        body = {"sku": "pace-1", "name": "pace", "price": 10, "mark": "m", "quantity": 1}
        answer = client.post("/api/products", json=body, headers=headers)
        if answer.status_code != 201:
            raise BenchError(f"POST /api/products: {answer.status_code} {answer.get_json()}")
    finally:
        close_in_process_app(app)
    with contextlib.closing(MARIADB.connect(DATABASE)) as conn, conn.cursor() as cur:
        cur.execute("SELECT event_row_id FROM notifications")
        [(event,)] = cur.fetchall()
        cur.execute("DELETE FROM notifications")
        cur.executemany(
            "INSERT INTO notifications (event_row_id, event_count, kind, recipient, status,"
            " attempts, next_attempt_at, created_at)"
            " VALUES (%s, 1, 'change', %s, 'pending', 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
            [(event, f"pace{n}@example.com") for n in range(EMAILS)],
        )
        conn.commit()


def measure(ctx: Context) -> list[Result]:
    with contextlib.ExitStack() as stack:
        moto = start_moto()
        stack.callback(reaper().stop, moto.process)
        proxy = RateProxy(moto.port)
        stack.callback(proxy.close)
        queue_emails()
        env = app_environment(
            DATABASE,
            redis_url=redis().new_database(),
            ses_url=f"http://{HOST}:{proxy.port}",
            **{
                **ctx.app_env,
                "AWS_EC2_METADATA_DISABLED": "true",
                "MAIL_BACKEND": "ses",
                "SES_MAX_SEND_RATE": str(RATE),
            },
        )
        d = deployment()
        for n in range(WORKERS):
            process = reaper().start(
                [d.venv / "bin" / "flask", "--app", "wsgi", "worker"],
                f"ses-pace-worker-{n}.log",
                {**env, "WORKER_NAME": f"pace-{n}"},
                cwd=d.app_dir,
            )
            stack.callback(reaper().stop, process)
        sent_sql = "SELECT COUNT(*) FROM notifications WHERE status = 'sent'"
        h.wait_until(
            f"{EMAILS} emails sent",
            lambda: int(scalar(DATABASE, sent_sql)) == EMAILS,
            SEND_SECONDS,
            0.2,
        )
        times = sorted(proxy.sent)
        seconds = times[-1] - times[0]
        per_id = moto.sends_per_notification()
        once = sum(1 for n in per_id.values() if n == 1)
        say(
            f"{EMAILS} emails at SES_MAX_SEND_RATE={RATE}, {WORKERS} workers: first send to "
            f"last {seconds:.2f} s, {proxy.throttled} throttled, {once} sent once"
        )
        if once != EMAILS:
            raise BenchError(f"{once} of {EMAILS} notification ids sent exactly once")
        details = {
            "emails": EMAILS,
            "rate": RATE,
            "workers": WORKERS,
            "seconds": round(seconds, 3),
            "throttled": proxy.throttled,
            "sent_once": once,
        }
        return [
            Result(
                name=f"{EMAILS} emails at {RATE}/s, {WORKERS} workers: seconds / 10 (>= 0.9)",
                measured=f"{seconds:.2f} s",
                ratio=seconds / EXPECTED_SECONDS,
                target=PACE_LOW,
                details=details,
            ),
            Result(
                name=f"{EMAILS} emails at {RATE}/s, {WORKERS} workers: seconds / 10 (<= 1.1)",
                measured=f"{seconds:.2f} s",
                ratio=seconds / EXPECTED_SECONDS,
                target=PACE_HIGH,
                details=details,
            ),
            Result(
                name="Throttling errors SES (the rate-enforcing proxy) answered",
                measured=str(proxy.throttled),
                ratio=proxy.throttled,
                target=THROTTLED_TARGET,
                details=details,
            ),
        ]
