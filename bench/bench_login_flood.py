"""Reads while logins flood: the product-read median through nginx, idle and under a flood.

The deployment's own files run as in the container (tests/system/harness.py's Stack): the
shipped nginx.conf in front of the shipped app.ini with Debian's nginx and uWSGI (4
processes, one thread each, `listen = 1024`), its `flask worker` attached, on a MariaDB
database of its own and the run's private Redis (the login limits' shared store). nginx
believes X-Forwarded-For from 127.0.0.1 only (as it would from the load balancer), so a
flood client can carry an address of its own.

One bystander reads `GET /api/products/<sku>` one request after the other (a new
connection each) and times every answer. Its median while nothing else runs (idle) is
compared with its median while a flood of `POST /users/login` runs, half the clients with
a read-only (rol 2) account's correct password and half with a wrong one, each client
sending its next attempt as soon as the last is answered:

- ``addresses``: 50 clients, each with an address of its own (X-Forwarded-For), as 8 or
  more attackers with their own addresses would be;
- ``rotating``: 50 clients, a new address for every attempt (past every per-address
  limit: only the per-instance cap and the app's verification slots hold);
- ``one address``: 250 clients from one address (no X-Forwarded-For).

Idle and each flood alternate within every round (idle first in even rounds, last in odd
ones). The flood starts a second before the reads are timed and stops after them. A side's
median is the median of its rounds' medians (each round counts once). Target:
flood median / idle median <= 2 for each flood; no bystander read answered 502 (or any
other non-200). The logins' statuses (200, 401, 429, 503, ...) are printed, not targeted.
The load generator runs on the same two cores as the service: its own CPU is part of
what the reads compete with.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    MARIADB,
    REPO_ROOT,
    BenchError,
    Latencies,
    Result,
    Target,
    check_database_name,
    cpu_seconds,
    reaper,
    redis,
    say,
)

from tests.system import harness as h

DATABASE = "bench_login_flood"
ADMIN = ("flood-admin@example.com", "flood-admin-password-1")
READER = {
    "fullname": "Flood Reader",
    "username": "floodreader",
    "email": "flood-reader@example.com",
    "password": "flood-reader-password-1",
    "rol": 2,
}
PRODUCTS = 20
RAMP_SECONDS = 1.0
SETTLE_SECONDS = 1.0
REQUEST_TIMEOUT = 15.0
MAX_READS_PER_PHASE = 20_000
FLOOD_NICE = 10


@dataclass(frozen=True)
class Flood:
    key: str
    label: str
    clients: int
    addresses: str  # "own": one per client, "rotating": one per attempt, "one": none


FLOODS = (
    Flood("addresses", "50 clients, one address each", 50, "own"),
    Flood("rotating", "50 clients, a new address per attempt", 50, "rotating"),
    Flood("one", "250 clients from one address", 250, "one"),
)


@dataclass
class Phase:
    reads: Latencies = field(default_factory=Latencies)
    read_statuses: Counter = field(default_factory=Counter)
    logins: Counter = field(default_factory=Counter)
    login_seconds: float = 0.0
    cpu: Counter = field(default_factory=Counter)  # CPU seconds: nginx, uwsgi, flood


def address(n: int) -> str:
    """A documentation-range address (RFC 5737's 198.18.0.0/15 benchmarking block)."""
    return f"198.18.{(n >> 8) & 0xFF}.{n & 0xFF}"


class Flooder:
    """``flood.clients`` threads sending logins back to back until stopped, in a process of
    their own (at a lower CPU priority, ``FLOOD_NICE``): the bystander's timings share no
    interpreter lock with them, and the attackers' own CPU, which on a real attack is on
    other machines, yields to the service's."""

    def __init__(self, port: int, flood: Flood, wrong: dict, right: dict) -> None:
        self.port, self.flood = port, flood
        self.bodies = [json.dumps(right).encode(), json.dumps(wrong).encode()]
        self.statuses: Counter = Counter()
        self.lock = threading.Lock()
        self.next_address = 0
        self.cpu = 0.0
        context = multiprocessing.get_context("fork")
        self.stop_event = context.Event()
        self.queue = context.Queue()
        self.process = context.Process(target=self.main, daemon=True)

    def main(self) -> None:
        os.nice(FLOOD_NICE)
        threads = [
            threading.Thread(target=self.client, args=(n,), daemon=True)
            for n in range(self.flood.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.queue.put((dict(self.statuses), usage.ru_utime + usage.ru_stime))

    def headers(self, n: int) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.flood.addresses == "own":
            headers["X-Forwarded-For"] = address(n)
        elif self.flood.addresses == "rotating":
            with self.lock:
                self.next_address += 1
                headers["X-Forwarded-For"] = address(1000 + self.next_address % 60_000)
        return headers

    def client(self, n: int) -> None:
        body = self.bodies[n % 2]  # half the clients right, half wrong
        seen: Counter = Counter()
        conn = None
        while not self.stop_event.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(h.HOST, self.port, timeout=REQUEST_TIMEOUT)
                conn.request("POST", "/users/login", body=body, headers=self.headers(n))
                answer = conn.getresponse()
                answer.read()
                seen[answer.status] += 1
                if answer.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except TimeoutError:
                seen["timeout"] += 1
                conn = None
            except (OSError, http.client.HTTPException):
                seen["no answer"] += 1
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()
        with self.lock:
            self.statuses.update(seen)

    def __enter__(self) -> Flooder:
        self.process.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_event.set()
        try:
            statuses, self.cpu = self.queue.get(timeout=REQUEST_TIMEOUT + 10)
            self.statuses = Counter(statuses)
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)


def timed_reads(stack: h.Stack, skus: list[str], seconds: float, phase: Phase) -> None:
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline and n < MAX_READS_PER_PHASE:
        began = time.perf_counter()
        try:
            status = stack.http.get(f"/api/products/{skus[n % len(skus)]}").status
        except (OSError, http.client.HTTPException):
            status = "no answer"
        phase.reads.samples.append(time.perf_counter() - began)
        phase.read_statuses[status] += 1
        n += 1


def stack_cpu(stack: h.Stack) -> Counter:
    """CPU seconds used so far by the stack's nginx and uWSGI processes (live ones)."""
    used: Counter = Counter()
    for pid in stack.processes():
        name = "nginx" if "nginx" in h.cmdline(pid) else "uwsgi"
        used[name] += cpu_seconds(pid)
    return used


def run_phase(stack: h.Stack, skus: list[str], flood: Flood | None, seconds: float, creds):
    phase = Phase()
    if flood is None:
        timed_reads(stack, skus, seconds, phase)
        return phase
    began, cpu_before = time.monotonic(), stack_cpu(stack)
    with Flooder(stack.port, flood, *creds) as flooder:
        time.sleep(RAMP_SECONDS)
        timed_reads(stack, skus, seconds, phase)
    phase.login_seconds = time.monotonic() - began
    phase.cpu = stack_cpu(stack)
    phase.cpu.subtract(cpu_before)
    phase.cpu["flood client"] = flooder.cpu
    phase.logins = flooder.statuses
    time.sleep(SETTLE_SECONDS)  # the last verifications end before the next phase
    return phase


def setup(workdir: Path) -> tuple[h.Stack, list[str]]:
    missing = h.missing_binaries(h.NGINX, h.UWSGI, h.PYTHON_PLUGIN, h.SYSTEM_PYTHON)
    if missing:
        raise BenchError(f"Missing (Debian's nginx and uWSGI are prerequisites): {missing}")
    venv = h.debian_venv(REPO_ROOT)
    deployment = h.Deployment(
        REPO_ROOT, venv, h.stage_app(REPO_ROOT, workdir), workdir, reaper(), redis()
    )
    MARIADB.create_database(check_database_name(DATABASE))
    env = deployment.env(
        MARIADB.url(DATABASE),
        f"http://{h.HOST}:9",  # no email is sent: nothing here notifies
        ADMIN_EMAIL=ADMIN[0],
        ADMIN_PASSWORD=ADMIN[1],
        MAIL_BACKEND="console",
    )
    stack = h.Stack(deployment, "login-flood", env, trust_loopback=True)
    stack.migrate()
    stack.start()
    say(f"nginx + uWSGI (app.ini) on {h.HOST}:{stack.port}, log {stack.log}")
    token = stack.http.login(*ADMIN)
    created = stack.http.request("POST", "/api/users", READER, token=token)
    if created.status != 201:
        raise BenchError(f"POST /api/users: {created.status} {created.body[:300]!r}")
    skus = [f"flood-{n:02d}" for n in range(PRODUCTS)]
    for sku in skus:
        product = {"sku": sku, "name": sku, "price": 100, "mark": "m", "quantity": 1}
        answer = stack.http.request("POST", "/api/products", product, token=token)
        if answer.status != 201:
            raise BenchError(f"POST /api/products: {answer.status} {answer.body[:300]!r}")
    right = {"email": READER["email"], "password": READER["password"]}
    if stack.http.request("POST", "/users/login", right).status != 200:
        raise BenchError("the rol 2 account cannot log in")
    return stack, skus


def run(ctx) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-login-flood-"))
    stack = None
    try:
        stack, skus = setup(workdir)
        right = {"email": READER["email"], "password": READER["password"]}
        wrong = {"email": READER["email"], "password": "not-the-password-at-all"}
        creds = (wrong, right)
        timed_reads(stack, skus, 2.0, Phase())  # warm-up
        phases: dict[str, list[Phase]] = {"idle": [], **{f.key: [] for f in FLOODS}}
        order = [None, *FLOODS]
        for n in range(ctx.rounds):
            for flood in order if n % 2 == 0 else reversed(order):
                key = "idle" if flood is None else flood.key
                phase = run_phase(stack, skus, flood, ctx.seconds, creds)
                phases[key].append(phase)
                say(
                    f"round {n + 1} {key}: read median {phase.reads.median_ms:.2f} ms "
                    f"({len(phase.reads.samples)} reads, {dict(phase.read_statuses)})"
                    + (f", logins {dict(phase.logins)}" if flood else "")
                )
        return results(phases, stack)
    finally:
        if stack is not None:
            stack.stop()
        with contextlib.suppress(Exception):
            if not ctx.keep_databases:
                MARIADB.drop_database(check_database_name(DATABASE))
        shutil.rmtree(workdir, ignore_errors=True)


def merged(phases: list[Phase]) -> Phase:
    total = Phase()
    for phase in phases:
        total.reads.samples += phase.reads.samples
        total.read_statuses.update(phase.read_statuses)
        total.logins.update(phase.logins)
        total.login_seconds += phase.login_seconds
        total.cpu.update(phase.cpu)
    return total


def round_median(phases: list[Phase]) -> float:
    """The median of the rounds' medians (ms): each round counts once, however many reads
    it got in (a slow round gets fewer)."""
    return statistics.median(phase.reads.median_ms for phase in phases)


def results(phases: dict[str, list[Phase]], stack: h.Stack) -> list[Result]:
    idle = merged(phases["idle"])
    out: list[Result] = []
    bad_reads = Counter()
    bad_reads.update({k: v for k, v in idle.read_statuses.items() if k != 200})
    say(f"idle: {idle.reads.summary()}")
    for flood in FLOODS:
        under = merged(phases[flood.key])
        idle_ms, flood_ms = round_median(phases["idle"]), round_median(phases[flood.key])
        ratio = flood_ms / idle_ms
        attempts = sum(under.logins.values())
        rate = attempts / under.login_seconds if under.login_seconds else 0.0
        logins = ", ".join(f"{k}: {v:,}" for k, v in sorted(under.logins.items(), key=str))
        say(
            f"{flood.label}: reads {under.reads.summary()}; logins {attempts:,} "
            f"({rate:,.0f}/s): {logins}; CPU per second of flood: "
            + ", ".join(f"{k} {v / under.login_seconds:.2f}" for k, v in under.cpu.items())
        )
        bad_reads.update({k: v for k, v in under.read_statuses.items() if k != 200})
        out.append(
            Result(
                name=f"GET /api/products/<sku> via nginx: login flood ({flood.label}) / idle "
                "median",
                measured=f"{flood_ms:.2f} / {idle_ms:.2f} ms",
                ratio=ratio,
                target=Target("<=", 2),
                details={
                    "idle_round_medians_ms": [round(p.reads.median_ms, 3) for p in phases["idle"]],
                    "flood_round_medians_ms": [
                        round(p.reads.median_ms, 3) for p in phases[flood.key]
                    ],
                    "idle": idle.reads.summary(),
                    "flood": under.reads.summary(),
                    "read_statuses": {str(k): v for k, v in under.read_statuses.items()},
                    "login_statuses": {str(k): v for k, v in under.logins.items()},
                    "login_attempts_per_second": round(rate, 1),
                    "cpu_seconds": {k: round(v, 2) for k, v in under.cpu.items()},
                },
            )
        )
    reads = sum(len(p.reads.samples) for ps in phases.values() for p in ps)
    bad = sum(bad_reads.values())
    out.append(
        Result(
            name="... bystander reads not answered 200 (502 or other), all phases",
            measured=f"{bad:,} of {reads:,}" + (f" {dict(bad_reads)}" if bad else ""),
            ratio=float(bad),
            target=Target("==", 0),
            details={"statuses": {str(k): v for k, v in bad_reads.items()}},
        )
    )
    return out
