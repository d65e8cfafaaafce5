"""Webhooks under the emails' faults (`make reliability`): the deployed stack (nginx,
uWSGI, the worker daemon) sends every product change to two endpoints of a real receiver
on loopback while admins change prices, and one of the faults strikes: the worker killed
(kill -9) mid-send, an endpoint answering after the timeout, MariaDB frozen. Each run is
counted from the receiver's side, per webhook-id (tests/system/webhook_faults.py), and its
figures go to reliability-results.json beside the emails'.
"""

from __future__ import annotations

import time

import pytest

from tests.system import faults as f
from tests.system import harness as h
from tests.system import webhook_faults as w
from tests.system.receiver import Answer, Receiver
from tests.system.test_faults import fault_results, mode, serve  # noqa: F401 (fixtures)

pytestmark = pytest.mark.reliability

PATHS = ["a", "b"]
# An attempt has this long; a sender killed mid-send leaves a lease of this plus ~30 s.
TIMEOUT = 3
WEBHOOK_ENV = {
    "WEBHOOK_ALLOWED_HOSTS": h.HOST,
    "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_TIMEOUT_SECONDS": TIMEOUT,
    "WEBHOOK_RETRY_BASE_SECONDS": 1,
}
SETTLE_SECONDS = 240


@pytest.fixture
def receiver():
    found = Receiver(lambda _got: Answer(204, delay=0.05))
    yield found
    found.close()


def hooked(run, receiver) -> int:
    """Two endpoints on the receiver (/a and /b); the last event id before them."""
    after = w.last_event_id(run.db, run.database)
    for path in PATHS:
        body = {"url": receiver.url(f"/{path}")}
        answer = run.stack.http.request("POST", "/api/webhooks", body, token=run.tokens[0])
        assert answer.status == 201, answer.json
    return after


def editors(count: int, think: float) -> list[f.Role]:
    return [f.Role(put=1.0, list=0.0, think=think, admin=n % 3) for n in range(count)]


def settled(run, receiver, after: int) -> None:
    """Wait until no delivery is open and every owed one arrived."""

    def done() -> bool:
        owed = len(PATHS) * len(
            run.db.query(
                run.database,
                "SELECT id FROM events WHERE id > %s AND type LIKE 'product.%%'",
                after,
            )
        )
        arrived = {(g.path, g.event_id) for g in list(receiver.received)}
        return w.open_deliveries(run.db, run.database) == 0 and len(arrived) >= owed

    h.wait_until("every webhook delivered", done, SETTLE_SECONDS, 1.0)


def finish(run, scenario, receiver, after, requests, results) -> dict:
    began = time.monotonic()
    settled(run, receiver, after)
    entry = w.tally(run, scenario, receiver, PATHS, after, requests)
    entry["settle_s"] = round(time.monotonic() - began, 1)
    run.sampler.stop()
    entry["stopped"] = run.stack.stop(how="fifo")
    results.append(entry)
    return entry


def test_webhooks_while_the_worker_is_killed_mid_send(serve, mode, fault_results, receiver):  # noqa: F811
    run = serve("hooks_kill", **WEBHOOK_ENV)
    after = hooked(run, receiver)
    receiver.answer = lambda _got: Answer(204, delay=1.5)  # each send takes 1.5 s
    load = f.load(run.stack, run.skus, run.tokens).start(editors(2, 0.5))
    landed = []
    try:
        for _ in range(mode.daemon_kills):
            time.sleep(4)
            h.wait_until("a webhook being sent", lambda: receiver.answering > 0, 30, 0.05)
            daemons = run.stack.daemons()
            assert daemons, "no worker daemon"
            in_send = receiver.answering
            for pid in daemons:
                run.stack.kill(pid)
            landed.append(in_send)
            # What the orchestrator does with a worker container that exited.
            h.wait_until("the worker gone", lambda: not run.stack.daemons(), 30)
            for n in range(len(run.stack.workers_)):
                run.stack.start_worker(n)
        time.sleep(3)
    finally:
        load.stop()
    receiver.answer = lambda _got: Answer(204)
    entry = finish(
        run, "webhooks_worker_killed_mid_send", receiver, after, load.requests, fault_results
    )
    entry["kills"], entry["sending_at_kills"] = len(landed), landed
    w.check(entry)
    assert all(landed), landed  # each kill landed while a webhook was being sent
    assert entry["duplicates"] >= 1  # a send cut off is sent again, under its webhook-id


def test_webhooks_while_an_endpoint_answers_after_the_timeout(serve, mode, fault_results, receiver):  # noqa: F811
    run = serve("hooks_slow", **WEBHOOK_ENV)
    after = hooked(run, receiver)
    slow = {"on": False}
    receiver.answer = lambda got: Answer(
        204, delay=TIMEOUT + 2 if slow["on"] and got.path == "/a" else 0.05
    )
    load = f.load(run.stack, run.skus, run.tokens).start(editors(2, 0.5))
    try:
        time.sleep(3)
        slow["on"] = True  # /a answers 2 s after the sender gave up; /b as usual
        time.sleep(15 if mode.name == "fast" else 40)
        slow["on"] = False
        time.sleep(3)
    finally:
        load.stop()
        slow["on"] = False
    entry = finish(
        run, "webhooks_endpoint_past_timeout", receiver, after, load.requests, fault_results
    )
    w.check(entry)
    late = [g for g in receiver.received if g.path == "/a"]
    assert entry["duplicates"] >= 1 and len(late) > entry["delivered"] // 2


@pytest.mark.parametrize("seconds", [15, 55])
def test_webhooks_while_mariadb_is_frozen(serve, private_mariadb, fault_results, receiver, seconds):  # noqa: F811
    db = private_mariadb()
    run = serve(f"hooks_frozen_{seconds}", db=db, **WEBHOOK_ENV)
    after = hooked(run, receiver)
    load = f.load(run.stack, run.skus, run.tokens).start(editors(2, 0.3))
    try:
        time.sleep(4)
        db.freeze()
        try:
            time.sleep(seconds)
        finally:
            db.thaw()
        time.sleep(8)
    finally:
        db.thaw()
        load.stop()
    entry = finish(
        run, f"webhooks_mariadb_frozen_{seconds}s", receiver, after, load.requests, fault_results
    )
    w.check(entry)
