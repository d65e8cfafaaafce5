"""Every path fast: token reads, reads without the product cache, and a product change with
its emails and webhook (docs/performance.md, "Every path fast").

Served side by side in one run, each by Debian's uWSGI with the shipped app.ini, its
`flask worker`, a Redis database of the run's, the console mailer and 10,000 products:

- ``now``: this tree; ``before``: the tree at ``BEFORE`` (the commit before the write
  path was batched: the worker then started, sent and recorded each email on its own),
  its files taken from git and served under its own migrations. Each has 3 admins (every
  PUT emails the 3) and, for the PUT lines, 1 webhook endpoint (a receiver on loopback
  answering 204).
- ``cache-off``: this tree with ``PRODUCT_CACHE_SECONDS=0`` (its own database): every read
  is answered from MariaDB, its view recorded through the stream.
- ``bare``: bench/bare_app.py answering the same product's JSON from a dict.

Lines:

- Throughput of ``GET /api/products/<sku>`` with a reader's (rol 2) token, anonymous
  without the product cache, and anonymous (cached), each / bare Flask's.
- The worker's CPU per email: the worker stopped (SIGSTOP) while PUTs queue their emails
  (no webhook endpoint yet), then let go; its CPU until every email is sent, / emails.
- PUT all-in CPU per emailed admin: the CPU of uWSGI, the worker, the run's Redis and
  MariaDB (the machine's, so any other client of it counts too) over PUT rounds and until
  the worker has sent their emails and webhooks, / PUTs / admins.
- PUT throughput, ``now`` / ``before`` (4 clients, alternating rounds).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from common import (
    MARIADB,
    BenchError,
    Context,
    Result,
    Target,
    alternate,
    app_environment,
    bare_environment,
    build_catalog,
    call,
    cpu_seconds,
    create_admin,
    deployment,
    drop_databases,
    earlier_tree,
    get,
    h,
    redis,
    say,
    serve,
    throughput,
    worker_pid,
)

from tests.system.receiver import Answer, Receiver

# The commit before the write path was batched.
BEFORE = "d07b618780602378aa9943d8e7d08638484bde3b"
DATABASES = {"now": "bench_writes_now", "before": "bench_writes_before"}
CACHE_OFF_DATABASE = "bench_writes_cache_off"
PRODUCTS = 10_000
ADMINS = 3
CLIENTS = 4
PUT_ROUNDS = 4
PUT_SECONDS = 6.0
QUEUED_SECONDS = 4.0
DRAIN_SECONDS = 180.0
OPEN_EMAILS = "SELECT COUNT(*) FROM notifications WHERE status IN ('pending', 'sending')"
OPEN_WEBHOOKS = "SELECT COUNT(*) FROM webhook_deliveries WHERE status IN ('pending', 'retrying')"
EMAILS = "SELECT COUNT(*) FROM notifications"

TOKEN_READ_TARGET = Target(">=", 0.3)
CACHE_OFF_TARGET = Target(">=", 0.25)
CACHED_TARGET = Target(">=", 0.45)
PUT_CPU_TARGET = Target("<=", 5.0)
PUT_THROUGHPUT_TARGET = Target(">=", 3.0)
WORKER_CPU_TARGET = Target("<=", 1.0)


@dataclass
class Side:
    """A served tree: its server, database, an admin's and a reader's tokens, products."""

    name: str
    server: h.Stack
    database: str
    admin: str
    reader: str
    skus: list[str]
    puts: int = 0
    put_seconds: float = 0.0
    all_in_cpu: float = 0.0
    drained_puts: int = 0
    per_email: dict = field(default_factory=dict)
    cpu_parts: dict = field(default_factory=dict)  # seconds: web (uWSGI, Redis), worker, MariaDB


def run(ctx: Context) -> list[Result]:
    try:
        return measure(ctx)
    finally:
        if not ctx.keep_databases:
            drop_databases(*DATABASES.values(), CACHE_OFF_DATABASE)


def measure(ctx: Context) -> list[Result]:
    trees = {"now": deployment(), "before": deployment(source=earlier_tree(BEFORE))}
    admins = [(f"bench-admin{n}@example.com", secrets.token_urlsafe(16)) for n in range(ADMINS)]
    with contextlib.ExitStack() as stack:
        receiver = Receiver(lambda _got: Answer(204))
        stack.callback(receiver.close)
        hooks = {"WEBHOOK_ALLOWED_HOSTS": h.HOST, "WEBHOOK_ALLOW_HTTP": "true"}
        sides: dict[str, Side] = {}
        for name, tree in trees.items():
            database = DATABASES[name]
            env = app_environment(
                database, redis_url=redis().new_database(), tree=tree, **hooks, **ctx.app_env
            )
            catalog = build_catalog(database, PRODUCTS, marks=10, env=env, tree=tree)
            for n, (email, password) in enumerate(admins):
                create_admin(env, email, password, f"Bench Admin {n}", tree=tree)
            server = stack.enter_context(serve(f"writes-{name}", env, worker=True, tree=tree))
            admin = server.http.login(*admins[0])
            reader = new_reader(server, admin)
            sides[name] = Side(name, server, database, admin, reader, catalog.sample_skus)
        env = app_environment(
            CACHE_OFF_DATABASE,
            redis_url=redis().new_database(),
            PRODUCT_CACHE_SECONDS="0",
            **ctx.app_env,
        )
        build_catalog(CACHE_OFF_DATABASE, PRODUCTS, marks=10, env=env)
        cache_off = stack.enter_context(serve("writes-cache-off", env, worker=True))
        now, before = sides["now"], sides["before"]
        sku = now.skus[len(now.skus) // 2]
        path = f"/api/products/{quote(sku)}"
        product = get(now.server, path).json
        bare = stack.enter_context(
            serve(
                "bare", bare_environment(BENCH_BARE_PRODUCTS=json.dumps({sku: product})), bare=True
            )
        )
        for side in (cache_off, bare):
            if get(side, path).json != product:
                raise BenchError(f"{side.name} answers {path} differently from the service.")

        results = read_lines(ctx, now, before, cache_off, bare, path)
        for _n, side in alternate(1, [now, before]):
            side.per_email = worker_cpu_per_email(side)
        results.append(worker_line(now, before))
        for side in sides.values():
            call(side.server, "POST", "/api/webhooks", {"url": receiver.url("/hook")},
                 token=side.admin, expect=201)  # fmt: skip
        put_rounds(now, before)
        results += put_lines(now, before)
    return results


def new_reader(server: h.Stack, admin: str) -> str:
    """A read-only (rol 2) account, made by the admin; its token."""
    email, password = f"reader-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(16)
    body = {"fullname": "Bench Reader", "username": email.split("@")[0], "email": email,
            "password": password, "rol": 2}  # fmt: skip
    call(server, "POST", "/api/users", body, token=admin, expect=201)
    return server.http.login(email, password)


# ---------------------------------------------------------------- reads


def read_lines(ctx, now: Side, before: Side, cache_off: h.Stack, bare: h.Stack, path: str):
    reader = {"Authorization": f"Bearer {now.reader}"}
    before_reader = {"Authorization": f"Bearer {before.reader}"}
    lines = []
    cases = [
        ("with a reader's token", [now.server, before.server], reader, TOKEN_READ_TARGET),
        ("anonymous, product cache off", [cache_off], None, CACHE_OFF_TARGET),
        ("anonymous (cached)", [now.server, before.server], None, CACHED_TARGET),
    ]
    for what, servers, headers, target in cases:
        # Each server against the bare rounds alternated with its own.
        measured, ceilings = {}, {}
        for server in servers:
            own = before_reader if server is before.server and headers else headers
            got = throughput(
                ctx, [server, bare], path, rounds=ctx.rounds, seconds=ctx.seconds, headers=own
            )
            measured[server.name], ceilings[server.name] = got[server.name], got[bare.name]
        main, ceiling = measured[servers[0].name], ceilings[servers[0].name]
        measured_text = f"{main.rps:,.0f} / {ceiling.rps:,.0f} req/s ({main.cpu_ms:.2f} ms CPU)"
        if len(servers) > 1:
            other = servers[1].name
            ratio = measured[other].rps / ceilings[other].rps
            measured_text += f"; before {measured[other].rps:,.0f} ({ratio:.3f})"
        lines.append(
            Result(
                f"GET /api/products/<sku> {what}: service / bare Flask throughput",
                measured_text,
                main.rps / ceiling.rps,
                target,
                {
                    "rps": {name: round(m.rps, 1) for name, m in measured.items()},
                    "bare_rps": {name: round(m.rps, 1) for name, m in ceilings.items()},
                    "cpu_ms": {name: round(m.cpu_ms, 3) for name, m in measured.items()},
                },
            )
        )
    return lines


# ---------------------------------------------------------------- the worker's emails


def drain(side: Side, *queries: str) -> float:
    """Wait until the side's worker has nothing open in ``queries``; seconds waited."""
    started = time.monotonic()
    deadline = started + DRAIN_SECONDS
    while any(MARIADB.query(side.database, query)[0][0] for query in queries):
        if time.monotonic() > deadline:
            raise BenchError(f"{side.server.name}: its worker did not drain in {DRAIN_SECONDS}s")
        time.sleep(0.05)
    return time.monotonic() - started


def load_puts(side: Side, seconds: float) -> tuple[int, float]:
    load = h.Load(side.server.port, side.skus, [side.admin], timeout=30, keepalive=False)
    load.run([h.Role(put=1.0, list=0.0, admin=0)] * CLIENTS, seconds)
    statuses = {r.status for r in load.requests}
    if statuses != {200}:
        raise BenchError(f"{side.server.name}: PUT answers {sorted(statuses)}")
    return len(load.requests), load.seconds


def worker_cpu_per_email(side: Side) -> dict:
    """Emails queued while the worker is stopped, then sent: its CPU per email."""
    pid = worker_pid(side.server)
    drain(side, OPEN_EMAILS)
    emails_before = MARIADB.query(side.database, EMAILS)[0][0]
    side.server.kill(pid, signal.SIGSTOP)
    try:
        load_puts(side, QUEUED_SECONDS)
    finally:
        cpu = h.cpu_seconds(pid)
        side.server.kill(pid, signal.SIGCONT)
    emails = MARIADB.query(side.database, EMAILS)[0][0] - emails_before
    seconds = drain(side, OPEN_EMAILS)
    used = h.cpu_seconds(pid) - cpu
    say(f"{side.server.name}: {emails} emails sent in {seconds:.1f}s, worker CPU {used:.2f}s")
    return {"emails": emails, "cpu_ms": used / max(emails, 1) * 1000, "seconds": seconds}


def worker_line(now: Side, before: Side) -> Result:
    a, b = now.per_email, before.per_email
    return Result(
        "flask worker: CPU per email sent (console mailer), ms",
        f"{a['cpu_ms']:.2f} ms ({a['emails']} emails); before {b['cpu_ms']:.2f} ms",
        a["cpu_ms"],
        WORKER_CPU_TARGET,
        {"now": a, "before": b, "before_commit": BEFORE},
    )


# ---------------------------------------------------------------- PUTs


def mariadb_pid() -> int:
    """The machine's MariaDB server (the one the benchmarks' databases live on)."""
    listening = h.run(["ss", "-ltnpH", f"sport = :{MARIADB.port}"], 10).stdout
    found = re.search(r"pid=(\d+)", listening)
    if not found:
        raise BenchError(f"No process listens on MariaDB's port {MARIADB.port}.")
    return int(found.group(1))


def cpu_parts(server: h.Stack, worker: int, database: int) -> dict[str, float]:
    """CPU seconds so far: the web side (uWSGI and the run's Redis), the worker, MariaDB."""
    used = h.cpu_seconds(worker)
    return {
        "web": cpu_seconds(server) - used,
        "worker": used,
        "mariadb": h.cpu_seconds(database),
    }


def put_rounds(now: Side, before: Side) -> None:
    """Alternating PUT rounds; each side's CPU, all in, until its worker has sent what the
    round queued."""
    database = mariadb_pid()
    for side in (now, before):
        load_puts(side, 2.0)  # warm-up
        drain(side, OPEN_EMAILS, OPEN_WEBHOOKS)
    for _n, side in alternate(PUT_ROUNDS, [now, before]):
        worker = worker_pid(side.server)
        cpu = cpu_parts(side.server, worker, database)
        done, seconds = load_puts(side, PUT_SECONDS)
        drain(side, OPEN_EMAILS, OPEN_WEBHOOKS)
        for part, used in cpu_parts(side.server, worker, database).items():
            side.cpu_parts[part] = side.cpu_parts.get(part, 0.0) + used - cpu[part]
        side.all_in_cpu = sum(side.cpu_parts.values())
        side.puts += done
        side.put_seconds += seconds
        say(f"{side.server.name}: {done / seconds:,.0f} PUT/s ({done} PUTs)")
    for side in (now, before):
        shares = ", ".join(f"{p} {v / side.puts * 1000:.2f}" for p, v in side.cpu_parts.items())
        say(f"{side.server.name}: CPU ms per PUT: {shares}")


def put_lines(now: Side, before: Side) -> list[Result]:
    rps = {side.name: side.puts / side.put_seconds for side in (now, before)}
    per_admin = {side.name: side.all_in_cpu / side.puts / ADMINS * 1000 for side in (now, before)}
    details = {
        "before_commit": BEFORE,
        "admins": ADMINS,
        "webhook_endpoints": 1,
        "clients": CLIENTS,
        "puts": {side.name: side.puts for side in (now, before)},
        "cpu_ms_per_put": {
            side.name: {p: round(v / side.puts * 1000, 2) for p, v in side.cpu_parts.items()}
            for side in (now, before)
        },
    }
    return [
        Result(
            "PUT /api/products/<sku>, 3 admins + 1 webhook: all-in CPU per emailed admin, ms",
            f"{per_admin['now']:.2f} ms; before {per_admin['before']:.2f} ms",
            per_admin["now"],
            PUT_CPU_TARGET,
            {**details, "per_admin_ms": per_admin},
        ),
        Result(
            "PUT /api/products/<sku>, 3 admins + 1 webhook: throughput / before",
            f"{rps['now']:,.0f} / {rps['before']:,.0f} req/s",
            rps["now"] / rps["before"],
            PUT_THROUGHPUT_TARGET,
            {**details, "rps": rps},
        ),
    ]
