"""Reliability of the deployment under load and under faults: Debian's nginx and uWSGI
with the real nginx.conf and app.ini, on MariaDB, with moto's server standing in for SES.

    .venv/bin/python deploy/reliability.py [--load-seconds 60] [--clients 50] [--keep]
        [--only load|mariadb|ses ...] [--source TREE]

(`make reliability`, about 4.5 to 5.5 minutes on 2 cores). NOT RUN BY CI (.ci/run does
not call it): it stops this machine's MariaDB (`mysqladmin shutdown`) for ten seconds and
starts it again the way .ci/run does (start-stop-daemon), which would pull the database
from under anything else using it.
Whatever happens (an error, Ctrl-C, SIGTERM), MariaDB is started again before the exit.
Needs root and MariaDB on 127.0.0.1:3306 (root, no password), like deploy/smoke.py, whose
helpers it imports: the same staged app copy and Debian-Python virtualenv, the same
nginx.conf edits (listen address, pid file, socket), moto's server, and the process
bookkeeping that checks nothing is left running.

Three runs, each on a fresh database with a fresh uWSGI (app.ini as it is: 4 workers of
one thread, the attached notification worker) behind a fresh nginx, each ended by a
graceful stop (nginx SIGQUIT, then `q` into uWSGI's master FIFO) before anything is
counted. The load comes from this script in separate processes (`--client`), threads with
kept-alive http.client connections through nginx, each request timed and counted; a
request that gets no answer within 10 s is counted as a timeout, not waited for.

1. Load: 50 clients for 60 s over 50 products: 80% GET /api/products/<sku>, 15% the list
   (pages 1-3), 5% PUT price changes by one of 3 admins. No answer other than 200; after
   the stop, one view row per 200 read of each product, exactly; every change (and every
   creation) emailed once to each admin (moto's /moto-api/data.json), every notification
   row 'sent' within 60 s of the load's end. Requests per second and p50/p99 latency as
   the client measured them (the client shares the machine's cores with the service).
2. MariaDB down: the same load; after 10 s MariaDB is shut down, stays down 10 s, and is
   started again. Every answer is 200 or a JSON 503 ("code": 503, Retry-After), none hangs
   (no timeout), none is another 5xx and none is cut off after its headers (nginx's
   "upstream prematurely closed connection"); after MariaDB is back the service answers 200
   again within 15 s without any restart; the views buffered through the outage reach
   the database (before the stop, by the flusher, and exactly after it); the outbox is
   empty within 60 s of the load's end, and every PUT that got 200 has its emails, exactly
   once. A PUT answered 503 may still have committed (its COMMIT reached the server, the
   answer did not come back): such a change must then be emailed exactly once like any
   other, and is reported as an unconfirmed commit.
3. SES failing: with NOTIFY_RETRY_BASE_SECONDS=2, the 3 admins keep editing (a PUT each
   every 0.5 s, beside 5 readers) while moto rejects every send for 60 s (the sender
   identity deleted: MessageRejected); the outbox holds (rows pending, each finished
   attempt with its last_error, none failed for good, no email through), and once the
   identity is verified again every email arrives, exactly once, within 90 s.

--only runs some of the three; --source takes the app, app.ini and nginx.conf from
another tree (a patched copy, say) instead of this one.

Prints a PASS/FAIL line per check and a results table; writes bench/results/
reliability.json; exit status 1 if any promise is broken.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import boto3
from smoke import (
    ADMINS,
    EMAIL_SOURCE,
    NGINX,
    PR_SET_CHILD_SUBREAPER,
    ROOT,
    SYSTEM_PATH,
    UWSGI,
    Client,
    Database,
    Failed,
    Processes,
    Smoke,
    cmdline,
    free_port,
    log,
    tail,
    wait_until,
)

RESULTS = ROOT / "bench" / "results" / "reliability.json"
HOST = "127.0.0.1"
THIRD_ADMIN = ("third.admin@marketplace.test", "third-admin-password")
ALL_ADMINS = (*ADMINS, THIRD_ADMIN)
PRODUCTS = 50
CLIENT_TIMEOUT = 10.0  # seconds without an answer: counted as a timeout
RECOVERY_LIMIT = 15.0  # seconds after MariaDB answers again, by which requests must succeed
MAX_REQUESTS_PER_THREAD = 90_000  # a bound on every client loop, whatever the speed
DRAIN_LIMIT = 60.0  # seconds for the outbox to empty after a load (it takes about one)
# After 60 s of rejections with NOTIFY_RETRY_BASE_SECONDS=2 (retries 2, 4, 8, 16, 32 s
# apart) a row waits at most about 32 s for its next try once SES is back.
SES_DRAIN_LIMIT = 90.0

MARIADBD = "/usr/sbin/mariadbd"
MYSQLADMIN = ["mysqladmin", "--protocol=tcp", "--host=127.0.0.1", "--port=3306", "--user=root"]
START_MARIADB = [
    "start-stop-daemon",
    "--start",
    "--oknodo",
    "--background",
    "--exec",
    MARIADBD,
    "--",
    "--user=mysql",
]

# What a client records per request.
GET, LIST, PUT = 0, 1, 2
KIND_NAMES = ("GET /api/products/<sku>", "GET /api/products (list)", "PUT /api/products/<sku>")
TIMEOUT, CONNECTION_ERROR = 0, -1  # the status recorded when there was no HTTP answer


# ================================================================ the load client
# Runs in its own processes (`reliability.py --client`): one JSON spec on stdin, "ready"
# on stdout, then "go" on stdin; "stop" (or EOF) on stdin ends it; the results are one
# JSON document on stdout.


def client_main() -> int:
    spec = json.loads(sys.stdin.readline())
    halt = threading.Event()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    deadline = time.monotonic() + spec["max_seconds"]

    def watch_stdin() -> None:
        sys.stdin.readline()  # "stop", or EOF when the parent went away
        halt.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    lock = threading.Lock()
    records: list[list] = []
    samples: dict[str, str] = {}
    threads = [
        threading.Thread(
            target=client_thread,
            args=(spec, n, role, halt, deadline, records, samples, lock),
            daemon=True,
        )
        for n, role in enumerate(spec["threads"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(spec["max_seconds"] + 2 * CLIENT_TIMEOUT + 30)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    json.dump(
        {
            "records": records,
            "samples": samples,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "threads_alive": sum(t.is_alive() for t in threads),
        },
        sys.stdout,
    )
    sys.stdout.flush()
    return 0


def client_thread(spec, n, role, halt, deadline, records, samples, lock) -> None:
    import http.client  # only the client processes need it

    rng = random.Random(spec["seed"] * 1000 + n)
    skus, tokens = spec["skus"], spec["tokens"]
    price_base = spec["price_base"] + n * 100_000  # unique across threads and processes
    mine: list[list] = []
    conn = None
    changes = 0
    try:
        while (
            len(mine) < MAX_REQUESTS_PER_THREAD
            and not halt.is_set()
            and time.monotonic() < deadline
        ):
            if conn is None:
                conn = http.client.HTTPConnection(HOST, spec["port"], timeout=CLIENT_TIMEOUT)
            sku_index = rng.randrange(len(skus))
            draw = rng.random()
            price, body, headers = 0, None, {}
            if draw < role["put"]:
                kind, method = PUT, "PUT"
                changes += 1
                price = price_base + changes
                path = f"/api/products/{skus[sku_index]}"
                token = tokens[
                    role["admin"] if role.get("admin") is not None else rng.randrange(len(tokens))
                ]
                body = json.dumps({"price": price})
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            elif draw < role["put"] + role["list"]:
                kind, method = LIST, "GET"
                path = f"/api/products?page={rng.randint(1, 3)}&page_size=20"
            else:
                kind, method = GET, "GET"
                path = f"/api/products/{skus[sku_index]}"
            began_at = time.monotonic()
            began = time.perf_counter()
            good_503 = 0
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                status = response.status
                if response.will_close:
                    conn.close()
                    conn = None
            except TimeoutError:
                status, raw = TIMEOUT, b""
                conn.close()
                conn = None
            except (OSError, http.client.HTTPException) as exc:
                status, raw = CONNECTION_ERROR, f"{type(exc).__name__}: {exc}".encode()
                conn.close()
                conn = None
            elapsed = time.perf_counter() - began
            if status == 503:
                try:
                    good_503 = int(
                        json.loads(raw).get("code") == 503
                        and response.getheader("Retry-After") is not None
                    )
                except ValueError:
                    good_503 = 0
            if status != 200 and (status != 503 or not good_503):
                key = f"{KIND_NAMES[kind]} -> {status}"
                with lock:
                    samples.setdefault(key, raw[:600].decode(errors="replace"))
            mine.append([began_at, elapsed, kind, status, sku_index, price, good_503])
            if role["think"]:
                time.sleep(max(0.0, min(role["think"], deadline - time.monotonic())))
    finally:
        if conn is not None:
            conn.close()
        with lock:
            records.extend(mine)


@dataclass
class Req:
    start: float
    latency: float
    kind: int
    status: int
    sku: int
    price: int
    good_503: bool

    @property
    def end(self) -> float:
        return self.start + self.latency


@dataclass
class LoadRun:
    requests: list[Req]
    samples: dict[str, str]
    client_cpu: float
    clients: int
    processes: int
    started: float = 0.0
    timeline: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        if not self.requests:
            return 0.0
        return max(r.end for r in self.requests) - min(r.start for r in self.requests)

    @property
    def rps(self) -> float:
        return len(self.requests) / self.seconds if self.seconds else 0.0

    def statuses(self, kind: int | None = None) -> Counter:
        return Counter(r.status for r in self.requests if kind is None or r.kind == kind)

    def latency_ms(self, pct: float, kind: int | None = None) -> float:
        values = sorted(r.latency for r in self.requests if kind is None or r.kind == kind)
        if not values:
            return 0.0
        return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))] * 1000

    def reads(self, skus: list[str]) -> Counter:
        return Counter(skus[r.sku] for r in self.requests if r.kind == GET and r.status == 200)

    def changes(self, skus: list[str], confirmed: bool) -> set[tuple[str, int]]:
        """PUTs answered 200 (confirmed), or left without a clear answer (unconfirmed: a
        5xx, an answer cut off, none at all), which may or may not have committed."""
        return {
            (skus[r.sku], r.price)
            for r in self.requests
            if r.kind == PUT
            and (r.status == 200 if confirmed else (r.status >= 500 or r.status <= 0))
        }


# ================================================================ MariaDB control


def mariadb_pids() -> list[int]:
    return [pid for pid in Processes.table() if cmdline(pid).startswith(MARIADBD)]


def mariadb_alive() -> bool:
    try:
        done = subprocess.run(
            [*MYSQLADMIN, "--connect-timeout=2", "ping", "--silent"],
            capture_output=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def stop_mariadb() -> None:
    log("  stopping MariaDB (mysqladmin shutdown)")
    pids = mariadb_pids()
    done = subprocess.run(
        [*MYSQLADMIN, "shutdown"], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise Failed(f"mysqladmin shutdown failed: {done.stdout}{done.stderr}")
    wait_until(
        "mariadbd to exit",
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids) and not mariadb_alive(),
        60,
    )


def start_mariadb() -> None:
    """Start MariaDB as .ci/run does; it must not become a child of this run (a subreaper,
    which kills what is left below it at the end): the flag is off while it detaches."""
    log("  starting MariaDB (start-stop-daemon)")
    run_dir = Path("/run/mysqld")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "mysql", "mysql")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    try:
        # start-stop-daemon --background returns once the daemon has detached.
        done = subprocess.run(START_MARIADB, capture_output=True, text=True, timeout=30)
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if done.returncode != 0:
        raise Failed(f"start-stop-daemon failed ({done.returncode}): {done.stderr}")
    wait_until("MariaDB to answer ping", mariadb_alive, 90, every=0.25)


def ensure_mariadb() -> None:
    """Never leave MariaDB stopped."""
    if mariadb_alive():
        return
    for pid in mariadb_pids():  # a mariadbd still shutting down: let it finish
        with suppress(Failed):
            wait_until(
                "the old mariadbd to exit", lambda p=pid: not Path(f"/proc/{p}").exists(), 60
            )
    start_mariadb()


class RunProcesses(Processes):
    """smoke's bookkeeping, blind to mariadbd should it ever land below this run: it is
    the machine's database, never ours to kill."""

    def descendants(self, of: int | None = None) -> list[int]:
        return [p for p in super().descendants(of) if not cmdline(p).startswith(MARIADBD)]


# ================================================================ the stack


@dataclass
class Stack:
    name: str
    database: Database
    env: dict
    run: Path
    uwsgi: subprocess.Popen
    port: int
    nginx: subprocess.Popen | None = None
    tokens: list[str] = field(default_factory=list)
    skus: list[str] = field(default_factory=list)

    @property
    def uwsgi_log(self) -> Path:
        return self.run.parent / f"uwsgi-{self.name}.log"


class Reliability(Smoke):
    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.processes = RunProcesses()
        self.figures: dict[str, dict] = {}

    def new_database(self, suffix: str) -> Database:
        database = Database(f"marketplace_rel_{self.run_id}_{suffix}")
        self.databases.append(database)
        return database

    # ---------------------------------------------------------------- up and down

    def start_stack(self, name: str, **extra: str) -> Stack:
        assert self.moto is not None
        self.moto.reset()
        database = self.new_database(name)
        run = self.runtime_dir(f"run-{name}")
        env = self.env(
            database, WEB_SOCKET=str(run / "uwsgi.sock"), WEB_FIFO=str(run / "uwsgi.fifo"), **extra
        )
        done = self.flask(env, "deploy", "upgrade", timeout=180)
        self.require(
            f"{name}: flask deploy upgrade", done.returncode == 0, done.stdout + done.stderr
        )
        for email, password in ALL_ADMINS[1:]:
            done = self.flask(
                env, "users", "create-admin", "--email", email, "--password", password
            )
            self.require(f"{name}: create-admin {email}", done.returncode == 0, done.stderr)
        uwsgi = self.processes.start(
            [UWSGI, "--ini", str(self.source / "app.ini")], self.workdir / f"uwsgi-{name}.log", env
        )
        stack = Stack(name, database, env, run, uwsgi, free_port())
        try:
            wait_until("uWSGI's socket", lambda: self.socket_ready(uwsgi, run), 90)
            conf = self.nginx_conf(f"nginx-{name}", stack.port, [run / "uwsgi.sock"], False)
            stack.nginx = self.processes.start(
                [NGINX, "-c", str(conf), "-g", "daemon off;"],
                self.workdir / f"nginx-{name}.log",
                {"PATH": SYSTEM_PATH},
            )
            client = Client(stack.port)
            wait_until("/healthz through nginx", lambda: self.healthy(client, stack.nginx), 30)
            stack.tokens = [client.login(email, password) for email, password in ALL_ADMINS]
            for n in range(PRODUCTS):
                sku = f"{name}-{self.run_id}-{n:02d}"
                product = {
                    "sku": sku,
                    "name": f"item {n}",
                    "price": 100,
                    "mark": "m",
                    "quantity": 1,
                }
                status, body = client.request("POST", "/api/products", product, stack.tokens[0])
                if status != 201:
                    self.require(f"{name}: create {sku}", False, f"{status} {body}")
                stack.skus.append(sku)
        except BaseException:
            self.stop_stack(stack)
            raise
        log(
            f"  {name}: nginx on 127.0.0.1:{stack.port} -> uWSGI (app.ini), database"
            f" {database.name}, {len(ALL_ADMINS)} admins, {PRODUCTS} products"
        )
        return stack

    def stop_stack(self, stack: Stack) -> None:
        """nginx SIGQUIT, then `q` into uWSGI's master FIFO (smoke's checks of both)."""
        self.stop_scale_out(stack.nginx, [(stack.name, stack.uwsgi, stack.run)])
        left = self.left_running()
        self.check(f"{stack.name}: nothing left running after the graceful stop", not left, left)

    # ---------------------------------------------------------------- the load

    def run_clients(
        self,
        stack: Stack,
        roles: list[list[dict]],
        max_seconds: float,
        during: Callable[[float], None],
    ) -> LoadRun:
        """Start one client process per item of ``roles`` (a list of thread roles), start
        them together, run ``during(t0)`` (it returns when the load should stop), stop."""
        err = open(self.workdir / f"clients-{stack.name}.log", "ab")  # noqa: SIM115
        procs: list[subprocess.Popen] = []
        try:
            for index, threads in enumerate(roles):
                proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--client"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
                procs.append(proc)
                spec = {
                    "port": stack.port,
                    "skus": stack.skus,
                    "tokens": stack.tokens,
                    "threads": threads,
                    "seed": index + 1,
                    "price_base": 1_000_000 + index * 10_000_000,
                    "max_seconds": max_seconds,
                }
                proc.stdin.write(json.dumps(spec) + "\n")
                proc.stdin.flush()
            for proc in procs:
                ready, _, _ = select.select([proc.stdout], [], [], 60)
                if not ready or proc.stdout.readline().strip() != "ready":
                    raise Failed("a load client did not start")
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            started = time.monotonic()
            try:
                during(started)
            finally:
                for proc in procs:
                    with suppress(OSError):
                        proc.stdin.write("stop\n")
                        proc.stdin.flush()
            outputs = []
            for proc in procs:
                out, _ = proc.communicate(timeout=2 * CLIENT_TIMEOUT + 60)
                if proc.returncode != 0:
                    raise Failed(f"a load client failed ({proc.returncode}); see {err.name}")
                outputs.append(json.loads(out))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            err.close()
        requests = [Req(*r[:6], bool(r[6])) for o in outputs for r in o["records"]]
        requests.sort(key=lambda r: r.start)
        samples: dict[str, str] = {}
        for o in outputs:
            samples.update(o["samples"])
        self.check(
            f"{stack.name}: every client thread finished",
            not any(o["threads_alive"] for o in outputs),
        )
        return LoadRun(
            requests,
            samples,
            sum(o["cpu_seconds"] for o in outputs),
            sum(len(t) for t in roles),
            len(roles),
            started,
        )

    def mixed_roles(self) -> list[list[dict]]:
        """args.clients threads over args.client_processes processes: 80/15/5."""
        role = {"put": 0.05, "list": 0.15, "think": 0.0, "admin": None}
        n, p = self.args.clients, self.args.client_processes
        return [[role] * (n // p + (i < n % p)) for i in range(p)]

    # ---------------------------------------------------------------- counting

    def notification_rows(self, stack: Stack) -> list[tuple]:
        return stack.database.query(
            "SELECT recipient, sku, event, changes, status, attempts, last_error FROM notifications"
        )

    def outbox_state(self, stack: Stack) -> Counter:
        return Counter(
            dict(stack.database.query("SELECT status, COUNT(*) FROM notifications GROUP BY status"))
        )

    def wait_outbox_drained(self, stack: Stack, timeout: float) -> float | None:
        """Seconds until every notification is sent and moto has as many emails, or None."""
        started = time.monotonic()

        def drained() -> bool:
            state = self.outbox_state(stack)
            total = sum(state.values())
            return state["sent"] == total and len(self.moto.messages()) >= total

        try:
            wait_until("every notification sent", drained, timeout, every=1.0)
        except Failed:
            return None
        return time.monotonic() - started

    def view_counts(self, stack: Stack) -> Counter:
        return Counter(
            dict(
                stack.database.query(
                    "SELECT p.sku, COUNT(*) FROM product_views v"
                    " JOIN products p ON p.id = v.product_id GROUP BY p.sku"
                )
            )
        )

    def verify_counts(self, stack: Stack, load: LoadRun, figures: dict) -> None:
        """After the graceful stop: views, notification rows and emails, exactly."""
        name = stack.name
        reads = load.reads(stack.skus)
        views = self.view_counts(stack)
        timeouts_by_sku = Counter(
            stack.skus[r.sku] for r in load.requests if r.kind == GET and r.status <= 0
        )
        missing_views = sum((reads - views).values())
        extra_views = sum((views - reads).values())
        figures.update(
            reads_200=sum(reads.values()),
            view_rows=sum(views.values()),
            views_lost=missing_views,
            views_extra=extra_views,
        )
        self.check(
            f"{name}: one view row per 200 read, per product ({sum(reads.values())} reads,"
            f" {sum(views.values())} rows)",
            views == reads,
            f"missing {dict((reads - views).most_common(5))}, extra"
            f" {dict((views - reads).most_common(5))}, reads without an answer"
            f" {dict(timeouts_by_sku)}",
        )

        admins = [email for email, _ in ALL_ADMINS]
        confirmed = load.changes(stack.skus, confirmed=True)
        unconfirmed = load.changes(stack.skus, confirmed=False)
        rows = self.notification_rows(stack)
        statuses = Counter(row[4] for row in rows)
        in_db: Counter = Counter()
        for recipient, sku, event, changes, _status, _attempts, _error in rows:
            data = json.loads(changes) if isinstance(changes, str) else changes
            new = data.get("price", {}).get("new") if event == "updated" else None
            in_db[(recipient, sku, event, new)] += 1
        created = Counter({(a, s, "created", None): 1 for a in admins for s in stack.skus})
        wanted = created + Counter({(a, s, "updated", p): 1 for a in admins for s, p in confirmed})
        db_changes = {(s, p) for (_a, s, e, p) in in_db if e == "updated"}
        unconfirmed_commits = db_changes & unconfirmed
        phantom = db_changes - confirmed - unconfirmed
        lost_rows = wanted - in_db
        figures.update(
            changes_200=len(confirmed),
            puts_unanswered_or_503=len(unconfirmed),
            unconfirmed_commits=len(unconfirmed_commits),
            admins=len(admins),
            notification_rows=len(rows),
            notification_statuses=dict(statuses),
        )
        self.check(
            f"{name}: every change answered 200 has one notification row per admin"
            f" ({len(confirmed)} changes x {len(admins)} admins, + {PRODUCTS} creations)",
            not lost_rows,
            f"missing {list(lost_rows.elements())[:5]}",
        )
        self.check(
            f"{name}: no notification row twice, none for a change nobody asked for",
            all(c == 1 for c in in_db.values()) and not phantom,
            f"twice {[k for k, c in in_db.items() if c > 1][:5]}, phantom {sorted(phantom)[:5]}",
        )
        if unconfirmed_commits:
            log(
                f"  note: {len(unconfirmed_commits)} PUT(s) without a clear answer (503, cut off"
                " or none) had committed; emailed like the rest"
            )
        self.check(f"{name}: every notification row 'sent'", set(statuses) == {"sent"}, statuses)

        messages = self.moto.messages()
        pattern = re.compile(r"Product (\S+) (created|updated): (.*)$")
        price = re.compile(r"^price: \S+ -> (\S+)$")
        got: Counter = Counter()
        unparsed = []
        for m in messages:
            match = pattern.search(m["subject"])
            if not match:
                unparsed.append(m["subject"])
                continue
            sku, event, detail = match.groups()
            new = None
            if event == "updated":
                found = price.match(detail)
                new = int(found.group(1)) if found and found.group(1).isdigit() else detail
            got[(m["to"], sku, event, new)] += 1
        exact = Counter((m["to"], m["subject"], m["body"]) for m in messages)
        duplicates = [k for k, c in exact.items() if c > 1]
        figures.update(
            emails=len(messages),
            emails_expected=sum(in_db.values()),
            emails_duplicate=sum(c - 1 for c in exact.values() if c > 1),
            emails_lost=sum((in_db - got).values()),
        )
        self.check(
            f"{name}: SES got each notification exactly once: ({PRODUCTS} creations +"
            f" {len(confirmed)} changes"
            + (f" + {len(unconfirmed_commits)} unconfirmed" if unconfirmed_commits else "")
            + f") x {len(admins)} admins = {len(messages)} emails",
            got == in_db and not duplicates and not unparsed,
            f"missing {list((in_db - got).elements())[:5]}, extra"
            f" {list((got - in_db).elements())[:5]}, duplicates {duplicates[:3]},"
            f" unparsed {unparsed[:3]}",
        )
        figures["lost"] = figures["views_lost"] + figures["emails_lost"] + sum(lost_rows.values())

    def load_figures(self, load: LoadRun) -> dict:
        statuses = load.statuses()
        return {
            "clients": load.clients,
            "client_processes": load.processes,
            "seconds": round(load.seconds, 1),
            "requests": len(load.requests),
            "rps": round(load.rps, 1),
            "p50_ms": round(load.latency_ms(50), 1),
            "p99_ms": round(load.latency_ms(99), 1),
            "max_ms": round(load.latency_ms(100), 1),
            "by_kind": {
                KIND_NAMES[k]: {
                    "requests": sum(load.statuses(k).values()),
                    "p50_ms": round(load.latency_ms(50, k), 1),
                    "p99_ms": round(load.latency_ms(99, k), 1),
                }
                for k in (GET, LIST, PUT)
            },
            "statuses": {str(s): c for s, c in sorted(statuses.items())},
            "timeouts": statuses[TIMEOUT],
            "connection_errors": statuses[CONNECTION_ERROR],
            "client_cpu_seconds": round(load.client_cpu, 1),
            "samples": load.samples,
        }

    # ---------------------------------------------------------------- 1. load

    def load_test(self) -> None:
        seconds = self.args.load_seconds
        log(
            f"\n== 1. Load: {self.args.clients} clients for {seconds:.0f}s"
            " (80% product, 15% list, 5% PUT)"
        )
        stack = self.start_stack("load")
        figures: dict = {}
        self.figures["load"] = figures
        try:
            load = self.run_clients(
                stack, self.mixed_roles(), seconds + 30, lambda t0: sleep_until(t0 + seconds)
            )
            figures.update(self.load_figures(load))
            statuses = load.statuses()
            self.check(
                f"load: {len(load.requests)} requests in {load.seconds:.1f}s, every one 200"
                f" ({load.rps:.0f}/s, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms)",
                set(statuses) == {200},
                f"{dict(statuses)}; samples {load.samples}",
            )
            drained = self.wait_outbox_drained(stack, DRAIN_LIMIT)
            figures["outbox_drained_after_s"] = drained and round(drained, 1)
            self.check(
                f"load: the outbox drained within {DRAIN_LIMIT:.0f}s of the load's end",
                drained is not None,
                self.outbox_state(stack),
            )
        finally:
            self.stop_stack(stack)
        self.verify_counts(stack, load, figures)

    # ---------------------------------------------------------------- 2. MariaDB down

    def mariadb_outage(self) -> None:
        outage = self.args.outage_seconds
        log(f"\n== 2. MariaDB down for {outage:.0f}s under the same load")
        stack = self.start_stack("dbdown")
        figures: dict = {}
        self.figures["mariadb_outage"] = figures
        timeline: dict[str, float] = {}

        def during(t0: float) -> None:
            try:
                sleep_until(t0 + 10)
                timeline["shutdown_command"] = time.monotonic()
                stop_mariadb()
                timeline["down"] = time.monotonic()
                sleep_until(timeline["down"] + outage)
                timeline["start_command"] = time.monotonic()
                start_mariadb()
                timeline["up"] = time.monotonic()
                sleep_until(timeline["up"] + 20)
            finally:
                ensure_mariadb()

        try:
            load = self.run_clients(stack, self.mixed_roles(), outage + 150, during)
            load.timeline = timeline
            figures.update(self.load_figures(load))
            self.analyse_outage(load, timeline, figures)
            # The flusher, not the stop, writes what was buffered through the outage.
            reads = sum(load.reads(stack.skus).values())
            began = time.monotonic()
            flushed = False
            with suppress(Failed):
                wait_until(
                    "the buffered views in the database",
                    lambda: sum(self.view_counts(stack).values()) >= reads,
                    20,
                    every=0.5,
                )
                flushed = True
            kept = read(stack.uwsgi_log).count("views failed; kept for the next flush")
            figures["view_flushes_failed_and_kept"] = kept
            self.check(
                f"dbdown: the views buffered through the outage reach the database without a"
                f" stop ({kept} failed flushes kept them; all {reads} rows within"
                f" {time.monotonic() - began:.1f}s of the load's end)",
                flushed and kept > 0,
                f"{sum(self.view_counts(stack).values())} rows for {reads} reads",
            )
            drained = self.wait_outbox_drained(stack, DRAIN_LIMIT)
            figures["outbox_drained_after_s"] = drained and round(drained, 1)
            self.check(
                f"dbdown: the outbox drained within {DRAIN_LIMIT:.0f}s of the load's end",
                drained is not None,
                f"{dict(self.outbox_state(stack))}: rows whose sender lost MariaDB between"
                " claiming and recording them wait for their lease (5 minutes)",
            )
        finally:
            self.stop_stack(stack)
        respawned = len(re.findall(r"DAMN ! worker|Respawned uWSGI worker", read(stack.uwsgi_log)))
        cut = read(self.workdir / f"nginx-{stack.name}.log").count(
            "upstream prematurely closed connection"
        )
        figures["nginx_upstream_prematurely_closed"] = cut
        self.check(
            "dbdown: no answer cut off after its headers (nginx: upstream prematurely closed)",
            cut == 0,
            f"{cut} in nginx's error log: the app raised after start_response (see the uWSGI"
            " log's tracebacks)",
        )
        figures["uwsgi_worker_respawns"] = respawned
        self.check(
            "dbdown: no uWSGI worker died or was restarted", respawned == 0, tail(stack.uwsgi_log)
        )
        self.verify_counts(stack, load, figures)

    def analyse_outage(self, load: LoadRun, timeline: dict[str, float], figures: dict) -> None:
        if "up" not in timeline:
            self.require("dbdown: MariaDB was stopped and started again", False, timeline)
        t_stop, t_up = timeline["shutdown_command"], timeline["up"]
        figures["timeline_s"] = {k: round(v - load.started, 2) for k, v in timeline.items()}
        before = [r for r in load.requests if r.end < t_stop]
        during = [r for r in load.requests if t_stop <= r.end <= t_up]
        after = [r for r in load.requests if r.end > t_up]
        bad = [r for r in after if r.status != 200]
        recovery = max((r.end for r in bad), default=t_up) - t_up
        first_ok = min((r.end for r in after if r.status == 200), default=None)
        statuses = load.statuses()
        json_503 = sum(1 for r in load.requests if r.status == 503 and r.good_503)
        around = [r for r in load.requests if r.end >= t_stop and r.start <= t_up + 5]
        figures.update(
            max_latency_around_outage_ms=round(max((r.latency for r in around), default=0) * 1000),
            requests_before=len(before),
            requests_during=len(during),
            requests_after=len(after),
            during_statuses={
                str(s): c for s, c in sorted(Counter(r.status for r in during).items())
            },
            json_503_during_outage=sum(1 for r in during if r.status == 503 and r.good_503),
            json_503_total=json_503,
            recovery_s=round(recovery, 2),
            first_200_after_up_s=None if first_ok is None else round(first_ok - t_up, 3),
            down_s=round(timeline["start_command"] - timeline["down"], 1),
            unavailable_s=round(t_up - t_stop, 1),
            ok_after_recovery=sum(1 for r in after if r.end > t_up + recovery and r.status == 200),
        )
        self.check(
            f"dbdown: before the outage, every answer 200 ({len(before)} requests)",
            all(r.status == 200 for r in before),
            Counter(r.status for r in before),
        )
        self.check(
            f"dbdown: during the outage ({t_up - t_stop:.1f}s unavailable), clear JSON 503s"
            f" ({figures['json_503_during_outage']}) and no other answer but 200",
            figures["json_503_during_outage"] > 0
            and all(r.status == 200 or (r.status == 503 and r.good_503) for r in during),
            f"{figures['during_statuses']}; samples {load.samples}",
        )
        self.check(
            'dbdown: every 503 is JSON with "code": 503 and Retry-After; no 500, 502 or 504',
            statuses[503] == json_503 and all(s in (200, 503) for s in statuses if s > 0),
            f"{dict(statuses)}; samples {load.samples}",
        )
        self.check(
            f"dbdown: no request hung (client timeout {CLIENT_TIMEOUT:.0f}s) or lost its"
            " connection",
            statuses[TIMEOUT] == 0 and statuses[CONNECTION_ERROR] == 0,
            f"{statuses[TIMEOUT]} timeouts, {statuses[CONNECTION_ERROR]} connection errors;"
            f" samples {load.samples}",
        )
        self.check(
            f"dbdown: recovered without a restart: 200s again {recovery:.2f}s after MariaDB"
            f" answered (limit {RECOVERY_LIMIT:.0f}s), then {figures['ok_after_recovery']}"
            " requests all 200",
            recovery <= RECOVERY_LIMIT
            and figures["ok_after_recovery"] > 0
            and load.requests[-1].end - (t_up + recovery) >= 5,
            f"last failure {recovery:.2f}s after up; {Counter(r.status for r in bad)}",
        )

    # ---------------------------------------------------------------- 3. SES failing

    def ses_outage(self) -> None:
        outage = self.args.ses_outage_seconds
        log(f"\n== 3. SES rejecting every send for {outage:.0f}s while admins edit")
        stack = self.start_stack("sesdown", NOTIFY_RETRY_BASE_SECONDS="2")
        figures: dict = {"notify_retry_base_seconds": 2}
        self.figures["ses_outage"] = figures
        ses = boto3.client(
            "ses",
            region_name="us-east-1",
            endpoint_url=self.moto.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        timeline: dict[str, float] = {}
        held: dict = {}

        def during(t0: float) -> None:
            sleep_until(t0 + 5)
            timeline["ses_fails"] = time.monotonic()
            ses.delete_identity(Identity=EMAIL_SOURCE)
            try:
                sleep_until(timeline["ses_fails"] + 3)
                held["emails_at_start"] = len(self.moto.messages())
                sleep_until(timeline["ses_fails"] + outage - 2)
                held["emails_at_end"] = len(self.moto.messages())
                # Tried: an attempt that has ended (a claimed row counts its attempt
                # at the claim, and gets its last_error when the attempt ends).
                tried = "attempts > 0 AND claim_token IS NULL"
                held["rows"] = stack.database.query(
                    f"SELECT status, COUNT(*), SUM({tried}), MAX(attempts),"
                    f" SUM({tried} AND last_error LIKE '%%MessageRejected%%'),"
                    f" SUM({tried} AND last_error IS NOT NULL)"
                    " FROM notifications GROUP BY status"
                )
                held["errors"] = stack.database.query(
                    "SELECT LEFT(last_error, 160), COUNT(*) FROM notifications"
                    f" WHERE status = 'pending' AND {tried} GROUP BY 1 ORDER BY 2 DESC"
                )
                sleep_until(timeline["ses_fails"] + outage)
            finally:
                ses.verify_email_identity(EmailAddress=EMAIL_SOURCE)
                timeline["ses_back"] = time.monotonic()
            sleep_until(timeline["ses_back"] + 5)

        editors = [
            {"put": 1.0, "list": 0.0, "think": 0.5, "admin": a} for a in range(len(ALL_ADMINS))
        ]
        readers = [{"put": 0.0, "list": 0.2, "think": 0.05, "admin": None}] * 5
        try:
            load = self.run_clients(stack, [editors + readers], outage + 60, during)
            load.timeline = timeline
            figures.update(self.load_figures(load))
            figures["timeline_s"] = {k: round(v - load.started, 2) for k, v in timeline.items()}
            statuses = load.statuses()
            puts_during = [
                r
                for r in load.requests
                if r.kind == PUT and timeline["ses_fails"] <= r.start <= timeline.get("ses_back", 0)
            ]
            figures["puts_during_outage"] = len(puts_during)
            self.check(
                f"sesdown: editing goes on while SES fails ({len(puts_during)} PUTs in the"
                " outage), every answer 200",
                set(statuses) == {200} and puts_during,
                f"{dict(statuses)}; samples {load.samples}",
            )
            rows = {
                status: {
                    "rows": int(count),
                    "attempted": int(attempted or 0),
                    "attempts_max": int(most or 0),
                    "attempted_with_MessageRejected": int(rejected or 0),
                    "attempted_with_last_error": int(with_error or 0),
                }
                for status, count, attempted, most, rejected, with_error in held.get("rows", [])
            }
            pending = rows.get("pending", {"rows": 0, "attempted": 0, "attempts_max": 0})
            pending.setdefault("attempted_with_MessageRejected", 0)
            pending.setdefault("attempted_with_last_error", 0)
            errors = {str(error): int(count) for error, count in held.get("errors", [])}
            figures.update(
                emails_sent_during_outage=held.get("emails_at_end", -1)
                - held.get("emails_at_start", 0),
                held_at_outage_end=rows,
                held_last_errors=errors,
            )
            self.check(
                f"sesdown: the outbox holds: {pending['rows']} rows pending 2s before the"
                f" outage's end, {pending['attempted']} of them tried (up to"
                f" {pending['attempts_max']} times), each with its last_error"
                f" ({pending['attempted_with_MessageRejected']} MessageRejected); none failed"
                " for good; no email got through meanwhile",
                pending["attempted"] > 0
                and pending["attempted_with_last_error"] == pending["attempted"]
                and pending["attempted_with_MessageRejected"] > 0
                and "failed" not in rows
                and figures["emails_sent_during_outage"] == 0,
                f"{rows}; emails sent during the outage {figures['emails_sent_during_outage']}",
            )
            other = {e: c for e, c in errors.items() if "MessageRejected" not in e}
            if other:
                log(f"  note: last errors other than MessageRejected: {other}")
            drained = self.wait_outbox_drained(stack, SES_DRAIN_LIMIT)
            back_to_drained = None if drained is None else time.monotonic() - timeline["ses_back"]
            figures["drained_after_ses_back_s"] = back_to_drained and round(back_to_drained, 1)
            self.check(
                "sesdown: every held email delivered after SES came back"
                + (
                    f" ({back_to_drained:.1f}s after)"
                    if back_to_drained
                    else f" (limit {SES_DRAIN_LIMIT:.0f}s)"
                ),
                drained is not None,
                self.outbox_state(stack),
            )
            figures["max_attempts"] = stack.database.query(
                "SELECT MAX(attempts) FROM notifications"
            )[0][0]
        finally:
            self.stop_stack(stack)
        self.verify_counts(stack, load, figures)


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# ================================================================ report


def table(figures: dict, runtime: float, failed: list[str]) -> str:
    lines = [f"{'':<34}{'load':>14}{'MariaDB down':>14}{'SES down':>14}"]
    phases = [figures.get(k, {}) for k in ("load", "mariadb_outage", "ses_outage")]

    def row(label: str, key: str | Callable[[dict], object]) -> None:
        values = []
        for f in phases:
            value = key(f) if callable(key) else f.get(key)
            values.append("-" if value is None or value == {} else str(value))
        lines.append(f"{label:<34}" + "".join(f"{v:>14}" for v in values))

    row("clients (processes)", lambda f: f and f"{f['clients']} ({f['client_processes']})")
    row("seconds", "seconds")
    row("requests", "requests")
    row("requests/s", "rps")
    row("p50 latency ms", "p50_ms")
    row("p99 latency ms", "p99_ms")
    row("max latency ms", "max_ms")
    row("client CPU s", "client_cpu_seconds")
    row("200 product reads", "reads_200")
    row("view rows after stop", "view_rows")
    row("changes answered 200", "changes_200")
    row("unconfirmed commits", "unconfirmed_commits")
    row("admins", "admins")
    row("notification rows", "notification_rows")
    row("emails (expected)", lambda f: f and f"{f.get('emails')} ({f.get('emails_expected')})")
    row("duplicate emails", "emails_duplicate")
    row("timeouts", "timeouts")
    row("connection errors", "connection_errors")
    row("JSON 503 during outage", "json_503_during_outage")
    row("unavailable s (stop->ping)", "unavailable_s")
    row("recovery s (after ping)", "recovery_s")
    row(
        "outbox drained s",
        lambda f: f.get("drained_after_ses_back_s", f.get("outbox_drained_after_s")),
    )
    row("lost (views+emails+rows)", "lost")
    lines.append(
        f"runtime {runtime:.0f}s; {'PASS' if not failed else 'FAIL: ' + '; '.join(failed)}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--outage-seconds", type=float, default=10)
    parser.add_argument("--ses-outage-seconds", type=float, default=60)
    parser.add_argument(
        "--only", choices=("load", "mariadb", "ses"), action="append", help="run only these"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and databases")
    parser.add_argument(
        "--source",
        type=Path,
        help="take the app, app.ini and nginx.conf from this tree (e.g. a patched copy)",
    )
    args = parser.parse_args(argv)
    if not (
        5 <= args.load_seconds <= 120
        and 1 <= args.clients <= 200
        and 1 <= args.client_processes <= 8
        and 3 <= args.outage_seconds <= 60
        and 10 <= args.ses_outage_seconds <= 120
    ):
        parser.error("out of range")
    return args


def interrupted(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    load_before = os.getloadavg()
    run = Reliability(args)
    steps = {"load": run.load_test, "mariadb": run.mariadb_outage, "ses": run.ses_outage}
    try:
        if not mariadb_alive():
            raise Failed("MariaDB does not answer on 127.0.0.1:3306 before the run")
        run.prepare()
        for name, step in steps.items():
            if args.only and name not in args.only:
                continue
            try:
                step()
            except Failed as exc:
                run.check(f"{step.__name__} could not go on", False, exc)
            except Exception:
                run.check(f"{step.__name__} crashed", False, traceback.format_exc())
    except KeyboardInterrupt:
        run.check("interrupted", False)
    except Failed as exc:
        run.check("preparation", False, exc)
    except Exception:
        run.check("preparation crashed", False, traceback.format_exc())
    finally:
        try:
            ensure_mariadb()
        except Exception as exc:
            run.check("MariaDB running again at the end", False, exc)
        run.teardown()
    runtime = time.monotonic() - started
    run.check("MariaDB answers at the end", mariadb_alive())
    failed = [name for name, ok, _ in run.results if not ok]
    report = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runtime_seconds": round(runtime, 1),
        "passed": not failed,
        "source": str(run.source),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        **run.figures,
        "checks": [{"name": n, "passed": ok, "detail": d[:2000]} for n, ok, d in run.results],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"\n== Results ({runtime:.0f}s), also in {RESULTS.relative_to(ROOT)}")
    log(table(run.figures, runtime, failed))
    log(
        f"{os.cpu_count()} CPUs shared by clients, nginx, uWSGI, MariaDB and moto; load"
        f" average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)"
    )
    log(f"reliability: {len(run.results) - len(failed)} passed, {len(failed)} failed")
    log("RELIABILITY PASS" if not failed else "RELIABILITY FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--client"]:
        sys.exit(client_main())
    sys.exit(main())
