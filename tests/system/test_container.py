"""One instance as the container's default role (all) runs it: docker/entrypoint.sh
started as the app user (the image's USER; migration, uWSGI with app.ini, nginx with
nginx.conf, the worker), real HTTP through nginx, stopped with SIGTERM.

The tests of this module share one running instance, in file order; the last ones look
at what its graceful stop left.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import time
from types import SimpleNamespace

import pytest

from tests.system import harness as h
from tests.system.conftest import ADMINS
from tests.system.test_edge import start_unprivileged

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
    start_unprivileged(instance.stack)
    http = instance.stack.http
    assert (http.get("/healthz").status, http.get("/healthz").json) == (200, {"status": "ok"})
    assert (http.get("/readyz").status, http.get("/readyz").json) == (200, {"status": "ready"})


def test_every_process_runs_as_the_app_user_nginx_included(instance):
    stack, app_uid = instance.stack, pwd.getpwnam(h.APP_USER).pw_uid
    procs = {p: h.cmdline(p) for p in stack.processes()}
    uwsgi = [p for p, c in procs.items() if "uWSGI" in c]
    assert len(uwsgi) >= 3 and {h.uid_of(p) for p in uwsgi} == {app_uid}, uwsgi
    assert [h.uid_of(p) for p in stack.daemons()] == [app_uid]
    masters = [p for p, c in procs.items() if c.startswith("nginx: master")]
    workers = [p for p, c in procs.items() if c.startswith("nginx: worker")]
    assert len(masters) == 1 and workers
    # The entrypoint's pauses (`sleep`) come and go: one gone before its uid is read has
    # none to judge; every process that is there runs as the app user.
    uids = {p: h.uid_of(p) for p in procs}
    assert set(uids.values()) - {None} == {app_uid}, {p: h.describe(p) for p in procs}


def test_uwsgi_queues_up_to_1024_connections_on_its_socket(instance):
    """app.ini's listen: a burst waits for a worker instead of nginx answering 502."""
    socket_path = str(instance.stack.runs[0] / "uwsgi.sock")
    done = h.run(["ss", "-xlnH", "src", socket_path])
    [line] = [x for x in done.stdout.splitlines() if socket_path in x]
    assert line.split()[:4] == ["u_str", "LISTEN", "0", "1024"], line


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


def test_each_read_reaches_the_database_through_the_views_stream(instance):
    """The reads went to Redis; the worker writes them, each with its view's id."""
    h.wait_until(
        "the worker to write the views",
        lambda: h.view_counts(instance.db, instance.name) == {"smoke-1": instance.reads},
        30,
    )
    rows = instance.db.query(
        instance.name, "SELECT COUNT(*) FROM product_views WHERE view_id IS NOT NULL"
    )
    assert rows == [(instance.reads,)]


def test_bodies_too_large_are_refused_by_nginx_and_by_the_app(instance):
    http = instance.stack.http
    assert http.declared_body("/api/products", 2 * 1024 * 1024) == 413  # client_max_body_size
    big = http.request("POST", "/api/products", {"name": "x" * 100_000}, token=instance.tokens[0])
    assert big.status == 413  # MAX_BODY_BYTES


def test_a_price_change_is_emailed_once_to_each_admin_saying_what_changed(instance, moto):
    http = instance.stack.http
    changed = http.request("PUT", "/api/products/smoke-1", {"price": 500}, token=instance.tokens[0])
    assert changed.status == 200, changed.json
    assert http.get("/api/products/smoke-1").json["price"] == 500
    instance.reads += 1
    h.wait_until("4 emails", lambda: len(moto.emails()) >= 4, 30)
    time.sleep(2)  # and no more come
    emails = moto.emails()
    assert sorted(m.to for m in emails) == sorted(ADMIN_ADDRESSES * 2)
    for address in ADMIN_ADDRESSES:
        [update] = [m for m in emails if m.to == address and " updated: " in m.subject]
        assert "price: 300 -> 500" in update.subject
        assert "300 -> 500" in update.body or "300 \u2192 500" in update.body


def test_metrics_add_up_every_process_and_are_kept_from_the_public(instance):
    """uWSGI's 4 workers and the worker daemon count into one scrape (multiprocess)."""
    http = instance.stack.http
    scrape = http.get("/metrics")
    assert scrape.status == 200
    text = scrape.body.decode()
    recorded = re.search(r'^marketplace_views_recorded_total\{path="stream"\} (\S+)$', text, re.M)
    assert recorded and float(recorded.group(1)) == instance.reads, text[:2000]
    sent = re.search(r'^marketplace_emails_total\{outcome="sent"\} (\S+)$', text, re.M)
    assert sent and float(sent.group(1)) == 4  # counted by the worker daemon
    assert re.search(r'^marketplace_notifications\{status="sent"\} 4\.0$', text, re.M)
    public = http.get("/metrics", headers={"X-Forwarded-For": REAL_CLIENT})
    assert public.status == 200, "an untrusted proxy's header changes nothing"


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
    assert re.search(r"worker \S+: stopped", output), "the worker daemon stopped gracefully"
    assert not (stack.runs[0] / "uwsgi.sock").exists()  # vacuum
    assert not reaper.running()


def test_after_the_stop_every_read_has_exactly_one_view(instance):
    assert h.view_counts(instance.db, instance.name) == {"smoke-1": instance.reads}


def test_every_notification_was_sent(instance):
    assert h.notification_statuses(instance.db, instance.name) == {"sent": 4}


def test_a_server_that_dies_ends_the_container_at_once_and_nothing_is_left(instance, reaper):
    """The worker (or uWSGI, or nginx) exiting by itself stops the others: the container
    exits non-zero, and the orchestrator starts a new one."""
    stack = h.Stack(instance.stack.d, "container-again", instance.env, entrypoint=True)
    start_unprivileged(stack)
    [worker] = stack.daemons()
    stack.kill(worker)
    started = time.monotonic()
    status = stack.main.wait(30)
    assert status != 0 and time.monotonic() - started < 10, (status, h.tail(stack.log))
    assert "worker exited" in stack.log.read_text()
    assert not reaper.running()


def test_ctrl_c_on_a_terminal_stops_everything_gracefully(instance, reaper):
    """`docker run -it`, then Ctrl-C: the terminal signals the entrypoint's whole process
    group (its own pauses included; the servers run in sessions of their own). It stops
    them in order and exits 0."""
    stack = h.Stack(instance.stack.d, "container-ctrl-c", instance.env, entrypoint=True)
    start_unprivileged(stack)
    h.wait_until(
        "the worker daemon's signal handlers", logged(stack, r"worker \S+: \d+ sender"), 60
    )
    os.killpg(stack.main.pid, signal.SIGINT)
    assert_stopped_cleanly(stack, reaper)
    assert "SIGINT received: stopping" in stack.log.read_text(errors="replace")


def logged(stack: h.Stack, pattern: str):
    """Whether the entrypoint's output shows ``pattern`` yet (for ``h.wait_until``)."""
    return lambda: re.search(pattern, stack.log.read_text(errors="replace"))


def assert_stopped_cleanly(stack: h.Stack, reaper) -> None:
    assert stack.main.wait(60) == 0, h.tail(stack.log)
    output = stack.log.read_text(errors="replace")
    assert "stopped: uwsgi 0 nginx 0 worker 0" in output, h.tail(stack.log)
    assert not reaper.running()


def test_a_sigterm_while_the_worker_starts_stops_everything_cleanly(instance, reaper):
    """The orchestrator stops a container that has only just started: the worker, still
    loading, has taken no work. The stop is clean (exit 0), whether the signal came
    before or after the worker's handler was in place."""
    stack = h.Stack(instance.stack.d, "container-early-stop", instance.env, entrypoint=True)
    start_unprivileged(stack, healthy=False)
    h.wait_until(
        "the entrypoint starting the worker", logged(stack, r"started worker \(\d+\)"), 120
    )
    os.kill(stack.main.pid, signal.SIGTERM)
    assert_stopped_cleanly(stack, reaper)


def test_a_server_that_does_not_stop_is_killed_after_stop_timeout(instance, reaper):
    """A server that does not answer its graceful stop (the worker, frozen here) is killed
    with whatever it started once STOP_TIMEOUT has passed: the container still ends, non-
    zero, and nothing is left running."""
    env = {**instance.env, "STOP_TIMEOUT": "3"}
    stack = h.Stack(instance.stack.d, "container-stuck", env, entrypoint=True)
    start_unprivileged(stack)
    [worker] = stack.daemons()
    stack.kill(worker, signal.SIGSTOP)
    started = time.monotonic()
    os.kill(stack.main.pid, signal.SIGTERM)
    status = stack.main.wait(60)
    took = time.monotonic() - started
    output = stack.log.read_text(errors="replace")
    assert status != 0 and 3 <= took < 20, (status, took, h.tail(stack.log))
    assert "worker: still running after 3 s: killed" in output, h.tail(stack.log)
    assert "stopped: uwsgi 0 nginx 0 worker 137" in output, h.tail(stack.log)
    assert not reaper.running()
