"""Shared pieces of the benchmarks: MariaDB catalogs, uWSGI servers and the worker beside
them, load and latency.

Processes, ports, HTTP, MariaDB, Redis and moto come from the system tests' harness
(tests/system/harness.py); what is here is what only the benchmarks need. Every server
listens on 127.0.0.1 only; every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import contextlib
import operator
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
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

# Identical for every server a benchmark compares, so only the application differs.
UWSGI_PROCESSES = 2
SERVER_START_SECONDS = 60
SERVER_STOP_SECONDS = 15
HTTP_TIMEOUT_SECONDS = 10


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (not a missed target)."""


def say(message: str) -> None:
    print(f"  {message}", flush=True)


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

    load: LoadGenerator
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


def app_environment(database: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the service runs with in production, pointed at ``database``;
    without Redis unless ``extra`` names one (REDIS_URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "REDIS_"))}
    env.update(
        {
            "APP_ENV": "production",
            "DATABASE_URL": MARIADB.url(database),
            "FLASK_APP": "wsgi.py",
            "MAIL_BACKEND": "console",  # notifications are logged, never sent
        }
    )
    if len(env.get("SECRET_KEY", "").encode()) < 32:
        env["SECRET_KEY"] = secrets.token_urlsafe(48)
    env.update(extra or {})
    if not env.get("RATELIMIT_STORAGE_URI") and not env.get("REDIS_URL"):
        # One server on one machine: login limits per process are what is measured here.
        env.update(RATELIMIT_STORAGE_URI="memory://", LOGIN_LIMITS_PER_PROCESS="true")
    return env


def flask_command(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    """Run ``.venv/bin/flask <args>`` (an operator command) and return its output."""
    done = h.run([VENV_BIN / "flask", *args], timeout, cwd=REPO_ROOT, env=env)
    if done.returncode != 0:
        raise BenchError(
            f"flask {' '.join(args[:2])} failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def create_admin(env: dict[str, str], email: str, password: str, fullname: str) -> None:
    """An admin account made the operator's way: ``flask users create-admin``."""
    args = ["--email", email, "--password", password, "--fullname", fullname]
    flask_command(["users", "create-admin", *args], env)


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
        yield (
            sku,
            None if is_dead else sku.lower(),
            f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {i}",
            f"{rng.randint(100, 2_000_000) / 100:.2f}",
            marks[order[i] % len(marks)],
            rng.randint(0, 500) if rng.random() > 0.1 else 0,
            created,
            created,
            created + timedelta(days=1) if is_dead else None,
        )


INSERT_PRODUCT = (
    "INSERT INTO products (sku, sku_key, name, price, mark, quantity, created_at, updated_at,"
    " deleted_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


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
) -> Catalog:
    """Recreate ``database``, migrate it and fill it with ``size`` live products."""
    started = time.monotonic()
    recreate_database(database)
    flask_command(["db", "upgrade"], env)  # the schema by the service's migrations
    mark_names = [f"brand{n:02d}" for n in range(marks)]
    rng = random.Random(seed)
    live_per_mark = dict.fromkeys(mark_names, 0)
    sample_skus: list[str] = []
    with contextlib.closing(connect(database)) as conn, conn.cursor() as cur:
        # pymysql sends each executemany batch as multi-row INSERT statements.
        for batch in chunks(product_rows(size, mark_names, deleted_share, rng), 5_000):
            cur.executemany(INSERT_PRODUCT, batch)
            for row in batch:
                if row[8] is None:
                    live_per_mark[row[4]] += 1
                    if len(sample_skus) < 1000 and rng.random() < 0.05:
                        sample_skus.append(row[0])
        cur.execute("ANALYZE TABLE products")
        cur.fetchall()
    elapsed = time.monotonic() - started
    say(f"{database}: {size:,} live products over {marks} marks in {elapsed:.1f}s")
    return Catalog(database, size, mark_names, live_per_mark, sample_skus, elapsed)


# ---------------------------------------------------------------- uWSGI and the worker


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uwsgi_command(wsgi_file: str, port: int, processes: int = UWSGI_PROCESSES) -> list[str]:
    """The one uWSGI command line every benchmarked server is started with."""
    return [
        str(VENV_BIN / "uwsgi"),
        "--http-socket", f"{HOST}:{port}",
        "--chdir", str(REPO_ROOT),
        "--wsgi-file", wsgi_file,
        "--callable", "app",
        "--master",
        "--processes", str(processes),
        "--die-on-term",
        "--need-app",
        "--disable-logging",
        "--ignore-sigpipe",
        "--ignore-write-errors",
        "--disable-write-exception",
    ]  # fmt: skip


class UwsgiServer:
    """A uWSGI server for one WSGI file on a free loopback port, stopped on exit; with
    ``worker=True``, `flask worker` (views stream, emails) runs beside it, with the same
    environment, as uWSGI's attached daemon does in production."""

    def __init__(
        self,
        name: str,
        wsgi_file: str,
        env: dict[str, str],
        ready_path: str = "/",
        *,
        worker: bool = False,
    ) -> None:
        self.name, self.wsgi_file, self.env, self.ready_path = name, wsgi_file, env, ready_path
        self.port = h.free_port()
        self.http = h.Http(self.port, timeout=HTTP_TIMEOUT_SECONDS)
        self.log_path = RESULTS_DIR / f"uwsgi-{name}.log"
        self.proc: subprocess.Popen | None = None
        self.with_worker = worker
        self.worker: subprocess.Popen | None = None

    def __enter__(self) -> UwsgiServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def start(self) -> None:
        self.log_path.unlink(missing_ok=True)
        command = uwsgi_command(self.wsgi_file, self.port)
        self.proc = reaper().start(command, self.log_path.name, self.env, cwd=REPO_ROOT)
        try:
            h.wait_until(f"uWSGI for {self.name}", self._ready, SERVER_START_SECONDS)
            if self.with_worker:
                self.start_worker()
        except BaseException:
            self.stop()
            raise
        say(f"{self.name}: uWSGI pid {self.proc.pid} on {HOST}:{self.port}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise BenchError(
                f"uWSGI for {self.name} exited with {self.proc.returncode}:\n"
                f"{h.tail(self.log_path)}"
            )
        return self.http.status(self.ready_path) == 200

    def start_worker(self) -> None:
        log = RESULTS_DIR / f"worker-{self.name}.log"
        log.unlink(missing_ok=True)
        command = [VENV_BIN / "flask", "worker"]
        self.worker = reaper().start(command, log.name, self.env, cwd=REPO_ROOT)
        say(f"{self.name}: flask worker pid {self.worker.pid} (log {log.name})")

    def stop_worker(self) -> int | None:
        """SIGTERM, the worker's graceful stop (it writes what the stream still holds)."""
        worker, self.worker = self.worker, None
        if worker is None:
            return None
        code = reaper().stop(worker, signal.SIGTERM, SERVER_STOP_SECONDS)
        say(f"{self.name}: worker stopped (exit {code})")
        return code

    def worker_cpu_seconds(self) -> float:
        return cpu_seconds(self.worker.pid) if self.worker is not None else 0.0

    def cpu_seconds(self) -> float:
        """CPU used so far by the server's own processes: uWSGI's master and workers, the
        worker beside it, and the run's redis-server if the server uses it (MariaDB is
        shared with everything else on the machine: not counted)."""
        if self.proc is None:
            return 0.0
        pids = [self.proc.pid, *reaper().descendants(self.proc.pid)]
        if "redis" in _parts and self.env.get("REDIS_URL"):
            pids.append(_parts["redis"].process.pid)
        return sum(map(cpu_seconds, pids)) + self.worker_cpu_seconds()

    def stop(self) -> None:
        self.stop_worker()
        proc, self.proc = self.proc, None
        if proc is not None:
            reaper().stop(proc, signal.SIGTERM, SERVER_STOP_SECONDS)
            # Workers outliving their master would keep the port: end what is left of it.
            reaper().kill_tree(proc.pid)

    # ---- requests

    def json(self, method: str, path: str, payload: object = None, *, token=None, expect=200):
        """Send JSON (if any) with an optional bearer token; the decoded answer."""
        answer = self.http.request(method, path, payload, token=token)
        if answer.status != expect:
            raise BenchError(
                f"{method} {path} on {self.name}: HTTP {answer.status}: {answer.body[:300]!r}"
            )
        return answer.json

    def get(self, path: str) -> h.Response:
        answer = self.http.get(path)
        if answer.status != 200:
            raise BenchError(
                f"GET {path} on {self.name}: HTTP {answer.status}: {answer.body[:300]!r}"
            )
        return answer


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
    server: UwsgiServer,
    paths: list[str],
    *,
    budget_seconds: float = 60.0,
    headers: dict[str, str] | None = None,
) -> Latencies:
    """Request each path once, one after the other on one client; time each round trip
    (a new connection each: uWSGI's http-socket closes it after every answer anyway)."""
    result = Latencies()
    deadline = time.monotonic() + budget_seconds
    for path in paths:
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name}: latency run passed {budget_seconds:.0f}s")
        began = time.perf_counter()
        answer = server.http.get(path, headers=headers)
        result.samples.append(time.perf_counter() - began)
        if answer.status != 200:
            raise BenchError(
                f"GET {path} on {server.name}: HTTP {answer.status}: {answer.body[:300]!r}"
            )
    return result


# ---------------------------------------------------------------- load generators

MAX_ERROR_SHARE = 0.01


@dataclass
class Load:
    """What one load run achieved against one URL."""

    requests: int
    seconds: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class LoadGenerator:
    name = "none"

    def run(self, url: str, seconds: float) -> Load:
        raise NotImplementedError


class Wrk(LoadGenerator):
    """wrk with one thread (the second core stays with the server) and a few connections."""

    def __init__(self, path: str, connections: int = 4, threads: int = 1) -> None:
        self.path = path
        self.connections = connections
        self.threads = threads
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        lines = (version.stdout + version.stderr).strip().splitlines()
        release = lines[0].split(" [")[0] if lines else "wrk"
        self.name = f"{release}, {threads} thread, {connections} connections"

    def run(self, url: str, seconds: float) -> Load:
        done = subprocess.run(
            [
                self.path,
                f"-t{self.threads}",
                f"-c{self.connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "5s",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"wrk failed (exit {done.returncode}): {done.stderr.strip()}")
        return parse_wrk(done.stdout)


def parse_wrk(output: str) -> Load:
    found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output)
    if not found:
        raise BenchError(f"Could not read wrk's output:\n{output}")
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[found.group(3)]
    errors = 0
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(non_2xx.group(1))
    if sock := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        connect, _read, write, timeout = (int(n) for n in sock.groups())
        # uWSGI's http-socket closes the connection after every answer, which wrk counts as
        # a read error; the answer itself was complete and is counted in the requests.
        errors += connect + write + timeout
    return Load(int(found.group(1)), float(found.group(2)) * unit, errors)


class ThreadedClient(LoadGenerator):
    """Python threads, one request at a time each: weaker than wrk, same for both sides."""

    def __init__(self, connections: int = 4, max_requests: int = 1_000_000) -> None:
        self.connections = connections
        self.max_requests = max_requests
        self.name = f"python http.client, {connections} threads"

    def run(self, url: str, seconds: float) -> Load:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lock = threading.Lock()
        totals = {"requests": 0, "errors": 0}
        per_thread = self.max_requests // self.connections
        deadline = time.monotonic() + seconds

        def worker() -> None:
            client, done, errors = h.Http(parts.port, parts.hostname, timeout=5), 0, 0
            while done < per_thread and time.monotonic() < deadline:
                errors += client.status(path, timeout=5) != 200
                done += 1
            with lock:
                totals["requests"] += done
                totals["errors"] += errors

        began = time.monotonic()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 30)
        return Load(totals["requests"], time.monotonic() - began, totals["errors"])


def choose_load_generator(kind: str = "auto", connections: int = 4) -> LoadGenerator:
    """``wrk`` (a prerequisite: docs/testing.md, .ci/run), else the threaded Python client."""
    if kind == "python":
        return ThreadedClient(connections)
    if path := shutil.which("wrk"):
        return Wrk(path, connections)
    if kind == "wrk":
        raise BenchError("wrk is not installed (apt-get install wrk).")
    say("wrk unavailable; using the Python load generator")
    return ThreadedClient(connections)


def alternate(rounds: int, sides: list) -> Iterator[tuple[int, object]]:
    """Rounds of every side, the order reversed each round (A B, B A, ...) to cancel drift."""
    for n in range(rounds):
        for side in sides if n % 2 == 0 else reversed(sides):
            yield n, side


@dataclass
class Throughput:
    """One server's load rounds: their sum and each round's requests per second."""

    total: Load = field(default_factory=lambda: Load(0, 0.0, 0))
    rounds_rps: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the server's own processes' (UwsgiServer.cpu_seconds)

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
    servers: list[UwsgiServer],
    path: str,
    *,
    rounds: int,
    seconds: float,
    warmup: float = 2.0,
    before_round=None,
    after_round=None,
    tolerate_errors: tuple[UwsgiServer, ...] = (),
) -> dict[str, Throughput]:
    """Warm each server up, then alternating load rounds of ``path``; ``before_round(server)``
    and ``after_round(server)`` run around each round (outside the timed part)."""

    def one_round(server: UwsgiServer, seconds: float) -> tuple[Load, float]:
        cpu = server.cpu_seconds()
        if before_round:
            before_round(server)
        load = ctx.load.run(server.url(path), seconds)
        if after_round:
            after_round(server)
        return load, server.cpu_seconds() - cpu

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
                raise BenchError(f"{message} (see {server.log_path}).")
            say(f"{message} (see {server.log_path})")
        got = measured[server.name]
        got.total = Load(
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
