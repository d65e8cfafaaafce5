"""Shared pieces of the benchmarks: MariaDB catalogs, uWSGI servers, load and latency.

Every server listens on 127.0.0.1 only; every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import secrets
import select
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

import pymysql

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
# The system tests' harness: the same process reaper, ports, HTTP client and moto server.
from tests.system.harness import HOST, Http, Moto, Reaper, free_port  # noqa: E402

BENCH_DIR = REPO_ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = REPO_ROOT / ".venv" / "bin"

# The MariaDB server the catalogs are created on (root with an empty password by default).
MARIADB_HOST = os.environ.get("BENCH_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("BENCH_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("BENCH_MARIADB_USER", "root")
MARIADB_PASSWORD = os.environ.get("BENCH_MARIADB_PASSWORD", "")

# Identical for every server a benchmark compares, so only the application differs.
UWSGI_PROCESSES = 2
SERVER_START_SECONDS = 60
SERVER_STOP_SECONDS = 15
GRACEFUL_STOP_SECONDS = 60
HTTP_TIMEOUT_SECONDS = 10


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (not a missed target)."""


def say(message: str) -> None:
    print(f"  {message}", flush=True)


_reaper: Reaper | None = None


def reaper() -> Reaper:
    """The one Reaper of a benchmark run: every server is started, and ended, through it."""
    global _reaper
    if _reaper is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        _reaper = Reaper(RESULTS_DIR)
    return _reaper


def start_moto() -> Moto:
    """moto's server (SES) on a free loopback port, through the run's reaper."""
    moto = Moto(reaper(), str(VENV_BIN / "moto_server"))
    say(f"moto-ses: pid {moto.process.pid} on {HOST}:{moto.port}")
    return moto


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Target:
    """A bound on a ratio: ``>= 0.5`` or ``<= 1.5``; ``== 1`` for an exact count."""

    op: str
    bound: float

    def met(self, ratio: float) -> bool:
        if self.op == "==":
            return ratio == self.bound
        return ratio >= self.bound if self.op == ">=" else ratio <= self.bound

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


def database_url(name: str) -> str:
    """The URL form the service reads from DATABASE_URL (it picks the pymysql driver)."""
    auth = MARIADB_USER + (f":{MARIADB_PASSWORD}" if MARIADB_PASSWORD else "")
    return f"mysql://{auth}@{MARIADB_HOST}:{MARIADB_PORT}/{name}"


def connect(database: str | None = None) -> pymysql.Connection:
    return pymysql.connect(
        host=MARIADB_HOST,
        port=MARIADB_PORT,
        user=MARIADB_USER,
        password=MARIADB_PASSWORD,
        database=database,
        charset="utf8mb4",
        connect_timeout=10,
        autocommit=False,
    )


def check_database_name(name: str) -> str:
    if not re.fullmatch(r"bench_[a-z0-9_]{1,56}", name):
        raise BenchError(f"Refusing to touch database {name!r}: benchmark names start with bench_.")
    return name


def recreate_database(name: str) -> None:
    """Drop and create an empty database with the service's charset and collation."""
    check_database_name(name)
    with contextlib.closing(connect()) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")


def drop_database(name: str) -> None:
    check_database_name(name)
    with contextlib.closing(connect()) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def app_environment(database: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the service runs with in production, pointed at ``database``."""
    env = dict(os.environ)
    env.update(
        {
            "APP_ENV": "production",
            "DATABASE_URL": database_url(database),
            "FLASK_APP": "wsgi.py",
            "MAIL_BACKEND": "console",  # notifications are logged, never sent
        }
    )
    if len(env.get("SECRET_KEY", "").encode()) < 32:
        env["SECRET_KEY"] = secrets.token_urlsafe(48)
    env.update(extra or {})
    return env


def migrate(database: str, env: dict[str, str]) -> None:
    """Build the schema with the service's own migrations (``flask db upgrade``)."""
    done = subprocess.run(
        [str(VENV_BIN / "flask"), "db", "upgrade"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            f"flask db upgrade failed on {database} (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )


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
    migrate(database, env)
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
        conn.commit()
        cur.execute("ANALYZE TABLE products")
        cur.fetchall()
    elapsed = time.monotonic() - started
    say(f"{database}: {size:,} live products over {marks} marks in {elapsed:.1f}s")
    return Catalog(database, size, mark_names, live_per_mark, sample_skus, elapsed)


# ---------------------------------------------------------------- uWSGI


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


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class UwsgiServer:
    """A uWSGI server for one WSGI file, on a free loopback port, stopped on exit."""

    def __init__(
        self,
        name: str,
        wsgi_file: str,
        env: dict[str, str],
        ready_path: str = "/",
        *,
        master_fifo: bool = False,
    ) -> None:
        self.name = name
        self.wsgi_file = wsgi_file
        self.env = env
        self.ready_path = ready_path
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = RESULTS_DIR / f"uwsgi-{name}.log"
        # With a master FIFO, stop_gracefully() can ask for uWSGI's graceful shutdown ("q"),
        # in which the workers run their exit hooks (SIGTERM with die-on-term does not).
        self.fifo_path = RESULTS_DIR / f"uwsgi-{name}.fifo" if master_fifo else None

    def __enter__(self) -> UwsgiServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def start(self) -> None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = uwsgi_command(self.wsgi_file, self.port)
        if self.fifo_path is not None:
            self.fifo_path.unlink(missing_ok=True)
            command += ["--master-fifo", str(self.fifo_path)]
        self.log_path.unlink(missing_ok=True)
        self.proc = reaper().start(command, self.log_path.name, self.env, cwd=REPO_ROOT)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        say(f"{self.name}: uWSGI pid {self.proc.pid} on {HOST}:{self.port}")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_SECONDS
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"uWSGI for {self.name} exited with {self.proc.returncode}:\n"
                    f"{log_tail(self.log_path)}"
                )
            try:
                status, _headers, _body = http_get(HOST, self.port, self.ready_path, timeout=2)
            except OSError as exc:
                last = str(exc)
            else:
                if status == 200:
                    return
                last = f"HTTP {status}"
            time.sleep(0.2)
        raise BenchError(
            f"uWSGI for {self.name} not ready after {SERVER_START_SECONDS}s ({last}):\n"
            f"{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        reaper().stop(proc, signal.SIGTERM, SERVER_STOP_SECONDS)
        # Workers outliving their master would keep the port: end what is left of it.
        reaper().kill_tree(proc.pid)
        if self.fifo_path is not None:
            self.fifo_path.unlink(missing_ok=True)

    def stop_gracefully(self, timeout: float = GRACEFUL_STOP_SECONDS) -> None:
        """uWSGI's graceful shutdown ("q" on the master FIFO): workers finish their requests
        and run their exit hooks (the app's buffers are flushed) before the master exits.

        Raises BenchError when the server has no FIFO, was already gone, or did not stop
        within ``timeout`` (it is then killed); the server is stopped either way.
        """
        proc = self.proc
        try:
            if self.fifo_path is None:
                raise BenchError(f"{self.name}: started without a master FIFO.")
            if proc is None or proc.poll() is not None:
                raise BenchError(f"{self.name}: uWSGI was not running at the graceful stop.")
            # Non-blocking: opening a FIFO nobody reads fails at once instead of hanging.
            fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, b"q")
            finally:
                os.close(fd)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"{self.name}: no graceful stop within {timeout:.0f}s:\n"
                    f"{log_tail(self.log_path)}"
                ) from None
            say(f"{self.name}: stopped gracefully (exit {proc.returncode})")
        finally:
            self.stop()


# ---------------------------------------------------------------- HTTP


def http_get(
    host: str, port: int, path: str, timeout: float = HTTP_TIMEOUT_SECONDS
) -> tuple[int, dict[str, str], bytes]:
    return http_request(host, port, "GET", path, timeout=timeout)


def fetch(
    conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET ``path`` on a kept-alive connection, reconnecting when the server has closed it.

    uWSGI's http-socket closes the connection after each answer without saying so
    (no ``Connection: close``), so a reused connection is first checked for that close.
    A request that still fails on a reused connection is retried once on a new one.
    """
    reused = conn.sock is not None
    if reused and select.select([conn.sock], [], [], 0)[0]:
        conn.close()  # readable while idle: the server has closed its end
        reused = False
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        if not reused:
            raise
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
    if resp.will_close:
        conn.close()
    return resp.status, body


def get_json(server: UwsgiServer, path: str) -> tuple[dict[str, str], object, bytes]:
    status, headers, body = http_get(HOST, server.port, path)
    if status != 200:
        raise BenchError(f"GET {path} on {server.name}: HTTP {status}: {body[:300]!r}")
    return headers, json.loads(body), body


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


def sequential_latencies(
    server: UwsgiServer,
    paths: list[str],
    *,
    budget_seconds: float = 60.0,
    headers: dict[str, str] | None = None,
) -> Latencies:
    """Request each path once, one after the other on one client; time each round trip.

    The connection is reopened whenever the server closes it, and that cost is counted.
    """
    conn = http.client.HTTPConnection(HOST, server.port, timeout=HTTP_TIMEOUT_SECONDS)
    result = Latencies()
    deadline = time.monotonic() + budget_seconds
    try:
        for path in paths:
            if time.monotonic() > deadline:
                raise BenchError(f"{server.name}: latency run passed {budget_seconds:.0f}s")
            began = time.perf_counter()
            status, body = fetch(conn, path, headers)
            result.samples.append(time.perf_counter() - began)
            if status != 200:
                raise BenchError(f"GET {path} on {server.name}: HTTP {status}: {body[:300]!r}")
    finally:
        conn.close()
    return result


# ---------------------------------------------------------------- load generators


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
    """Keep-alive http.client connections, one per thread: weaker than wrk, same for both sides."""

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
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            done = errors = 0
            try:
                while done < per_thread and time.monotonic() < deadline:
                    try:
                        status, _body = fetch(conn, path)
                    except (OSError, http.client.HTTPException):
                        status = 0
                        conn.close()
                    errors += status != 200
                    done += 1
            finally:
                conn.close()
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


def install_wrk() -> str | None:
    """Install Debian's wrk when running as root with apt-get; None when that fails."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt_get(*args: str) -> bool:
        try:
            done = subprocess.run(
                ["apt-get", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            say(f"apt-get {' '.join(args)} failed: {exc}")
            return False
        if done.returncode != 0:
            say(f"apt-get {' '.join(args)} failed: {done.stderr.strip()[-300:]}")
        return done.returncode == 0

    say("wrk is missing; trying apt-get install -y wrk")
    # A fresh machine may have no package lists yet: update once, then try again.
    if apt_get("install", "-y", "-qq", "wrk") or (
        apt_get("update", "-qq") and apt_get("install", "-y", "-qq", "wrk")
    ):
        return shutil.which("wrk")
    return None


def choose_load_generator(kind: str = "auto", connections: int = 4) -> LoadGenerator:
    """``wrk`` (installed if need be), else the threaded Python client."""
    if kind == "python":
        return ThreadedClient(connections)
    path = shutil.which("wrk") or (install_wrk() if kind in ("auto", "wrk") else None)
    if path:
        return Wrk(path, connections)
    if kind == "wrk":
        raise BenchError("wrk is not installed and could not be installed.")
    say("wrk unavailable; using the Python load generator")
    return ThreadedClient(connections)


def alternate(rounds: int, sides: list) -> Iterator[tuple[int, object]]:
    """Rounds of every side, the order reversed each round (A B, B A, ...) to cancel drift."""
    for n in range(rounds):
        for side in sides if n % 2 == 0 else reversed(sides):
            yield n, side


# ---------------------------------------------------------------- admins, tokens, JSON calls


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT_SECONDS,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (uWSGI's http-socket closes it after each answer)."""
    answer = Http(port, host, timeout).request(method, path, body=body, headers=headers)
    return answer.status, answer.headers, answer.body


def json_request(
    server: UwsgiServer,
    method: str,
    path: str,
    payload: object = None,
    *,
    token: str | None = None,
    expect: int = 200,
) -> object:
    """Send JSON (if any) with an optional bearer token; return the decoded answer."""
    headers = {"Accept": "application/json"}
    body = None
    if payload is not None:
        body = json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, _headers, answer = http_request(
        HOST, server.port, method, path, body=body, headers=headers
    )
    if status != expect:
        raise BenchError(f"{method} {path} on {server.name}: HTTP {status}: {answer[:300]!r}")
    return json.loads(answer) if answer else None


def flask_command(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    """Run ``.venv/bin/flask <args>`` (an operator command) and return its output."""
    done = subprocess.run(
        [str(VENV_BIN / "flask"), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            f"flask {' '.join(args[:2])} failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def create_admin(env: dict[str, str], email: str, password: str, fullname: str) -> None:
    """An admin account made the operator's way: ``flask users create-admin``."""
    flask_command(
        [
            "users", "create-admin",
            "--email", email, "--password", password, "--fullname", fullname,
        ],
        env,
    )  # fmt: skip


def login(server: UwsgiServer, email: str, password: str) -> str:
    """POST /users/login; the bearer token."""
    answer = json_request(server, "POST", "/users/login", {"email": email, "password": password})
    token = answer.get("access_token") if isinstance(answer, dict) else None
    if not token:
        raise BenchError(f"{server.name}: login of {email} returned no access_token: {answer!r}")
    return token


def scalar(database: str, sql: str, args: tuple | dict | None = None):
    """The first column of the first row of a query on ``database`` (a fresh connection)."""
    check_database_name(database)
    with contextlib.closing(connect(database)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
        return row[0] if row else None
