"""The fault runs' tools: a load of clients that records every answer, a sampler of the
emails being sent, and the row-by-row count of one scenario (its entry in
reliability-results.json) with the promises it is checked against.

The count, after the load has stopped and the worker has drained:

- reads_200: product reads answered 200 or 304; view_rows: rows in product_views once
  the views stream is fully applied. A read whose answer never reached the client (its
  worker was killed after the view was recorded) may have a view: such reads are
  ``reads_unanswered``, the only allowance (``view_rows - reads_200`` at most that).
- Every PUT carries a price of its own, so the notification rows (written in the change's
  transaction) tell which PUTs committed. ``writes_5xx_committed``: PUTs the app answered
  5xx (saying nothing was committed) that committed. A 503 that says the outcome is
  unknown (the database could not be asked) is ``writes_5xx_unconfirmed``, and whether it
  committed after all is ``writes_5xx_unconfirmed_committed``. PUTs that got no answer
  from the app at all (nginx's 502 for a killed worker, a client timeout) are
  ``writes_unanswered``; those that committed are changes like any other.
- emails_expected: committed changes x active admins; emails_sent: rows ``sent``
  (cross-checked with the notification ids SES recorded); emails_unknown: rows
  ``unknown`` (plus, where a scenario does not wait for the send lease, rows still
  ``sending``: an outcome not known yet); emails_duplicated: sends beyond the first per
  notification id at SES; emails_in_flight: rows seen ``sending`` during the faults.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pymysql
import redis

from tests.system import harness as h

GET, LIST, PUT = h.GET, h.LIST, h.PUT
VIEWS_STREAM, VIEWS_GROUP = "marketplace:views", "view-writers"
PRICE_SUBJECT = re.compile(r"Product (\S+) updated: price: (\S+) -> (\S+)$")
# What uWSGI logs when it kills a worker stuck past harakiri.
HARAKIRI = re.compile(r"HARAKIRI|harakiri", re.MULTILINE)


def fault_set(config) -> str:
    """``fast`` (``make smoke``: short runs) or ``full`` (``make reliability``): the
    FAULT_SET environment variable, else what the selected markers say."""
    chosen = os.environ.get("FAULT_SET")
    if chosen in ("fast", "full"):
        return chosen
    return "fast" if "not reliability" in (config.option.markexpr or "") else "full"


def number(value) -> int:
    return int(float(value))


# ---------------------------------------------------------------- load

# The harness's load; here a fifth of the product reads are conditional (If-None-Match).
Req, Role, NO_ANSWER = h.Req, h.Role, h.NO_ANSWER


def load(stack, skus: list[str], tokens: list[str]) -> h.Load:
    return h.Load(stack.port, skus, tokens, timeout=40, conditional=0.2)


def mixed(clients: int, put: float = 0.05) -> list[Role]:
    return [Role(put=put, list=0.15)] * clients


# ---------------------------------------------------------------- lost COMMIT answers


class CommitAckProxy(h.FaultProxy):
    """The fault proxy with one mode more, ``drop_commit_acks``: MariaDB's answers to a
    COMMIT (a COM_QUERY packet) are thrown away, everything else passes. The commit
    happens; the client cannot know."""

    COMMIT = re.compile(rb"\s*COMMIT\b", re.IGNORECASE)

    def __init__(self, target_port: int) -> None:
        self.committing: dict[object, bool] = {}  # client socket -> its last query: COMMIT
        self.dropped = self.commits = 0
        super().__init__(target_port)

    def _pump(self, src, dst, way: str) -> None:
        client = src if way == "up" else dst
        try:
            while chunk := src.recv(65536):
                with self.changed:
                    self.changed.wait_for(lambda: self.mode != "freeze")
                    mode, delay = self.mode, self.delay
                if delay:
                    time.sleep(delay)
                if way == "up":
                    # packet: 3 bytes length, 1 byte sequence, 0x03 (COM_QUERY), the SQL
                    self.committing[client] = chunk[4:5] == b"\x03" and bool(
                        self.COMMIT.match(chunk, 5)
                    )
                    drop = mode == "drop_up"
                    self.commits += self.committing[client]
                else:
                    acks = mode == "drop_commit_acks" and self.committing.get(client, False)
                    drop = mode == "drop_down" or acks
                    if acks:
                        with self.changed:
                            self.dropped += 1
                if not drop:
                    dst.sendall(chunk)
        except OSError:
            pass
        finally:
            self.committing.pop(client, None)
            for sock in (src, dst):
                self.connections.discard(sock)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


# ---------------------------------------------------------------- watching the emails


class Sampler:
    """Polls, straight from MariaDB (not through a fault proxy), which emails are being
    sent; ``in_flight()`` are those seen ``sending`` during a fault window."""

    def __init__(self, db: h.MariaDB, database: str, every: float = 0.2):
        self.db, self.database, self.every = db, database, every
        self.seen: list[tuple[float, set[int]]] = []
        self.windows: list[list[float]] = []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    @contextlib.contextmanager
    def fault(self):
        """A fault window: from now until the block ends, plus the time SES may take."""
        window = [time.monotonic(), float("inf")]
        self.windows.append(window)
        try:
            yield
        finally:
            window[1] = time.monotonic()

    def _poll(self) -> None:
        conn = None
        while not self.halt.wait(self.every):
            try:
                conn = conn or pymysql.connect(
                    host=h.HOST,
                    port=self.db.port,
                    user=self.db.user,
                    password=self.db.password,
                    database=self.database,
                    connect_timeout=1,
                    read_timeout=1,
                    write_timeout=1,
                    autocommit=True,
                )
                with conn.cursor() as cur:
                    cur.execute("SELECT id FROM notifications WHERE status = 'sending'")
                    ids = {row[0] for row in cur.fetchall()}
                self.seen.append((time.monotonic(), ids))
            except pymysql.MySQLError:
                with contextlib.suppress(Exception):
                    conn and conn.close()
                conn = None
        with contextlib.suppress(Exception):
            conn and conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(10)

    def in_flight(self, lead: float = 1.0, grace: float = 1.0) -> set[int]:
        found: set[int] = set()
        for at, ids in self.seen:
            if any(a - lead <= at <= b + grace for a, b in self.windows):
                found |= ids
        return found


# ---------------------------------------------------------------- draining


def views_drained(redis_url: str) -> bool:
    conn = redis.Redis.from_url(redis_url, socket_timeout=2, decode_responses=True)
    try:
        if not conn.exists(VIEWS_STREAM):
            return True
        groups = {g["name"]: g for g in conn.xinfo_groups(VIEWS_STREAM)}
        group = groups.get(VIEWS_GROUP)
        return bool(group) and group["pending"] == 0 and group.get("lag") == 0
    except redis.RedisError:
        return False
    finally:
        conn.close()


def emails_settled(db: h.MariaDB, database: str, wait_sending: bool) -> bool:
    statuses = h.notification_statuses(db, database)
    return statuses.get("pending", 0) == 0 and (not wait_sending or not statuses.get("sending"))


def settle(run, wait_sending: bool = True, timeout: float = 120) -> float:
    """Wait until the views stream is applied and the emails are sent (or their outcome
    is known); return how long that took."""
    began = time.monotonic()
    h.wait_until("the views stream applied", lambda: views_drained(run.redis.url), timeout, 0.5)
    h.wait_until(
        "every email sent or its outcome known",
        lambda: emails_settled(run.db, run.database, wait_sending),
        max(5.0, timeout - (time.monotonic() - began)),
        0.5,
    )
    return time.monotonic() - began


# ---------------------------------------------------------------- the count


@dataclass
class Counted:
    """Changes made outside the load (setup, concurrent rounds): (sku, event, price)."""

    changes: set[tuple[str, str, int | None]] = field(default_factory=set)


def tally(run, scenario: str, requests: list[Req], counted_sending_as_unknown: bool) -> dict:
    db, database = run.db, run.database
    reads = [r for r in requests if r.kind == GET]
    reads_ok = sum(r.status in (200, 304) for r in reads)
    reads_unanswered = sum(not r.from_app for r in reads)
    view_rows = db.query(database, "SELECT COUNT(*) FROM product_views")[0][0]

    rows = db.query(database, f"SELECT id, recipient, sku, event, changes, status FROM {h.EMAILS}")
    admins = [
        a
        for (a,) in db.query(
            database, "SELECT email FROM users WHERE rol = 1 AND deleted_at IS NULL ORDER BY id"
        )
    ]
    got: Counter = Counter()
    by_status: dict[str, set[int]] = {}
    row_changes = set()
    for row_id, recipient, sku, event, changes, status in rows:
        changes = json.loads(changes) if isinstance(changes, str) else changes
        price = number(changes["price"]["new"]) if event == "updated" else None
        got[(recipient, sku, event, price)] += 1
        by_status.setdefault(status, set()).add(row_id)
        if event == "updated":
            row_changes.add((sku, price))
    puts = [r for r in requests if r.kind == PUT]
    confirmed = {(r.sku, r.price) for r in puts if r.status == 200}
    app_5xx = [r for r in puts if r.from_app and r.status >= 500]
    unconfirmed = [r for r in app_5xx if "may or may not" in json.dumps(r.body)]
    unanswered = [r for r in puts if not r.from_app]
    refused = [r for r in puts if r.from_app and 400 <= r.status < 500]
    committed = confirmed | row_changes
    changes = {(s, "updated", p) for s, p in committed} | run.counted.changes
    wanted = Counter({(a, s, e, p): 1 for a in admins for s, e, p in changes})

    at_ses = run.moto.sends_per_notification()
    ses_ids = {int(i) for i in at_ses}
    sent, unknown = by_status.get("sent", set()), by_status.get("unknown", set())
    sending = by_status.get("sending", set())
    in_flight = run.sampler.in_flight() if run.sampler else set()
    unknown_ids = unknown | (sending if counted_sending_as_unknown else set())
    latencies = sorted(r.latency for r in requests) or [0.0]
    return {
        "scenario": scenario,
        "requests": len(requests),
        "status_counts": {
            str(s): c for s, c in sorted(Counter(r.status for r in requests).items())
        },
        "reads_200": reads_ok,
        "view_rows": view_rows,
        "reads_unanswered": reads_unanswered,
        "emails_expected": sum(wanted.values()),
        "emails_sent": len(sent),
        "emails_duplicated": sum(c - 1 for c in at_ses.values() if c > 1),
        "emails_unknown": len(unknown_ids),
        "emails_in_flight": len(in_flight),
        # 5xx answers that said "not committed" (all but the unconfirmed ones) yet had
        "writes_5xx_committed": sum(
            (r.sku, r.price) in row_changes for r in app_5xx if r not in unconfirmed
        ),
        "writes_5xx": len(app_5xx),
        # 503s that say the outcome is unknown (the commit could not be checked)
        "writes_5xx_unconfirmed": len(unconfirmed),
        "writes_5xx_unconfirmed_committed": sum(
            (r.sku, r.price) in row_changes for r in unconfirmed
        ),
        "writes_unanswered": len(unanswered),
        "writes_unanswered_committed": sum((r.sku, r.price) in row_changes for r in unanswered),
        "writes_refused_committed": sum((r.sku, r.price) in row_changes for r in refused),
        "changes_committed": len(changes),
        "notification_statuses": {s: len(ids) for s, ids in sorted(by_status.items())},
        "emails_missing": [list(k) for k in (wanted - got).elements()][:5],
        "emails_unwanted": [list(k) for k in (got - wanted).elements()][:5],
        "sent_not_at_ses": sorted(sent - ses_ids)[:5],
        "at_ses_not_sent_or_unknown": sorted(ses_ids - sent - unknown_ids)[:5],
        "unknown_not_in_flight": sorted(unknown_ids - in_flight)[:5] if run.sampler else [],
        "max_latency_s": round(latencies[-1], 2),
        "p99_latency_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
    }


def check(entry: dict) -> None:
    """The promises, row by row."""
    e = entry
    assert e["reads_200"] <= e["view_rows"] <= e["reads_200"] + e["reads_unanswered"], e
    assert e["emails_duplicated"] == 0, e
    assert e["emails_sent"] + e["emails_unknown"] == e["emails_expected"], e
    assert e["emails_missing"] == [] and e["emails_unwanted"] == [], e
    assert e["sent_not_at_ses"] == [] and e["at_ses_not_sent_or_unknown"] == [], e
    assert e["emails_unknown"] <= e["emails_in_flight"], e
    assert e["unknown_not_in_flight"] == [], e
    assert e["writes_5xx_committed"] == 0 and e["writes_refused_committed"] == 0, e
