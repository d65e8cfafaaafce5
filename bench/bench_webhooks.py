"""Webhooks: how soon a change reaches its endpoint, with an idle worker and behind a
backlog, and whether sending webhooks slows the emails down.

The service as deployed (uWSGI on MariaDB, `flask worker` beside it, a private Redis for
the wake-ups, moto's server as SES, one admin), and a webhook receiver on loopback (the
fault runs' real HTTP server, tests/system/receiver.py): endpoint ``/fast`` answers 204 at
once, ``/slow`` after SLOW_SECONDS.

1. Commit -> first attempt, idle worker: single PUTs, each once the worker has sent
   everything before it; per delivery, its first attempt's start minus the delivery row's
   ``created_at`` (written just before the commit: an upper bound). Median and p99.
2. The same behind a backlog: a catalog import queues BACKLOG deliveries, and single PUTs
   follow while they drain. Deliveries go out first come, first served: a PUT's waits for
   the backlog before it. Median and p99, and the backlog's rate (deliveries a second).
3. Emails beside webhooks: commit -> SES (``created_at`` -> ``sent_at``) of the PUTs'
   emails while the two endpoints are active, ``/slow`` holding sending places and a
   backlog queued before each round, divided by the same with both endpoints off, in
   alternating rounds on the one server.
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import time
from urllib.parse import quote

from common import (
    HOST,
    MARIADB,
    BenchError,
    Context,
    Result,
    Target,
    alternate,
    app_environment,
    call,
    create_admin,
    drop_databases,
    flask_command,
    h,
    reaper,
    recreate_database,
    redis,
    say,
    serve,
    start_moto,
)

from tests.system.receiver import Answer, Receiver

DATABASE = "bench_webhooks"
PRODUCTS = 300
IDLE_PUTS = 40
BACKLOG = 2_000
BACKLOG_PUTS = 20
EMAIL_ROUNDS = 4
EMAIL_PUTS = 8
SKUS = "SELECT sku FROM products WHERE deleted_at IS NULL ORDER BY id"
EMAIL_BACKLOG = 200
SLOW_SECONDS = 1.0
DRAIN_SECONDS = 300

IDLE_TARGET = Target("<", 1.0)
BACKLOG_TARGET = Target("<", 30.0)
EMAILS_TARGET = Target("<=", 1.5)


def run(ctx: Context) -> list[Result]:
    try:
        return measure(ctx)
    finally:
        if not ctx.keep_databases:
            drop_databases(DATABASE)


def measure(ctx: Context) -> list[Result]:
    with contextlib.ExitStack() as stack:
        moto = start_moto()
        stack.callback(reaper().stop, moto.process)
        receiver = Receiver(
            lambda got: Answer(204, delay=SLOW_SECONDS if got.path == "/slow" else 0.0)
        )
        stack.callback(receiver.close)
        env = app_environment(
            DATABASE,
            redis_url=redis().new_database(),
            ses_url=moto.url,
            **{
                **ctx.app_env,
                "MAIL_BACKEND": "ses",
                "WEBHOOK_ALLOWED_HOSTS": HOST,
                "WEBHOOK_ALLOW_HTTP": "true",
            },
        )
        recreate_database(DATABASE)
        flask_command(env, "db", "upgrade")
        admin = ("bench-hooks@example.com", secrets.token_urlsafe(16))
        create_admin(env, *admin, "Bench Hooks")
        server = stack.enter_context(serve("webhooks", env, worker=True))
        side = Side(server, server.http.login(*admin), receiver)
        side.import_new(PRODUCTS)  # no endpoint yet: nothing to deliver
        side.skus = [sku for (sku,) in MARIADB.query(DATABASE, SKUS)]
        say(f"{len(side.skus)} products; a receiver on {HOST}:{receiver.port}")
        fast = side.register("/fast")
        idle = side.idle()
        backlog = side.behind_a_backlog()
        slow = side.register("/slow")
        emails = side.emails_beside_webhooks([fast, slow])
        return [idle, backlog, emails]


class Side:
    """The server, an admin's token, the receiver, and products to change."""

    def __init__(self, server: h.Stack, token: str, receiver: Receiver):
        self.server, self.token, self.receiver = server, token, receiver
        self.skus: list[str] = []
        self.price = 1000
        self.imports = 0

    def _json(self, method: str, path: str, payload=None, *, token=None, expect=200):
        return call(self.server, method, path, payload, token=token, expect=expect).json

    def register(self, path: str) -> int:
        body = {"url": self.receiver.url(path)}
        return self._json("POST", "/api/webhooks", body, token=self.token, expect=201)["id"]

    def put(self, sku: str) -> None:
        self.price += 1
        path = f"/api/products/{quote(sku)}"
        self._json("PUT", path, {"price": self.price}, token=self.token)

    def import_new(self, rows: int) -> None:
        """One catalog import of ``rows`` new products: that many events at once."""
        self.imports += 1
        lines = [f"hk{self.imports}-{n:05},Hook {n},{n}.50,hooks,{n}" for n in range(rows)]
        body = ("sku,name,price,mark,quantity\n" + "\n".join(lines) + "\n").encode()
        answer = self.server.http.request(
            "POST",
            "/api/catalog/import",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "text/csv"},
            body=body,
        )
        if answer.status != 200:
            raise BenchError(f"import: {answer.status} {answer.body[:300]!r}")

    def last(self, table: str) -> int:
        return int(MARIADB.query(DATABASE, f"SELECT COALESCE(MAX(id), 0) FROM {table}")[0][0])

    def open_deliveries(self) -> int:
        sql = "SELECT COUNT(*) FROM webhook_deliveries WHERE status IN ('pending', 'retrying')"
        return int(MARIADB.query(DATABASE, sql)[0][0])

    def first_attempts(self, after: int, endpoint: int | None = None) -> list[float]:
        """Seconds from each delivery's row to its first attempt (deliveries after ``after``)."""
        sql = (
            "SELECT TIMESTAMPDIFF(MICROSECOND, d.created_at, MIN(a.at)) FROM webhook_deliveries d"
            " JOIN webhook_attempts a ON a.delivery_id = d.id WHERE d.id > %s"
            + (" AND d.endpoint_id = %s" if endpoint else "")
            + " GROUP BY d.id"
        )
        params = (after, endpoint) if endpoint else (after,)
        return sorted(int(us) / 1e6 for (us,) in MARIADB.query(DATABASE, sql, *params))

    def wait_sent(self, what: str) -> float:
        began = time.monotonic()
        h.wait_until(what, lambda: self.open_deliveries() == 0, DRAIN_SECONDS, 0.02)
        return time.monotonic() - began

    # ---------------------------------------------------------------- 1 and 2

    def idle(self) -> Result:
        for sku in self.skus[:3]:  # warm up
            self.put(sku)
        self.wait_sent("the warm-up's webhooks")
        after = self.last("webhook_deliveries")
        for n in range(IDLE_PUTS):
            time.sleep(0.2 + 0.3 * (n % 3) / 2)  # the worker waits, idle
            self.put(self.skus[3 + n])
            self.wait_sent("the PUT's webhook")
        delays = self.first_attempts(after)
        if len(delays) != IDLE_PUTS:
            raise BenchError(f"{len(delays)} deliveries attempted for {IDLE_PUTS} PUTs")
        median, p99 = figures(delays)
        say(f"commit -> first attempt, idle: median {median * 1000:.0f}, p99 {p99 * 1000:.0f} ms")
        return Result(
            name="Webhook: commit -> first attempt, idle worker: median (p99)",
            measured=f"{median * 1000:.0f} ms (p99 {p99 * 1000:.0f} ms, {len(delays)} PUTs)",
            ratio=median,
            target=IDLE_TARGET,
            details={"puts": IDLE_PUTS, "median_s": round(median, 4), "p99_s": round(p99, 4)},
        )

    def behind_a_backlog(self) -> Result:
        after = self.last("webhook_deliveries")
        began = time.monotonic()
        self.import_new(BACKLOG)
        queued = time.monotonic()
        backlog_last = self.last("webhook_deliveries")
        for n in range(BACKLOG_PUTS):
            time.sleep(0.1)
            self.put(self.skus[3 + IDLE_PUTS + n])
        drained = self.wait_sent("the backlog") + (time.monotonic() - queued)
        backlog = self.first_attempts(after)
        puts = self.first_attempts(backlog_last)
        if len(puts) != BACKLOG_PUTS or len(backlog) != BACKLOG + BACKLOG_PUTS:
            raise BenchError(f"{len(backlog)} deliveries attempted, {len(puts)} of the PUTs'")
        median, p99 = figures(puts)
        rate = BACKLOG / max(drained, 1e-9)
        say(
            f"commit -> first attempt behind {BACKLOG} deliveries: median {median:.2f} s, "
            f"p99 {p99:.2f} s; the backlog went at {rate:.0f} deliveries/s "
            f"(import {queued - began:.1f} s)"
        )
        return Result(
            name=f"Webhook: commit -> first attempt behind a backlog of {BACKLOG:,}: median (p99)",
            measured=f"{median:.2f} s (p99 {p99:.2f} s; backlog at {rate:.0f}/s)",
            ratio=median,
            target=BACKLOG_TARGET,
            details={
                "backlog": BACKLOG,
                "puts": BACKLOG_PUTS,
                "median_s": round(median, 3),
                "p99_s": round(p99, 3),
                "deliveries_per_second": round(rate, 1),
            },
        )

    # ---------------------------------------------------------------- 3

    def set_active(self, endpoints: list[int], active: bool) -> None:
        for endpoint in endpoints:
            self._json("PATCH", f"/api/webhooks/{endpoint}", {"active": active}, token=self.token)

    def email_delays(self, skus: list[str]) -> list[float]:
        after = self.last("notifications")
        for sku in skus:
            time.sleep(0.25)
            self.put(sku)
        sql_open = (
            "SELECT COUNT(*) FROM notifications WHERE id > %s AND status IN ('pending', 'sending')"
        )
        h.wait_until(
            "the PUTs' emails",
            lambda: int(MARIADB.query(DATABASE, sql_open, after)[0][0]) == 0,
            DRAIN_SECONDS,
            0.02,
        )
        rows = MARIADB.query(
            DATABASE,
            "SELECT TIMESTAMPDIFF(MICROSECOND, created_at, sent_at) FROM notifications"
            " WHERE id > %s AND kind = 'change' AND status = 'sent'",
            after,
        )
        return [int(us) / 1e6 for (us,) in rows]

    def emails_beside_webhooks(self, endpoints: list[int]) -> Result:
        measured: dict[str, list[float]] = {"with": [], "without": []}
        skus = iter(self.skus[3 + IDLE_PUTS + BACKLOG_PUTS :])
        for _n, kind in alternate(EMAIL_ROUNDS, ["without", "with"]):
            self.set_active(endpoints, kind == "with")
            if kind == "with":
                self.import_new(EMAIL_BACKLOG)  # /slow's deliveries hold sending places
            measured[kind] += self.email_delays([next(skus) for _ in range(EMAIL_PUTS)])
        self.set_active(endpoints, True)
        left = self.open_deliveries()
        with_, without = (statistics.median(measured[k]) for k in ("with", "without"))
        say(
            f"emails commit -> SES: {with_ * 1000:.0f} ms with webhooks flowing "
            f"({left} deliveries still open) / {without * 1000:.0f} ms without"
        )
        return Result(
            name="Emails' commit -> SES: webhooks to a slow endpoint and a backlog / none, median",
            measured=f"{with_ * 1000:.0f} / {without * 1000:.0f} ms",
            ratio=with_ / max(without, 1e-9),
            target=EMAILS_TARGET,
            details={
                "rounds": EMAIL_ROUNDS,
                "emails": {k: len(v) for k, v in measured.items()},
                "with": summary(measured["with"]),
                "without": summary(measured["without"]),
                "slow_endpoint_seconds": SLOW_SECONDS,
                "backlog_per_round": EMAIL_BACKLOG * len(endpoints),
            },
        )


def figures(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered), ordered[
        min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    ]


def summary(seconds: list[float]) -> dict:
    median, p99 = figures(seconds)
    return {"median_s": round(median, 4), "p99_s": round(p99, 4), "max_s": round(max(seconds), 4)}
