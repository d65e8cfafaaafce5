"""Reads while passwords are guessed: the product-read median through nginx, idle and while
clients hammer a route that checks a password.

The deployment's own files run as in the container (the harness's Stack): the shipped
nginx.conf in front of the shipped app.ini with Debian's nginx and uWSGI (app.ini's
defaults: 4 processes, `listen = 1024`), its `flask worker` attached, on a MariaDB
database of its own and the run's private Redis (the login limits' shared store). nginx
believes X-Forwarded-For from 127.0.0.1 only (as it would from the load balancer), so a
flood client can carry an address of its own.

One bystander reads `GET /api/products/<sku>` one request after the other (a new
connection each) and times every answer. Its median while nothing else runs (idle) is
compared with its median during each flood, each client sending its next attempt as soon
as the last is answered:

- ``addresses``: `POST /users/login`, 50 clients, each with an address of its own
  (X-Forwarded-For), as 8 or more attackers with their own addresses would be; half with
  a read-only (rol 2) account's correct password, half with a wrong one;
- ``rotating``: the same, a new address for every attempt (past every per-address limit:
  only the per-instance caps and the app's verification slots hold);
- ``one``: 250 clients from one address (no X-Forwarded-For), half right, half wrong;
- ``slash``: `POST /users/login/` (the trailing slash, which the app also serves as the
  login), 50 clients with an address each, half right, half wrong;
- ``me``: `PATCH /users/me` with another rol 2 account's token (a stolen one) and a
  wrong `current_password` (a new guess each time), 50 clients with an address each.

Idle and each flood alternate within every round (idle first in even rounds, last in odd
ones). The flood starts a second before the reads are timed and stops after them. A side's
median is the median of its rounds' medians (each round counts once). Target:
flood median / idle median <= 2 for each flood; no bystander read answered 502 (or any
other non-200). The attempts' statuses (200, 401, 422, 429, 503, ...) are printed, not
targeted. The flood is the harness's Load, in a process of its own at a lower CPU
priority, on the same two cores as the service: its own CPU is part of what the reads
compete with.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from common import (
    MARIADB,
    NO_SES,
    BenchError,
    Latencies,
    Result,
    Target,
    call,
    check_database_name,
    deployment,
    h,
    redis,
    say,
)

DATABASE = "bench_login_flood"
ADMIN = ("flood-admin@example.com", "flood-admin-password-1")
READER = {
    "fullname": "Flood Reader",
    "username": "floodreader",
    "email": "flood-reader@example.com",
    "password": "flood-reader-password-1",
    "rol": 2,
}
# Whose token the PATCH /users/me flood holds: its guesses do not touch READER's counts.
STOLEN = {
    "fullname": "Flood Owner",
    "username": "floodowner",
    "email": "flood-owner@example.com",
    "password": "flood-owner-password-1",
    "rol": 2,
}
PRODUCTS = 20
RAMP_SECONDS = 1.0
SETTLE_SECONDS = 1.0
REQUEST_TIMEOUT = 15.0
MAX_READS_PER_PHASE = 20_000
FLOOD_NICE = 10
LOGIN, ME = "login", "me"
STATUS_NAMES = {None: "no answer", h.TIMEOUT: "timeout", h.NO_ANSWER: "no answer"}


@dataclass(frozen=True)
class Flood:
    key: str
    label: str  # as the summary line names it
    clients: int
    addresses: str  # "own": one per client, "rotating": one per attempt, "one": none
    route: str = "/users/login"


FLOODS = (
    Flood("addresses", "login flood (50 clients, one address each)", 50, "own"),
    Flood("rotating", "login flood (50 clients, a new address per attempt)", 50, "rotating"),
    Flood("one", "login flood (250 clients from one address)", 250, "one"),
    Flood(
        "slash", "/users/login/ flood (50 clients, one address each)", 50, "own", "/users/login/"
    ),
    Flood(
        "me",
        "PATCH /users/me wrong current_password flood (50 clients, one address each)",
        50,
        "own",
        "/users/me",
    ),
)


@dataclass
class Phase:
    reads: Latencies = field(default_factory=Latencies)
    read_statuses: Counter = field(default_factory=Counter)
    attempts: Counter = field(default_factory=Counter)
    flood_seconds: float = 0.0
    cpu: Counter = field(default_factory=Counter)  # CPU seconds: nginx, uwsgi, flood


def address(n: int) -> str:
    """A documentation-range address (RFC 2544's 198.18.0.0/15 benchmarking block)."""
    return f"198.18.{(n >> 8) & 0xFF}.{n & 0xFF}"


def attempts(flood: Flood, client: int, creds: dict, rotating) -> Callable[[int], h.Request]:
    """What one flood client sends, attempt after attempt (``rotating``: the count of
    attempts all its clients share, for a new address each)."""

    def headers() -> dict[str, str]:
        found = {"Content-Type": "application/json"}
        if flood.addresses == "own":
            found["X-Forwarded-For"] = address(client)
        elif flood.addresses == "rotating":
            found["X-Forwarded-For"] = address(1000 + next(rotating) % 60_000)
        return found

    if flood.route == "/users/me":
        token = {"Authorization": f"Bearer {creds['token']}"}

        def guess(n: int) -> h.Request:
            body = {"password": "whatever-new-1", "current_password": f"wrong-{client}-{n}"}
            return h.Request("PATCH", flood.route, json.dumps(body), headers() | token, ME)

        return guess
    body = json.dumps(creds["right"] if client % 2 == 0 else creds["wrong"])  # half right
    return lambda _n: h.Request("POST", flood.route, body, headers(), LOGIN)


def timed_reads(stack: h.Stack, skus: list[str], seconds: float, phase: Phase) -> None:
    paths = itertools.islice(
        itertools.cycle([f"/api/products/{sku}" for sku in skus]), MAX_READS_PER_PHASE
    )
    for took, status in h.timed_requests(stack.http, paths, seconds=seconds):
        phase.reads.samples.append(took)
        phase.read_statuses[STATUS_NAMES.get(status, status)] += 1


def stack_cpu(stack: h.Stack) -> Counter:
    """CPU seconds used so far by the stack's nginx and uWSGI processes (live ones)."""
    used: Counter = Counter()
    for pid in stack.processes():
        name = "nginx" if "nginx" in h.cmdline(pid) else "uwsgi"
        used[name] += h.cpu_seconds(pid)
    return used


def run_phase(stack: h.Stack, skus: list[str], flood: Flood | None, seconds: float, creds):
    phase = Phase()
    if flood is None:
        timed_reads(stack, skus, seconds, phase)
        return phase
    cpu_before = stack_cpu(stack)
    rotating = itertools.count()
    roles = [h.Role(script=attempts(flood, n, creds, rotating)) for n in range(flood.clients)]
    load = h.Load(stack.port, [], [], timeout=REQUEST_TIMEOUT)
    load.start(roles, max_seconds=RAMP_SECONDS + seconds + 60, nice=FLOOD_NICE)
    try:
        time.sleep(RAMP_SECONDS)
        timed_reads(stack, skus, seconds, phase)
    finally:
        load.stop()
    phase.flood_seconds = load.seconds
    phase.cpu = stack_cpu(stack)
    phase.cpu.subtract(cpu_before)
    phase.cpu["flood client"] = load.cpu_seconds
    phase.attempts = Counter({STATUS_NAMES.get(k, k): v for k, v in load.statuses().items()})
    time.sleep(SETTLE_SECONDS)  # the last verifications end before the next phase
    return phase


def setup() -> tuple[h.Stack, list[str], dict]:
    if missing := h.missing_binaries(h.NGINX):
        raise BenchError(f"Missing (Debian's nginx is a prerequisite): {missing}")
    MARIADB.create_database(check_database_name(DATABASE))
    env = deployment().env(
        MARIADB.url(DATABASE),
        NO_SES,
        ADMIN_EMAIL=ADMIN[0],
        ADMIN_PASSWORD=ADMIN[1],
        MAIL_BACKEND="console",
        REDIS_URL=redis().new_database(),
    )
    stack = h.Stack(deployment(), "login-flood", env, trust_loopback=True)
    stack.log.unlink(missing_ok=True)
    stack.migrate()
    stack.start()
    say(f"nginx + uWSGI (app.ini) on {h.HOST}:{stack.port}, log {stack.log}")
    token = stack.http.login(*ADMIN)
    for user in (READER, STOLEN):
        call(stack, "POST", "/api/users", user, token=token, expect=201)
    skus = [f"flood-{n:02d}" for n in range(PRODUCTS)]
    for sku in skus:
        product = {"sku": sku, "name": sku, "price": 100, "mark": "m", "quantity": 1}
        call(stack, "POST", "/api/products", product, token=token, expect=201)
    creds = {
        "right": {"email": READER["email"], "password": READER["password"]},
        "wrong": {"email": READER["email"], "password": "not-the-password-at-all"},
        "token": stack.http.login(STOLEN["email"], STOLEN["password"]),
    }
    call(stack, "POST", "/users/login", creds["right"])  # the rol 2 account logs in
    return stack, skus, creds


def run(ctx) -> list[Result]:
    stack = None
    try:
        stack, skus, creds = setup()
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
                    + (f", attempts {dict(phase.attempts)}" if flood else "")
                )
        return results(phases)
    finally:
        if stack is not None:
            stack.stop()
        with contextlib.suppress(Exception):
            if not ctx.keep_databases:
                MARIADB.drop_database(check_database_name(DATABASE))


def merged(phases: list[Phase]) -> Phase:
    total = Phase()
    for phase in phases:
        total.reads.samples += phase.reads.samples
        total.read_statuses.update(phase.read_statuses)
        total.attempts.update(phase.attempts)
        total.flood_seconds += phase.flood_seconds
        total.cpu.update(phase.cpu)
    return total


def round_median(phases: list[Phase]) -> float:
    """The median of the rounds' medians (ms): each round counts once, however many reads
    it got in (a slow round gets fewer)."""
    return statistics.median(phase.reads.median_ms for phase in phases)


def results(phases: dict[str, list[Phase]]) -> list[Result]:
    idle = merged(phases["idle"])
    out: list[Result] = []
    bad_reads = Counter()
    bad_reads.update({k: v for k, v in idle.read_statuses.items() if k != 200})
    say(f"idle: {idle.reads.summary()}")
    for flood in FLOODS:
        under = merged(phases[flood.key])
        idle_ms, flood_ms = round_median(phases["idle"]), round_median(phases[flood.key])
        ratio = flood_ms / idle_ms
        sent = sum(under.attempts.values())
        rate = sent / under.flood_seconds if under.flood_seconds else 0.0
        answers = ", ".join(f"{k}: {v:,}" for k, v in sorted(under.attempts.items(), key=str))
        say(
            f"{flood.label}: reads {under.reads.summary()}; attempts {sent:,} "
            f"({rate:,.0f}/s): {answers}; CPU per second of flood: "
            + ", ".join(f"{k} {v / under.flood_seconds:.2f}" for k, v in under.cpu.items())
        )
        bad_reads.update({k: v for k, v in under.read_statuses.items() if k != 200})
        out.append(
            Result(
                name=f"GET /api/products/<sku> via nginx: {flood.label} / idle median",
                measured=f"{flood_ms:.2f} / {idle_ms:.2f} ms",
                ratio=ratio,
                target=Target("<=", 2),
                details={
                    "route": flood.route,
                    "idle_round_medians_ms": [round(p.reads.median_ms, 3) for p in phases["idle"]],
                    "flood_round_medians_ms": [
                        round(p.reads.median_ms, 3) for p in phases[flood.key]
                    ],
                    "idle": idle.reads.summary(),
                    "flood": under.reads.summary(),
                    "read_statuses": {str(k): v for k, v in under.read_statuses.items()},
                    "attempt_statuses": {str(k): v for k, v in under.attempts.items()},
                    "attempts_per_second": round(rate, 1),
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
