"""The parts the system tests, the benchmarks (and the unit tests' Redis) run: processes,
HTTP, a private MariaDB and Redis, moto's server as SES, a TCP fault proxy, the nginx +
uWSGI stack, and the load put on it (client threads, wrk).

Everything listens on 127.0.0.1 and every process is started through a Reaper, which ends
only what it started (by process group and by descendance), never anything by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import email
import fcntl
import hashlib
import http.client
import itertools
import json
import multiprocessing
import os
import queue
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pymysql

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_PYTHON = "/usr/bin/python3"
UWSGI = "/usr/bin/uwsgi"
NGINX = "/usr/sbin/nginx"
MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"
REDIS_SERVER = "/usr/bin/redis-server"
WRK = "/usr/bin/wrk"
PYTHON_PLUGIN = "/usr/lib/uwsgi/plugins/python3_plugin.so"
# Debian's uWSGI embeds Debian's Python: the app's virtualenv for it is built with that
# Python, kept between runs outside the work tree so that www-data can read it.
VENV_CACHE = Path(os.environ.get("SYSTEM_TEST_VENV_CACHE", "/var/cache/marketplace-system"))
APP_FILES = ("app", "migrations", "wsgi.py")  # what the Dockerfile copies into /app
APP_USER = "www-data"  # the image's user is `app`; this machine has www-data
EMAIL_SOURCE = "noreply@marketplace.test"
NOTIFICATION_HEADER = "X-Marketplace-Notification-Id"
# The worker process (the image's worker role): the emails and the views stream.
DAEMON_PATTERN = re.compile(r"flask --app wsgi worker")
PR_SET_CHILD_SUBREAPER = 36
# The emails with what their change event says of them (MariaDB), as one table to query:
# id, recipient, status, sku, event (created, updated, deleted), changes.
EMAILS = (
    "(SELECT n.id, n.recipient, n.status, e.sku, SUBSTRING_INDEX(e.type, '.', -1) AS event,"
    " e.changes FROM notifications n JOIN events e ON e.row_id = n.event_row_id) AS emails"
)


class HarnessError(RuntimeError):
    """A part of the system under test could not be started or driven."""


def missing_binaries(*paths: str) -> list[str]:
    return [p for p in paths if not (shutil.which(p) or Path(p).exists())]


def wait_until(what: str, predicate: Callable[[], object], timeout: float, every: float = 0.2):
    """Poll until ``predicate()`` is truthy and return it; HarnessError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- processes


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def uid_of(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            procs[int(entry)] = (int(fields[1]), fields[0])
    return procs


def describe(pid: int) -> str:
    return f"{pid} (uid {uid_of(pid)}): {cmdline(pid)[:120]}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Reaper:
    """Starts processes, each in its own session, and ends only those and what they started.

    This process becomes a child subreaper, so a daemon orphaned below it (a uWSGI worker
    whose master was killed, say) stays its descendant and is still found and ended;
    ``adopt_orphans=False`` leaves that alone (for a few servers that do not daemonize, in
    a process that runs other things too: the unit tests' Redis).
    """

    def __init__(self, workdir: Path, adopt_orphans: bool = True) -> None:
        self.workdir = workdir
        libc = ctypes.CDLL(None, use_errno=True)
        if adopt_orphans and libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.started: list[subprocess.Popen] = []
        self.services: set[int] = set()  # long-lived helpers: MariaDB, Redis, moto

    def start(
        self, args: list, log: str, env: dict | None = None, service: bool = False, **kwargs
    ) -> subprocess.Popen:
        """Start ``args`` with its output appended to ``workdir/log``; a ``service`` is
        not counted by ``running()``."""
        with open(self.workdir / log, "ab") as out:
            process = subprocess.Popen(
                [str(a) for a in args], env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, **kwargs,
            )  # fmt: skip
        self.started.append(process)
        if service:
            self.services.add(process.pid)
        return process

    def reap_orphans(self) -> None:
        mine = {p.pid for p in self.started}
        for pid, (ppid, state) in process_table().items():
            if ppid == os.getpid() and state == "Z" and pid not in mine:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def descendants(self, of: int | None = None) -> list[int]:
        """Live descendants of ``of`` (default: this process)."""
        self.reap_orphans()
        procs = process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _state) in procs.items():
            children.setdefault(ppid, []).append(pid)
        found, todo = [], [of or os.getpid()]
        while todo:
            for child in children.get(todo.pop(), []):
                if procs[child][1] != "Z":
                    found.append(child)
                todo.append(child)
        return sorted(found)

    def running(self, services: bool = False) -> list[str]:
        """What this reaper started that still runs (the services too if asked)."""
        skip = set() if services else set(self.services)
        for pid in list(skip):
            skip.update(self.descendants(pid))
        return [describe(p) for p in self.descendants() if p not in skip]

    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30):
        """Signal ``process`` and wait for it; SIGKILL its group if it does not exit."""
        if process.poll() is None:
            process.send_signal(sig)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_tree(process.pid)
        return process.wait(10)

    def kill_tree(self, pid: int) -> None:
        for victim in [*self.descendants(pid), pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)

    def kill_all(self) -> list[str]:
        """SIGKILL whatever is left of what this reaper started; return what that was
        (the services but)."""
        left = self.running()
        for _ in range(3):
            for process in self.started:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
            pids = self.descendants()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        self.reap_orphans()
        return left


# ---------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return self.body.decode(errors="replace")


class Http:
    """JSON over HTTP/1.1 to one loopback port, a new connection per request."""

    def __init__(self, port: int, host: str = HOST, timeout: float = 15) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def request(
        self,
        method: str,
        path: str,
        json_body: object = None,
        *,
        token: str | None = None,
        headers: dict | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Response:
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            return Response(answer.status, dict(answer.getheaders()), answer.read())
        finally:
            conn.close()

    def get(self, path: str, **kwargs) -> Response:
        return self.request("GET", path, **kwargs)

    def status(self, path: str, timeout: float = 3) -> int | None:
        """The status of a GET, or None when there is no answer."""
        try:
            return self.get(path, timeout=timeout).status
        except (OSError, http.client.HTTPException):
            return None

    def login(self, email_address: str, password: str) -> str:
        answer = self.request(
            "POST", "/users/login", {"email": email_address, "password": password}
        )
        if answer.status != 200:
            raise HarnessError(f"login of {email_address}: {answer.status} {answer.json}")
        return answer.json["access_token"]

    def declared_body(self, path: str, length: int) -> int:
        """A POST that announces ``length`` bytes and sends none: answered from the headers."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.putrequest("POST", path)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(length))
            conn.endheaders()
            return conn.getresponse().status
        finally:
            conn.close()


# ---------------------------------------------------------------- MariaDB


# Loopback only; durability traded for speed (nothing here survives the run anyway).
SERVER_OPTIONS = (
    "--bind-address=127.0.0.1 --user=root --skip-log-bin --innodb-buffer-pool-size=128M"
    " --innodb-flush-log-at-trx-commit=2 --character-set-server=utf8mb4"
    " --collation-server=utf8mb4_unicode_ci"
)


def run(args: list, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to its end; its output captured as text."""
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


class MariaDB:
    """A MariaDB server: this machine's (``port=3306``, never stopped) or a private
    ``mariadbd`` of our own (its datadir, port and socket), which may be stopped, frozen
    (SIGSTOP) and restarted."""

    def __init__(self, port: int, user: str = "root", password: str = "") -> None:
        self.port, self.user, self.password = port, user, password
        self.process: subprocess.Popen | None = None

    @classmethod
    def private(cls, reaper: Reaper, workdir: Path, *options: str) -> MariaDB:
        """Install a datadir under ``workdir`` and start ``mariadbd`` on a free port.
        ``options`` are extra server options, e.g. ``--max-connections=20``."""
        datadir = workdir / "datadir"
        options_db = "--user=root --auth-root-authentication-method=normal --skip-test-db"
        done = run(
            [MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={datadir}", *options_db.split()]
        )
        if done.returncode != 0:
            raise HarnessError(f"mariadb-install-db failed:\n{done.stdout}{done.stderr}")
        server = cls(free_port())
        server.command = [
            MARIADBD, "--no-defaults", f"--datadir={datadir}", f"--port={server.port}",
            f"--socket={workdir / 'mysqld.sock'}", f"--pid-file={workdir / 'mysqld.pid'}",
            *SERVER_OPTIONS.split(), *options,
        ]  # fmt: skip
        server.reaper = reaper
        server.start()
        return server

    def start(self) -> None:
        """(Re)start the private server on its port and datadir; wait until it answers."""
        self.process = self.reaper.start(self.command, "mariadbd.log", service=True)

        def up() -> bool:
            if self.process.poll() is not None:
                raise HarnessError(f"mariadbd exited ({self.process.returncode})")
            return self.alive()

        wait_until("the private mariadbd", up, 60)

    def alive(self) -> bool:
        try:
            self.connect(timeout=2).close()
        except pymysql.MySQLError:
            return False
        return True

    def _own(self) -> subprocess.Popen:
        if self.process is None:
            raise HarnessError("only a private mariadbd may be stopped or frozen")
        return self.process

    def stop(self) -> None:
        """A clean shutdown (SIGTERM) of the private server."""
        self.reaper.stop(self._own(), signal.SIGTERM, timeout=60)

    def freeze(self) -> None:
        os.kill(self._own().pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self._own().pid, signal.SIGCONT)

    def url(self, database: str, port: int | None = None) -> str:
        """The service's DATABASE_URL; ``port``: through a FaultProxy's port instead."""
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"mysql://{auth}@{HOST}:{port or self.port}/{database}"

    def connect(self, database: str | None = None, timeout: float = 10) -> pymysql.Connection:
        return pymysql.connect(
            host=HOST, port=self.port, user=self.user, password=self.password,
            database=database, charset="utf8mb4", connect_timeout=timeout, autocommit=True,
        )  # fmt: skip

    def query(self, database: str | None, sql: str, *params) -> list[tuple]:
        with contextlib.closing(self.connect(database)) as conn, conn.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall())

    def create_database(self, name: str) -> str:
        """Drop and create ``name`` (utf8mb4_unicode_ci); return its URL."""
        self.query(None, f"DROP DATABASE IF EXISTS `{name}`")
        self.query(
            None, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(pymysql.MySQLError):
            self.query(None, f"DROP DATABASE IF EXISTS `{name}`")


class Redis:
    """A private ``redis-server`` on a free port: nothing saved to disk, or with
    ``persistent`` the configuration docs/views.md recommends (AOF, fsync every second).
    ``kill()`` (SIGKILL), ``start()`` again on the same port and directory, ``freeze()``
    and ``thaw()`` (SIGSTOP/SIGCONT) for the fault runs."""

    def __init__(self, reaper: Reaper, workdir: Path, persistent: bool = False) -> None:
        self.reaper = reaper
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.databases = itertools.count(1)
        persistence = "--appendonly yes --appendfsync everysec" if persistent else "--appendonly no"
        options = f"--bind {HOST} --port {self.port} {persistence} --dir {workdir} --databases 4096"
        self.command = [REDIS_SERVER, *options.split(), "--save", ""]
        self.start()

    def start(self) -> None:
        self.process = self.reaper.start(self.command, "redis.log", service=True)
        wait_until("redis-server", self.alive, 30)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def new_database(self) -> str:
        """The URL of a database no stack has used yet."""
        return f"redis://{HOST}:{self.port}/{next(self.databases)}"

    def alive(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


# ---------------------------------------------------------------- SES (moto)


@dataclass
class Email:
    to: str
    subject: str
    body: str
    headers: dict[str, str] = field(default_factory=dict)


class Moto:
    """moto's server standing in for SES; ``emails()`` is what it was asked to send."""

    def __init__(self, reaper: Reaper, moto_server: str) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.http = Http(self.port)
        self.process = reaper.start(
            [moto_server, "-H", HOST, "-p", self.port], "moto.log", {"PATH": SYSTEM_PATH}, True
        )
        wait_until("moto's server", lambda: self.http.status("/moto-api/data.json") == 200, 30)
        self.reset()

    def ses(self):
        import boto3

        return boto3.client(
            "ses", region_name="us-east-1", endpoint_url=self.url,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip

    def reset(self) -> None:
        """Forget every email and identity, then verify the sender again."""
        self.http.request("POST", "/moto-api/reset", body=b"")
        self.accept_sends()

    def reject_sends(self) -> None:
        """Every send fails with MessageRejected (the sender is no longer verified)."""
        self.ses().delete_identity(Identity=EMAIL_SOURCE)

    def accept_sends(self) -> None:
        self.ses().verify_email_identity(EmailAddress=EMAIL_SOURCE)

    def emails(self) -> list[Email]:
        data = self.http.get("/moto-api/data.json").json.get("ses", {})
        found = [
            Email(",".join(m["destinations"].get("ToAddresses", [])), m["subject"], m["body"])
            for m in data.get("Message", [])
        ]
        for m in data.get("RawMessage", []):
            parsed = email.message_from_string(m["raw_data"])
            part = next((p for p in parsed.walk() if not p.is_multipart()), parsed)
            found.append(
                Email(
                    parsed.get("To", ""),
                    str(parsed.get("Subject", "")),
                    part.get_payload(decode=True).decode(errors="replace"),
                    dict(parsed.items()),
                )
            )
        return found

    def sends_per_notification(self) -> Counter:
        """How many times each notification id was sent (its header, raw sends only)."""
        return Counter(
            e.headers[NOTIFICATION_HEADER]
            for e in self.emails()
            if NOTIFICATION_HEADER in e.headers
        )


# ---------------------------------------------------------------- the fault proxy


class FaultProxy:
    """A TCP proxy on loopback in front of ``target_port`` (MariaDB, moto...).

    ``mode``: ``pass``; ``drop_up``/``drop_down`` (bytes to / from the target are read and
    thrown away: a blackhole in one direction, e.g. COMMIT acknowledgements lost);
    ``freeze`` (bytes are held, both ways, until the mode changes). ``delay`` seconds are
    waited before each chunk is relayed. ``cut()`` closes every open connection.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.delay = 0.0
        self.changed = threading.Condition()
        self.connections: set[socket.socket] = set()
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode: str = "pass", delay: float = 0.0) -> None:
        with self.changed:
            self.mode, self.delay = mode, delay
            self.changed.notify_all()

    @contextlib.contextmanager
    def fault(self, mode: str, delay: float = 0.0):
        self.set(mode, delay)
        try:
            yield self
        finally:
            self.set()

    def cut(self) -> None:
        for sock in list(self.connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.connections.update((client, upstream))
            for src, dst, way in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(src, dst, way), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while chunk := src.recv(65536):
                with self.changed:
                    self.changed.wait_for(lambda: self.mode != "freeze")
                    mode, delay = self.mode, self.delay
                if delay:
                    time.sleep(delay)
                if mode != f"drop_{way}":
                    dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self.connections.discard(sock)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


# ---------------------------------------------------------------- the nginx + uWSGI stack


def debian_venv(source: Path = ROOT, cache: Path = VENV_CACHE) -> Path:
    """The app's virtualenv for Debian's uWSGI: Debian's python3 and requirements.txt, as
    in the image, installed by the Makefile's own step (its stock pip installs only the
    pinned uv of requirements-bootstrap.txt; uv installs the lock). One per (locks, Python)
    in ``cache``, built once under a lock and never rebuilt, so that runs from other trees
    at the same time are not disturbed."""
    version = run([SYSTEM_PYTHON, "--version"]).stdout
    locks = b"".join(
        (source / name).read_bytes() for name in ("requirements-bootstrap.txt", "requirements.txt")
    )
    stamp = hashlib.sha256(locks + version.encode())
    venv = cache / f"venv-{stamp.hexdigest()[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a build that was interrupted
        install = ["make", "-C", source, "--no-print-directory", f"PYTHON={SYSTEM_PYTHON}"]
        done = run([*install, f"VENV={venv}", f"{venv}/.runtime"], timeout=900)
        if done.returncode != 0:
            raise HarnessError(f"installing {venv} failed:\n{done.stderr[-3000:]}")
        (venv / ".complete").touch()
    return venv


def stage_app(source: Path, workdir: Path, wsgi: Path | None = None) -> Path:
    """The app's files as the Dockerfile lays them out in /app, readable by APP_USER;
    ``wsgi``: another WSGI file served in place of wsgi.py (the benchmarks' bare Flask)."""
    workdir.chmod(0o755)
    app_dir = workdir / "app"
    app_dir.mkdir()
    for name in APP_FILES:
        if (source / name).is_dir():
            shutil.copytree(
                source / name, app_dir / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(source / name, app_dir / name)
    if wsgi is not None:
        shutil.copy2(wsgi, app_dir / "wsgi.py")
    home = workdir / "home"
    home.mkdir()
    shutil.chown(home, APP_USER, APP_USER)
    return app_dir


@dataclass
class Deployment:
    """What every stack of a run shares: the source tree, the virtualenv, the app copy."""

    source: Path
    venv: Path
    app_dir: Path
    workdir: Path
    reaper: Reaper
    redis: Redis | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    def env(self, database_url: str, ses_url: str, **extra: object) -> dict[str, str]:
        """The container's environment (docker run -e ...), on this machine's loopback.
        With a Redis, REDIS_URL names a database of its own (as production's ElastiCache):
        no other stack's views stream is in it. ``REDIS_URL=""`` runs without Redis."""
        env = {
            "PATH": f"{self.venv}/bin:{SYSTEM_PATH}",
            "HOME": str(self.workdir / "home"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "APP_ENV": "production",
            "DATABASE_URL": database_url,
            "SECRET_KEY": self.secret_key,
            "EMAIL_SOURCE": EMAIL_SOURCE,
            "REGION_NAME": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": ses_url,
            # moto's SES says one email a second: the stacks send at their own pace
            # (bench/bench_ses_pace.py sets a rate).
            "SES_MAX_SEND_RATE": "0",
            "APP_DIR": str(self.app_dir),
            "APP_VENV": str(self.venv),
            "APP_USER": APP_USER,
        }
        if self.redis is not None:
            env["REDIS_URL"] = self.redis.new_database()
        env.update({key: str(value) for key, value in extra.items()})
        return env

    def flask(self, env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return run(
            [self.venv / "bin" / "flask", "--app", "wsgi", *args],
            timeout,
            env=env,
            cwd=self.app_dir,
        )

    def runtime_dir(self, name: str) -> Path:
        """Like /run/marketplace in the container: APP_USER's, group www-data."""
        path = self.workdir / name
        path.mkdir(mode=0o750)
        shutil.chown(path, APP_USER, "www-data")
        return path

    def nginx_conf(self, name: str, port: int, sockets: list[Path], trust_loopback=False) -> Path:
        """nginx.conf with only what a shared machine needs changed: the listen address,
        the pid file and the upstream's socket(s), and optionally loopback as a trusted
        proxy."""
        text = (self.source / "nginx.conf").read_text()
        replacements = [
            ("listen 80 default_server;", f"listen {HOST}:{port} default_server;"),
            ("pid /run/nginx.pid;", f"pid {self.workdir / (name + '.pid')};"),
            (
                "server unix:/run/marketplace/uwsgi.sock;",
                "\n        ".join(f"server unix:{s};" for s in sockets),
            ),
        ]
        if trust_loopback:
            replacements.append(
                (
                    "set_real_ip_from 10.0.0.0/8;",
                    "set_real_ip_from 10.0.0.0/8;\n    set_real_ip_from 127.0.0.1;",
                )
            )
        for old, new in replacements:
            if text.count(old) != 1:
                raise HarnessError(f"nginx.conf: expected the line {old!r} exactly once")
            text = text.replace(old, new)
        path = self.workdir / f"{name}.conf"
        path.write_text(text)
        return path


class Stack:
    """nginx in front of one or more uWSGI instances (the shipped app.ini and nginx.conf),
    each with its worker (`flask worker`).

    With ``entrypoint=True`` (one instance) docker/entrypoint.sh runs it all, as the
    image's ``all`` role: migration, uWSGI, nginx, the worker, and the ordered stop on
    SIGTERM. Otherwise uWSGI, nginx and the workers are started here as the ``web`` and
    ``worker`` roles run them (run ``migrate()`` first), and ``stop()`` stops nginx
    (SIGQUIT), then each uWSGI (``q`` into its master FIFO, or SIGTERM), then the workers
    (SIGTERM). ``nginx=False`` (one instance): uWSGI answers HTTP on ``port`` itself (an
    http-socket beside app.ini's socket; the benchmarks compare apps under it);
    ``worker=False``: no `flask worker`.
    """

    def __init__(
        self,
        deployment: Deployment,
        name: str,
        env: dict[str, str],
        *,
        instances: int = 1,
        entrypoint: bool = False,
        trust_loopback: bool = False,
        nginx: bool = True,
        worker: bool = True,
    ) -> None:
        if not nginx and (entrypoint or instances != 1):
            raise HarnessError("without nginx, one uWSGI instance and no entrypoint")
        self.d, self.name, self.entrypoint = deployment, name, entrypoint
        self.runs = [deployment.runtime_dir(f"run-{name}-{n}") for n in range(instances)]
        self.port = free_port()
        self.with_nginx, self.with_worker, self.ini = nginx, worker, deployment.source / "app.ini"
        if nginx:
            self.conf = deployment.nginx_conf(
                f"nginx-{name}", self.port, [r / "uwsgi.sock" for r in self.runs], trust_loopback
            )
        self.env = env
        self.http = Http(self.port)
        self.uwsgi: list[subprocess.Popen] = []
        self.workers_: list[subprocess.Popen] = []
        self.nginx: subprocess.Popen | None = None
        self.main: subprocess.Popen | None = None  # the entrypoint

    def instance_env(self, n: int) -> dict[str, str]:
        run = self.runs[n]
        return {
            **self.env,
            "WEB_SOCKET": str(run / "uwsgi.sock"),
            "WEB_FIFO": str(run / "uwsgi.fifo"),
        }

    @property
    def log(self) -> Path:
        """The entrypoint's output (nginx's access log included), or nginx's."""
        return self.d.reaper.workdir / f"{self.name}.log"

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def uwsgi_log(self, n: int = 0) -> Path:
        return self.d.reaper.workdir / (
            f"{self.name}.log" if self.entrypoint else f"{self.name}-uwsgi-{n}.log"
        )

    def migrate(self) -> subprocess.CompletedProcess:
        done = self.d.flask(self.env, "deploy", "upgrade")
        if done.returncode != 0:
            raise HarnessError(f"flask deploy upgrade:\n{done.stdout}{done.stderr}")
        return done

    def start(self, timeout: float = 120) -> Stack:
        if self.entrypoint:
            env = {
                **self.instance_env(0),
                "WEB_INI": str(self.d.source / "app.ini"),
                "NGINX_CONF": str(self.conf),
            }
            self.main = self.d.reaper.start(
                [self.d.source / "docker" / "entrypoint.sh"], self.log.name, env
            )
        else:
            http = [] if self.with_nginx else ["--http-socket", f"{HOST}:{self.port}"]
            for n in range(len(self.runs)):
                self.uwsgi.append(
                    self.d.reaper.start(
                        [UWSGI, "--ini", self.ini, *http],
                        self.uwsgi_log(n).name,
                        self.instance_env(n),
                    )
                )
            wait_until("uWSGI's sockets", self._sockets_ready, timeout)
            if self.with_nginx:
                self.nginx = self.d.reaper.start(
                    [NGINX, "-c", self.conf, "-g", "daemon off;"],
                    self.log.name,
                    {"PATH": SYSTEM_PATH},
                )
            if self.with_worker:
                for n in range(len(self.runs)):
                    self.start_worker(n)
        wait_until(f"{self.name}: /healthz through nginx", self._healthy, timeout)
        return self

    def worker_log(self, n: int = 0) -> Path:
        return self.d.reaper.workdir / f"{self.name}-worker-{n}.log"

    def start_worker(self, n: int = 0) -> subprocess.Popen:
        """The worker of instance ``n`` (again, after a kill: what the orchestrator does
        with a worker container that exited)."""
        process = self.d.reaper.start(
            [self.d.venv / "bin" / "flask", "--app", "wsgi", "worker"],
            self.worker_log(n).name,
            self.instance_env(n),
            cwd=self.d.app_dir,
        )
        if n < len(self.workers_):
            self.workers_[n] = process
        else:
            self.workers_.append(process)
        return process

    def _sockets_ready(self) -> bool:
        for process in self.uwsgi:
            if process.poll() is not None:
                raise HarnessError(
                    f"uWSGI exited ({process.returncode}):\n{tail(self.uwsgi_log())}"
                )
        return all(
            (r / "uwsgi.sock").is_socket() and (r / "uwsgi.fifo").exists() for r in self.runs
        )

    def _healthy(self) -> bool:
        for process in [self.main, self.nginx, *self.uwsgi, *self.workers_]:
            if process is not None and process.poll() is not None:
                raise HarnessError(f"{self.name} exited ({process.returncode}):\n{tail(self.log)}")
        return self.http.status("/healthz") == 200

    # ---- the processes

    def root_pids(self) -> list[int]:
        return [
            p.pid for p in [self.main, self.nginx, *self.uwsgi, *self.workers_] if p is not None
        ]

    def processes(self) -> list[int]:
        return [
            pid for root in self.root_pids() for pid in [root, *self.d.reaper.descendants(root)]
        ]

    def cpu_seconds(self) -> float:
        """CPU used so far by the stack's live processes (nginx, uWSGI, the worker)."""
        return sum(map(cpu_seconds, self.processes()))

    def masters(self) -> list[int]:
        """uWSGI master of each instance (the entrypoint's is its setsid child)."""
        return [p for p in self.processes() if "uWSGI master" in cmdline(p)]

    def workers(self, instance: int = 0) -> list[int]:
        """The uWSGI web workers of an instance."""
        master = self.masters()[instance]
        return [p for p in self.d.reaper.descendants(master) if "uWSGI worker" in cmdline(p)]

    def daemons(self, instance: int | None = None) -> list[int]:
        """The running worker (`flask worker`) of each or of one instance."""
        if self.main is not None:
            return [p for p in self.processes() if DAEMON_PATTERN.search(cmdline(p))]
        chosen = self.workers_ if instance is None else self.workers_[instance : instance + 1]
        return [p.pid for p in chosen if p.poll() is None]

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        if pid not in self.processes():
            raise HarnessError(f"{pid} is not a process of this stack")
        os.kill(pid, sig)

    def fifo(self, letter: str, instance: int = 0) -> None:
        """A command into uWSGI's master FIFO: ``w`` graceful reload, ``q`` shutdown..."""
        fd = os.open(self.runs[instance] / "uwsgi.fifo", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, letter.encode())
        finally:
            os.close(fd)

    def reload(self, instance: int = 0) -> None:
        self.fifo("w", instance)

    def stop(self, how: str = "fifo", timeout: float = 60) -> dict[str, int | None]:
        """Stop gracefully; the exit status of each process (None: had to be killed)."""
        reaper, statuses = self.d.reaper, {}
        if self.main is not None:
            statuses["entrypoint"] = self._wait(self.main, signal.SIGTERM, timeout)
            return statuses
        if self.nginx is not None:
            statuses["nginx"] = self._wait(self.nginx, signal.SIGQUIT, 30)
        for n, process in enumerate(self.uwsgi):
            if process.poll() is None and how == "fifo":
                try:
                    self.fifo("q", n)
                except OSError:
                    process.terminate()
            elif process.poll() is None:
                process.terminate()
        for n, process in enumerate(self.uwsgi):
            statuses[f"uwsgi-{n}"] = self._wait(process, None, timeout)
        for n, process in enumerate(self.workers_):
            statuses[f"worker-{n}"] = self._wait(process, signal.SIGTERM, timeout)
        reaper.reap_orphans()
        return statuses

    def _wait(self, process: subprocess.Popen, sig, timeout: float) -> int | None:
        if process.poll() is None and sig is not None:
            process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.d.reaper.kill_tree(process.pid)
            process.wait(10)
            return None


# ---------------------------------------------------------------- the app in-process

# What every headless Chromium of the browser tests runs with.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def in_process_app(database: Path | str, secret_key: str, **settings: str):
    """The app on a migrated SQLite file of its own (or a database URL), without Redis
    (the browser tests' server, the benchmarks' in-process app); ``settings`` are more
    environment variables, set only while it is made."""
    from flask_migrate import upgrade

    from app import create_app

    url = database if isinstance(database, str) else f"sqlite:///{database}"
    env = {"DATABASE_URL": url, "SECRET_KEY": secret_key, **settings}
    saved = {name: os.environ.get(name) for name in [*env, "REDIS_URL"]}
    os.environ.update(env)
    os.environ.pop("REDIS_URL", None)
    try:
        app = create_app()
        with app.app_context():
            upgrade()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return app


@contextlib.contextmanager
def serve_wsgi(wsgi):
    """``wsgi`` on a free loopback port (werkzeug, threaded); yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server(HOST, free_port(), wsgi, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{HOST}:{server.server_port}"
    finally:
        server.shutdown()


# ---------------------------------------------------------------- load and counting

GET, LIST, PUT = "get", "list", "put"
TIMEOUT, NO_ANSWER = 0, -1  # statuses recorded when no HTTP answer came back


@dataclass
class Req:
    start: float
    end: float
    kind: str
    status: int
    sku: str
    price: int = 0
    admin: int | None = None
    from_app: bool = False  # a JSON answer of the app (not nginx's own page, not no answer)
    body: object = None  # the parsed JSON answer of a PUT or a 5xx
    retry_after: bool = False

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def json_503(self) -> bool:
        """A 503 in the one error shape, with Retry-After."""
        body = self.body if isinstance(self.body, dict) else {}
        return self.status == 503 and self.retry_after and body.get("code") == 503


@dataclass(frozen=True)
class Request:
    """One request of a scripted client, recorded as ``kind``."""

    method: str
    path: str
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = GET


@dataclass
class Role:
    """What one client thread does: shares of PUTs and list pages (the rest: product
    reads), a pause after each request, and which admin's token it uses (None: any).
    ``script``: the client's n-th request, sent instead of that mix (a login flood, one
    path again and again)."""

    put: float = 0.05
    list: float = 0.15
    think: float = 0.0
    admin: int | None = None
    script: Callable[[int], Request] | None = None


class Load:
    """Client threads on kept-alive connections, every answer timed and recorded. Each
    PUT carries a price of its own; ``conditional`` is the share of product reads sent
    with ``If-None-Match`` (the ETag the client last saw); ``keepalive=False``: a new
    connection for each request (a server that closes each one, uWSGI's http-socket, would
    otherwise fail every second request on a stale one). ``start(..., nice=10)`` runs
    the clients in a process of their own at that CPU priority: they share no interpreter
    lock with the caller (a bystander timing its own requests), and yield the cores to
    the servers, as clients on other machines would."""

    def __init__(
        self,
        port: int,
        skus: list[str],
        tokens: list[str],
        timeout: float = 10,
        conditional: float = 0.0,
        keepalive: bool = True,
    ) -> None:
        self.port, self.skus, self.tokens, self.timeout = port, skus, tokens, timeout
        self.conditional, self.keepalive = conditional, keepalive
        self.requests: list[Req] = []
        self.samples: dict[str, str] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.prices = iter(range(1_000_000, 10**9))
        self.threads: list[threading.Thread] = []
        self.live: list[list[Req]] = []  # each client's requests so far
        self.apart = None  # (process, its stop event, its answer queue) with start(nice=)
        self.cpu_seconds = 0.0  # the clients' own CPU, when they ran apart
        self.seconds = 0.0  # from start() to the end of stop()

    def start(self, roles: list[Role], max_seconds: float = 600, nice: int | None = None):
        self.started = time.monotonic()
        if nice is None:
            self._start_threads(roles, max_seconds)
            return self
        context = multiprocessing.get_context("fork")
        halt, answers = context.Event(), context.Queue()
        process = context.Process(
            target=self._run_apart, args=(roles, max_seconds, nice, halt, answers), daemon=True
        )
        process.start()
        self.apart = (process, halt, answers)
        return self

    def _start_threads(self, roles: list[Role], max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        for n, role in enumerate(roles):
            thread = threading.Thread(target=self._client, args=(n, role, deadline), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run_apart(self, roles, max_seconds, nice, halt, answers) -> None:
        os.nice(nice)
        self._start_threads(roles, max_seconds)
        halt.wait(max_seconds)
        self._stop_threads()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        answers.put((self.requests, self.samples, usage.ru_utime + usage.ru_stime))

    def _stop_threads(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(2 * self.timeout + 30)
        if any(t.is_alive() for t in self.threads):
            raise HarnessError("a load thread did not finish")

    def stop(self) -> Load:
        if self.apart is None:
            self._stop_threads()
        else:
            process, halt, answers = self.apart
            halt.set()
            try:
                self.requests, self.samples, self.cpu_seconds = answers.get(
                    timeout=2 * self.timeout + 60
                )
            except queue.Empty:
                raise HarnessError("the load's process did not answer") from None
            finally:
                process.join(10)
                if process.is_alive():
                    process.kill()
        self.seconds = time.monotonic() - self.started
        self.requests.sort(key=lambda r: r.start)
        return self

    def run(self, roles: list[Role], seconds: float) -> Load:
        self.start(roles)
        time.sleep(seconds)
        return self.stop()

    def next_price(self) -> int:
        with self.lock:
            return next(self.prices)

    def _mixed(self, role: Role, rng: random.Random, etags: dict) -> tuple:
        """The next request of the product mix: kind, method, path, body, headers, sku,
        price, admin."""
        sku, draw = rng.choice(self.skus), rng.random()
        price, admin, body, headers = 0, None, None, {}
        if draw < role.put:
            kind, method, path = PUT, "PUT", f"/api/products/{sku}"
            price = self.next_price()
            admin = rng.randrange(len(self.tokens)) if role.admin is None else role.admin
            body = json.dumps({"price": price})
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.tokens[admin]}",
            }
        elif draw < role.put + role.list:
            kind, method = LIST, "GET"
            path = f"/api/products?page={rng.randint(1, 3)}&page_size=20"
        else:
            kind, method, path = GET, "GET", f"/api/products/{sku}"
            if sku in etags and rng.random() < self.conditional:
                headers = {"If-None-Match": etags[sku]}
        return kind, method, path, body, headers, sku, price, admin

    def sent(self) -> int:
        """Requests made so far (clients running in this process)."""
        return sum(len(mine) for mine in list(self.live))

    def _client(self, n: int, role: Role, deadline: float) -> None:
        rng, conn, mine, etags = random.Random(n), None, [], {}
        with self.lock:
            self.live.append(mine)
        try:
            while not self.halt.is_set() and time.monotonic() < deadline and len(mine) < 100_000:
                if role.script is None:
                    kind, method, path, body, headers, sku, price, admin = self._mixed(
                        role, rng, etags
                    )
                else:
                    sent = role.script(len(mine))
                    kind, method, path, body, headers = (
                        sent.kind, sent.method, sent.path, sent.body, sent.headers
                    )  # fmt: skip
                    sku, price, admin = "", 0, None
                conn = conn or http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
                req = Req(time.monotonic(), 0.0, kind, NO_ANSWER, sku, price, admin)
                raw = b""
                try:
                    conn.request(method, path, body=body, headers=headers)
                    answer = conn.getresponse()
                    raw, req.status = answer.read(), answer.status
                    req.retry_after = bool(answer.getheader("Retry-After"))
                    if req.status == 304:
                        req.from_app = True
                    elif "json" in (answer.getheader("Content-Type") or ""):
                        with contextlib.suppress(ValueError):
                            parsed = json.loads(raw)
                            # nginx's own 502/504 (no answer from uWSGI) are JSON too
                            req.from_app = req.status not in (502, 504)
                            if kind == PUT or req.status >= 500:
                                req.body = parsed
                    if kind == GET and req.status == 200 and answer.getheader("ETag"):
                        etags[sku] = answer.getheader("ETag")
                    if answer.will_close or not self.keepalive:
                        conn.close()
                        conn = None
                except TimeoutError:
                    req.status = TIMEOUT
                    conn.close()
                    conn = None
                except (OSError, http.client.HTTPException) as exc:
                    raw = f"{type(exc).__name__}: {exc}".encode()
                    conn.close()
                    conn = None
                req.end = time.monotonic()
                mine.append(req)
                if req.status not in (200, 304) and not req.json_503:
                    sample = f"{method} {kind} -> {req.status}"
                    if sample not in self.samples:  # the first answer of each kind is kept
                        with self.lock:
                            self.samples.setdefault(sample, raw[:600].decode(errors="replace"))
                if role.think:
                    time.sleep(role.think)
        finally:
            if conn is not None:
                conn.close()
            with self.lock:
                self.requests.extend(mine)

    # ---- what the clients saw

    def statuses(self, kind: str | None = None) -> Counter:
        return Counter(r.status for r in self.requests if kind in (None, r.kind))

    def reads(self) -> Counter:
        """200 product reads per sku."""
        return Counter(r.sku for r in self.requests if r.kind == GET and r.status == 200)

    def changes(self, confirmed: bool = True) -> set[tuple[str, int]]:
        """PUTs answered 200, or (``confirmed=False``) answered 5xx or not at all."""
        return {
            (r.sku, r.price)
            for r in self.requests
            if r.kind == PUT
            and ((r.status == 200) if confirmed else (r.status >= 500 or r.status <= 0))
        }

    def latency_ms(self, pct: float) -> float:
        values = sorted(r.latency for r in self.requests)
        return (
            values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))] * 1000
            if values
            else 0.0
        )


def at_once(calls: list[Callable[[], object]]) -> list:
    """Run the calls in threads released together (a barrier); their results in order."""
    barrier, out = threading.Barrier(len(calls)), [None] * len(calls)

    def go(n: int) -> None:
        barrier.wait()
        out[n] = calls[n]()

    threads = [threading.Thread(target=go, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return out


def timed_requests(
    client: Http,
    paths: Iterable[str],
    *,
    seconds: float | None = None,
    headers: dict | None = None,
) -> list[tuple[float, int | None]]:
    """One client, one GET after the other, a new connection each: the seconds and the
    status (None: no answer) of each, until ``paths`` run out or ``seconds`` have passed."""
    deadline = None if seconds is None else time.monotonic() + seconds
    timed = []
    for path in paths:
        if deadline is not None and time.monotonic() >= deadline:
            break
        began = time.perf_counter()
        try:
            status = client.get(path, headers=headers).status
        except (OSError, http.client.HTTPException):
            status = None
        timed.append((time.perf_counter() - began, status))
    return timed


@dataclass
class Counted:
    """What a run of load against one URL got: requests answered, in how many seconds,
    and how many of them were errors."""

    requests: int
    seconds: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class Wrk:
    """wrk (Debian's package) on one URL: ``connections`` connections on ``threads``
    threads (the other core stays with the server), each sending its next GET as soon as
    the last is answered."""

    def __init__(self, connections: int = 4, threads: int = 1, path: str = WRK) -> None:
        self.path, self.connections, self.threads = path, connections, threads
        version = run([path, "--version"], 10)
        lines = (version.stdout + version.stderr).strip().splitlines()
        release = lines[0].split(" [")[0] if lines else "wrk"
        self.name = f"{release}, {threads} thread, {connections} connections"

    def run(self, url: str, seconds: float, headers: dict[str, str] | None = None) -> Counted:
        duration = f"-d{max(1, round(seconds))}s"
        args = [self.path, f"-t{self.threads}", f"-c{self.connections}", duration]
        for name, value in (headers or {}).items():
            args += ["-H", f"{name}: {value}"]
        done = run([*args, "--timeout", "5s", url], seconds + 60)
        if done.returncode != 0:
            raise HarnessError(f"wrk failed (exit {done.returncode}): {done.stderr.strip()}")
        return self.parse(done.stdout)

    @staticmethod
    def parse(output: str) -> Counted:
        found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output)
        if not found:
            raise HarnessError(f"Could not read wrk's output:\n{output}")
        unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[found.group(3)]
        errors = 0
        if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
            errors += int(non_2xx.group(1))
        if sock := re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
        ):
            connect, _read, write, timeout = (int(n) for n in sock.groups())
            # uWSGI's http-socket closes the connection after every answer, which wrk counts
            # as a read error; the answer itself was complete and is counted in the requests.
            errors += connect + write + timeout
        return Counted(int(found.group(1)), float(found.group(2)) * unit, errors)


class Hammer:
    """wrk's stand-in where wrk is missing: the Load's client threads (``connections``),
    each sending GET of one path back to back; much weaker than wrk."""

    def __init__(self, connections: int = 4) -> None:
        self.connections = connections
        self.name = f"python http.client, {connections} threads"

    def run(self, url: str, seconds: float, headers: dict[str, str] | None = None) -> Counted:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        request = Request("GET", path, headers=dict(headers or {}))
        role = Role(script=lambda _n: request)
        load = Load(parts.port, [], [], timeout=5, keepalive=False)
        load.run([role] * self.connections, seconds)
        ok = sum(1 for r in load.requests if r.status == 200)
        return Counted(len(load.requests), load.seconds, len(load.requests) - ok)


def view_counts(db: MariaDB, database: str) -> Counter:
    sql = (
        "SELECT p.sku, COUNT(*) FROM product_views v JOIN products p ON p.id = v.product_id"
        " GROUP BY p.sku"
    )
    return Counter(dict(db.query(database, sql)))


def notification_statuses(db: MariaDB, database: str) -> Counter:
    return Counter(
        dict(db.query(database, "SELECT status, COUNT(*) FROM notifications GROUP BY status"))
    )


PRICE_SUBJECT = re.compile(r"Product (\S+) updated: price: \S+ -> (\S+)$")
EVENT_SUBJECT = re.compile(r"Product (\S+) (created|updated|deleted)\b")


def tally(
    db: MariaDB, database: str, moto: Moto, load: Load, admins: list[str], created: list[str]
) -> dict:
    """What the users got, counted against what the clients were told, after a stop.

    The figures (one entry of the reliability results): requests, status_counts,
    reads_200, view_rows (per sku in ``views_missing``/``views_extra``), emails_expected
    (one per admin for each product created and each price change answered 200 or
    committed without a clear answer), emails_sent, emails_duplicated, emails_unknown,
    writes_5xx_committed, and ``emails_missing``/``emails_unwanted`` samples.
    """
    reads, views = load.reads(), view_counts(db, database)
    confirmed, unclear = load.changes(True), load.changes(False)
    stored = {
        (sku, int(float(json.loads(ch)["price"]["new"])))
        for sku, ch in db.query(
            database, f"SELECT sku, changes FROM {EMAILS} WHERE event = 'updated'"
        )
        if ch and "price" in json.loads(ch)
    }
    committed_5xx = stored & unclear
    wanted = Counter({(a, s, "created", None): 1 for a in admins for s in created})
    wanted += Counter(
        {(a, s, "updated", p): 1 for a in admins for s, p in confirmed | committed_5xx}
    )
    got: Counter = Counter()
    emails = moto.emails()
    for m in emails:
        if price := PRICE_SUBJECT.search(m.subject):
            got[(m.to, price.group(1), "updated", int(float(price.group(2))))] += 1
        elif event := EVENT_SUBJECT.search(m.subject):
            got[(m.to, event.group(1), event.group(2), None)] += 1
        else:
            got[(m.to, m.subject, "?", None)] += 1
    exact = Counter((m.to, m.subject, m.body) for m in emails)
    by_id = moto.sends_per_notification()
    statuses = notification_statuses(db, database)
    return {
        "requests": len(load.requests),
        "status_counts": {str(s): c for s, c in sorted(load.statuses().items())},
        "reads_200": sum(reads.values()),
        "view_rows": sum(views.values()),
        "views_missing": dict((reads - views).most_common(5)),
        "views_extra": dict((views - reads).most_common(5)),
        "emails_expected": sum(wanted.values()),
        "emails_sent": len(emails),
        "emails_duplicated": max(
            sum(c - 1 for c in exact.values() if c > 1), sum(c - 1 for c in by_id.values() if c > 1)
        ),
        "emails_unknown": statuses.get("unknown", 0),
        "notification_statuses": dict(statuses),
        "writes_5xx_committed": len(committed_5xx),
        "emails_missing": [list(k) for k in (wanted - got).elements()][:5],
        "emails_unwanted": [list(k) for k in (got - wanted).elements()][:5],
        "p50_ms": round(load.latency_ms(50), 1),
        "p99_ms": round(load.latency_ms(99), 1),
    }
