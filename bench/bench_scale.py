"""A catalog of a million products and 20 million views, against one of 10,000: what the
reads, the statistics and the roll-up cost at each size, under uWSGI (app.ini) on MariaDB
with no Redis, so that every read reaches the database.

Two databases, kept between runs (building the large one takes minutes):

- ``bench_scale_<products>_<views>``: BENCH_SCALE_PRODUCTS products (1,000,000; every
  100th soft-deleted) and BENCH_SCALE_VIEWS raw views (20,000,000) over the 90 days
  2026-09-01 to 2026-11-29, spread over 10,000 of the products with a Zipf skew (the n-th
  most viewed has about 1/n of the top one's views), 10% of them by 300 registered readers.
- the same with 10,000 products and BENCH_SCALE_SMALL_VIEWS views (200,000).

Each holds a ``bench_build`` row naming what it was built with; a database whose row is
missing or different is built again (BENCH_SCALE_REBUILD=1 forces it). Both are filled
with INSERT ... SELECT from MariaDB's sequence tables, secondary indexes dropped during
the load and built once after it. ``flask stats rollup`` over the 90 days is then timed on
each (it also writes the roll-ups the statistics read), and the top products and the
catalog's views are checked against a grouping of the raw rows.

Per line: median and p95 of sequential requests (one client, after a warm-up, alternating
rounds between the two servers), the ratio 1M / 10k of the medians (target <= 3) and the
p95 at 1M (target <= 50 ms); the export's seconds (target <= 10 s at 1M) and the roll-up's
(target <= 30 s at 1M).

Not run by ``make bench`` unless named: ``bench/run.py --only scale``.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import quote

from common import (
    ADJECTIVES,
    MARIADB,
    NOUNS,
    BenchError,
    Context,
    Latencies,
    Result,
    Target,
    alternate,
    app_environment,
    check_database_name,
    connect,
    create_admin,
    deployment,
    h,
    recreate_database,
    say,
    sequential_latencies,
    serve,
)

from app.catalog.models import Product
from app.catalog.schemas import cursor_of
from app.catalog.service import DEEPEST_PAGED

LARGE_PRODUCTS = int(os.environ.get("BENCH_SCALE_PRODUCTS", "1000000"))
LARGE_VIEWS = int(os.environ.get("BENCH_SCALE_VIEWS", "20000000"))
SMALL_PRODUCTS = 10_000
SMALL_VIEWS = int(os.environ.get("BENCH_SCALE_SMALL_VIEWS", "200000"))
REBUILD = os.environ.get("BENCH_SCALE_REBUILD") == "1"

VIEWED_PRODUCTS = 10_000  # the Zipf ranks: rank r is the product (r - 1) * stride + 1
FIRST_DAY = date(2026, 9, 1)
DAYS = 90
LAST_DAY = FIRST_DAY + timedelta(days=DAYS - 1)
READERS = 300
REGISTERED_PERCENT = 10
MARKS = 100
DELETED_EVERY = 100
CREATED_EVERY_SECONDS = 30
VIEW_CHUNK = 2_000_000
ADMIN = ("scale-admin@example.com", "scale-admin-password")
BUILD_VERSION = 1  # raise when the rows built here change

LATENCY_ROUNDS = 4
EXPORT_ROUNDS = 3
P95_TARGET = Target("<=", 50)
RATIO_TARGET = Target("<=", 3)
EXPORT_TARGET = Target("<=", 10)
ROLLUP_TARGET = Target("<=", 30)
ROLLUP_SECONDS = 3600

COMMON_WORD = NOUNS[0]  # in one product name of 9
# The common word with its last two letters swapped: corrected to it (one edit).
MISSPELT_WORD = COMMON_WORD[:-2] + COMMON_WORD[-1] + COMMON_WORD[-2]
RANGE = f"from={FIRST_DAY}&to={LAST_DAY}"


@dataclass
class Scale:
    label: str
    products: int
    views: int

    @property
    def database(self) -> str:
        return check_database_name(f"bench_scale_{self.products}_{self.views}")

    @property
    def live(self) -> int:
        return self.products - self.products // DELETED_EVERY

    @property
    def stride(self) -> int:
        return max(1, self.products // VIEWED_PRODUCTS)

    def build_marker(self) -> str:
        return json.dumps(
            {
                "version": BUILD_VERSION,
                "products": self.products,
                "views": self.views,
                "first_day": FIRST_DAY.isoformat(),
                "days": DAYS,
                "readers": READERS,
            },
            sort_keys=True,
        )


def sku_of(seq: int) -> str:
    return f"SC{seq:07d}"


def run(ctx: Context) -> list[Result]:
    if LARGE_PRODUCTS < SMALL_PRODUCTS or LARGE_PRODUCTS % VIEWED_PRODUCTS:
        raise BenchError(f"BENCH_SCALE_PRODUCTS must be a multiple of {VIEWED_PRODUCTS:,}")
    scales = [
        Scale("10k", SMALL_PRODUCTS, SMALL_VIEWS),
        Scale(label(LARGE_PRODUCTS), LARGE_PRODUCTS, LARGE_VIEWS),
    ]
    envs = {s.label: app_environment(s.database, **ctx.app_env) for s in scales}
    for scale in scales:
        ensure_built(scale, envs[scale.label])
    rollups = {s.label: timed_rollup(s, envs[s.label]) for s in scales}
    for scale in scales:
        check_catalog_views(scale)
    small, large = scales
    results = [
        Result(
            name=f"scale: flask stats rollup ({DAYS} days), seconds at {large.label}",
            measured=f"{rollups[large.label]:.1f} s ({large.views:,} views) / "
            f"{rollups[small.label]:.1f} s ({small.views:,})",
            ratio=rollups[large.label],
            target=ROLLUP_TARGET,
            details={"seconds": rollups},
        )
    ]
    with contextlib.ExitStack() as stack:
        servers = {
            s.label: stack.enter_context(serve(f"scale-{s.label}", envs[s.label])) for s in scales
        }
        tokens = {
            name: {"Authorization": f"Bearer {server.http.login(*ADMIN)}"}
            for name, server in servers.items()
        }
        for scale in scales:
            check_top(scale, servers[scale.label], tokens[scale.label])
            check_page_reach(servers[scale.label])
        for name, paths in lines(scales):
            results += latency_line(ctx, name, paths, scales, servers, tokens)
        results.append(export_line(scales, servers, tokens))
    return results


def label(products: int) -> str:
    return f"{products // 1_000_000}M" if products >= 1_000_000 else f"{products // 1_000}k"


# ---------------------------------------------------------------- building, cached


def ensure_built(scale: Scale, env: dict[str, str]) -> None:
    marker = scale.build_marker()
    if not REBUILD and built_with(scale.database) == marker:
        say(f"{scale.database}: kept from an earlier run ({marker})")
        # A newer tree may have migrations the database has not had yet.
        flask(env, "db", "upgrade", timeout=3600)
        return
    began = time.monotonic()
    recreate_database(scale.database)
    flask(env, "db", "upgrade", timeout=600)
    create_admin(env, *ADMIN, "Scale Admin")
    with contextlib.closing(connect(scale.database)) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION foreign_key_checks = 0, unique_checks = 0")
        fill_products(cur, scale)
        conn.commit()
        fill_views(cur, scale)
        conn.commit()
        for table in ("products", "product_views", "users"):
            cur.execute(f"ANALYZE TABLE {table}")
            cur.fetchall()
        cur.execute("CREATE TABLE bench_build (built_with TEXT NOT NULL)")
        cur.execute("INSERT INTO bench_build VALUES (%s)", (marker,))
        conn.commit()
    say(f"{scale.database}: built in {time.monotonic() - began:.0f}s")


def built_with(database: str) -> str | None:
    try:
        rows = MARIADB.query(database, "SELECT built_with FROM bench_build")
    except Exception:  # no such database or table: never built
        return None
    return rows[0][0] if rows else None


def flask(env: dict[str, str], *args: str, timeout: float) -> str:
    done = deployment().flask(env, *args, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(
            f"flask {' '.join(args[:2])} failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done.stdout + done.stderr


@contextlib.contextmanager
def indexes_built_after(cur, table: str):
    """Drop ``table``'s secondary indexes (but those of foreign keys) for a bulk load and
    build them again after it, each from one sort rather than a row at a time."""
    cur.execute(
        "SELECT INDEX_NAME, MIN(NON_UNIQUE), MIN(INDEX_TYPE),"
        " GROUP_CONCAT(CONCAT('`', COLUMN_NAME, '`') ORDER BY SEQ_IN_INDEX)"
        " FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()"
        " AND TABLE_NAME = %s AND INDEX_NAME <> 'PRIMARY' AND INDEX_NAME NOT LIKE 'fk\\_%%'"
        " GROUP BY INDEX_NAME",
        (table,),
    )
    indexes = cur.fetchall()
    for name, _non_unique, _kind, _columns in indexes:
        cur.execute(f"ALTER TABLE {table} DROP INDEX `{name}`")
    yield
    plain = [
        f"ADD {'' if non_unique else 'UNIQUE '}INDEX `{name}` ({columns})"
        for name, non_unique, kind, columns in indexes
        if kind != "FULLTEXT"
    ]
    if plain:
        cur.execute(f"ALTER TABLE {table} {', '.join(plain)}")
    for name, _non_unique, kind, columns in indexes:
        if kind == "FULLTEXT":
            cur.execute(f"ALTER TABLE {table} ADD FULLTEXT INDEX `{name}` ({columns})")


def words(names: tuple[str, ...], position: str) -> str:
    return f"ELT(1 + {position}, {', '.join(repr(n) for n in names)})"


def fill_products(cur, scale: Scale) -> None:
    """Products 1..n: sku SC0000001..., a name of an adjective, a noun (one in 9 names has
    each) and the 7-digit number (a word no other name has), MARKS marks, every
    DELETED_EVERY-th deleted, one created every 30 s from 2025-01-01."""
    began = time.monotonic()
    number = "LPAD(seq, 7, '0')"
    adjective, noun = words(ADJECTIVES, "seq % 9"), words(NOUNS, "(seq DIV 9) % 9")
    created = f"TIMESTAMP('2025-01-01') + INTERVAL (seq * {CREATED_EVERY_SECONDS}) SECOND"
    deleted = f"seq % {DELETED_EVERY} = 0"
    with indexes_built_after(cur, "products"):
        cur.execute(
            "INSERT INTO products (id, sku, sku_lower, sku_key, name, search, price, mark,"
            " quantity, version, created_at, updated_at, deleted_at)"
            f" SELECT seq, CONCAT('SC', {number}), CONCAT('sc', {number}),"
            f" IF({deleted}, NULL, CONCAT('sc', {number})),"
            f" CONCAT({adjective}, ' ', {noun}, ' ', {number}),"
            f" CONCAT('ww', {adjective}, ' ww', {noun}, ' ww', {number}),"
            " ((seq * 7919) % 200000 + 100) / 100,"
            f" CONCAT('brand', LPAD(seq % {MARKS}, 2, '0')), seq % 500, 1,"
            f" {created}, {created}, IF({deleted}, {created} + INTERVAL 1 DAY, NULL)"
            f" FROM seq_1_to_{scale.products}"
        )
    # The search column must be what the service writes for the name.
    cur.execute("SELECT name, search FROM products WHERE id IN (1, 5, 77, %s)", (scale.products,))
    for name, search in cur.fetchall():
        if Product.search_of(name) != search:
            raise BenchError(f"search of {name!r}: {search!r}, the service writes another")
    say(f"{scale.database}: {scale.products:,} products in {time.monotonic() - began:.0f}s")


def fill_views(cur, scale: Scale) -> None:
    """READERS readers, then the raw views in chunks (their time moves evenly through the
    days, so rows arrive in time order as they would in use)."""
    began = time.monotonic()
    cur.execute(
        "INSERT INTO users (fullname, username, email, username_key, email_key,"
        " password_hash, rol, token_version, created_at, updated_at)"
        " SELECT CONCAT('Reader ', seq), CONCAT('reader', seq),"
        " CONCAT('reader', seq, '@example.com'), CONCAT('reader', seq),"
        " CONCAT('reader', seq, '@example.com'), '!', 2, 1, NOW(6), NOW(6)"
        f" FROM seq_1_to_{READERS}"
    )
    cur.execute("SELECT MIN(id), COUNT(*) FROM users WHERE rol = 2")
    u_lo, u_count = cur.fetchone()
    # Rank r = FLOOR(10000 ** u) for u uniform in [0, 1) (a hash of the row's number): the
    # chance of rank r is log(1 + 1/r) / log(10000), about 1 / (r ln 10000), a Zipf skew.
    rank = "FLOOR(POW(10000, ((seq * 2654435761) % 1000003) / 1000003))"
    seconds = DAYS * 86_400
    with indexes_built_after(cur, "product_views"):
        for first in range(1, scale.views + 1, VIEW_CHUNK):
            last = min(scale.views, first + VIEW_CHUNK - 1)
            cur.execute(
                "INSERT INTO product_views (product_id, user_id, viewed_at)"
                f" SELECT 1 + ({rank} - 1) * {scale.stride},"
                f" IF((seq * 40503) % 65521 % 100 < {REGISTERED_PERCENT},"
                f" {u_lo} + (seq * 7919 + 13) % 104729 % {u_count}, NULL),"
                f" TIMESTAMP('{FIRST_DAY}') + INTERVAL ((seq - 1) * {seconds} DIV {scale.views})"
                " SECOND + INTERVAL ((seq * 7919) % 1000000) MICROSECOND"
                f" FROM seq_{first}_to_{last}"
            )
            cur.connection.commit()
            say(f"{scale.database}: {last:,} views ({time.monotonic() - began:.0f}s)")
    say(f"{scale.database}: {scale.views:,} views in {time.monotonic() - began:.0f}s")


# ---------------------------------------------------------------- the roll-up and checks


def timed_rollup(scale: Scale, env: dict[str, str]) -> float:
    began = time.monotonic()
    output = flask(
        env,
        "stats",
        "rollup",
        "--from",
        FIRST_DAY.isoformat(),
        "--to",
        LAST_DAY.isoformat(),
        timeout=ROLLUP_SECONDS,
    )
    seconds = time.monotonic() - began
    if f"rolled up {scale.views} view(s)" not in output:
        raise BenchError(f"{scale.database}: flask stats rollup said {output[-500:]!r}")
    say(f"{scale.database}: flask stats rollup ({DAYS} days) in {seconds:.1f}s")
    return seconds


def check_catalog_views(scale: Scale) -> None:
    total = MARIADB.query(
        scale.database,
        "SELECT SUM(anonymous_views + registered_views) FROM daily_catalog_views"
        " WHERE day BETWEEN %s AND %s",
        FIRST_DAY,
        LAST_DAY,
    )[0][0]
    if int(total or 0) != scale.views:
        raise BenchError(f"{scale.database}: the catalog's roll-up has {total}, not {scale.views}")


def check_top(scale: Scale, server: h.Stack, headers: dict) -> None:
    """The top 100 of the 90 days as the service answers them, against a grouping of the
    raw views."""
    answer = server.http.get(f"/api/stats/products?{RANGE}&limit=100", headers=headers)
    if answer.status != 200:
        raise BenchError(f"{server.name}: top products: HTTP {answer.status}")
    expected = MARIADB.query(
        scale.database,
        # Grouped by product first: each product's row is then read once, not once a view.
        "SELECT p.sku_lower, SUM(v.n) AS n FROM (SELECT product_id, COUNT(*) AS n"
        " FROM product_views WHERE viewed_at >= %s AND viewed_at < %s GROUP BY product_id) v"
        " JOIN products p ON p.id = v.product_id"
        " GROUP BY p.sku_lower ORDER BY n DESC, p.sku_lower LIMIT 100",
        FIRST_DAY,
        LAST_DAY + timedelta(days=1),
    )
    got = [(item["sku"].lower(), item["views"]) for item in answer.json]
    if got != [(sku, int(n)) for sku, n in expected]:
        raise BenchError(f"{server.name}: the top 100 differ from the raw views: {got[:5]}...")


def check_page_reach(server: h.Stack) -> None:
    """The page past the deepest a page by number reaches is refused, naming page."""
    answer = server.http.get(f"/api/products?page={DEEPEST_PAGED // 20 + 1}")
    if answer.status != 422 or "page" not in answer.json["errors"]["query"]:
        raise BenchError(f"{server.name}: a page out of reach: HTTP {answer.status}")


# ---------------------------------------------------------------- latency lines


def lines(scales: list[Scale]):
    """(name, {label: paths}) of each latency line: the same requests' shapes at each size."""

    def each(make) -> dict[str, list[str]]:
        return {s.label: make(s) for s in scales}

    popular = [1, 2, 3, 5, 10, 30, 100, 300, 1000, 3000]  # Zipf ranks
    return [
        ("GET /api/products (page 1)", each(lambda s: ["/api/products"])),
        (
            # The middle page at 10k; at 1M the deepest a page by number reaches (past it,
            # a 422 points to the cursor).
            "GET /api/products?page=<middle, or the deepest in reach>",
            each(lambda s: [f"/api/products?page={min(s.live // 2, DEEPEST_PAGED) // 20}"]),
        ),
        ("GET /api/products?cursor=<second half>", each(deep_cursor_paths)),
        (f"GET /api/products?q={COMMON_WORD}", each(lambda s: [f"/api/products?q={COMMON_WORD}"])),
        (
            f"GET /api/products?q={MISSPELT_WORD} (corrected to {COMMON_WORD})",
            each(lambda s: [f"/api/products?q={MISSPELT_WORD}"]),
        ),
        (
            "GET /api/products?q=<a product's number>",
            each(lambda s: [f"/api/products?q={n:07d}" for n in rare_numbers(s)]),
        ),
        (
            "GET /api/products?mark=<m>",
            each(lambda s: [f"/api/products?mark=brand{n:02d}" for n in range(0, MARKS, 7)]),
        ),
        (
            f"GET /api/products/<sku>/stats ({DAYS} days)",
            each(
                lambda s: [
                    f"/api/products/{quote(sku_of((r - 1) * s.stride + 1))}/stats?{RANGE}"
                    for r in popular
                ]
            ),
        ),
        (f"GET /api/stats/views ({DAYS} days)", each(lambda s: [f"/api/stats/views?{RANGE}"])),
        (
            f"GET /api/stats/products?limit=100 ({DAYS} days)",
            each(lambda s: [f"/api/stats/products?{RANGE}&limit=100"]),
        ),
    ]


def rare_numbers(scale: Scale) -> list[int]:
    return [n for n in range(37, scale.products, scale.products // 25) if n % DELETED_EVERY][:20]


def deep_cursor_paths(scale: Scale) -> list[str]:
    """Cursors (the default sort) at 20 live products of the catalog's second half."""
    ids = [
        n
        for n in range(scale.products // 2 + 37, scale.products, scale.products // 40)
        if n % DELETED_EVERY
    ][:20]
    rows = MARIADB.query(
        scale.database,
        f"SELECT id, created_at FROM products WHERE id IN ({', '.join(map(str, ids))})",
    )
    return [f"/api/products?cursor={quote(cursor_of('created', at, pid))}" for pid, at in rows]


def latency_line(ctx, name, paths, scales, servers, tokens) -> list[Result]:
    per_round = max(5, ctx.latency_requests // 5 // LATENCY_ROUNDS)
    ordered = [servers[s.label] for s in scales]
    headers = {servers[s.label].name: tokens[s.label] for s in scales}
    by_server = {servers[s.label].name: paths[s.label] for s in scales}

    def cycle(server, start: int, count: int) -> list[str]:
        own = by_server[server.name]
        return [own[(start + i) % len(own)] for i in range(count)]

    for server in ordered:  # warm-up
        sequential_latencies(
            server, cycle(server, 0, 10), headers=headers[server.name], budget_seconds=600
        )
    measured = {server.name: Latencies() for server in ordered}
    for n, server in alternate(LATENCY_ROUNDS, ordered):
        got = sequential_latencies(
            server,
            cycle(server, n * per_round, per_round),
            headers=headers[server.name],
            budget_seconds=600,
        )
        measured[server.name].samples.extend(got.samples)
    small, large = (measured[server.name] for server in ordered)
    small_label, large_label = (s.label for s in scales)
    say(
        f"{name}: {large_label} median {large.median_ms:.1f} p95 {large.percentile_ms(95):.1f} ms;"
        f" {small_label} median {small.median_ms:.1f} p95 {small.percentile_ms(95):.1f} ms"
    )
    details = {
        "paths": {label_: p[:3] for label_, p in paths.items()},
        large_label: {**large.summary(), "p95_ms": round(large.percentile_ms(95), 3)},
        small_label: {**small.summary(), "p95_ms": round(small.percentile_ms(95), 3)},
    }
    return [
        Result(
            name=f"scale: {name}: {large_label} / {small_label} median latency",
            measured=f"{large.median_ms:.1f} / {small.median_ms:.1f} ms "
            f"(p95 {large.percentile_ms(95):.1f} / {small.percentile_ms(95):.1f})",
            ratio=large.median_ms / small.median_ms,
            target=RATIO_TARGET,
            details=details,
        ),
        Result(
            name=f"scale: {name}: p95 at {large_label}, ms",
            measured=f"{large.percentile_ms(95):.1f} ms",
            ratio=large.percentile_ms(95),
            target=P95_TARGET,
            details=details,
        ),
    ]


def export_line(scales, servers, tokens) -> Result:
    """The whole live catalog as CSV, downloaded: seconds at each size."""
    seconds = {s.label: [] for s in scales}
    ordered = [servers[s.label] for s in scales]
    labels = {servers[s.label].name: s for s in scales}
    for _n, server in alternate(EXPORT_ROUNDS, ordered):
        scale = labels[server.name]
        began = time.perf_counter()
        answer = server.http.request(
            "GET", "/api/catalog/export", headers=tokens[scale.label], timeout=600
        )
        seconds[scale.label].append(time.perf_counter() - began)
        rows = answer.body.count(b"\n") - 1
        if answer.status != 200 or rows != scale.live:
            raise BenchError(f"{server.name}: export: HTTP {answer.status}, {rows} rows")
    small, large = (statistics.median(seconds[s.label]) for s in scales)
    small_label, large_label = (s.label for s in scales)
    say(f"export: {large:.2f} s ({large_label}) / {small:.3f} s ({small_label})")
    return Result(
        name=f"scale: GET /api/catalog/export, seconds at {large_label}",
        measured=f"{large:.2f} s / {small:.3f} s ({large * 1e6 / scales[1].live:.1f} / "
        f"{small * 1e6 / scales[0].live:.1f} us a product)",
        ratio=large,
        target=EXPORT_TARGET,
        details={"seconds": seconds},
    )
