"""Faults against the deployed service (the shipped nginx.conf and app.ini, Debian's nginx
and uWSGI, the worker daemon), a private MariaDB and Redis, moto as SES, and a TCP fault
proxy in front of MariaDB or SES where the fault needs one. Each scenario is counted row
by row (tests/system/faults.py) and its figures go to reliability-results.json at the
root of the tree.

``make smoke`` runs the fast set (each scenario a short run); ``make reliability`` the
full set (longer runs, more repetitions, and MariaDB frozen 55 s). FAULT_SET=fast|full
overrides the choice.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import time
from collections import Counter
from types import SimpleNamespace

import pymysql
import pytest

from tests.system import faults as f
from tests.system import harness as h
from tests.system.conftest import ADMINS

PRODUCTS = 20
START_PRICE = 100
# A graceful reload must not hold any request longer than this.
STALL_LIMIT = 5.0
# With MariaDB frozen every request answers within the database timeouts (a read 5 s, a
# commit 5 s more and its check 8 s), well under uWSGI's harakiri (50 s).
FROZEN_READ_LIMIT = 12.0
FROZEN_WRITE_LIMIT = 30.0

# What the app logs when a fault touched it (counted in each entry).
LOG_LINES = (
    "recording failed, retrying",
    "lease lost before sending",
    "outcome unknown",
    "stopped during the send",
    "reclaimed",
    "but the write committed",
    "and the write did not commit",
    "no way to check",
    "views lost",
    "DAMN ! worker",
)

FAST = {
    "clients": 8,
    "web_kills": 4,
    "web_kill_every": 3.0,
    "daemon_kills": 1,
    "commit_windows": 2,
    "slow_ses_puts": 2,
    "reloads": 2,
    "pairs": 15,
    "delete_rounds": 1,
    "max_conn_seconds": 12.0,
}
FULL = {
    "clients": 16,
    "web_kills": 8,
    "web_kill_every": 5.0,
    "daemon_kills": 3,
    "commit_windows": 4,
    "slow_ses_puts": 6,
    "reloads": 5,
    "pairs": 50,
    "delete_rounds": 3,
    "max_conn_seconds": 40.0,
}


@pytest.fixture
def fault_results(results, request):
    """The run's reliability-results.json (conftest): each entry says its fault set."""
    set_name = f.fault_set(request.config)
    start = len(results)
    yield results
    for entry in results[start:]:
        entry.setdefault("set", set_name)


@pytest.fixture
def mode(request) -> SimpleNamespace:
    chosen = f.fault_set(request.config)
    return SimpleNamespace(name=chosen, **(FAST if chosen == "fast" else FULL))


@pytest.fixture
def serve(reaper, mariadb, ses, app_env, stacks, create_admins):
    """serve(name, db=..., db_proxy=..., ses_proxy=..., redis_persistent=..., **env): the
    stack running with 3 admins and PRODUCTS products (their creation emails sent), a
    private Redis, and a sampler of the emails being sent."""
    runs = []

    def make(
        name: str, *, db=None, db_proxy=False, ses_proxy=False, redis_persistent=False, **extra
    ) -> SimpleNamespace:
        db = db or mariadb
        database = f"faults_{name}"
        db.create_database(database)
        workdir = reaper.workdir / f"redis-{name}"
        workdir.mkdir()
        run = SimpleNamespace(db=db, database=database, moto=ses, sampler=None)
        runs.append(run)
        run.redis = h.Redis(reaper, workdir, persistent=redis_persistent)
        run.db_proxy = f.CommitAckProxy(db.port) if db_proxy else None
        run.ses_proxy = h.FaultProxy(ses.port) if ses_proxy else None
        url = h.MariaDB(run.db_proxy.port).url(database) if db_proxy else db.url(database)
        ses_url = f"http://{h.HOST}:{run.ses_proxy.port}" if ses_proxy else ses.url
        env = app_env(
            url,
            ses_url,
            REDIS_URL=run.redis.url,
            VIEWS_RECLAIM_SECONDS=3,
            NOTIFY_RETRY_BASE_SECONDS=2,
            **extra,
        )
        run.stack = stacks(name, env)
        run.stack.migrate()
        create_admins(env, len(ADMINS))
        run.stack.start()
        run.tokens = [run.stack.http.login(a, p) for a, p in ADMINS]
        run.skus = [f"{name}-{n:02d}" for n in range(PRODUCTS)]
        run.counted = f.Counted()
        for sku in run.skus:
            product = {"sku": sku, "name": sku, "price": START_PRICE, "mark": "m", "quantity": 1}
            answer = run.stack.http.request("POST", "/api/products", product, token=run.tokens[0])
            assert answer.status == 201, answer.json
            run.counted.changes.add((sku, "created", None))
        f.settle(run, timeout=60)
        run.sampler = f.Sampler(db, database)
        return run

    yield make
    for run in runs:
        if run.sampler:
            run.sampler.stop()
        for proxy in (run.db_proxy, run.ses_proxy):
            if proxy:
                proxy.set()
        if any(
            p.poll() is None for p in [run.stack.nginx, *run.stack.uwsgi, *run.stack.workers_] if p
        ):
            run.stack.stop(timeout=30)
        for proxy in (run.db_proxy, run.ses_proxy):
            if proxy:
                proxy.close()
        reaper.stop(run.redis.process, timeout=10)
        run.db.drop_database(run.database)


def finish(run, scenario: str, requests, results, wait_sending=True, timeout=150) -> dict:
    """Drain, stop gracefully, count; the entry is kept for reliability-results.json."""
    run.drain_s = f.settle(run, wait_sending=wait_sending, timeout=timeout)
    run.sampler.stop()
    run.stopped = run.stack.stop(how="fifo")
    entry = f.tally(run, scenario, requests, counted_sending_as_unknown=not wait_sending)
    entry["drain_s"] = round(run.drain_s, 1)
    entry["stopped"] = run.stopped
    run.uwsgi_log = run.stack.uwsgi_log().read_text(errors="replace")
    entry["harakiri_lines"] = len(f.HARAKIRI.findall(run.uwsgi_log))
    worker_log = run.stack.worker_log()  # the worker's own, when not under uWSGI's
    logs = run.uwsgi_log + (worker_log.read_text(errors="replace") if worker_log.exists() else "")
    entry["log_lines"] = {k: logs.count(k) for k in LOG_LINES if k in logs}
    results.append(entry)
    return entry


def stopped_cleanly(run) -> None:
    assert set(run.stopped.values()) == {0}, run.stopped


def single(stack, method: str, path: str, token: str, body=None, kind=f.PUT, **extra) -> f.Req:
    """One request on a connection of its own, recorded like the load's."""
    began = time.monotonic()
    req = f.Req(began, began, kind, f.NO_ANSWER, extra.pop("sku", ""), **extra)
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(h.HOST, stack.port, timeout=40)
    try:
        conn.request(
            method, path, body=json.dumps(body) if body is not None else None, headers=headers
        )
        answer = conn.getresponse()
        raw, req.status = answer.read(), answer.status
        if req.status == 204:
            req.from_app = True
        elif "json" in (answer.getheader("Content-Type") or ""):
            with contextlib.suppress(ValueError):
                req.body, req.from_app = json.loads(raw), True
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
        req.end = time.monotonic()
    return req


def sending_now(run) -> set[int]:
    return {
        i
        for (i,) in run.db.query(
            run.database, "SELECT id FROM notifications WHERE status = 'sending'"
        )
    }


# ---------------------------------------------------------------- the scenarios


def test_sigkill_of_web_workers(serve, mode, fault_results):
    run = serve("kill_web")
    load = f.load(run.stack, run.skus, run.tokens).start(f.mixed(mode.clients))
    killed = []
    try:
        for _ in range(mode.web_kills):
            time.sleep(mode.web_kill_every)
            with run.sampler.fault():
                victim = random.choice(run.stack.workers())
                run.stack.kill(victim)
                killed.append(victim)
        time.sleep(3)
    finally:
        load.stop()
    entry = finish(run, "sigkill_web_worker", load.requests, fault_results)
    entry["kills"] = len(killed)
    f.check(entry)
    stopped_cleanly(run)
    assert run.uwsgi_log.count("DAMN ! worker") >= len(killed)


def test_sigkill_of_the_worker_daemon_while_sending(serve, mode, fault_results):
    extra = {"WORKER_BATCH": 1} if mode.name == "fast" else {}
    run = serve("kill_daemon", ses_proxy=True, **extra)
    editor = [f.Role(put=1.0, list=0.0, think=1.0)]
    readers = [f.Role(put=0.0, list=0.15)] * (mode.clients // 2)
    load = f.load(run.stack, run.skus, run.tokens).start(editor + readers)
    landed = []
    try:
        for _ in range(mode.daemon_kills):
            time.sleep(3)
            run.ses_proxy.set("pass", delay=1.5)  # SES takes ~3 s: the kill lands mid-send
            with run.sampler.fault():
                h.wait_until("an email being sent", lambda: sending_now(run), 30, 0.1)
                time.sleep(0.3)
                daemons = run.stack.daemons()
                assert daemons, "no worker daemon"
                in_send = sending_now(run)
                for pid in daemons:
                    run.stack.kill(pid)
                landed.append(len(in_send))
                run.ses_proxy.set()
                # What the orchestrator does with a worker container that exited.
                h.wait_until("the worker gone", lambda: not run.stack.daemons(), 30)
                for n in range(len(run.stack.workers_)):
                    run.stack.start_worker(n)
        time.sleep(4)
    finally:
        load.stop()
        run.ses_proxy.set()
    # fast: rows still `sending` when the drain ends are counted unknown (their lease is
    # ~50 s); full: the worker turns them unknown after the lease.
    entry = finish(
        run,
        "sigkill_worker_daemon_mid_send",
        load.requests,
        fault_results,
        wait_sending=mode.name == "full",
        timeout=180,
    )
    entry["kills"], entry["sending_at_kills"] = len(landed), landed
    f.check(entry)
    stopped_cleanly(run)
    assert all(landed), landed  # each kill landed mid-send
    assert entry["emails_unknown"] >= 1


def test_commit_acknowledgements_dropped(serve, mode, fault_results):
    run = serve("commit_drop", db_proxy=True)
    load = f.load(run.stack, run.skus, run.tokens).start(f.mixed(mode.clients, put=0.1))
    try:
        time.sleep(3)
        for n in range(mode.commit_windows):
            # only the answers to COMMIT lost, or every answer from MariaDB
            drop = "drop_commit_acks" if n % 2 == 0 else "drop_down"
            with run.sampler.fault(), run.db_proxy.fault(drop):
                time.sleep(2)
            # what a window caught answers (timeouts of 8 s, commit checks) before the next
            time.sleep(10)
    finally:
        load.stop()
    entry = finish(run, "commit_acks_dropped", load.requests, fault_results)
    entry["commit_answers_dropped"] = run.db_proxy.dropped
    entry["commits_through_proxy"] = run.db_proxy.commits
    entry["commits_checked"] = {
        outcome: run.uwsgi_log.count(f"the answer was lost {line}")
        for outcome, line in (("committed", "but the write committed"), ("not", "and the write"))
    }
    entry["slow_requests"] = sum(r.latency > 2 for r in load.requests)
    f.check(entry)
    stopped_cleanly(run)
    assert entry["status_counts"].get("503", 0) > 0  # the windows did hit requests


def test_ses_answering_after_20s(serve, mode, fault_results):
    run = serve("ses_slow", ses_proxy=True, WORKER_SENDERS=6, WORKER_BATCH=1)
    readers = [f.Role(put=0.0, list=0.15, think=0.05)] * (mode.clients // 2)
    load = f.load(run.stack, run.skus, run.tokens).start(readers)
    puts = []
    try:
        with run.sampler.fault():
            run.ses_proxy.set("pass", delay=10)  # 10 s each way: SES answers after 20 s
            for n in range(mode.slow_ses_puts):
                sku, price = run.skus[n], load.next_price()
                puts.append(
                    single(
                        run.stack,
                        "PUT",
                        f"/api/products/{sku}",
                        run.tokens[n % 3],
                        {"price": price},
                        sku=sku,
                        price=price,
                    )
                )

            def outcome_known():
                rows = run.db.query(
                    run.database,
                    f"SELECT COUNT(*) FROM {h.EMAILS} WHERE event = 'updated'"
                    " AND status IN ('pending', 'sending')",
                )
                return rows[0][0] == 0

            h.wait_until("the slow sends' outcomes", outcome_known, 40 + 20 * len(puts), 0.5)
            run.ses_proxy.set()
        time.sleep(2)
    finally:
        load.stop()
        run.ses_proxy.set()
    entry = finish(run, "ses_answers_after_20s", load.requests + puts, fault_results)
    f.check(entry)
    stopped_cleanly(run)
    assert [r.status for r in puts] == [200] * len(puts)
    updated = Counter(
        dict(
            run.db.query(
                run.database,
                f"SELECT status, COUNT(*) FROM {h.EMAILS} WHERE event = 'updated' GROUP BY status",
            )
        )
    )
    assert updated == {"unknown": len(puts) * len(ADMINS)}, updated
    # An unknown outcome is "SES took it at most once": a send the proxy still holds when
    # the sender gives up may reach SES seconds later, or not at all.
    unknown = {
        str(i)
        for (i,) in run.db.query(
            run.database, f"SELECT id FROM {h.EMAILS} WHERE status = 'unknown'"
        )
    }
    sent = {
        str(i)
        for (i,) in run.db.query(run.database, f"SELECT id FROM {h.EMAILS} WHERE status = 'sent'")
    }
    with contextlib.suppress(h.HarnessError):
        h.wait_until(
            "the held sends at SES",
            lambda: unknown <= set(run.moto.sends_per_notification()),
            25,
            0.5,
        )
    at_ses = run.moto.sends_per_notification()
    entry["unknown_at_ses"] = len(unknown & set(at_ses))
    assert len(sent) == entry["emails_sent"] and sent <= set(at_ses), entry
    assert set(at_ses) <= sent | unknown, entry
    assert set(at_ses.values()) == {1}, at_ses  # SES took none twice


def readers_with_tokens(run, clients: int) -> list[f.Role]:
    """Clients reading products while logged in (their views are registered ones)."""

    def reader(token: str):
        return lambda n: h.Request(
            "GET",
            f"/api/products/{run.skus[n % len(run.skus)]}",
            headers={"Authorization": f"Bearer {token}"},
        )

    return [f.Role(script=reader(run.tokens[n % len(run.tokens)])) for n in range(clients)]


def redis_fault(serve, mode, fault_results, name: str, fault, **options) -> dict:
    """Anonymous and logged-in readers and editing admins while ``fault(run)`` acts on
    Redis; every 200 read must have exactly one view, every change its emails once."""
    run = serve(name, **options)
    clients = mode.clients // 2
    load = f.load(run.stack, run.skus, run.tokens).start(
        f.mixed(clients) + readers_with_tokens(run, clients)
    )
    try:
        time.sleep(3)
        with run.sampler.fault():
            fault(run)
        time.sleep(5)
    finally:
        load.stop()
    entry = finish(run, name, load.requests, fault_results)
    f.check(entry)
    stopped_cleanly(run)
    assert entry["view_rows"] == entry["reads_200"], entry  # each read answered, none doubled
    return entry


def test_redis_frozen_20s(serve, mode, fault_results):
    def freeze(run):
        run.redis.freeze()
        try:
            time.sleep(20)
        finally:
            run.redis.thaw()

    entry = redis_fault(serve, mode, fault_results, "redis_frozen_20s", freeze)
    assert entry["status_counts"].get("200", 0) > 0


def test_redis_killed_and_restarted_with_the_recommended_persistence(serve, mode, fault_results):
    """docs/views.md's configuration (AOF, fsync every second): the stream's backlog at
    the kill survives the restart, and the views read meanwhile are written directly."""

    def kill_and_restart(run):
        run.redis.kill()
        time.sleep(2)
        run.redis.start()

    redis_fault(
        serve,
        mode,
        fault_results,
        "redis_killed_aof",
        kill_and_restart,
        redis_persistent=True,
    )


def test_graceful_reload_while_ses_takes_2s(serve, mode, fault_results):
    run = serve("reload", ses_proxy=True)
    run.ses_proxy.set("pass", delay=1.0)  # ~2 s a send
    editor = [f.Role(put=1.0, list=0.0, think=2.5)]
    readers = [f.Role(put=0.0, list=0.15)] * mode.clients
    load = f.load(run.stack, run.skus, run.tokens).start(editor + readers)
    try:
        for _ in range(mode.reloads):
            time.sleep(4)
            with run.sampler.fault():
                old = set(run.stack.workers())
                run.stack.reload()
                h.wait_until(
                    "new web workers", lambda old=old: not old & set(run.stack.workers()), 30, 0.2
                )
        time.sleep(4)
    finally:
        load.stop()
        run.ses_proxy.set()
    entry = finish(run, "graceful_reload_ses_2s", load.requests, fault_results)
    entry["reloads"] = mode.reloads
    f.check(entry)
    stopped_cleanly(run)
    assert set(entry["status_counts"]) <= {"200", "304"}, load.samples
    assert entry["max_latency_s"] < STALL_LIMIT, entry


def frozen(
    serve, private_mariadb, fault_results, clients: int, seconds: float, ses_delay: float = 0.0
) -> dict:
    db = private_mariadb()
    run = serve(f"frozen_{int(seconds)}", db=db, ses_proxy=bool(ses_delay))
    roles = f.mixed(clients)
    if ses_delay:
        # one editor (3 emails every 2 s, each taking ~2 s at SES): some are always being
        # sent, and the backlog drains once the database is back
        run.ses_proxy.set("pass", delay=ses_delay)
        roles = [f.Role(put=1.0, list=0.0, think=2.0), *f.mixed(clients - 1, put=0.0)]
    load = f.load(run.stack, run.skus, run.tokens).start(roles)
    try:
        time.sleep(4)
        with run.sampler.fault():
            db.freeze()
            try:
                time.sleep(seconds)
            finally:
                db.thaw()
        time.sleep(10)
    finally:
        db.thaw()
        load.stop()
    entry = finish(run, f"mariadb_frozen_{int(seconds)}s", load.requests, fault_results)
    f.check(entry)
    stopped_cleanly(run)
    wrong = Counter(
        r.status
        for r in load.requests
        if r.status not in (200, 304) and not (r.status == 503 and r.from_app)
    )
    assert not wrong, (wrong, load.samples)  # only JSON 503s, no hang, no lost answer
    assert entry["status_counts"].get("503", 0) > 0
    reads = [r.latency for r in load.requests if r.kind != f.PUT]
    writes = [r.latency for r in load.requests if r.kind == f.PUT] or [0.0]
    entry["max_read_latency_s"] = round(max(reads), 2)
    entry["max_write_latency_s"] = round(max(writes), 2)
    assert max(reads) < FROZEN_READ_LIMIT and max(writes) < FROZEN_WRITE_LIMIT, entry
    assert entry["harakiri_lines"] == 0 and "DAMN ! worker" not in run.uwsgi_log
    return entry


# As many clients as request threads (4 web processes x 2 threads): the latencies are the
# database timeouts'. More clients than threads also wait in uWSGI's queue meanwhile.
FROZEN_CLIENTS = 8


def test_mariadb_frozen_15s(serve, private_mariadb, fault_results):
    frozen(serve, private_mariadb, fault_results, FROZEN_CLIENTS, 15)


@pytest.mark.reliability
def test_mariadb_frozen_55s(serve, private_mariadb, fault_results):
    frozen(serve, private_mariadb, fault_results, FROZEN_CLIENTS, 55)


# A send's lease (app/notifications/outbox.py SEND_LEASE: 5 + 15 + 2 x 20 + 10 s), and more.
PAST_THE_SEND_LEASE = 80


@pytest.mark.reliability
def test_mariadb_frozen_past_the_send_lease_while_ses_takes_2s(
    serve, private_mariadb, fault_results
):
    """Sends under way when MariaDB freezes get SES's answer during the freeze and cannot
    record it: their senders keep it past the lease, and no email SES accepted is left
    unknown."""
    entry = frozen(
        serve, private_mariadb, fault_results, FROZEN_CLIENTS, PAST_THE_SEND_LEASE, ses_delay=1.0
    )
    assert entry["log_lines"].get("recording failed, retrying", 0) > 0, entry  # answers held
    assert entry["emails_unknown"] == 0, entry


def price_emails(moto, sku: str) -> dict[str, list[tuple[int, int, int]]]:
    """recipient -> [(notification id, old, new)] of the sku's price changes, in order."""
    found: dict[str, list] = {}
    for e in moto.emails():
        if (m := f.PRICE_SUBJECT.search(e.subject)) and m.group(1) == sku:
            found.setdefault(e.to, []).append(
                (int(e.headers[h.NOTIFICATION_HEADER]), f.number(m.group(2)), f.number(m.group(3)))
            )
    return {to: sorted(rows) for to, rows in found.items()}


def test_concurrent_price_changes(serve, mode, fault_results):
    run = serve("pairs", WEB_PROCESSES=2)
    sku, puts, prices = run.skus[0], [], iter(range(10_000, 10**6))
    path = f"/api/products/{sku}"
    for _ in range(mode.pairs):
        pair = [(admin, next(prices)) for admin in (0, 1)]
        puts += h.at_once(
            [
                lambda a=a, p=p: single(
                    run.stack, "PUT", path, run.tokens[a], {"price": p}, sku=sku, price=p, admin=a
                )
                for a, p in pair
            ]
        )
    entry = finish(run, "concurrent_price_pairs", puts, fault_results)
    stored = f.number(
        run.db.query(run.database, "SELECT price FROM products WHERE sku = %s", sku)[0][0]
    )
    chains = price_emails(run.moto, sku)
    breaks = 0
    for rows in chains.values():
        previous = START_PRICE
        for _id, old, new in rows:
            breaks += old != previous
            previous = new
        breaks += previous != stored
    wrong_body = [r for r in puts if r.status == 200 and f.number(r.body["price"]) != r.price]
    entry.update(pairs=mode.pairs, chain_breaks=breaks, bodies_with_other_price=len(wrong_body))
    f.check(entry)
    stopped_cleanly(run)
    assert [r.status for r in puts] == [200] * len(puts), Counter(r.status for r in puts)
    assert len(chains) == len(ADMINS) and all(len(c) == 2 * mode.pairs for c in chains.values())
    assert breaks == 0 and not wrong_body, entry


def test_concurrent_deletes(serve, mode, fault_results):
    run = serve("deletes")
    deletes, rounds = [], []
    for n in range(mode.delete_rounds):
        sku = run.skus[n]
        answers = h.at_once(
            [
                lambda k=k, sku=sku: single(
                    run.stack,
                    "DELETE",
                    f"/api/products/{sku}",
                    run.tokens[k % 3],
                    kind="delete",
                    sku=sku,
                )
                for k in range(20)
            ]
        )
        rounds.append(Counter(r.status for r in answers))
        deletes += answers
        run.counted.changes.add((sku, "deleted", None))
    entry = finish(run, "concurrent_deletes", deletes, fault_results)
    deleted = run.db.query(
        run.database, f"SELECT sku, COUNT(*) FROM {h.EMAILS} WHERE event = 'deleted' GROUP BY sku"
    )
    entry.update(rounds=[dict(r) for r in rounds], deleted_emails=dict(deleted))
    f.check(entry)
    stopped_cleanly(run)
    assert rounds == [{204: 1, 404: 19}] * mode.delete_rounds, rounds
    assert dict(deleted) == {run.skus[n]: len(ADMINS) for n in range(mode.delete_rounds)}


def test_max_connections_below_the_workers_need(serve, private_mariadb, mode, fault_results):
    db = private_mariadb()
    run = serve("max_conn", db=db)
    load = f.load(run.stack, run.skus, run.tokens).start(f.mixed(mode.clients, put=0.2))
    try:
        time.sleep(2)
        with run.sampler.fault(), db.connect() as conn, conn.cursor() as cur:
            # 4 web processes x 2 threads and the worker's threads need more than this
            cur.execute("SET GLOBAL max_connections = 4")
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST"
                " WHERE ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'"
            )
            for (thread,) in cur.fetchall():
                with contextlib.suppress(pymysql.MySQLError):  # already gone
                    cur.execute(f"KILL CONNECTION {int(thread)}")
            time.sleep(mode.max_conn_seconds)
            cur.execute("SET GLOBAL max_connections = 151")
        time.sleep(3)
    finally:
        load.stop()
    entry = finish(run, "max_connections_below_need", load.requests, fault_results)
    f.check(entry)
    stopped_cleanly(run)
    assert entry["status_counts"].get("503", 0) > 0 and entry["writes_5xx"] > 0, entry
