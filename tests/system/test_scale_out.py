"""Scale-out: two instances migrate at once, then two uWSGI instances (each with its
worker daemon) behind one nginx upstream serve concurrent reads and edits, one of them
reloaded gracefully on the way. After a graceful stop: one view row per 200 read, one
email per change and admin, exactly once."""

from __future__ import annotations

import time

from tests.system import harness as h
from tests.system.conftest import ADMINS

REAL_CLIENT = "203.0.113.7"


def test_two_migrations_at_once_take_turns_on_the_lock(deployment, mariadb, new_database, app_env):
    _name, url = new_database()
    env = app_env(url)
    upgrades = h.at_once([lambda: deployment.flask(env, "deploy", "upgrade")] * 2)
    outputs = [done.stdout + done.stderr for done in upgrades]
    assert [done.returncode for done in upgrades] == [0, 0], outputs
    assert all("migration lock taken" in out for out in outputs), outputs
    assert mariadb.query(_name, "SELECT COUNT(*) FROM users WHERE rol = 1") == [(1,)]


def test_two_instances_under_load_with_a_graceful_reload_lose_and_double_nothing(
    mariadb, new_database, app_env, stacks, ses, create_admins, reaper
):
    name, url = new_database()
    stack = stacks("scale", app_env(url), instances=2, trust_loopback=True)
    stack.migrate()
    create_admins(stack.env, 2)
    stack.start()
    tokens = [stack.http.login(a, p) for a, p in ADMINS[:2]]
    skus = [f"load-{n}" for n in range(3)]
    for sku in skus:
        product = {"sku": sku, "name": f"item {sku}", "price": 100, "mark": "m", "quantity": 1}
        assert stack.http.request("POST", "/api/products", product, token=tokens[0]).status == 201

    load = h.Load(stack.port, skus, tokens).start([h.Role(put=0.15, list=0.0)] * 8)
    time.sleep(4)
    stack.reload(0)  # a graceful reload (w) of instance 0's workers, as on a deploy
    time.sleep(6)
    load.stop()
    assert set(load.statuses()) == {200}, load.samples
    assert load.changes() and sum(load.reads().values()) > 0

    trusted = stack.http.get(f"/api/products/{skus[0]}", headers={"X-Forwarded-For": REAL_CLIENT})
    assert trusted.status == 200
    expected = len(ADMINS[:2]) * (len(skus) + len(load.changes()))
    h.wait_until("every email", lambda: len(ses.emails()) >= expected, 60)
    time.sleep(0.5)  # the access log line follows the answer
    log = stack.log.read_text(errors="replace")
    [forwarded] = [line for line in log.splitlines() if f'xff="{REAL_CLIENT}"' in line]
    assert forwarded.startswith(f"{REAL_CLIENT} ")  # X-Forwarded-For from a trusted proxy
    used = {part.split()[0] for part in log.split("upstream=unix:")[1:]}
    assert {str(r / "uwsgi.sock") for r in stack.runs} <= used, "nginx used one instance only"

    assert set(stack.stop(how="sigterm").values()) == {0}
    assert not reaper.running()
    figures = h.tally(mariadb, name, ses, load, [a for a, _ in ADMINS[:2]], skus)
    reads = load.reads()
    reads[skus[0]] += 1
    assert h.view_counts(mariadb, name) == reads
    assert h.notification_statuses(mariadb, name) == {"sent": expected}
    assert figures["emails_sent"] == expected and figures["emails_duplicated"] == 0
    assert figures["emails_missing"] == figures["emails_unwanted"] == [], figures
