"""uWSGI's graceful stop and reload under load (app.ini): the web workers hold nothing,
so a plain SIGTERM (what Docker, ECS and Kubernetes send) or a reload while clients read
loses no view, cuts no request, and leaves every email sent once."""

from __future__ import annotations

import threading

from tests.system import harness as h


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


def read_until(stack: h.Stack, stop: threading.Event, statuses: list) -> None:
    http = h.Http(stack.port)
    while not stop.is_set():
        try:
            statuses.append(http.get("/api/products/abc").status)
        except OSError:
            statuses.append(None)  # refused: the server was gone


def test_sigterm_under_load_finishes_every_request_and_loses_no_view(
    mariadb, new_database, app_env, stacks
):
    # Two request threads per worker: a shutdown waits for every thread's request.
    database, stack = serve_one_product(mariadb, new_database, app_env, stacks, "stop", 2)
    stop, statuses = threading.Event(), []
    readers = [threading.Thread(target=read_until, args=(stack, stop, statuses)) for _ in range(4)]
    for reader in readers:
        reader.start()
    h.wait_until("some reads", lambda: len(statuses) > 40, 30)
    stopped = stack.stop(how="sigterm")
    stop.set()
    for reader in readers:
        reader.join(30)
    assert set(stopped.values()) == {0}, h.tail(stack.uwsgi_log())
    assert 502 not in statuses, "a request was cut off"
    assert h.view_counts(mariadb, database) == {"abc": statuses.count(200) + 1}
    assert "DAMN ! worker" not in stack.uwsgi_log().read_text(errors="replace")


def test_a_graceful_reload_under_load_loses_no_view(mariadb, new_database, app_env, stacks):
    # One thread per worker (app.ini's default: see there why reloads need it).
    database, stack = serve_one_product(mariadb, new_database, app_env, stacks, "reload", 1)
    stop, statuses = threading.Event(), []
    readers = [threading.Thread(target=read_until, args=(stack, stop, statuses)) for _ in range(4)]
    for reader in readers:
        reader.start()
    h.wait_until("some reads", lambda: len(statuses) > 40, 30)
    old = set(stack.workers())
    stack.reload()  # graceful reload of every worker, as on a deploy
    h.wait_until("new workers", lambda: len(set(stack.workers()) - old) == 2, 30)
    h.wait_until("reads on the new workers", lambda: len(statuses) > 200, 30)
    stop.set()
    for reader in readers:
        reader.join(30)
    reads = statuses.count(200) + 1
    assert set(statuses) == {200}, "every read answered during the reload"
    h.wait_until(
        "every view written", lambda: h.view_counts(mariadb, database) == {"abc": reads}, 30
    )
    assert set(stack.stop(how="sigterm").values()) == {0}
    assert h.view_counts(mariadb, database) == {"abc": reads}
