"""The steps of a load or fault scenario, for the tests to compose:

run = serve(deployment, mariadb, moto, "kill_worker")      # stack, 3 admins, 50 products
run.load = h.Load(run.stack.port, run.skus, run.tokens).start(mixed(24))
...inject the fault: run.stack.kill(run.stack.workers()[0]), a FaultProxy, db.freeze()...
run.load.stop()
run.drained = drained(run, moto, 60)
finish(run, moto, results, "kill_worker")                  # graceful stop, then count
assert_nothing_lost_or_doubled(run)
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from tests.system import harness as h
from tests.system.conftest import ADMINS

PRODUCTS = 50
ADMIN_ADDRESSES = [a for a, _ in ADMINS]


def serve(
    deployment,
    db: h.MariaDB,
    moto: h.Moto,
    name: str,
    *,
    db_port: int | None = None,
    ses_url: str | None = None,
    **extra,
) -> SimpleNamespace:
    """A fresh database on ``db`` (reached through ``db_port``, a FaultProxy, if given),
    migrated; nginx + uWSGI (app.ini) with ``extra`` in the environment (WEB_THREADS,
    REDIS_URL...), SES at ``ses_url`` (default moto); 3 admins logged in, 50 products."""
    moto.reset()
    db.create_database(name)
    env = deployment.env(
        db.url(name, db_port),
        ses_url or moto.url,
        ADMIN_EMAIL=ADMINS[0][0],
        ADMIN_PASSWORD=ADMINS[0][1],
        **extra,
    )
    stack = h.Stack(deployment, name, env)
    stack.migrate()
    for address, password in ADMINS[1:]:
        done = deployment.flask(
            env, "users", "create-admin", "--email", address, "--password", password
        )
        assert done.returncode == 0, done.stderr
    stack.start()
    tokens = [stack.http.login(a, p) for a, p in ADMINS]
    skus = [f"{name}-{n:02d}" for n in range(PRODUCTS)]
    for sku in skus:
        product = {"sku": sku, "name": sku, "price": 100, "mark": "m", "quantity": 1}
        assert stack.http.request("POST", "/api/products", product, token=tokens[0]).status == 201
    return SimpleNamespace(stack=stack, db=db, name=name, tokens=tokens, skus=skus, timeline={})


def mixed(clients: int) -> list[h.Role]:
    return [h.Role(put=0.05, list=0.15)] * clients


def drained(run: SimpleNamespace, moto: h.Moto, timeout: float) -> float | None:
    """Seconds until every notification is sent and moto has as many emails, or None."""
    began = time.monotonic()

    def done() -> bool:
        statuses = h.notification_statuses(run.db, run.name)
        return statuses["sent"] == sum(statuses.values()) and len(moto.emails()) >= statuses["sent"]

    try:
        h.wait_until("every notification sent", done, timeout, every=1.0)
    except h.HarnessError:
        return None
    return time.monotonic() - began


def finish(run: SimpleNamespace, moto: h.Moto, results: list, scenario: str) -> None:
    run.stopped = run.stack.stop(how="sigterm")
    run.figures = {
        "scenario": scenario,
        **h.tally(run.db, run.name, moto, run.load, ADMIN_ADDRESSES, run.skus),
    }
    run.figures.update(drained_s=run.drained and round(run.drained, 1), stopped=run.stopped)
    results.append(run.figures)


def assert_nothing_lost_or_doubled(run: SimpleNamespace) -> None:
    f = run.figures
    assert set(run.stopped.values()) == {0}, run.stopped
    assert f["view_rows"] == f["reads_200"], f
    assert f["views_missing"] == f["views_extra"] == {}, f  # per product, too
    assert f["emails_missing"] == [] and f["emails_unwanted"] == [], f
    assert f["emails_sent"] == f["emails_expected"] and f["emails_duplicated"] == 0, f
    assert f["notification_statuses"] == {"sent": f["emails_expected"]}, f
