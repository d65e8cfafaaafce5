"""Product changes and their emails: the web request writes outbox rows, `flask worker` sends.

1. ``PUT /api/products/<sku>`` median latency with ``MAIL_BACKEND=ses`` and SES answering
   slowly, divided by the same with ``MAIL_BACKEND=console`` (target <= 1.2): the request
   never waits for the mail provider. Every PUT is a real change (the price alternates
   between two values), so each writes one notification row per admin (3 admins).
2. Commit-to-SES delay with an idle worker: single PUTs, each once the worker has sent
   everything before it and waits again; per email, ``sent_at - created_at`` of its row
   (created just before the commit; sent_at just after SES answered, so an upper bound of
   the delay to the SES call). Median target < 1 s.
3. Exactness: SES (moto) must have received exactly (PUTs on the SES side) x (admins)
   emails, each notification id once.

Each side has its own database, Redis database (the worker's wake-up list) and worker, and
the same environment but for MAIL_BACKEND. SES is moto's server behind the harness's TCP
fault proxy, which delays every chunk it relays while SES is to be slow.
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from urllib.parse import quote

from common import (
    HOST,
    MARIADB,
    BenchError,
    Context,
    Latencies,
    Result,
    Target,
    alternate,
    app_environment,
    build_catalog,
    create_admin,
    drop_databases,
    h,
    reaper,
    redis,
    say,
    scalar,
    serve,
    start_moto,
)

DATABASES = {"console": "bench_outbox_console", "ses": "bench_outbox_ses"}
PRODUCTS = 1_000
ADMINS = 3
# Per chunk relayed, each way: a send (request headers, body, answer) takes 3 to 4 of them.
SES_CHUNK_DELAY = 0.1
PRICES = (Decimal("101.00"), Decimal("102.00"))
WARMUP_PUTS = 10
LATENCY_ROUNDS = 6
IDLE_PUTS = 20
DRAIN_SECONDS = 180

LATENCY_TARGET = Target("<=", 1.2)
DELAY_TARGET = Target("<", 1.0)
EXACT_TARGET = Target("==", 1)


def run(ctx: Context) -> list[Result]:
    try:
        return measure(ctx)
    finally:
        if not ctx.keep_databases:
            drop_databases(*DATABASES.values())


def measure(ctx: Context) -> list[Result]:
    with contextlib.ExitStack() as stack:
        moto = start_moto()
        stack.callback(reaper().stop, moto.process)
        proxy = h.FaultProxy(moto.port)
        stack.callback(proxy.close)
        # The harness's environment points SES (AWS_ENDPOINT_URL) at the proxy, with
        # moto's test credentials, the verified sender and the region; each side its own
        # Redis database (the worker's wake-up list).
        envs = {
            backend: app_environment(
                database,
                redis_url=redis().new_database(),
                ses_url=f"http://{HOST}:{proxy.port}",
                **{**ctx.app_env, "AWS_EC2_METADATA_DISABLED": "true", "MAIL_BACKEND": backend},
            )
            for backend, database in DATABASES.items()
        }
        catalogs = {b: build_catalog(DATABASES[b], PRODUCTS, marks=20, env=envs[b]) for b in envs}
        admins = [(f"bench-admin{n}@example.com", secrets.token_urlsafe(16)) for n in range(ADMINS)]
        with ThreadPoolExecutor(3) as pool:  # `flask` processes spend their time starting
            for done in [
                pool.submit(create_admin, envs[b], email, password, f"Bench Admin {n}")
                for b in envs
                for n, (email, password) in enumerate(admins)
            ]:
                done.result()
        editors = {}
        for backend, env in envs.items():
            server = stack.enter_context(serve(f"outbox-{backend}", env, worker=True))
            sku = catalogs[backend].sample_skus[0]
            editors[backend] = Editor(
                server, DATABASES[backend], server.http.login(*admins[0]), sku
            )
        console, ses = editors["console"], editors["ses"]

        proxy.set("pass", SES_CHUNK_DELAY)
        ses_ms = ses_round_trip(proxy)
        latency = put_latency(ctx, console, ses, ses_ms)
        proxy.set("pass")  # SES at its own speed again: the backlog drains
        for editor in (console, ses):
            editor.drain()
        delay = commit_to_ses(ses)
        delivery = check_delivery(moto, ses)
        expected = console.puts * ADMINS
        if console.rows() != {"sent": expected}:
            raise BenchError(f"console: rows {console.rows()}, expected {expected} sent")
        return [latency, delay, delivery]


def ses_round_trip(proxy: h.FaultProxy) -> float:
    """Median milliseconds of an SES call through the proxy (GetSendQuota)."""
    import boto3  # the venv's

    through = boto3.client(
        "ses", region_name="us-east-1", endpoint_url=f"http://{HOST}:{proxy.port}",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    times = []
    for _ in range(5):
        began = time.perf_counter()
        through.get_send_quota()
        times.append(time.perf_counter() - began)
    ms = statistics.median(times) * 1000
    say(f"SES through the proxy: {ms:.0f} ms a call ({SES_CHUNK_DELAY * 1000:.0f} ms a chunk)")
    return ms


# ---------------------------------------------------------------- the PUTs


class Editor:
    """An admin changing one product on one side: every PUT changes the price."""

    def __init__(self, server: h.Stack, database: str, token: str, sku: str) -> None:
        self.server, self.database, self.token, self.sku = server, database, token, sku
        self.path = f"/api/products/{quote(sku)}"
        self.price = Decimal(
            str(scalar(database, "SELECT price FROM products WHERE sku_key = %s", sku.lower()))
        )
        self.puts = 0

    def put(self) -> float:
        """One PUT on a new connection; its round-trip time in seconds."""
        new = PRICES[0] if self.price != PRICES[0] else PRICES[1]
        began = time.perf_counter()
        answer = self.server.http.request("PUT", self.path, {"price": int(new)}, token=self.token)
        elapsed = time.perf_counter() - began
        if answer.status != 200 or Decimal(str(answer.json["price"])) != new:
            raise BenchError(
                f"PUT {self.path} on {self.server.name}: {answer.status} {answer.json}"
            )
        self.price = new
        self.puts += 1
        return elapsed

    def rows(self) -> dict[str, int]:
        """The side's notification rows by status."""
        sql = "SELECT status, COUNT(*) FROM notifications GROUP BY status"
        return {status: int(n) for status, n in MARIADB.query(self.database, sql)}

    def busy(self) -> int:
        rows = self.rows()
        return rows.get("pending", 0) + rows.get("sending", 0)

    def drain(self) -> float:
        """Wait until the worker has sent every row; the seconds it took."""
        began = time.monotonic()
        h.wait_until(
            f"{self.server.name}: every email sent", lambda: not self.busy(), DRAIN_SECONDS, 0.1
        )
        took = time.monotonic() - began
        say(f"{self.server.name}: rows {self.rows()} ({took:.1f}s after the last PUT)")
        return took


def put_latency(ctx: Context, console: Editor, ses: Editor, ses_ms: float) -> Result:
    sides = [console, ses]
    for editor in sides:
        for _ in range(WARMUP_PUTS):
            editor.put()
    per_round = max(1, ctx.latency_requests // 2 // LATENCY_ROUNDS)
    measured = {editor.server.name: Latencies() for editor in sides}
    for _n, editor in alternate(LATENCY_ROUNDS, sides):
        for _ in range(per_round):
            measured[editor.server.name].samples.append(editor.put())
    con, slow = measured[console.server.name], measured[ses.server.name]
    backlog = ses.busy()
    say(
        f"PUT median: {slow.median_ms:.2f} ms (SES at {ses_ms:.0f} ms a call) / "
        f"{con.median_ms:.2f} ms (console); p90 {slow.percentile_ms(90):.2f} / "
        f"{con.percentile_ms(90):.2f} ms; {backlog} SES emails still to send"
    )
    return Result(
        name=f"PUT /api/products/<sku>: SES {ses_ms:.0f} ms / console median",
        measured=f"{slow.median_ms:.2f} / {con.median_ms:.2f} ms",
        ratio=slow.median_ms / con.median_ms,
        target=LATENCY_TARGET,
        details={
            "admins": ADMINS,
            "ses_call_ms": round(ses_ms, 1),
            "ses_backlog_after_puts": backlog,
            "ses": slow.summary(),
            "console": con.summary(),
        },
    )


# ---------------------------------------------------------------- delivery


def commit_to_ses(ses: Editor) -> Result:
    """Single PUTs on an idle worker: how long each of its emails waited for SES."""
    first_new = int(scalar(ses.database, "SELECT COALESCE(MAX(id), 0) FROM notifications")) + 1
    for n in range(IDLE_PUTS):
        time.sleep(0.3 + 0.5 * (n % 3) / 2)  # the worker waits for its wake-up, idle
        ses.put()
        h.wait_until("the PUT's emails sent", lambda: not ses.busy(), 60, 0.02)
    rows = MARIADB.query(
        ses.database,
        "SELECT TIMESTAMPDIFF(MICROSECOND, created_at, sent_at) FROM notifications"
        " WHERE id >= %s AND status = 'sent' ORDER BY id",
        first_new,
    )
    delays = sorted(int(d) / 1e6 for (d,) in rows)
    if len(delays) != IDLE_PUTS * ADMINS:
        raise BenchError(f"{len(delays)} emails sent for {IDLE_PUTS} PUTs x {ADMINS} admins")
    median = statistics.median(delays)
    say(
        f"commit to SES (row created -> sent), idle worker: median {median * 1000:.0f} ms, "
        f"max {delays[-1] * 1000:.0f} ms over {len(delays)} emails"
    )
    return Result(
        name="PUT's commit -> SES call (created_at -> sent_at), idle worker: median",
        measured=f"{median * 1000:.0f} ms (max {delays[-1] * 1000:.0f}, {len(delays)} emails)",
        ratio=median,
        target=DELAY_TARGET,
        details={
            "puts": IDLE_PUTS,
            "emails": len(delays),
            "median_s": round(median, 4),
            "p90_s": round(delays[int(0.9 * (len(delays) - 1))], 4),
            "max_s": round(delays[-1], 4),
        },
    )


def check_delivery(moto: h.Moto, ses: Editor) -> Result:
    """What moto received, per notification id, against the rows of the SES side."""
    expected = ses.puts * ADMINS
    ids = {str(i) for (i,) in MARIADB.query(ses.database, "SELECT id FROM notifications")}
    received = moto.emails()
    per_id = moto.sends_per_notification()
    once = sum(1 for i in ids if per_id.get(i) == 1)
    duplicated = sum(n - 1 for n in per_id.values() if n > 1)
    unknown = sorted(set(per_id) - ids)[:5]
    say(
        f"SES received {len(received)} emails for {ses.puts} PUTs x {ADMINS} admins = {expected}: "
        f"{once} notification ids once, {duplicated} duplicates, rows {ses.rows()}"
    )
    return Result(
        name="SES emails received / expected (PUTs x admins), each once",
        measured=f"{len(received):,} / {expected:,}, {duplicated} twice",
        ratio=once / max(expected, len(received), len(ids)) if expected else 0.0,
        target=EXACT_TARGET,
        details={
            "puts": ses.puts,
            "admins": ADMINS,
            "expected": expected,
            "rows": len(ids),
            "received": len(received),
            "ids_once": once,
            "duplicates": duplicated,
            "ids_not_in_rows": unknown,
            "rows_by_status": ses.rows(),
        },
    )
