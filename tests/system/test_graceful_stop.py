"""uWSGI's graceful stop and reload under load (app.ini): the web workers hold nothing,
so a plain SIGTERM (what Docker, ECS and Kubernetes send) or a reload while clients read
and edit loses no view, cuts no request, and leaves every email sent once. With several
request threads a worker too (app/uwsgi_graceful.py)."""

from __future__ import annotations

import time

from tests.system import harness as h
from tests.system.conftest import ADMINS

RELOADS = 5


def serve_one_product(mariadb, new_database, app_env, stacks, name, threads: int):
    database, url = new_database()
    stack = stacks(name, app_env(url, WEB_PROCESSES=2, WEB_THREADS=threads))
    stack.migrate()
    stack.start()
    token = stack.http.login("admin@marketplace.test", "first-admin-password")
    product = {"sku": "abc", "name": "A", "price": 1, "mark": "m", "quantity": 1}
    assert stack.http.request("POST", "/api/products", product, token=token).status == 201
    # The worker daemon is up (as it long is in production) once a first view arrives.
    assert stack.http.get("/api/products/abc").status == 200
    h.wait_until("the worker", lambda: h.view_counts(mariadb, database) == {"abc": 1}, 60)
    return database, stack


def readers(stack: h.Stack) -> h.Load:
    """Four clients reading the product back to back (the harness's Load)."""
    return h.Load(stack.port, ["abc"], []).start([h.Role(put=0, list=0)] * 4)


def test_sigterm_under_load_finishes_every_request_and_loses_no_view(
    mariadb, new_database, app_env, stacks
):
    # Two request threads per worker: a shutdown waits for every thread's request.
    database, stack = serve_one_product(
        mariadb, new_database, app_env, stacks, "sigterm-under-load", 2
    )
    load = readers(stack)
    h.wait_until("some reads", lambda: load.sent() > 40, 30)
    stopped = stack.stop(how="sigterm")
    load.stop()  # reads after nginx stopped found no server: no answer, not a 502
    assert set(stopped.values()) == {0}, h.tail(stack.uwsgi_log())
    assert 502 not in load.statuses(), "a request was cut off"
    assert h.view_counts(mariadb, database) == {"abc": load.reads()["abc"] + 1}
    assert "DAMN ! worker" not in stack.uwsgi_log().read_text(errors="replace")


def test_a_graceful_reload_of_single_threaded_workers_loses_no_view(
    mariadb, new_database, app_env, stacks
):
    # WEB_THREADS=1: workers of one thread, stopped through app/uwsgi_graceful.py too.
    database, stack = serve_one_product(
        mariadb, new_database, app_env, stacks, "reload-under-load", 1
    )
    load = readers(stack)
    h.wait_until("some reads", lambda: load.sent() > 40, 30)
    old = set(stack.workers())
    stack.reload()  # graceful reload of every worker, as on a deploy
    h.wait_until("new workers", lambda: len(set(stack.workers()) - old) == 2, 30)
    h.wait_until("reads on the new workers", lambda: load.sent() > 200, 30)
    load.stop()
    reads = load.reads()["abc"] + 1
    assert set(load.statuses()) == {200}, "every read answered during the reload"
    h.wait_until(
        "every view written", lambda: h.view_counts(mariadb, database) == {"abc": reads}, 30
    )
    assert set(stack.stop(how="sigterm").values()) == {0}
    assert h.view_counts(mariadb, database) == {"abc": reads}


def test_repeated_graceful_reloads_of_threaded_workers_under_load_lose_and_double_nothing(
    mariadb, new_database, app_env, stacks, ses, create_admins
):
    # app.ini's default of two request threads a worker, busy with reads and edits.
    database, url = new_database()
    stack = stacks("reloads-under-load", app_env(url, WEB_PROCESSES=2))
    stack.migrate()
    create_admins(stack.env, 2)
    stack.start()
    tokens = [stack.http.login(a, p) for a, p in ADMINS[:2]]
    skus = [f"reload-{n}" for n in range(4)]
    for sku in skus:
        product = {"sku": sku, "name": sku, "price": 100, "mark": "m", "quantity": 1}
        assert stack.http.request("POST", "/api/products", product, token=tokens[0]).status == 201
    load = h.Load(stack.port, skus, tokens).start([h.Role(put=0.1, list=0.15)] * 8)
    try:
        for _ in range(RELOADS):
            time.sleep(1)
            old = set(stack.workers())
            stack.reload()  # a graceful reload (w) of every worker, as on a deploy
            h.wait_until(
                "new web workers",
                lambda old=old: not old & set(stack.workers()) and len(stack.workers()) == 2,
                60,
            )
        time.sleep(1)
    finally:
        load.stop()
    assert set(load.statuses()) == {200}, load.samples  # no request cut off, none refused
    assert load.changes() and load.reads()
    log = stack.uwsgi_log().read_text(errors="replace")
    assert "NO MERCY" not in log, "a reloading worker hung and was killed"

    admins = [a for a, _ in ADMINS[:2]]
    expected = len(admins) * (len(skus) + len(load.changes()))
    h.wait_until("every email", lambda: len(ses.emails()) >= expected, 60)
    assert set(stack.stop(how="sigterm").values()) == {0}
    figures = h.tally(mariadb, database, ses, load, admins, skus)
    assert h.view_counts(mariadb, database) == load.reads()  # one view per 200 read
    assert figures["emails_sent"] == expected and figures["emails_duplicated"] == 0, figures
    assert figures["emails_missing"] == figures["emails_unwanted"] == [], figures
    assert h.notification_statuses(mariadb, database) == {"sent": expected}
