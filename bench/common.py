"""Shared pieces of the benchmarks: MariaDB catalogs, the servers compared, results.

Processes, servers, HTTP, load, MariaDB, Redis and moto are the system tests' harness
(tests/system/harness.py): every server is its Stack (Debian's uWSGI with the shipped
app.ini, as in the image), every process goes through its one Reaper, the load is its wrk
runner or its client threads. What is here is what only the benchmarks need. Every
server listens on 127.0.0.1 only; every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from app.catalog.models import Product  # noqa: E402
from tests.system import harness as h  # noqa: E402

HOST = h.HOST
BENCH_DIR = REPO_ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = REPO_ROOT / ".venv" / "bin"

# The machine's MariaDB (never stopped or reconfigured): the bench_* databases live there.
MARIADB = h.MariaDB(
    int(os.environ.get("BENCH_MARIADB_PORT", "3306")),
    os.environ.get("BENCH_MARIADB_USER", "root"),
    os.environ.get("BENCH_MARIADB_PASSWORD", ""),
)

# Identical for every server a benchmark compares, so only the application differs
# (app.ini's own defaults are 4 processes of 2 threads).
SERVER_SETTINGS = {"WEB_PROCESSES": "2", "WEB_THREADS": "1"}
SERVER_START_SECONDS = 60
SERVER_STOP_SECONDS = 30
NO_SES = f"http://{HOST}:9"  # console mailer: nothing is sent


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (not a missed target)."""


def say(message: str) -> None:
    print(f"  {message}", flush=True)


# ---------------------------------------------------------------- the run's shared parts

_parts: dict[str, object] = {}


def reaper() -> h.Reaper:
    """The one Reaper of a benchmark run: every process is started, and ended, through it."""
    if "reaper" not in _parts:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        _parts["reaper"] = h.Reaper(RESULTS_DIR)
    return _parts["reaper"]


def redis() -> h.Redis:
    """The run's private redis-server (started once; each server gets a database of its
    own with ``new_database()``)."""
    if "redis" not in _parts:
        _parts["redis"] = server = h.Redis(reaper(), RESULTS_DIR)
        say(f"redis-server: pid {server.process.pid} on {HOST}:{server.port}")
    return _parts["redis"]


def start_moto() -> h.Moto:
    """moto's server (SES) on a free loopback port, the sender verified."""
    moto = h.Moto(reaper(), str(VENV_BIN / "moto_server"))
    say(f"moto-ses: pid {moto.process.pid} on {HOST}:{moto.port}")
    return moto


def deployment(bare: bool = False, source: Path | None = None) -> h.Deployment:
    """The app staged as in the image, with its Debian-Python virtualenv (built once and
    kept, like the system tests'); ``bare``: the same with bench/bare_app.py as wsgi.py;
    ``source``: another tree of the service (an earlier commit, for a before/after line)."""
    key = "bare" if bare else "deployment" if source is None else f"tree-{source.name}"
    source = source or REPO_ROOT
    if key not in _parts:
        if os.geteuid() != 0:
            raise BenchError("make bench runs as root: uWSGI drops to www-data, as in the image")
        if missing := h.missing_binaries(h.UWSGI, h.PYTHON_PLUGIN, h.SYSTEM_PYTHON):
            raise BenchError(f"Missing (Debian's uWSGI is a prerequisite): {missing}")
        workdir = run_workdir() / key
        workdir.mkdir()
        wsgi = BENCH_DIR / "bare_app.py" if bare else None
        app_dir = h.stage_app(source, workdir, wsgi)
        venv = h.debian_venv(source)
        _parts[key] = h.Deployment(source, venv, app_dir, workdir, reaper(), None)
    return _parts[key]


def run_workdir() -> Path:
    """The run's scratch directory (staged apps, earlier trees), removed by ``finish``."""
    if "workdir" not in _parts:
        _parts["workdir"] = Path(tempfile.mkdtemp(prefix="marketplace-bench-"))
        _parts["workdir"].chmod(0o755)  # the app user reads the app copies below it
    return _parts["workdir"]


def earlier_tree(commit: str) -> Path:
    """The service's files at ``commit`` (``git archive``), to serve beside this tree."""
    target = run_workdir() / f"src-{commit[:12]}"
    if not target.exists():
        target.mkdir()
        archive = run_workdir() / f"{commit[:12]}.tar"
        for step in (
            ["git", "-C", REPO_ROOT, "archive", f"--output={archive}", commit],
            ["tar", "-x", "-f", archive, "-C", target],
        ):
            if (done := h.run(step)).returncode != 0:
                raise BenchError(f"{' '.join(map(str, step[:2]))}: {done.stderr[-1000:]}")
    return target


def finish() -> list[str]:
    """End what is left of the run's processes (and say what it was); remove the staged
    app."""
    left = reaper().kill_all() if "reaper" in _parts else []
    if "workdir" in _parts:
        shutil.rmtree(_parts["workdir"], ignore_errors=True)
    return left


# ---------------------------------------------------------------- results


OPERATORS = {"==": operator.eq, ">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """A bound on a ratio (``>= 0.5``, ``<= 1.5``) or a figure (``< 1`` second); ``== 1``
    for an exact count."""

    op: str
    bound: float

    def met(self, ratio: float) -> bool:
        return OPERATORS[self.op](ratio, self.bound)

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass
class Result:
    """One line of the summary: what was measured, the ratio of the two, and the target."""

    name: str
    measured: str
    ratio: float
    target: Target
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.target.met(self.ratio)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "measured": self.measured,
            "ratio": round(self.ratio, 4),
            "target": str(self.target),
            "passed": self.passed,
            "details": self.details,
        }


@dataclass
class Context:
    """Options shared by every benchmark module in a run."""

    load: h.Wrk | h.Hammer
    rounds: int = 3
    seconds: float = 5.0
    latency_requests: int = 300
    keep_databases: bool = False
    app_env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- MariaDB catalogs


def check_database_name(name: str) -> str:
    if not re.fullmatch(r"bench_[a-z0-9_]{1,56}", name):
        raise BenchError(f"Refusing to touch database {name!r}: benchmark names start with bench_.")
    return name


def recreate_database(name: str) -> None:
    """Drop and create an empty database with the service's charset and collation."""
    MARIADB.create_database(check_database_name(name))


def drop_databases(*names: str) -> None:
    for name in names:
        MARIADB.drop_database(check_database_name(name))


def connect(database: str):
    return MARIADB.connect(check_database_name(database))


def scalar(database: str, sql: str, *params):
    """The first column of the first row of a query on ``database`` (a fresh connection)."""
    rows = MARIADB.query(check_database_name(database), sql, *params)
    return rows[0][0] if rows else None


def app_environment(
    database: str,
    *,
    redis_url: str = "",
    ses_url: str = NO_SES,
    tree: h.Deployment | None = None,
    **extra: str,
) -> dict[str, str]:
    """The container's environment (the harness's Deployment.env, of ``tree`` or this
    tree) pointed at ``database``, with the benchmarks' server settings and the console
    mailer unless ``extra`` says otherwise; without Redis unless ``redis_url`` names a
    database of the run's."""
    settings = {"MAIL_BACKEND": "console", "REDIS_URL": redis_url, **SERVER_SETTINGS, **extra}
    database_url = MARIADB.url(check_database_name(database))
    env = (tree or deployment()).env(database_url, ses_url, **settings)
    if not redis_url:
        # One server on one machine: login limits per process are what is measured here.
        env.update(RATELIMIT_STORAGE_URI="memory://")
    return env


def bare_environment(**extra: str) -> dict[str, str]:
    """The same environment for bench/bare_app.py (which reads no database, no Redis)."""
    return deployment(bare=True).env(
        "mysql://nobody@127.0.0.1:9/none", NO_SES, REDIS_URL="", **SERVER_SETTINGS, **extra
    )


def flask_command(env: dict[str, str], *args: str, tree: h.Deployment | None = None) -> str:
    """``flask <args>`` (an operator command) in the staged app (or ``tree``'s); its
    output."""
    done = (tree or deployment()).flask(env, *args, timeout=120)
    if done.returncode != 0:
        raise BenchError(
            f"flask {' '.join(args[:2])} failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def create_admin(
    env: dict[str, str], email: str, password: str, fullname: str, tree: h.Deployment | None = None
) -> None:
    """An admin account made the operator's way: ``flask users create-admin``."""
    args = ["--email", email, "--password", password, "--fullname", fullname]
    flask_command(env, "users", "create-admin", *args, tree=tree)


ADJECTIVES = ("red", "blue", "light", "classic", "urban", "sport", "leather", "linen", "suede")
NOUNS = ("shoes", "boots", "sandals", "jacket", "shirt", "trousers", "hat", "scarf", "bag")


@dataclass
class Catalog:
    """A seeded products table: its database, marks and the live rows each mark has."""

    database: str
    size: int
    marks: list[str]
    live_per_mark: dict[str, int]
    sample_skus: list[str]
    seed_seconds: float = 0.0


def product_rows(
    size: int, marks: list[str], deleted_share: float, rng: random.Random
) -> Iterator[tuple]:
    """``size`` live products spread evenly over ``marks``, plus soft-deleted ones on top."""
    deleted = int(size * deleted_share)
    total = size + deleted
    dead = set(rng.sample(range(total), deleted))
    order = list(range(total))
    rng.shuffle(order)  # the mark of each row, round robin over a shuffled order
    start = datetime(2025, 1, 1)
    step = timedelta(days=365) / max(total, 1)
    for i in range(total):
        created = start + step * i + timedelta(microseconds=i % 1000)
        sku = f"bk{i:07d}{rng.choice('abcdefghjkmnpqrstuvwxyz')}"
        is_dead = i in dead
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {i}"
        yield (
            sku,
            sku.lower(),
            None if is_dead else sku.lower(),
            name,
            f"{rng.randint(100, 2_000_000) / 100:.2f}",
            marks[order[i] % len(marks)],
            rng.randint(0, 500) if rng.random() > 0.1 else 0,
            created,
            created,
            created + timedelta(days=1) if is_dead else None,
            Product.search_of(name),  # what the service writes with a name
        )


INSERT_PRODUCT = (
    "INSERT INTO products (sku, sku_lower, sku_key, name, price, mark, quantity, created_at,"
    " updated_at, deleted_at, search) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
INSERT_PRODUCT_UNSEARCHED = (
    "INSERT INTO products (sku, sku_lower, sku_key, name, price, mark, quantity, created_at,"
    " updated_at, deleted_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
# Where product_rows puts the mark and deleted_at.
ROW_MARK, ROW_DELETED = 5, 9


def chunks(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_catalog(
    database: str,
    size: int,
    *,
    marks: int,
    env: dict[str, str],
    deleted_share: float = 0.01,
    seed: int = 20260101,
    tree: h.Deployment | None = None,
) -> Catalog:
    """Recreate ``database``, migrate it (by ``tree``'s migrations, this tree's by
    default) and fill it with ``size`` live products."""
    started = time.monotonic()
    recreate_database(database)
    flask_command(env, "db", "upgrade", tree=tree)  # the schema by the service's migrations
    mark_names = [f"brand{n:02d}" for n in range(marks)]
    rng = random.Random(seed)
    live_per_mark = dict.fromkeys(mark_names, 0)
    sample_skus: list[str] = []
    with contextlib.closing(connect(database)) as conn, conn.cursor() as cur:
        # pymysql sends each executemany batch as multi-row INSERT statements.
        # An earlier tree (a before/after line) may have no search column yet.
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
            " AND TABLE_NAME = 'products' AND COLUMN_NAME = 'search'",
            (check_database_name(database),),
        )
        searchable = cur.fetchone()[0] == 1
        insert = INSERT_PRODUCT if searchable else INSERT_PRODUCT_UNSEARCHED
        for batch in chunks(product_rows(size, mark_names, deleted_share, rng), 5_000):
            cur.executemany(insert, batch if searchable else [row[:-1] for row in batch])
            for row in batch:
                if row[ROW_DELETED] is None:
                    live_per_mark[row[ROW_MARK]] += 1
                    if len(sample_skus) < 1000 and rng.random() < 0.05:
                        sample_skus.append(row[0])
        cur.execute("ANALYZE TABLE products")
        cur.fetchall()
    elapsed = time.monotonic() - started
    say(f"{database}: {size:,} live products over {marks} marks in {elapsed:.1f}s")
    return Catalog(database, size, mark_names, live_per_mark, sample_skus, elapsed)


# ---------------------------------------------------------------- servers


@contextlib.contextmanager
def serve(
    name: str,
    env: dict[str, str],
    *,
    worker: bool = False,
    bare: bool = False,
    tree: h.Deployment | None = None,
):
    """A server (the harness's Stack without nginx): Debian's uWSGI with the shipped
    app.ini, answering HTTP on a free loopback port itself; app.ini's attached `flask
    worker` with ``worker=True``; ``bare``: bench/bare_app.py in place of the service;
    ``tree``: another staged tree of the service. Stopped gracefully at the end."""
    stack = h.Stack(tree or deployment(bare), name, env, nginx=False, worker=worker)
    stack.uwsgi_log().unlink(missing_ok=True)
    try:
        stack.start(SERVER_START_SECONDS)
        pids = f"uWSGI pid {stack.uwsgi[0].pid}" + (
            f", flask worker pid {worker_pid(stack)}" if worker else ""
        )
        say(f"{name}: {pids} on {HOST}:{stack.port} (log {stack.uwsgi_log().name})")
        yield stack
    finally:
        stack.stop(timeout=SERVER_STOP_SECONDS)


def worker_pid(server: h.Stack) -> int:
    """The server's attached `flask worker`."""
    return h.wait_until(f"{server.name}'s worker", server.daemons, 30)[0]


def cpu_seconds(server) -> float:
    """CPU used so far by a server's own processes: uWSGI's master and workers, its
    attached worker, and the run's redis-server if it uses it (MariaDB is shared with
    everything else on the machine: not counted)."""
    used = server.cpu_seconds()
    if "redis" in _parts and server.env.get("REDIS_URL"):
        used += h.cpu_seconds(_parts["redis"].process.pid)
    return used


def call(server: h.Stack, method: str, path: str, payload=None, *, token=None, expect=200):
    """Send JSON (if any) with an optional bearer token; the answer, which must be
    ``expect``."""
    answer = server.http.request(method, path, payload, token=token)
    if answer.status != expect:
        raise BenchError(
            f"{method} {path} on {server.name}: HTTP {answer.status}: {answer.body[:300]!r}"
        )
    return answer


def get(server: h.Stack, path: str) -> h.Response:
    return call(server, "GET", path)


# ---------------------------------------------------------------- the app in this process

IN_PROCESS_SECRET = "bench-in-process-secret-key-long-enough-0123456789"
IN_PROCESS_ADMIN = ("bench@example.com", "the-right-password")


def in_process_app(database_url: str, **settings: str):
    """The service in this process (Flask's test client, no HTTP) on a migrated database,
    with an admin made by `flask users create-admin`: the app, its client and the admin's
    Authorization header. The one place the benchmarks run the app's code themselves."""
    quiet = ("app.requests", "alembic")  # its request log, the migrations': not the report
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    app = h.in_process_app(database_url, IN_PROCESS_SECRET, **settings)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    email, password = IN_PROCESS_ADMIN
    made = app.test_cli_runner().invoke(
        args=["users", "create-admin", "--email", email, "--password", password]
    )
    if made.exit_code != 0:
        raise BenchError(f"flask users create-admin: {made.output}")
    client = app.test_client()
    answer = client.post("/users/login", json={"email": email, "password": password})
    if answer.status_code != 200:
        raise BenchError(f"POST /users/login: {answer.status_code} {answer.get_json()}")
    return app, client, {"Authorization": f"Bearer {answer.get_json()['Token']}"}


def close_in_process_app(app) -> None:
    """Close the app's database connections (before its database is dropped)."""
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


# ---------------------------------------------------------------- latency


@dataclass
class Latencies:
    """Seconds per request, in the order they were made."""

    samples: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1000

    def percentile_ms(self, pct: int) -> float:
        if len(self.samples) < 2:
            return self.median_ms
        return statistics.quantiles(self.samples, n=100, method="inclusive")[pct - 1] * 1000

    def summary(self) -> dict:
        return {
            "requests": len(self.samples),
            "median_ms": round(self.median_ms, 3),
            "p90_ms": round(self.percentile_ms(90), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "max_ms": round(max(self.samples) * 1000, 3),
        }


def sequential_latencies(
    server: h.Stack,
    paths: list[str],
    *,
    budget_seconds: float = 60.0,
    headers: dict[str, str] | None = None,
) -> Latencies:
    """Each path once, one after the other on one client (the harness's timed requests: a
    new connection each; uWSGI's http-socket closes it after every answer anyway)."""
    timed = h.timed_requests(server.http, paths, seconds=budget_seconds, headers=headers)
    if len(timed) < len(paths):
        raise BenchError(f"{server.name}: latency run passed {budget_seconds:.0f}s")
    answers = zip(paths, timed, strict=True)
    if bad := [(path, status) for path, (_seconds, status) in answers if status != 200]:
        raise BenchError(f"{server.name}: {len(bad)} answers not 200, e.g. {bad[0]}")
    return Latencies([seconds for seconds, _status in timed])


# ---------------------------------------------------------------- load rounds

MAX_ERROR_SHARE = 0.01


def choose_load_generator(kind: str = "auto", connections: int = 4) -> h.Wrk | h.Hammer:
    """``wrk`` (a prerequisite: docs/testing.md, .ci/run), else the harness's client
    threads."""
    if kind == "python":
        return h.Hammer(connections)
    if not h.missing_binaries(h.WRK):
        return h.Wrk(connections)
    if kind == "wrk":
        raise BenchError("wrk is not installed (apt-get install wrk).")
    say("wrk unavailable; using the Python load generator")
    return h.Hammer(connections)


def alternate(rounds: int, sides: list) -> Iterator[tuple[int, object]]:
    """Rounds of every side, the order reversed each round (A B, B A, ...) to cancel drift."""
    for n in range(rounds):
        for side in sides if n % 2 == 0 else reversed(sides):
            yield n, side


@dataclass
class Throughput:
    """One server's load rounds: their sum and each round's requests per second."""

    total: h.Counted = field(default_factory=lambda: h.Counted(0, 0.0, 0))
    rounds_rps: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the server's own processes' (cpu_seconds above)

    @property
    def rps(self) -> float:
        return self.total.rps

    @property
    def cpu_ms(self) -> float:
        """CPU milliseconds per request (it too grows when other work shares the cores)."""
        return self.cpu_seconds / max(self.total.requests, 1) * 1000

    def ratios(self, other: Throughput) -> list[float]:
        return [
            round(a / b, 3) for a, b in zip(self.rounds_rps, other.rounds_rps, strict=True) if b
        ]


def throughput(
    ctx: Context,
    servers: list,
    path: str,
    *,
    rounds: int,
    seconds: float,
    warmup: float = 2.0,
    before_round=None,
    after_round=None,
    tolerate_errors: tuple = (),
    headers: dict[str, str] | None = None,
) -> dict[str, Throughput]:
    """Warm each server up, then alternating load rounds of ``path`` (with ``headers``);
    ``before_round(server)`` and ``after_round(server)`` run around each round (outside
    the timed part)."""

    def one_round(server, seconds: float) -> tuple[h.Counted, float]:
        cpu = cpu_seconds(server)
        if before_round:
            before_round(server)
        load = ctx.load.run(server.url(path), seconds, headers)
        if after_round:
            after_round(server)
        return load, cpu_seconds(server) - cpu

    for server in servers:
        one_round(server, warmup)
    measured = {server.name: Throughput() for server in servers}
    for _n, server in alternate(rounds, servers):
        load, cpu = one_round(server, seconds)
        if load.requests == 0:
            raise BenchError(f"{server.name}: the load generator completed no request.")
        if load.errors > load.requests * MAX_ERROR_SHARE:
            message = f"{server.name}: {load.errors} errors in {load.requests} requests"
            if server not in tolerate_errors:
                raise BenchError(f"{message} (see {server.uwsgi_log()}).")
            say(f"{message} (see {server.uwsgi_log()})")
        got = measured[server.name]
        got.total = h.Counted(
            got.total.requests + load.requests,
            got.total.seconds + load.seconds,
            got.total.errors + load.errors,
        )
        got.rounds_rps.append(round(load.rps, 1))
        got.cpu_seconds += cpu
        say(
            f"{server.name}: {load.rps:,.0f} req/s ({load.requests:,} in {load.seconds:.1f}s),"
            f" {cpu / max(load.requests, 1) * 1000:.2f} ms CPU a request"
        )
    return measured
