"""Today's buffered views across uWSGI's graceful stop and reload (app.ini, uWSGI's master
FIFO): each worker keeps its views in memory and writes them when it exits gracefully.
These assertions describe the in-process buffer; they change when views go through a
durable stream."""

from __future__ import annotations

from tests.system import harness as h

BUFFERED = {"VIEWS_FLUSH_SECONDS": 3600, "VIEWS_BATCH": 1_000_000, "WEB_PROCESSES": 2}


def serve_one_product(mariadb, new_database, app_env, stacks, name):
    database, url = new_database()
    stack = stacks(name, app_env(url, **BUFFERED))
    stack.migrate()
    stack.start()
    token = stack.http.login("admin@marketplace.test", "first-admin-password")
    product = {"sku": "abc", "name": "A", "price": 1, "mark": "m", "quantity": 1}
    assert stack.http.request("POST", "/api/products", product, token=token).status == 201
    return database, stack


def read(stack: h.Stack, times: int) -> None:
    assert [stack.http.get("/api/products/abc").status for _ in range(times)] == [200] * times


def test_a_graceful_stop_flushes_buffered_views_of_every_worker(
    mariadb, new_database, app_env, stacks
):
    database, stack = serve_one_product(mariadb, new_database, app_env, stacks, "stop")
    read(stack, 40)
    assert h.view_counts(mariadb, database) == {}  # still buffered in the workers
    assert set(stack.stop(how="fifo").values()) == {0}
    assert h.view_counts(mariadb, database) == {"abc": 40}, h.tail(stack.uwsgi_log())


def test_a_graceful_reload_flushes_and_the_new_workers_buffer_again(
    mariadb, new_database, app_env, stacks
):
    database, stack = serve_one_product(mariadb, new_database, app_env, stacks, "reload")
    read(stack, 25)
    old = set(stack.workers())
    stack.reload()  # graceful reload of every worker, as on a deploy
    h.wait_until("the reload's flush", lambda: h.view_counts(mariadb, database) == {"abc": 25}, 30)
    h.wait_until("new workers", lambda: len(set(stack.workers()) - old) == 2, 30)
    read(stack, 5)
    assert h.view_counts(mariadb, database) == {"abc": 25}  # the new workers buffer again
    assert set(stack.stop(how="fifo").values()) == {0}
    assert h.view_counts(mariadb, database) == {"abc": 30}
