"""Catalog reads under uWSGI (app.ini) on MariaDB, the service as deployed: ``REDIS_URL``
set (a database of the run's private Redis) and app.ini's `flask worker`, writing the views.

1. ``GET /api/products/<sku>`` throughput (its view recorded), divided by a bare Flask route
   that returns the same JSON from memory under the same uWSGI options (target >= 0.5).
2. ``GET /api/products?page=2`` throughput (20 products, the default sort) on the same
   catalog, divided by the bare route returning the same page and headers (target >= 0.15).
3. ``GET /api/products?mark=<m>&sort=price&page=2`` median latency with 100,000 products,
   divided by the same with 1,000 products (target <= 1.5).
4. The same ratio for the first page of a cursor walk (``?cursor=``, no total counted), for
   cursor pages deep in the catalog (its second half) and for a search (``?q=<a number>``,
   a different one each request, relevance order, total counted) (targets <= 1.5).
"""

from __future__ import annotations

import contextlib
import json
from urllib.parse import quote

from common import (
    MARIADB,
    BenchError,
    Catalog,
    Context,
    Latencies,
    Result,
    Target,
    alternate,
    app_environment,
    bare_environment,
    build_catalog,
    check_database_name,
    drop_databases,
    get,
    h,
    redis,
    say,
    sequential_latencies,
    serve,
    throughput,
)

SMALL = ("bench_catalog_1k", 1_000)
LARGE = ("bench_catalog_100k", 100_000)
# 1,000 products over 20 marks is 50 a mark, so page 2 (items 21-40) is full in both
# catalogs and both answer with the same 20 products' worth of JSON; each mark holds 5%.
MARKS = 20
PAGE_SIZE = 20
LIST_PATH = "/api/products?mark={mark}&sort=price&page=2"
PAGE_PATH = "/api/products?page=2"
PAGE_HEADERS = ("X-Pagination", "Link")
LATENCY_ROUNDS = 6

THROUGHPUT_TARGET = Target(">=", 0.5)
PAGE_TARGET = Target(">=", 0.15)
LATENCY_TARGET = Target("<=", 1.5)
FIRST_CURSOR_PATH = "/api/products?cursor=&page_size=20"
DEEP_CURSOR_PATH = "/api/products?cursor={cursor}&page_size=20"
SEARCH_PATH = "/api/products?q={word}"


def run(ctx: Context) -> list[Result]:
    catalogs: list[Catalog] = []
    try:
        for database, size in (SMALL, LARGE):
            env = app_environment(database, **ctx.app_env)
            catalogs.append(build_catalog(database, size, marks=MARKS, env=env))
        small, large = catalogs
        with contextlib.ExitStack() as servers:
            app_small = servers.enter_context(serve_app("app-1k", small, ctx))
            app_large = servers.enter_context(serve_app("app-100k", large, ctx))
            sku = large.sample_skus[len(large.sample_skus) // 2]
            bare = servers.enter_context(serve_bare(app_large, sku))
            return [
                product_throughput(ctx, app_large, bare, sku),
                page_throughput(ctx, app_large, bare),
                listing_latency(ctx, app_small, app_large, small, large),
                *cursor_and_search_latencies(ctx, app_small, app_large, small, large),
            ]
    finally:
        if not ctx.keep_databases:
            drop_databases(SMALL[0], LARGE[0])


def serve_app(name: str, catalog: Catalog, ctx: Context):
    env = app_environment(catalog.database, redis_url=redis().new_database(), **ctx.app_env)
    return serve(name, env, worker=True)


def serve_bare(app: h.Stack, sku: str):
    """The bare routes, loaded with exactly the product JSON the service returns for
    ``sku`` and the page (and its pagination headers) it returns for PAGE_PATH."""
    product = get(app, f"/api/products/{sku}").json
    page = get(app, PAGE_PATH)
    listed = {
        "items": page.json,
        "headers": {name: page.headers[name] for name in PAGE_HEADERS if name in page.headers},
    }
    env = bare_environment(
        BENCH_BARE_PRODUCTS=json.dumps({sku: product}), BENCH_BARE_LIST=json.dumps(listed)
    )
    return serve("bare", env, bare=True)


def product_throughput(ctx: Context, app: h.Stack, bare: h.Stack, sku: str) -> Result:
    path = f"/api/products/{quote(sku)}"
    app_body, bare_body = get(app, path).body, get(bare, path).body
    if json.loads(app_body) != json.loads(bare_body):
        raise BenchError(f"The bare route answers differently:\n{app_body!r}\n{bare_body!r}")
    measured = throughput(ctx, [app, bare], path, rounds=ctx.rounds, seconds=ctx.seconds)
    got, ceiling = measured[app.name], measured[bare.name]
    per_round = got.ratios(ceiling)
    say(f"service / bare per round: {', '.join(f'{r:.3f}' for r in per_round)}")
    return Result(
        name="GET /api/products/<sku>: service / bare Flask throughput",
        measured=f"{got.rps:,.0f} / {ceiling.rps:,.0f} req/s "
        f"({got.cpu_ms:.2f} / {ceiling.cpu_ms:.2f} ms CPU)",
        ratio=got.rps / ceiling.rps,
        target=THROUGHPUT_TARGET,
        details={
            "service_rps": round(got.rps, 1),
            "bare_rps": round(ceiling.rps, 1),
            "cpu_ms_per_request": {name: round(m.cpu_ms, 3) for name, m in measured.items()},
            "rounds_rps": {name: m.rounds_rps for name, m in measured.items()},
            "rounds_ratio": per_round,
            "requests": {name: m.total.requests for name, m in measured.items()},
            "errors": {name: m.total.errors for name, m in measured.items()},
            "seconds_per_round": ctx.seconds,
            "body_bytes": {"service": len(app_body), "bare": len(bare_body)},
            "same_bytes": app_body == bare_body,
            "catalog_products": LARGE[1],
        },
    )


def page_throughput(ctx: Context, app: h.Stack, bare: h.Stack) -> Result:
    """One page of the whole catalog (the default sort), service / bare route."""
    app_page, bare_page = get(app, PAGE_PATH), get(bare, PAGE_PATH)
    if len(app_page.json) != PAGE_SIZE:
        raise BenchError(f"{PAGE_PATH} lists {len(app_page.json)} products, not {PAGE_SIZE}.")
    if app_page.json != bare_page.json or any(
        app_page.headers.get(name) != bare_page.headers.get(name) for name in PAGE_HEADERS
    ):
        raise BenchError(f"The bare list answers differently:\n{app_page.body[:300]!r}")
    measured = throughput(ctx, [app, bare], PAGE_PATH, rounds=ctx.rounds, seconds=ctx.seconds)
    got, ceiling = measured[app.name], measured[bare.name]
    per_round = got.ratios(ceiling)
    say(f"list page service / bare per round: {', '.join(f'{r:.3f}' for r in per_round)}")
    return Result(
        name="GET /api/products?page=2: service / bare Flask throughput",
        measured=f"{got.rps:,.0f} / {ceiling.rps:,.0f} req/s "
        f"({got.cpu_ms:.2f} / {ceiling.cpu_ms:.2f} ms CPU)",
        ratio=got.rps / ceiling.rps,
        target=PAGE_TARGET,
        details={
            "path": PAGE_PATH,
            "service_rps": round(got.rps, 1),
            "bare_rps": round(ceiling.rps, 1),
            "cpu_ms_per_request": {name: round(m.cpu_ms, 3) for name, m in measured.items()},
            "rounds_rps": {name: m.rounds_rps for name, m in measured.items()},
            "rounds_ratio": per_round,
            "body_bytes": {"service": len(app_page.body), "bare": len(bare_page.body)},
            "same_bytes": app_page.body == bare_page.body,
            "catalog_products": LARGE[1],
        },
    )


def listing_latency(
    ctx: Context, app_small: h.Stack, app_large: h.Stack, small: Catalog, large: Catalog
) -> Result:
    marks = small.marks
    for server, catalog in ((app_small, small), (app_large, large)):
        check_listing(server, catalog)

    per_round = max(1, ctx.latency_requests // LATENCY_ROUNDS)

    def paths(offset: int, count: int) -> list[str]:
        # The same sequence of marks for both catalogs.
        return [LIST_PATH.format(mark=marks[(offset + i) % len(marks)]) for i in range(count)]

    servers = [app_small, app_large]
    for server in servers:
        sequential_latencies(server, paths(0, 2 * len(marks)))  # warm-up
    measured = {server.name: Latencies() for server in servers}
    for n, server in alternate(LATENCY_ROUNDS, servers):
        got = sequential_latencies(server, paths(n * per_round, per_round))
        measured[server.name].samples.extend(got.samples)
    small_ms = measured[app_small.name].median_ms
    large_ms = measured[app_large.name].median_ms
    say(f"listing median: {large_ms:.2f} ms (100k) / {small_ms:.2f} ms (1k)")

    def summary(name: str, catalog: Catalog) -> dict:
        return {
            "products": catalog.size,
            "products_per_mark": round(catalog.size / len(catalog.marks)),
            **measured[name].summary(),
        }

    return Result(
        name="GET /api/products?mark&sort=price&page=2: 100k / 1k median latency",
        measured=f"{large_ms:.2f} / {small_ms:.2f} ms",
        ratio=large_ms / small_ms,
        target=LATENCY_TARGET,
        details={
            "path": LIST_PATH,
            "marks": len(marks),
            "large": summary(app_large.name, large),
            "small": summary(app_small.name, small),
        },
    )


def check_listing(server: h.Stack, catalog: Catalog) -> None:
    """Every mark's page 2 is full and its total matches what was inserted."""
    for mark in catalog.marks:
        answer = get(server, LIST_PATH.format(mark=mark))
        items, pagination = answer.json, json.loads(answer.headers.get("X-Pagination") or "{}")
        expected = catalog.live_per_mark[mark]
        if pagination.get("total") != expected or len(items) != min(
            PAGE_SIZE, max(0, expected - PAGE_SIZE)
        ):
            raise BenchError(
                f"{server.name}: mark {mark} lists {len(items)} items of total "
                f"{pagination.get('total')}, expected {expected} live products."
            )
        prices = [item["price"] for item in items]
        if prices != sorted(prices) or any(item["mark"] != mark for item in items):
            raise BenchError(f"{server.name}: mark {mark} is not filtered and sorted by price.")


def deep_cursors(catalog: Catalog, count: int) -> list[str]:
    """Cursors (the default sort) at ``count`` positions spread over the second half of
    the catalog's live products, each made as the list makes them."""
    from app.catalog.schemas import cursor_of

    cursors = []
    for n in range(count):
        offset = catalog.size // 2 + n * (catalog.size // 2 - 20) // count
        rows = MARIADB.query(
            check_database_name(catalog.database),
            "SELECT id, created_at FROM products WHERE deleted_at IS NULL"
            " ORDER BY created_at, id LIMIT 1 OFFSET %s",
            offset,
        )
        product_id, created_at = rows[0]
        cursors.append(cursor_of("created", created_at, product_id))
    return cursors


def cursor_and_search_latencies(
    ctx: Context, app_small: h.Stack, app_large: h.Stack, small: Catalog, large: Catalog
) -> list[Result]:
    """100k / 1k median latency of a first cursor page, deep cursor pages and searches."""
    count = max(LATENCY_ROUNDS, ctx.latency_requests)
    servers = [app_small, app_large]
    deep = {
        server.name: [DEEP_CURSOR_PATH.format(cursor=quote(c)) for c in deep_cursors(cat, count)]
        for server, cat in ((app_small, small), (app_large, large))
    }
    # Product numbers 100-999: one product in the small catalog, 111 in the large one
    # (512, 5120-5129, 51200-51299), all of them words of the names.
    words = [str(100 + (n * 7) % 900) for n in range(count)]
    lines = [
        ("GET /api/products?cursor= (first page): 100k / 1k median latency",
         lambda server, start, n: [FIRST_CURSOR_PATH] * n),
        ("GET /api/products?cursor=<second half>: 100k / 1k median latency",
         lambda server, start, n: deep[server.name][start : start + n]),
        ("GET /api/products?q=<product number>: 100k / 1k median latency",
         lambda server, start, n: [SEARCH_PATH.format(word=w) for w in words[start : start + n]]),
    ]  # fmt: skip
    for server in servers:
        found = get(server, SEARCH_PATH.format(word="512")).json
        if not found or any(not p["name"].rsplit(" ", 1)[1].startswith("512") for p in found):
            raise BenchError(f"{server.name}: q=512 finds {[p['name'] for p in found][:5]}")
    results = []
    per_round = max(1, count // LATENCY_ROUNDS)
    for name, paths in lines:
        for server in servers:
            sequential_latencies(server, paths(server, 0, 10))  # warm-up
        measured = {server.name: Latencies() for server in servers}
        for n, server in alternate(LATENCY_ROUNDS, servers):
            got = sequential_latencies(server, paths(server, n * per_round, per_round))
            measured[server.name].samples.extend(got.samples)
        small_ms = measured[app_small.name].median_ms
        large_ms = measured[app_large.name].median_ms
        say(f"{name}: {large_ms:.2f} / {small_ms:.2f} ms")
        results.append(
            Result(
                name=name,
                measured=f"{large_ms:.2f} / {small_ms:.2f} ms",
                ratio=large_ms / small_ms,
                target=LATENCY_TARGET,
                details={
                    "large": {"products": large.size, **measured[app_large.name].summary()},
                    "small": {"products": small.size, **measured[app_small.name].summary()},
                },
            )
        )
    return results
