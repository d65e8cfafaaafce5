"""What change events cost a product change (docs/events.md).

Every change is written as an event in its own transaction and sealed (numbered and
chained) at commit. ``PUT /api/products/<sku>`` throughput on this tree is measured
beside the same on the tree just before events (commit ``BEFORE_EVENTS``, its files
taken with ``git archive``), side by side in one run: the same settings, catalog, three
admins to email (the console mailer), Redis, and each side's `flask worker` sending its
emails meanwhile. Target: this tree's throughput >= 0.9 of the earlier one's.

Each PUT gives one of the catalog's sampled products (about 50) a new price, from four
clients (a connection a request), in alternating rounds.
"""

from __future__ import annotations

import contextlib
import secrets
import time

from common import (
    BenchError,
    Context,
    Result,
    Target,
    alternate,
    app_environment,
    build_catalog,
    create_admin,
    deployment,
    drop_databases,
    earlier_tree,
    h,
    redis,
    say,
    serve,
)

# The commit before change events (the parent of the commit that added them).
BEFORE_EVENTS = "f57dd049c0715a9bc2673c4e5da61d68979a8f29"
DATABASES = {"events": "bench_events_now", "before": "bench_events_before"}
PRODUCTS = 1_000
ADMINS = 3
CLIENTS = 4
ROUNDS = 4
ROUND_SECONDS = 8.0
WARMUP_SECONDS = 3.0

TARGET = Target(">=", 0.9)


def run(ctx: Context) -> list[Result]:
    try:
        return [measure(ctx)]
    finally:
        if not ctx.keep_databases:
            drop_databases(*DATABASES.values())


def measure(ctx: Context) -> Result:
    trees = {"events": deployment(), "before": deployment(source=earlier_tree(BEFORE_EVENTS))}
    admins = [(f"bench-admin{n}@example.com", secrets.token_urlsafe(16)) for n in range(ADMINS)]
    with contextlib.ExitStack() as stack:
        sides = {}
        for side, tree in trees.items():
            env = app_environment(
                DATABASES[side], redis_url=redis().new_database(), tree=tree, **ctx.app_env
            )
            catalog = build_catalog(DATABASES[side], PRODUCTS, marks=10, env=env, tree=tree)
            for n, (email, password) in enumerate(admins):
                create_admin(env, email, password, f"Bench Admin {n}", tree=tree)
            server = stack.enter_context(serve(f"events-{side}", env, worker=True, tree=tree))
            token = server.http.login(*admins[0])
            sides[side] = (server, catalog.sample_skus, token)

        for server, skus, token in sides.values():
            puts(server, skus, token, WARMUP_SECONDS)
        counted = {side: [0, 0.0] for side in sides}
        for _n, side in alternate(ROUNDS, list(sides)):
            done, seconds = puts(*sides[side], ROUND_SECONDS)
            counted[side][0] += done
            counted[side][1] += seconds
    rps = {side: n / seconds for side, (n, seconds) in counted.items()}
    ratio = rps["events"] / rps["before"]
    say(f"PUT: {rps['events']:.0f} req/s with events, {rps['before']:.0f} before")
    return Result(
        "PUT /api/products/<sku> throughput: with change events / the tree before them",
        f"{rps['events']:,.0f} / {rps['before']:,.0f} req/s",
        ratio,
        TARGET,
        {"before_commit": BEFORE_EVENTS, "clients": CLIENTS, "admins": ADMINS, **counted},
    )


def puts(server: h.Stack, skus: list[str], token: str, seconds: float) -> tuple[int, float]:
    """PUTs from CLIENTS clients for ``seconds``: how many answered 200, in how long."""
    load = h.Load(server.port, skus, [token], timeout=30, keepalive=False)
    roles = [h.Role(put=1.0, list=0.0, admin=0)] * CLIENTS
    load.start(roles)
    time.sleep(seconds)
    load.stop()
    statuses = {r.status for r in load.requests}
    if statuses != {200}:
        raise BenchError(f"{server.name}: PUT answers {sorted(statuses)}: {load.samples}")
    return len(load.requests), load.seconds
