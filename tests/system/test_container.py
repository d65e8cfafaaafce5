"""One instance as the container runs it: docker/entrypoint.sh (migration, uWSGI with
app.ini, nginx with nginx.conf), real HTTP through nginx, stopped with SIGTERM.

The tests of this module share one running instance, in file order; the last ones look
at what its graceful stop left.
"""

from __future__ import annotations

import pwd
import signal
import time
from types import SimpleNamespace

import pytest

from tests.system import harness as h
from tests.system.conftest import ADMINS

REAL_CLIENT = "203.0.113.7"  # TEST-NET-3: only ever a header value
ADMIN_ADDRESSES = [a for a, _ in ADMINS[:2]]


@pytest.fixture(scope="module")
def instance(deployment, mariadb, moto, reaper):
    moto.reset()
    name = "marketplace_container"
    url = mariadb.create_database(name)
    env = deployment.env(
        url,
        moto.url,
        ADMIN_EMAIL=ADMINS[0][0],
        ADMIN_PASSWORD=ADMINS[0][1],
        # Only uWSGI's attached worker sends: not the web workers' threads.
        NOTIFY_THREADS=0,
        # Views stay buffered in the workers until the graceful stop writes them.
        VIEWS_FLUSH_SECONDS=3600,
        VIEWS_BATCH=1_000_000,
    )
    stack = h.Stack(deployment, "container", env, entrypoint=True)
    state = SimpleNamespace(stack=stack, db=mariadb, name=name, env=env, reads=0, stopped=None)
    yield state
    if stack.main is not None and stack.main.poll() is None:
        stack.stop(timeout=30)
    mariadb.drop_database(name)


def test_sigterm_while_the_migration_waits_for_the_lock_stops_at_once(instance, reaper):
    """Another instance holds the migration lock: a SIGTERM stops this one at once."""
    stack, db = instance.stack, instance.db
    with db.connect(instance.name) as holder, holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK('marketplace_migrations', 5)")
        waiting = h.Stack(stack.d, "container-waiting", instance.env, entrypoint=True)
        env = {
            **waiting.instance_env(0),
            "WEB_INI": str(stack.d.source / "app.ini"),
            "NGINX_CONF": str(waiting.conf),
        }
        entry = reaper.start([stack.d.source / "docker" / "entrypoint.sh"], waiting.log.name, env)
        h.wait_until(
            "flask deploy upgrade waiting for the lock",
            lambda: [p for p in reaper.descendants(entry.pid) if "deploy upgrade" in h.cmdline(p)],
            60,
        )
        time.sleep(0.5)
        started = time.monotonic()
        status = reaper.stop(entry, signal.SIGTERM, timeout=15)
        took = time.monotonic() - started
    assert status != 0 and took < 10
    assert "stopped during the migration" in h.tail(waiting.log)
    assert not reaper.running()
    assert db.query(instance.name, "SHOW TABLES") == [], "the stopped instance migrated"


def test_the_entrypoint_migrates_and_serves_health_and_readiness(instance):
    instance.stack.start()
    http = instance.stack.http
    assert (http.get("/healthz").status, http.get("/healthz").json) == (200, {"status": "ok"})
    assert (http.get("/readyz").status, http.get("/readyz").json) == (200, {"status": "ready"})


def test_every_process_runs_as_the_app_user_and_nginx_workers_as_www_data(instance):
    stack, app_uid = instance.stack, pwd.getpwnam(h.APP_USER).pw_uid
    procs = {p: h.cmdline(p) for p in stack.processes()}
    uwsgi = [p for p, c in procs.items() if "uWSGI" in c]
    assert len(uwsgi) >= 3 and {h.uid_of(p) for p in uwsgi} == {app_uid}, uwsgi
    assert [h.uid_of(p) for p in stack.daemons()] == [app_uid]
    masters = [p for p, c in procs.items() if c.startswith("nginx: master")]
    workers = [p for p, c in procs.items() if c.startswith("nginx: worker")]
    assert [h.uid_of(p) for p in masters] == [0]
    assert workers and {h.uid_of(p) for p in workers} == {pwd.getpwnam("www-data").pw_uid}


def test_admins_log_in_create_and_read_a_product(instance, create_admins):
    create_admins(instance.env, 2)
    http = instance.stack.http
    instance.tokens = [http.login(a, p) for a, p in ADMINS[:2]]
    product = {"sku": "smoke-1", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}
    created = http.request("POST", "/api/products", product, token=instance.tokens[0])
    assert created.status == 201, created.json
    statuses = [http.get("/api/products/smoke-1").status for _ in range(5)]
    statuses.append(
        http.get("/api/products/smoke-1", headers={"X-Forwarded-For": REAL_CLIENT}).status
    )
    assert statuses == [200] * 6
    instance.reads += 6


def test_views_stay_buffered_in_the_workers_until_the_stop(instance):
    """Today's buffered views: nothing is written while the instance runs."""
    assert instance.db.query(instance.name, "SELECT COUNT(*) FROM product_views") == [(0,)]


def test_bodies_too_large_are_refused_by_nginx_and_by_the_app(instance):
    http = instance.stack.http
    assert http.declared_body("/api/products", 2 * 1024 * 1024) == 413  # client_max_body_size
    big = http.request("POST", "/api/products", {"name": "x" * 100_000}, token=instance.tokens[0])
    assert big.status == 413  # MAX_BODY_BYTES


def test_uwsgi_restarts_a_killed_worker_daemon(instance):
    stack = instance.stack
    [daemon] = stack.daemons()
    stack.kill(daemon)
    h.wait_until("a new worker daemon", lambda: [p for p in stack.daemons() if p != daemon], 30)


def test_a_price_change_is_emailed_once_to_each_admin_saying_what_changed(instance, moto):
    http = instance.stack.http
    changed = http.request("PUT", "/api/products/smoke-1", {"price": 500}, token=instance.tokens[0])
    assert changed.status == 200, changed.json
    assert http.get("/api/products/smoke-1").json["price"] == 500
    instance.reads += 1
    with pytest.raises(h.HarnessError):  # wait for more than expected: none may come
        h.wait_until("a fifth email", lambda: len(moto.emails()) > 4, 8)
    emails = moto.emails()
    assert sorted(m.to for m in emails) == sorted(ADMIN_ADDRESSES * 2)
    for address in ADMIN_ADDRESSES:
        [update] = [m for m in emails if m.to == address and " updated: " in m.subject]
        assert "price: 300 -> 500" in update.subject
        assert "300 -> 500" in update.body or "300 \u2192 500" in update.body


def test_x_forwarded_for_is_ignored_from_an_untrusted_address(instance):
    lines = [
        line
        for line in instance.stack.log.read_text().splitlines()
        if f'xff="{REAL_CLIENT}"' in line
    ]
    assert lines and all(line.startswith("127.0.0.1 ") for line in lines), lines


def test_sigterm_stops_everything_gracefully(instance, reaper):
    stack = instance.stack
    assert stack.stop() == {"entrypoint": 0}, h.tail(stack.log)
    output = stack.log.read_text(errors="replace")
    assert "graceful shutdown triggered" in output and "goodbye to uWSGI" in output
    assert "notifications worker: stopped after" in output
    assert not (stack.runs[0] / "uwsgi.sock").exists()  # vacuum
    assert not reaper.running()


def test_the_graceful_stop_wrote_every_buffered_view(instance):
    """Today's buffered views: the stop flushes every worker's buffer."""
    assert h.view_counts(instance.db, instance.name) == {"smoke-1": instance.reads}


def test_every_notification_was_sent(instance):
    assert h.notification_statuses(instance.db, instance.name) == {"sent": 4}
