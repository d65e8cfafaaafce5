"""Product views under uWSGI (app.ini) on MariaDB: what counting them costs, and what reading
them costs.

1. ``GET /api/products/<sku>`` throughput with the views going through the Redis stream
   (``REDIS_URL`` to a private redis-server, app.ini's `flask worker` writing them to
   MariaDB) divided by the same with ``VIEW_RECORDING=off`` (target >= 0.9); for reference,
   the same server with its worker paused during the rounds (what the web side alone pays),
   and direct writes (no Redis: the view written by the read itself).
2. Exactness: reads of another product on the stream server by a load generator that
   counts its 200 answers; once the worker has drained the stream (and again after its
   graceful stop), ``product_views`` must hold exactly that many rows for it.
3. ``GET /api/products/<sku>/stats`` (30 days, admin) median latency with 5,000,000 raw view
   rows divided by the same with 50,000 (target <= 2): the statistics read the daily
   roll-ups, so their cost should not grow with the raw rows.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote

import redis as redis_py
from common import (
    BenchError,
    Context,
    Latencies,
    Result,
    Target,
    alternate,
    app_environment,
    build_catalog,
    call,
    connect,
    create_admin,
    drop_databases,
    get,
    h,
    reaper,
    redis,
    say,
    scalar,
    sequential_latencies,
    serve,
    throughput,
    worker_pid,
)

READS_DB = "bench_views_reads"
READ_PRODUCTS = 1_000
STREAM = "marketplace:views"  # app/streams.py
GROUP = "view-writers"
DRAIN_SECONDS = 120

SMALL = ("bench_views_50k", 50_000)
LARGE = ("bench_views_5m", 5_000_000)
STATS_PRODUCTS = 1_000
REGISTERED_USERS = 300
REGISTERED_PERCENT = 10  # of the views; the rest are anonymous (user_id NULL)
DAYS = 365
RANGE_DAYS = 30
RANGE_ENDS_DAYS_AGO = 15
LATENCY_ROUNDS = 6
ADMIN = ("stats-admin@example.com", "stats-admin-password")

THROUGHPUT_TARGET = Target(">=", 0.9)
EXACT_TARGET = Target("==", 1)
STATS_TARGET = Target("<=", 2)


def run(ctx: Context) -> list[Result]:
    try:
        results = reads(ctx)
        results.append(statistics_latency(ctx))
        return results
    finally:
        if not ctx.keep_databases:
            drop_databases(READS_DB, SMALL[0], LARGE[0])


# ---------------------------------------------------------------- recording views


class Stream:
    """The stream server's views stream, seen from outside: is the worker done with it?"""

    def __init__(self, url: str) -> None:
        self.conn = redis_py.Redis.from_url(url, decode_responses=True, socket_timeout=10)

    def backlog(self) -> int:
        """Entries not yet written and acknowledged by the worker (undelivered + pending)."""
        if not self.conn.exists(STREAM):
            return 0
        groups = {g["name"]: g for g in self.conn.xinfo_groups(STREAM)}
        if GROUP not in groups:
            return self.conn.xlen(STREAM)
        group = groups[GROUP]
        return int(group.get("lag") or 0) + int(group["pending"])

    def drain(self, what: str) -> float:
        """Wait until the worker has written everything in the stream; the seconds it took."""
        began = time.monotonic()
        while (left := self.backlog()) > 0:
            if time.monotonic() - began > DRAIN_SECONDS:
                raise BenchError(f"{what}: {left} views still in the stream after {DRAIN_SECONDS}s")
            time.sleep(0.05)
        return time.monotonic() - began


def reads(ctx: Context) -> list[Result]:
    catalog = build_catalog(
        READS_DB, READ_PRODUCTS, marks=20, env=app_environment(READS_DB, **ctx.app_env)
    )
    middle = len(catalog.sample_skus) // 2
    sku, exact_sku = catalog.sample_skus[middle], catalog.sample_skus[middle + 1]
    path = f"/api/products/{quote(sku)}"
    stream_url = redis().new_database()
    # What each side adds to the same environment (without a Redis URL, a read writes its
    # view directly).
    # "off-cached": recording off, but Redis there for the product cache as on the stream
    # side, so the two differ by the views alone.
    sides = {
        "off": {"VIEW_RECORDING": "off"},
        "stream": {"redis_url": stream_url},
        "direct": {},
        "off-cached": {"VIEW_RECORDING": "off", "redis_url": redis().new_database()},
    }
    with contextlib.ExitStack() as stack:
        servers = {
            side: stack.enter_context(
                serve(
                    f"views-{side}",
                    app_environment(READS_DB, **extra, **ctx.app_env),
                    worker=side == "stream",
                )
            )
            for side, extra in sides.items()
        }
        answers = {side: get(server, path).json for side, server in servers.items()}
        if any(answer != answers["off"] for answer in answers.values()):
            raise BenchError(f"The three sides answer differently: {answers}")
        stream = Stream(stream_url)
        results = read_throughput(ctx, servers, path, stream)
        results.append(exact_views(ctx, servers["stream"], exact_sku, stream))
    return results


class PausedWorker:
    """The stream server again, its worker stopped (SIGSTOP) during each round and let go
    after it: what the web side alone pays for the stream (information)."""

    def __init__(self, server: h.Stack) -> None:
        self.server, self.name, self.env = server, f"{server.name}-paused", server.env

    def url(self, path: str) -> str:
        return self.server.url(path)

    def cpu_seconds(self) -> float:
        return self.server.cpu_seconds()

    def uwsgi_log(self):
        return self.server.uwsgi_log()


def read_throughput(
    ctx: Context, servers: dict[str, h.Stack], path: str, stream: Stream
) -> list[Result]:
    live = servers["stream"]
    paused = PausedWorker(live)
    worker = worker_pid(live)
    sides = [servers["off"], live, paused, servers["direct"], servers["off-cached"]]
    catch_up: dict[str, list[float]] = {live.name: [], paused.name: []}
    cpu = {live.name: 0.0, paused.name: 0.0}
    began_cpu = {}

    def before_round(server) -> None:
        if server in (live, paused):
            began_cpu[server.name] = h.cpu_seconds(worker)
        if server is paused:
            os.kill(worker, signal.SIGSTOP)

    def after_round(server) -> None:
        # The worker's writes belong to the stream side's rounds: the next round (another
        # side's) starts only once it has caught up, so it does not carry them.
        if server is paused:
            os.kill(worker, signal.SIGCONT)
        if server in (live, paused):
            catch_up[server.name].append(round(stream.drain(f"after {server.name}"), 2))
            cpu[server.name] += h.cpu_seconds(worker) - began_cpu[server.name]

    # Twice the rounds, half as long: the same time per server, but other work on the
    # machine (it comes in bursts) is less likely to land on one side only.
    seconds = max(1.0, ctx.seconds / 2)
    measured = throughput(
        ctx,
        sides,
        path,
        rounds=ctx.rounds * 2,
        seconds=seconds,
        before_round=before_round,
        after_round=after_round,
        tolerate_errors=(servers["direct"],),
    )
    worker_figures = {}
    for side in (live, paused):
        views = measured[side.name].total.requests
        worker_figures[side.name] = {
            "catch_up_seconds": catch_up[side.name][1:],  # the warm-up's left out
            "cpu_seconds": round(cpu[side.name], 2),
            "cpu_us_per_view": round(cpu[side.name] / max(views, 1) * 1e6),
        }
        say(
            f"{side.name}: the worker caught up in "
            f"{', '.join(f'{s:.2f}' for s in catch_up[side.name][1:])} s after each round; "
            f"{cpu[side.name]:.1f} s of its CPU for about {views:,} views "
            f"({worker_figures[side.name]['cpu_us_per_view']} us a view, the warm-up included)"
        )
    results = []
    for side, baseline, name in (
        (live, "off", "GET /api/products/<sku>: views via Redis stream / off throughput"),
        (paused, "off", "... the same, worker paused in the rounds (web side only, info)"),
        (servers["direct"], "off", "GET /api/products/<sku>: views direct (no Redis) / off (info)"),
        (live, "off-cached", "... stream / off, both with the product cache (info)"),
    ):
        got, off = measured[side.name], measured[servers[baseline].name]
        per_round = got.ratios(off)
        say(f"{side.name} / {baseline} per round: {', '.join(f'{r:.3f}' for r in per_round)}")
        details = {
            "rps": round(got.rps, 1),
            "off_rps": round(off.rps, 1),
            "baseline": baseline,
            "rounds_rps": {side.name: got.rounds_rps, baseline: off.rounds_rps},
            "rounds_ratio": per_round,
            "requests": {side.name: got.total.requests, baseline: off.total.requests},
            "errors": {side.name: got.total.errors, baseline: off.total.errors},
            "seconds_per_round": seconds,
            "catalog_products": READ_PRODUCTS,
            **({"worker": worker_figures[side.name]} if side.name in worker_figures else {}),
        }
        details |= {"cpu_ms_per_request": round(got.cpu_ms, 3), "off_cpu_ms": round(off.cpu_ms, 3)}
        measured_text = (
            f"{got.rps:,.0f} / {off.rps:,.0f} req/s ({got.cpu_ms:.2f} / {off.cpu_ms:.2f} ms CPU)"
        )
        results.append(Result(name, measured_text, got.rps / off.rps, THROUGHPUT_TARGET, details))
    return results


def exact_views(ctx: Context, server: h.Stack, sku: str, stream: Stream) -> Result:
    """Reads counted by the client against the rows the worker wrote."""
    product_id = scalar(READS_DB, "SELECT id FROM products WHERE sku_key = %s", sku.lower())
    before = count_views(product_id)
    if before != (0, 0):
        raise BenchError(f"{sku} has views before its reads: {before}")
    # The harness's Load counts every answer it waits for; wrk abandons the requests in
    # flight when its time is up, which the server may still answer (and count).
    clients = ctx.load.connections
    load = h.Load(server.port, [sku], [], keepalive=False)
    load.run([h.Role(put=0, list=0)] * clients, ctx.seconds)
    answered = load.reads()[sku]
    others = len(load.requests) - answered
    client = f"the harness's Load, {clients} threads"
    say(f"{server.name}: {answered:,} reads answered 200 ({others} others), {client}")
    drained = stream.drain("after the counted reads")
    recorded, rolled_up = count_views(product_id)
    # A graceful stop of the server (its worker finishes its batch) writes nothing twice.
    worker = worker_pid(server)
    stopped = server.stop(timeout=60)
    h.wait_until("the worker's stop", lambda: worker not in reaper().descendants(), 60)
    say(f"{server.name}: stopped gracefully, the worker with it {stopped}")
    if set(stopped.values()) != {0}:
        raise BenchError(f"{server.name} did not stop gracefully: {stopped}")
    after_stop = count_views(product_id)
    raw_total = scalar(READS_DB, "SELECT COUNT(*) FROM product_views")
    rollup_total = scalar(
        READS_DB, "SELECT SUM(anonymous_views + registered_views) FROM daily_product_views"
    )
    say(
        f"views of {sku}: {recorded:,} recorded / {answered:,} answered (roll-ups "
        f"{rolled_up:,}; stream drained {drained:.2f}s after the last read; {after_stop[0]:,} "
        f"after the worker's stop); whole table {raw_total:,} raw / "
        f"{int(rollup_total or 0):,} in roll-ups"
    )
    exact = recorded == rolled_up == after_stop[0] == after_stop[1]
    return Result(
        name="Views recorded via the stream / 200 responses, after the worker's drain",
        measured=f"{recorded:,} / {answered:,}",
        ratio=recorded / answered if answered and exact else 0.0,
        target=EXACT_TARGET,
        details={
            "answered_200": answered,
            "other_answers": others,
            "recorded": recorded,
            "rolled_up": rolled_up,
            "after_worker_stop": list(after_stop),
            "drain_seconds_after_last_read": round(drained, 2),
            "table_raw_rows": raw_total,
            "table_rolled_up": int(rollup_total or 0),
            "load_generator": client,
            "seconds": round(load.seconds, 1),
        },
    )


def count_views(product_id: int) -> tuple[int, int]:
    """Raw rows, and the same counted by the daily roll-ups, for one product."""
    raw = scalar(READS_DB, "SELECT COUNT(*) FROM product_views WHERE product_id = %s", product_id)
    rolled = scalar(
        READS_DB,
        "SELECT COALESCE(SUM(anonymous_views + registered_views), 0) FROM daily_product_views"
        " WHERE product_id = %s",
        product_id,
    )
    return int(raw), int(rolled)


# ---------------------------------------------------------------- reading statistics


def statistics_latency(ctx: Context) -> Result:
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=DAYS - 1)
    end = today - timedelta(days=RANGE_ENDS_DAYS_AGO)
    start = end - timedelta(days=RANGE_DAYS - 1)
    built = {}
    skus = {}
    for database, rows in (SMALL, LARGE):
        env = app_environment(database, **ctx.app_env)
        catalog = build_catalog(database, STATS_PRODUCTS, marks=20, env=env)
        create_admin(env, *ADMIN, "Stats Admin")
        built[database] = fill_views(database, rows, first_day)
        skus[database] = catalog.sample_skus[0]
    if skus[SMALL[0]] != skus[LARGE[0]]:
        raise BenchError(f"The two catalogs differ: {skus}")
    sku = skus[LARGE[0]]
    path = f"/api/products/{quote(sku)}/stats?from={start}&to={end}"

    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                serve(f"stats-{label(rows)}", app_environment(database, **ctx.app_env))
            )
            for database, rows in (SMALL, LARGE)
        ]
        headers = {}
        checked = {}
        for server, (database, _rows) in zip(servers, (SMALL, LARGE), strict=True):
            token = server.http.login(*ADMIN)
            headers[server.name] = {"Authorization": f"Bearer {token}"}
            answer = call(server, "GET", path, token=token).json
            checked[server.name] = check_stats(database, sku, start, end, answer)

        per_round = max(1, ctx.latency_requests // LATENCY_ROUNDS)
        for server in servers:
            sequential_latencies(server, [path] * 20, headers=headers[server.name])  # warm-up
        measured = {server.name: Latencies() for server in servers}
        for _n, server in alternate(LATENCY_ROUNDS, servers):
            got = sequential_latencies(server, [path] * per_round, headers=headers[server.name])
            measured[server.name].samples.extend(got.samples)

    small, large = (measured[server.name] for server in servers)
    say(
        f"stats median: {large.median_ms:.2f} ms ({label(LARGE[1])} rows) / "
        f"{small.median_ms:.2f} ms ({label(SMALL[1])} rows)"
    )

    def summary(server: h.Stack, database: str, lat: Latencies) -> dict:
        return {
            **built[database],
            "answer": checked[server.name],
            "requests": len(lat.samples),
            "median_ms": round(lat.median_ms, 3),
            "p90_ms": round(lat.percentile_ms(90), 3),
            "p99_ms": round(lat.percentile_ms(99), 3),
        }

    return Result(
        name=f"GET /api/products/<sku>/stats ({RANGE_DAYS} days): 5M / 50k views median latency",
        measured=f"{large.median_ms:.2f} / {small.median_ms:.2f} ms",
        ratio=large.median_ms / small.median_ms,
        target=STATS_TARGET,
        details={
            "path": path,
            "large": summary(servers[1], LARGE[0], large),
            "small": summary(servers[0], SMALL[0], small),
        },
    )


def label(rows: int) -> str:
    return f"{rows // 1_000_000}m" if rows >= 1_000_000 else f"{rows // 1_000}k"


BULK_SESSION = (
    "SET SESSION foreign_key_checks = 0, unique_checks = 0,"
    " tmp_table_size = 1073741824, max_heap_table_size = 1073741824"
)


def fill_views(database: str, rows: int, first_day: date) -> dict:
    """Registered users, ``rows`` raw views over the products and DAYS days ending today,
    then the daily roll-ups computed from those rows with INSERT ... SELECT ... GROUP BY."""
    started = time.monotonic()
    with contextlib.closing(connect(database)) as conn, conn.cursor() as cur:
        cur.execute(BULK_SESSION)
        cur.execute(
            "INSERT INTO users (fullname, username, email, username_key, email_key,"
            " password_hash, rol, token_version, created_at, updated_at)"
            " SELECT CONCAT('Reader ', seq), CONCAT('reader', seq),"
            " CONCAT('reader', seq, '@example.com'), CONCAT('reader', seq),"
            " CONCAT('reader', seq, '@example.com'), '!', 2, 1, NOW(6), NOW(6)"
            f" FROM seq_1_to_{REGISTERED_USERS}"
        )
        cur.execute("SELECT MIN(id), MAX(id), COUNT(*) FROM products")
        p_lo, p_hi, p_count = cur.fetchone()
        cur.execute("SELECT MIN(id), MAX(id), COUNT(*) FROM users WHERE rol = 2")
        u_lo, u_hi, u_count = cur.fetchone()
        if p_hi - p_lo + 1 != p_count or u_hi - u_lo + 1 != u_count:
            raise BenchError(f"{database}: product or user ids are not contiguous")
        # Row n: a product and (for REGISTERED_PERCENT of them) a user from two
        # multiplicative hashes of n; the time moves evenly through the DAYS days, so the
        # rows arrive in time order as they would in use.
        seconds = DAYS * 86_400
        cur.execute(
            "INSERT INTO product_views (product_id, user_id, viewed_at)"
            f" SELECT {p_lo} + (seq * 2654435761) %% 1000003 %% {p_count},"
            f" IF((seq * 40503) %% 65521 %% 100 < {REGISTERED_PERCENT},"
            f" {u_lo} + (seq * 7919 + 13) %% 104729 %% {u_count}, NULL),"
            f" TIMESTAMP(%s) + INTERVAL ((seq - 1) * {seconds} DIV {rows}) SECOND"
            "  + INTERVAL ((seq * 7919) %% 1000000) MICROSECOND"
            f" FROM seq_1_to_{rows}",
            (datetime.combine(first_day, datetime.min.time()),),
        )
        conn.commit()
    raw_seconds = time.monotonic() - started

    rollups = {
        "daily_product_views": (
            "INSERT INTO daily_product_views (product_id, day, anonymous_views, registered_views)"
            " SELECT product_id, DATE(viewed_at), SUM(user_id IS NULL), SUM(user_id IS NOT NULL)"
            " FROM product_views GROUP BY product_id, DATE(viewed_at)"
        ),
        "daily_product_viewers": (
            "INSERT INTO daily_product_viewers (product_id, day, user_id)"
            " SELECT product_id, DATE(viewed_at), user_id FROM product_views"
            " WHERE user_id IS NOT NULL GROUP BY product_id, DATE(viewed_at), user_id"
        ),
    }
    errors: list[BaseException] = []

    def roll_up(sql: str) -> None:
        try:
            with contextlib.closing(connect(database)) as conn, conn.cursor() as cur:
                cur.execute(BULK_SESSION)
                cur.execute(sql)
                conn.commit()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    began = time.monotonic()
    # Two statements, two connections: each is one full scan on its own core.
    threads = [threading.Thread(target=roll_up, args=(sql,)) for sql in rollups.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    if errors or any(thread.is_alive() for thread in threads):
        raise BenchError(f"{database}: the roll-ups failed: {errors or 'timeout'}")
    rollup_seconds = time.monotonic() - began

    with contextlib.closing(connect(database)) as conn, conn.cursor() as cur:
        for table in ("product_views", *rollups):
            cur.execute(f"ANALYZE TABLE {table}")
            cur.fetchall()
        cur.execute("SELECT COUNT(*), COUNT(user_id) FROM product_views")
        raw, registered = cur.fetchone()
        cur.execute(
            "SELECT COUNT(*), SUM(anonymous_views), SUM(registered_views) FROM daily_product_views"
        )
        days, anonymous, registered_rolled = cur.fetchone()
        cur.execute("SELECT COUNT(*) FROM daily_product_viewers")
        (viewer_days,) = cur.fetchone()
    if raw != rows or anonymous + registered_rolled != raw or registered_rolled != registered:
        raise BenchError(
            f"{database}: {raw} raw views ({registered} registered), roll-ups "
            f"{anonymous} anonymous + {registered_rolled} registered; expected {rows}"
        )
    say(
        f"{database}: {raw:,} views ({registered:,} registered, {REGISTERED_USERS} readers) in "
        f"{raw_seconds:.1f}s; roll-ups ({days:,} product-days, {viewer_days:,} viewer-days) "
        f"in {rollup_seconds:.1f}s"
    )
    return {
        "views": raw,
        "registered_views": registered,
        "product_days": days,
        "viewer_days": viewer_days,
        "insert_seconds": round(raw_seconds, 1),
        "rollup_seconds": round(rollup_seconds, 1),
    }


def check_stats(database: str, sku: str, start: date, end: date, answer: dict) -> dict:
    """The route's answer equals the same figures counted from the raw rows."""
    lo = datetime.combine(start, datetime.min.time())
    hi = datetime.combine(end + timedelta(days=1), datetime.min.time())
    with contextlib.closing(connect(database)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT DATE(v.viewed_at), SUM(v.user_id IS NULL), SUM(v.user_id IS NOT NULL)"
            " FROM product_views v JOIN products p ON p.id = v.product_id"
            " WHERE p.sku_key = %s AND v.viewed_at >= %s AND v.viewed_at < %s"
            " GROUP BY DATE(v.viewed_at)",
            (sku.lower(), lo, hi),
        )
        raw_days = {day.isoformat(): (int(a), int(r)) for day, a, r in cur.fetchall()}
        cur.execute(
            "SELECT COUNT(DISTINCT v.user_id) FROM product_views v"
            " JOIN products p ON p.id = v.product_id"
            " WHERE p.sku_key = %s AND v.viewed_at >= %s AND v.viewed_at < %s",
            (sku.lower(), lo, hi),
        )
        (unique,) = cur.fetchone()
    got_days = {
        d["date"]: (d["anonymous_views"], d["registered_views"])
        for d in answer.get("by_day", [])
        if d["views"]
    }
    anonymous = sum(a for a, _r in raw_days.values())
    registered = sum(r for _a, r in raw_days.values())
    expected = {
        "views": anonymous + registered,
        "anonymous_views": anonymous,
        "registered_views": registered,
        "unique_registered_viewers": unique,
    }
    got = {key: answer.get(key) for key in expected}
    if got != expected or got_days != raw_days or len(answer.get("by_day", [])) != RANGE_DAYS:
        raise BenchError(
            f"{database}: the stats of {sku} differ from the raw rows: {got} != {expected}, "
            f"days {got_days} != {raw_days}"
        )
    return {**expected, "days_with_views": len(raw_days)}
