"""Product changes while the mail provider is slow: the outbox keeps SES off the request.

1. ``PUT /api/products/<sku>`` median latency with ``MAIL_BACKEND=ses`` where SES answers
   after 300 ms, divided by the same with ``MAIL_BACKEND=console`` (target <= 1.2). Every PUT
   is a real change (the price alternates between two values), so each one writes one
   notification row per admin (3 admins) and hands them to the background senders.
2. Exactness: once the background senders are done, the SES stand-in must have received
   exactly (PUTs to the SES server) x (admins) emails: "emails delivered / expected".

SES is moto's server (``moto_server``) behind a small proxy in this process that waits
300 ms before forwarding each request; the service finds it through boto3's standard
``AWS_ENDPOINT_URL``, so the service's code is unchanged.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote

from common import (
    HOST,
    BenchError,
    Context,
    Latencies,
    Result,
    Target,
    UwsgiServer,
    alternate,
    app_environment,
    build_catalog,
    connect,
    create_admin,
    drop_database,
    http_get,
    http_request,
    login,
    reaper,
    say,
    scalar,
    start_moto,
)

DATABASE = "bench_outbox"
PRODUCTS = 1_000
ADMINS = 3
SES_DELAY_SECONDS = 0.3
SENDER = "catalog-bench@example.com"
REGION = "us-east-1"
PRICES = (Decimal("101.00"), Decimal("102.00"))
WARMUP_PUTS = 10
LATENCY_ROUNDS = 6
# Waiting for the background senders: a bound on the whole wait, and on a wait without
# any progress (a send that failed is retried only by `flask notifications worker`).
DRAIN_SECONDS = 240
STALL_SECONDS = 20

LATENCY_TARGET = Target("<=", 1.2)
EXACT_TARGET = Target("==", 1)


def run(ctx: Context) -> list[Result]:
    try:
        return measure(ctx)
    finally:
        if not ctx.keep_databases:
            try:
                drop_database(DATABASE)
            except Exception as exc:  # keep the benchmark's own error, if any
                say(f"could not drop {DATABASE}: {exc}")


def measure(ctx: Context) -> list[Result]:
    with contextlib.ExitStack() as stack:
        moto = start_moto()
        stack.callback(reaper().stop, moto.process)
        proxy = stack.enter_context(DelayProxy(moto.port, SES_DELAY_SECONDS))
        ses_api = ses_client(moto.port)
        ses_api.verify_email_identity(EmailAddress=SENDER)
        if sent_by_moto(ses_api) != 0:
            raise BenchError("moto's SES has sent emails before the benchmark started.")

        envs = {backend: outbox_env(ctx, backend, proxy.port) for backend in ("console", "ses")}
        catalog = build_catalog(DATABASE, PRODUCTS, marks=20, env=envs["console"])
        admins = [(f"bench-admin{n}@example.com", secrets.token_urlsafe(16)) for n in range(ADMINS)]
        started = time.monotonic()
        # Three `flask` processes side by side: each spends its time starting the app.
        with ThreadPoolExecutor(ADMINS) as pool:
            for done in [
                pool.submit(create_admin, envs["console"], email, password, f"Bench Admin {n}")
                for n, (email, password) in enumerate(admins)
            ]:
                done.result()
        say(f"{ADMINS} admins created with `flask users create-admin` in "
            f"{time.monotonic() - started:.1f}s")  # fmt: skip

        editors: dict[str, Editor] = {}
        for n, backend in enumerate(("console", "ses")):
            server = stack.enter_context(
                UwsgiServer(
                    f"outbox-{backend}", "wsgi.py", envs[backend], ready_path="/api/products"
                )
            )
            token = login(server, *admins[0])
            editors[backend] = Editor(server, token, catalog.sample_skus[n])
        console, ses = editors["console"], editors["ses"]

        latency = put_latency(ctx, console, ses)
        delivery = check_delivery(ses_api, moto.port, proxy, ses)
        check_console(console)
        return [latency, delivery]


# ---------------------------------------------------------------- environment


def outbox_env(ctx: Context, backend: str, proxy_port: int) -> dict[str, str]:
    """Both servers get the same environment but for MAIL_BACKEND."""
    aws = {
        "AWS_ENDPOINT_URL": f"http://{HOST}:{proxy_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env = app_environment(
        DATABASE,
        {
            **ctx.app_env,
            **aws,
            "MAIL_BACKEND": backend,
            "EMAIL_SOURCE": SENDER,
            "REGION_NAME": REGION,
        },
    )
    # No other AWS setting of the machine (a profile, a session token) may reach boto3.
    for key in [k for k in env if k.startswith("AWS_") and k not in aws]:
        del env[key]
    return env


def ses_client(port: int):
    import boto3  # the venv's; only this benchmark needs it

    return boto3.client(
        "ses",
        region_name=REGION,
        endpoint_url=f"http://{HOST}:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def sent_by_moto(ses_api) -> int:
    return int(ses_api.get_send_quota()["SentLast24Hours"])


# ---------------------------------------------------------------- the slow SES


class DelayProxy:
    """A loopback HTTP proxy that waits ``delay`` seconds, then relays the request to
    ``target_port`` and its answer back: a mail provider that answers slowly."""

    HOP_BY_HOP = {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self.lock = threading.Lock()
        self.actions: Counter = Counter()
        self.failures = 0
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> DelayProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
            timeout = 30  # an idle kept-alive connection ends its thread after this

            def do_POST(self) -> None:
                proxy.relay(self)

            do_GET = do_PUT = do_DELETE = do_POST

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self.thread.start()
        say(f"SES proxy: {HOST}:{self.port} -> moto, {self.delay * 1000:.0f} ms a request")
        return self

    def __exit__(self, *exc_info) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.thread is not None:
            self.thread.join(5)

    def relay(self, handler: BaseHTTPRequestHandler) -> None:
        if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
            handler.send_error(501, "chunked requests are not relayed")
            return
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
        time.sleep(self.delay)
        headers = {
            name: value
            for name, value in handler.headers.items()
            if name.lower() not in self.HOP_BY_HOP
        }
        try:
            conn = http.client.HTTPConnection(HOST, self.target_port, timeout=30)
            try:
                conn.request(handler.command, handler.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                status, reason, answer = resp.status, resp.reason, resp.read()
                answer_headers = resp.getheaders()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            with self.lock:
                self.failures += 1
            handler.send_error(502, f"moto: {exc}")
            return
        with self.lock:
            self.actions[(action, status)] += 1
        handler.send_response(status, reason)
        for name, value in answer_headers:
            if name.lower() not in self.HOP_BY_HOP | {"date", "server"}:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {f"{action} {status}": n for (action, status), n in sorted(self.actions.items())}


# ---------------------------------------------------------------- the PUTs


class Editor:
    """An admin changing one product on one server: every PUT changes the price."""

    def __init__(self, server: UwsgiServer, token: str, sku: str) -> None:
        self.server = server
        self.token = token
        self.sku = sku
        self.path = f"/api/products/{quote(sku)}"
        self.price = Decimal(
            str(scalar(DATABASE, "SELECT price FROM products WHERE sku_key = %s", (sku.lower(),)))
        )
        self.product_id = scalar(
            DATABASE, "SELECT id FROM products WHERE sku_key = %s", (sku.lower(),)
        )
        self.puts = 0

    def put(self) -> float:
        """One PUT on a new connection; its round-trip time in seconds."""
        new = PRICES[0] if self.price != PRICES[0] else PRICES[1]
        body = json.dumps({"price": int(new)}).encode()
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        began = time.perf_counter()
        status, _headers, answer = http_request(
            HOST, self.server.port, "PUT", self.path, body=body, headers=headers
        )
        elapsed = time.perf_counter() - began
        if status != 200:
            raise BenchError(
                f"PUT {self.path} on {self.server.name}: HTTP {status}: {answer[:300]!r}"
            )
        got = Decimal(str(json.loads(answer)["price"]))
        if got != new:
            raise BenchError(f"PUT {self.path} on {self.server.name}: price {got}, expected {new}")
        self.price = new
        self.puts += 1
        return elapsed

    def rows(self) -> dict[str, int]:
        """This product's notification rows by status."""
        with contextlib.closing(connect(DATABASE)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT status, COUNT(*) FROM notifications WHERE product_id = %s GROUP BY status",
                (self.product_id,),
            )
            return {status: int(n) for status, n in cur.fetchall()}


def put_latency(ctx: Context, console: Editor, ses: Editor) -> Result:
    sides = [console, ses]
    for editor in sides:
        for _ in range(WARMUP_PUTS):
            editor.put()
    per_round = max(1, ctx.latency_requests // 2 // LATENCY_ROUNDS)
    measured = {editor.server.name: Latencies() for editor in sides}
    budget = time.monotonic() + 300
    for _n, editor in alternate(LATENCY_ROUNDS, sides):
        for _ in range(per_round):
            if time.monotonic() > budget:
                raise BenchError("the PUT latency rounds passed 300s")
            measured[editor.server.name].samples.append(editor.put())
    con = measured[console.server.name]
    slow = measured[ses.server.name]
    say(
        f"PUT median: {slow.median_ms:.2f} ms (SES, {SES_DELAY_SECONDS * 1000:.0f} ms a send) / "
        f"{con.median_ms:.2f} ms (console); p90 {slow.percentile_ms(90):.2f} / "
        f"{con.percentile_ms(90):.2f} ms"
    )

    def summary(lat: Latencies, editor: Editor) -> dict:
        return {
            "timed_puts": len(lat.samples),
            "all_puts": editor.puts,
            "median_ms": round(lat.median_ms, 3),
            "p90_ms": round(lat.percentile_ms(90), 3),
            "p99_ms": round(lat.percentile_ms(99), 3),
            "max_ms": round(max(lat.samples) * 1000, 3),
        }

    return Result(
        name=f"PUT /api/products/<sku>: SES {SES_DELAY_SECONDS * 1000:.0f} ms / console median",
        measured=f"{slow.median_ms:.2f} / {con.median_ms:.2f} ms",
        ratio=slow.median_ms / con.median_ms,
        target=LATENCY_TARGET,
        details={
            "admins": ADMINS,
            "ses_delay_ms": SES_DELAY_SECONDS * 1000,
            "ses": summary(slow, ses),
            "console": summary(con, console),
        },
    )


# ---------------------------------------------------------------- delivery


def check_delivery(ses_api, moto_port: int, proxy: DelayProxy, ses: Editor) -> Result:
    """Wait (bounded) until the SES server's rows are no longer pending; count what moto got."""
    expected = ses.puts * ADMINS
    written = sum(ses.rows().values())
    if written != expected:
        say(f"notification rows written for the SES product: {written}, expected {expected}")
    began = time.monotonic()
    deadline = began + DRAIN_SECONDS
    last_progress, last_pending = began, None
    while True:
        rows = ses.rows()
        pending = rows.get("pending", 0)
        if pending == 0:
            break
        now = time.monotonic()
        if pending != last_pending:
            last_pending, last_progress = pending, now
        if now > deadline or now - last_progress > STALL_SECONDS:
            say(f"still {pending} pending emails after {now - began:.0f}s; counting anyway")
            break
        time.sleep(0.5)
    drained = time.monotonic() - began
    delivered = sent_by_moto(ses_api)
    messages = moto_messages(moto_port)
    per_recipient = Counter(
        address
        for message in messages
        for address in message.get("destinations", {}).get("ToAddresses", [])
    )
    moto_ids = {message.get("id") for message in messages}
    with contextlib.closing(connect(DATABASE)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT message_id FROM notifications WHERE product_id = %s AND status = 'sent'",
            (ses.product_id,),
        )
        db_ids = [row[0] for row in cur.fetchall()]
        cur.execute(
            "SELECT last_error FROM notifications WHERE product_id = %s"
            " AND last_error IS NOT NULL LIMIT 3",
            (ses.product_id,),
        )
        errors = [row[0] for row in cur.fetchall()]
    same_ids = set(db_ids) == moto_ids and len(db_ids) == len(moto_ids)
    say(
        f"emails: {delivered} delivered / {expected} expected ({ses.puts} PUTs x {ADMINS} admins); "
        f"{len(messages)} messages in moto's data.json; rows {ses.rows()}; "
        f"{drained:.1f}s after the last PUT"
    )
    say(f"per recipient: {dict(sorted(per_recipient.items()))}")
    say(f"moto's message ids are the rows' message ids: {same_ids}")
    say(f"SES proxy requests: {proxy.counts()}")
    if errors:
        say(f"send errors recorded: {errors}")
    return Result(
        name="SES emails delivered / expected (PUTs x admins), exact",
        measured=f"{delivered:,} / {expected:,}",
        ratio=delivered / expected if expected else 0.0,
        target=EXACT_TARGET,
        details={
            "puts": ses.puts,
            "admins": ADMINS,
            "expected": expected,
            "delivered_send_quota": delivered,
            "moto_messages": len(messages),
            "per_recipient": dict(per_recipient),
            "rows_written": written,
            "rows_by_status": ses.rows(),
            "message_ids_match_rows": same_ids,
            "seconds_to_drain_after_last_put": round(drained, 1),
            "proxy_requests": proxy.counts(),
            "proxy_failures": proxy.failures,
            "send_errors": errors,
        },
    )


def moto_messages(port: int) -> list[dict]:
    status, _headers, body = http_get(HOST, port, "/moto-api/data.json", timeout=30)
    if status != 200:
        raise BenchError(f"moto /moto-api/data.json: HTTP {status}")
    return json.loads(body).get("ses", {}).get("Message", [])


def check_console(console: Editor) -> None:
    """The console side's rows are sent too (logged): its PUTs were real changes as well."""
    deadline = time.monotonic() + 30
    while (rows := console.rows()).get("pending", 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    expected = console.puts * ADMINS
    say(f"console: {rows} for {console.puts} PUTs x {ADMINS} admins = {expected}")
    if rows.get("sent", 0) != expected:
        raise BenchError(f"console: {rows} notification rows, expected {expected} sent")
