"""Smoke test of the deployment (Dockerfile, docker/entrypoint.sh, app.ini, nginx.conf)
without Docker: the same files, with Debian's nginx and uWSGI, on loopback.

    .venv/bin/python deploy/smoke.py [--seconds 10] [--threads 8] [--keep]

(`make smoke`). Needs root (apt-get, and uWSGI's privilege drop as in the container) and
MariaDB on 127.0.0.1:3306 (root, no password; SMOKE_MYSQL_HOST/_PORT/_USER/_PASSWORD).
Prints a PASS/FAIL line per check and a summary; the exit status is 1 if a check failed.

What it runs, against moto's server standing in for SES and a fresh MariaDB database each:

1. One instance as the container runs it: docker/entrypoint.sh itself (`flask deploy
   upgrade`, uWSGI with app.ini, nginx with nginx.conf), stopped with SIGTERM (first also
   while its migration waits for another instance's lock: it must stop at once). Real HTTP
   through nginx: health, login, a product created, read and repriced 300 -> 500, one
   email per admin; the buffered views reach the database only through the graceful
   stop; the notification worker (uWSGI's attached daemon, alone in sending: the web
   workers' dispatch threads are off) is restarted after a kill; every process ran as
   the app user; nothing is left running.
2. Scale-out: two `flask deploy upgrade` at once on a new database, then two uWSGI
   instances (each with its notification worker) behind one nginx upstream, under
   concurrent reads and edits, with a graceful worker reload (`w`) of one instance in the
   middle. After a graceful stop of everything: one view row per successful read, one
   email per change and admin, exactly once, and every notification sent.

What differs from the container, and why (nothing else is changed):
- nginx runs a copy of nginx.conf in a temporary directory with these lines replaced:
  `listen` (127.0.0.1 and a free port, not :80), `pid` (a temporary file), the
  upstream's `server unix:` socket (a temporary path; two of them in step 2) and, in
  step 2 only, loopback added to the trusted proxies (`set_real_ip_from`) to check that
  X-Forwarded-For is used from a trusted proxy (step 1 checks it is ignored otherwise).
- app.ini is used as it is, with its environment variables pointing at the temporary
  directory: WEB_SOCKET, WEB_FIFO, APP_DIR (a copy of app/, migrations/ and wsgi.py, as
  the Dockerfile copies them to /app), APP_VENV (below); APP_USER is www-data (the image
  creates a user `app`, which this machine has not).
- The virtualenv is built with Debian's /usr/bin/python3, as in the image, from
  requirements.txt, and kept between runs in /var/cache/marketplace-smoke/venv
  (SMOKE_VENV), outside the work tree so that www-data can read it wherever the tree is.
  (.venv's pyenv Python cannot serve: Debian's uWSGI plugin embeds Debian's Python and
  would mix its own 3.11.2 with pyenv's 3.11.7 standard library.)
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import http.client
import itertools
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import boto3
import pymysql

ROOT = Path(__file__).resolve().parent.parent
APT_PACKAGES = ["nginx", "uwsgi", "uwsgi-plugin-python3", "python3-venv"]
SYSTEM_PYTHON = "/usr/bin/python3"
UWSGI = "/usr/bin/uwsgi"
NGINX = "/usr/sbin/nginx"
PYTHON_PLUGIN = Path("/usr/lib/uwsgi/plugins/python3_plugin.so")
DEFAULT_VENV = Path("/var/cache/marketplace-smoke/venv")
APP_FILES = ("app", "migrations", "wsgi.py")  # what the Dockerfile copies into /app
APP_USER = "www-data"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EMAIL_SOURCE = "noreply@marketplace.test"
ADMINS = (
    ("admin@marketplace.test", "first-admin-password"),
    ("second.admin@marketplace.test", "second-admin-password"),
)
REAL_CLIENT = "203.0.113.7"  # TEST-NET-3: only ever a header value, never an address used

PR_SET_CHILD_SUBREAPER = 36


class Failed(Exception):
    """A step could not go on; the message says why."""


def log(message: str) -> None:
    print(message, flush=True)


def wait_until(what: str, predicate: Callable[[], object], timeout: float, every: float = 0.2):
    """Poll until ``predicate()`` is truthy; return its value or raise Failed after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- processes


class Processes:
    """Every process this run starts stays below it: it is the child subreaper, so orphans
    (a daemon whose uWSGI master died, say) come back to it instead of to init."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.popens: list[subprocess.Popen] = []

    def start(self, args: list[str], log_path: Path, env: dict, **kwargs) -> subprocess.Popen:
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )
        self.popens.append(process)
        return process

    @staticmethod
    def table() -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, state) of every process on the machine."""
        procs = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            procs[int(entry)] = (int(fields[1]), fields[0])
        return procs

    def descendants(self, of: int | None = None) -> list[int]:
        """Live (not zombie) descendants of ``of`` (default: this process)."""
        self.reap_orphans()
        procs = self.table()
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

    def reap_orphans(self) -> None:
        """Collect the exit status of orphans that died below this process (not of Popens)."""
        mine = {p.pid for p in self.popens}
        for pid, (ppid, state) in self.table().items():
            if ppid == os.getpid() and state == "Z" and pid not in mine:
                with suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def kill_everything(self) -> list[str]:
        """SIGKILL whatever this run left running; return what that was."""
        left = [describe(pid) for pid in self.descendants()]
        for _ in range(3):
            pids = self.descendants()
            if not pids:
                break
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        for process in self.popens:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.reap_orphans()
        return left


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def fifo_command(fifo: Path, letter: str) -> None:
    """Write a command into uWSGI's master FIFO; fails at once (ENXIO) if nobody reads it."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, letter.encode())
    finally:
        os.close(fd)


def describe(pid: int) -> str:
    return f"{pid} (uid {uid_of(pid)}): {cmdline(pid)[:120]}"


def is_notification_worker(pid: int) -> bool:
    return "notifications worker" in cmdline(pid)


# ---------------------------------------------------------------- HTTP


class Client:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = None,
        headers: dict | None = None,
        timeout: float = 15,
    ) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def status_or_error(self, *args, **kwargs) -> int | str:
        try:
            return self.request(*args, **kwargs)[0]
        except OSError as exc:  # connection refused, reset, timeout
            return f"{type(exc).__name__}: {exc}"

    def login(self, email: str, password: str) -> str:
        status, body = self.request("POST", "/users/login", {"email": email, "password": password})
        if status != 200:
            raise Failed(f"login of {email}: {status} {body}")
        return body["access_token"]

    def declared_body(self, path: str, length: int) -> int:
        """POST that announces a large body and sends none: nginx answers from the headers."""
        conn = http.client.HTTPConnection("127.0.0.1", int(self.base.rsplit(":", 1)[1]), timeout=10)
        try:
            conn.putrequest("POST", path)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(length))
            conn.endheaders()
            return conn.getresponse().status
        finally:
            conn.close()


# ---------------------------------------------------------------- SES stand-in


class Moto:
    def __init__(self, processes: Processes, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = Path(sys.executable).parent / "moto_server"
        env = {"PATH": SYSTEM_PATH, "HOME": str(workdir), "LANG": "C.UTF-8"}
        self.process = processes.start(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)], workdir / "moto.log", env
        )
        wait_until("moto's server", self.up, 30)
        self.reset()

    def up(self) -> bool:
        if self.process.poll() is not None:
            raise Failed(f"moto_server exited ({self.process.returncode})")
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=2):
                return True
        except OSError:
            return False

    def reset(self) -> None:
        """Forget everything (between the two steps), then verify the sender again."""
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/moto-api/reset", data=b"", method="POST"),
            timeout=10,
        ).close()
        boto3.client(
            "ses",
            region_name="us-east-1",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).verify_email_identity(EmailAddress=EMAIL_SOURCE)

    def messages(self) -> list[dict]:
        """What SES was asked to send: [{to, subject, body}] (moto keeps the HTML body)."""
        with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=10) as response:
            data = json.load(response)
        return [
            {
                "to": ",".join(m["destinations"].get("ToAddresses", [])),
                "subject": m["subject"],
                "body": m["body"],
            }
            for m in data.get("ses", {}).get("Message", [])
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


# ---------------------------------------------------------------- MariaDB


class Database:
    def __init__(self, name: str):
        self.name = name
        self.host = os.environ.get("SMOKE_MYSQL_HOST", "127.0.0.1")
        self.port = int(os.environ.get("SMOKE_MYSQL_PORT", "3306"))
        self.user = os.environ.get("SMOKE_MYSQL_USER", "root")
        self.password = os.environ.get("SMOKE_MYSQL_PASSWORD", "")
        self.admin(
            f"DROP DATABASE IF EXISTS `{name}`",
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        )
        auth = self.user + (f":{self.password}" if self.password else "")
        self.url = f"mysql://{auth}@{self.host}:{self.port}/{name}"

    def connect(self, database: str | None = None):
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            connect_timeout=10,
            autocommit=True,
        )

    def admin(self, *statements: str) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def query(self, sql: str, *params) -> list[tuple]:
        conn = self.connect(self.name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def drop(self) -> None:
        with suppress(pymysql.MySQLError):
            self.admin(f"DROP DATABASE IF EXISTS `{self.name}`")


# ---------------------------------------------------------------- the run


class Smoke:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.source = (args.source or ROOT).resolve()
        self.results: list[tuple[str, bool, str]] = []
        self.processes = Processes()
        self.workdir = Path(tempfile.mkdtemp(prefix="marketplace-smoke-"))
        self.run_id = secrets.token_hex(3)
        self.databases: list[Database] = []
        self.moto: Moto | None = None
        self.venv = Path(os.environ.get("SMOKE_VENV") or DEFAULT_VENV)
        self.app_dir = self.workdir / "app"
        self.secret_key = secrets.token_urlsafe(48)
        self.views_expected: dict[str, int] = {}
        self.changes: list[tuple[str, int]] = []
        self.skus: list[str] = []

    # ---------------------------------------------------------------- reporting

    def check(self, name: str, ok: bool, detail: object = "") -> bool:
        self.results.append((name, bool(ok), str(detail)))
        line = f"  {'PASS' if ok else 'FAIL'}  {name}"
        if detail and not ok:
            line += f"\n        {str(detail)[:2000]}"
        log(line)
        return bool(ok)

    def require(self, name: str, ok: bool, detail: object = "") -> None:
        if not self.check(name, ok, detail):
            raise Failed(name)

    # ---------------------------------------------------------------- preparing

    def prepare(self) -> None:
        log("== Preparing")
        if os.geteuid() != 0:
            raise Failed("run as root: it installs packages and drops privileges like the image")
        self.install_packages()
        self.build_venv()
        self.stage_app()
        self.moto = Moto(self.processes, self.workdir)
        log(f"  moto server on {self.moto.url}; work directory {self.workdir}")

    def install_packages(self) -> None:
        def missing() -> list[str]:
            found = {
                "nginx": Path(NGINX).exists(),
                "uwsgi": Path(UWSGI).exists(),
                "uwsgi-plugin-python3": PYTHON_PLUGIN.exists(),
                "python3-venv": Path(SYSTEM_PYTHON).exists()
                and "install ok installed"
                in subprocess.run(
                    ["dpkg-query", "-W", "-f=${Status}", "python3-venv"],
                    capture_output=True,
                    text=True,
                ).stdout,
            }
            return [name for name in APT_PACKAGES if not found[name]]

        if not missing():
            return
        log(f"  installing {' '.join(APT_PACKAGES)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
        out = self.workdir / "apt.log"
        with open(out, "ab") as apt_log:
            done = subprocess.run(install, env=env, stdout=apt_log, stderr=apt_log, timeout=600)
            if done.returncode != 0:
                subprocess.run(
                    ["apt-get", "update"], env=env, stdout=apt_log, stderr=apt_log, timeout=600
                )
                subprocess.run(install, env=env, stdout=apt_log, stderr=apt_log, timeout=600)
        still = missing()
        self.require("Debian's nginx, uWSGI and python3-venv installed", not still, f"see {out}")

    def build_venv(self) -> None:
        requirements = (self.source / "requirements.txt").read_bytes()
        version = subprocess.run(
            [SYSTEM_PYTHON, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        stamp = hashlib.sha256(requirements + version.encode()).hexdigest()
        stamp_file = self.venv / ".smoke-requirements"
        if stamp_file.exists() and stamp_file.read_text() == stamp:
            return
        log(f"  building {self.venv} with {version} ({SYSTEM_PYTHON}) from requirements.txt")
        started = time.monotonic()
        shutil.rmtree(self.venv, ignore_errors=True)
        self.venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(self.venv)], check=True, timeout=300)
        done = subprocess.run(
            [
                str(self.venv / "bin" / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(self.source / "requirements.txt"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise Failed(f"pip install into {self.venv} failed:\n{done.stderr[-3000:]}")
        stamp_file.write_text(stamp)
        log(f"  ({time.monotonic() - started:.0f}s)")

    def stage_app(self) -> None:
        """The application files as the Dockerfile lays them out in /app, readable by
        www-data (the work tree may sit under a directory it cannot enter)."""
        self.workdir.chmod(0o755)
        self.app_dir.mkdir()
        for name in APP_FILES:
            source = self.source / name
            if source.is_dir():
                shutil.copytree(
                    source, self.app_dir / name, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(source, self.app_dir / name)
        home = self.workdir / "home"
        home.mkdir()
        shutil.chown(home, APP_USER, APP_USER)
        probe = subprocess.run(
            [
                "setpriv",
                f"--reuid={APP_USER}",
                f"--regid={APP_USER}",
                "--init-groups",
                str(self.venv / "bin" / "python"),
                "-c",
                "import sys, flask, sqlalchemy, boto3; open(sys.argv[1]).read()",
                str(self.app_dir / "wsgi.py"),
            ],
            capture_output=True,
            text=True,
            cwd=self.app_dir,
        )
        self.require(
            f"{APP_USER} can read the app copy and the virtualenv",
            probe.returncode == 0,
            probe.stderr[-2000:],
        )

    def new_database(self, suffix: str) -> Database:
        database = Database(f"marketplace_smoke_{self.run_id}_{suffix}")
        self.databases.append(database)
        return database

    def env(self, database: Database, **extra: str) -> dict[str, str]:
        """The container's environment (docker run -e ...), pointed at this machine."""
        assert self.moto is not None
        env = {
            "PATH": f"{self.venv}/bin:{SYSTEM_PATH}",
            "HOME": str(self.workdir / "home"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "APP_ENV": "production",
            "DATABASE_URL": database.url,
            "SECRET_KEY": self.secret_key,
            "EMAIL_SOURCE": EMAIL_SOURCE,
            "REGION_NAME": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": self.moto.url,
            "ADMIN_EMAIL": ADMINS[0][0],
            "ADMIN_PASSWORD": ADMINS[0][1],
            "APP_DIR": str(self.app_dir),
            "APP_VENV": str(self.venv),
            "APP_USER": APP_USER,
        }
        env.update(extra)
        return env

    def flask(self, env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.venv / "bin" / "flask"), "--app", "wsgi", *args],
            env=env,
            cwd=self.app_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def second_admin(self, env: dict) -> None:
        email, password = ADMINS[1]
        done = self.flask(env, "users", "create-admin", "--email", email, "--password", password)
        self.require(
            "flask users create-admin (the second admin)",
            done.returncode == 0,
            done.stdout + done.stderr,
        )

    def runtime_dir(self, name: str) -> Path:
        """Like /run/marketplace in the container: the app user's, group www-data."""
        path = self.workdir / name
        path.mkdir(mode=0o750)
        shutil.chown(path, APP_USER, "www-data")
        return path

    def nginx_conf(self, name: str, port: int, sockets: list[Path], trust_loopback: bool) -> Path:
        """nginx.conf with only the lines a test on a shared machine must change."""
        text = (self.source / "nginx.conf").read_text()
        replacements = [
            ("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;"),
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
                raise Failed(f"nginx.conf: expected the line {old!r} exactly once")
            text = text.replace(old, new)
        path = self.workdir / f"{name}.conf"
        path.write_text(text)
        return path

    # ---------------------------------------------------------------- step 1

    def single_instance(self) -> None:
        log("\n== 1. One instance, as the container runs it (docker/entrypoint.sh)")
        database = self.new_database("one")
        run = self.runtime_dir("run")
        port = free_port()
        entry_log = self.workdir / "entrypoint.log"
        env = self.env(
            database,
            WEB_SOCKET=str(run / "uwsgi.sock"),
            WEB_FIFO=str(run / "uwsgi.fifo"),
            WEB_INI=str(self.source / "app.ini"),
            NGINX_CONF=str(self.nginx_conf("nginx-one", port, [run / "uwsgi.sock"], False)),
            # Only uWSGI's attached `flask notifications worker` sends: not the web workers.
            NOTIFY_THREADS="0",
            # Views stay buffered until the graceful stop writes them.
            VIEWS_FLUSH_SECONDS="3600",
            VIEWS_BATCH="1000000",
        )
        self.stop_while_waiting_for_the_lock(database, env)
        entry = self.processes.start(
            [str(self.source / "docker" / "entrypoint.sh")], entry_log, env
        )
        client = Client(port)
        try:
            self.serve_single(entry, client, database, env, entry_log)
        finally:
            self.stop_entrypoint(entry, entry_log)
        self.after_single(database, run, entry_log)

    def stop_while_waiting_for_the_lock(self, database: Database, env: dict) -> None:
        """Another instance migrates (holds the lock): a SIGTERM meanwhile stops this one at
        once, its waiting `flask deploy upgrade` included."""
        holder = database.connect(database.name)
        log_path = self.workdir / "entrypoint-waiting.log"
        try:
            with holder.cursor() as cur:
                cur.execute("SELECT GET_LOCK('marketplace_migrations', 5)")
            entry = self.processes.start(
                [str(self.source / "docker" / "entrypoint.sh")], log_path, env
            )
            try:
                wait_until(
                    "`flask deploy upgrade` waiting for the lock",
                    lambda: [
                        p
                        for p in self.processes.descendants(entry.pid)
                        if "deploy upgrade" in cmdline(p)
                    ],
                    60,
                )
                time.sleep(0.5)
                started = time.monotonic()
                entry.send_signal(signal.SIGTERM)
                status = entry.wait(timeout=15)
                left = self.left_running()
                self.check(
                    "SIGTERM while the migration waits for the lock: stops at once, nothing left"
                    f" ({time.monotonic() - started:.1f}s)",
                    status != 0 and not left and "stopped during the migration" in tail(log_path),
                    f"status {status}, left {left}\n{tail(log_path)}",
                )
            except (Failed, subprocess.TimeoutExpired) as exc:
                self.check("SIGTERM while the migration waits for the lock", False, exc)
        finally:
            holder.close()
        self.require(
            "the database is still empty", not database.query("SHOW TABLES"), "tables were made"
        )

    def left_running(self) -> list[str]:
        """What this run started and is still running, but moto's server."""
        moto = self.moto.process.pid if self.moto else None
        return [describe(p) for p in self.processes.descendants() if p != moto]

    def healthy(self, client: Client, process: subprocess.Popen | None = None) -> bool:
        if process is not None and process.poll() is not None:
            raise Failed(f"exited with status {process.returncode} while starting")
        return client.status_or_error("GET", "/healthz", timeout=3) == 200

    def serve_single(
        self,
        entry: subprocess.Popen,
        client: Client,
        database: Database,
        env: dict,
        entry_log: Path,
    ) -> None:
        started = time.monotonic()
        try:
            wait_until("/healthz through nginx", lambda: self.healthy(client, entry), 120)
        except Failed as exc:
            self.require("the entrypoint migrates and serves", False, f"{exc}\n{tail(entry_log)}")
        self.check(
            f"entrypoint: migrated, uWSGI and nginx up ({time.monotonic() - started:.1f}s)", True
        )
        status, body = client.request("GET", "/healthz")
        self.check(
            "GET /healthz through nginx: 200 ok", status == 200 and body == {"status": "ok"}, body
        )
        status, body = client.request("GET", "/readyz")
        self.check("GET /readyz: 200 ready", status == 200 and body == {"status": "ready"}, body)

        self.check_process_users(entry.pid)
        self.second_admin(env)
        tokens = [client.login(email, password) for email, password in ADMINS]
        self.check("both admins log in through nginx", all(tokens))

        sku = f"smoke-{self.run_id}"
        product = {"sku": sku, "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}
        status, body = client.request("POST", "/api/products", product, tokens[0])
        self.require("POST /api/products (admin): 201", status == 201, body)
        reads = 0
        for _ in range(5):
            status, body = client.request("GET", f"/api/products/{sku}")
            reads += status == 200
        status, _ = client.request(
            "GET", f"/api/products/{sku}", headers={"X-Forwarded-For": REAL_CLIENT}
        )
        reads += status == 200
        self.views_expected = {sku: reads}
        self.check("GET /api/products/<sku> (anonymous): 200 x6", reads == 6, reads)
        self.check(
            "no view written before the stop (buffered in the workers)",
            database.query("SELECT COUNT(*) FROM product_views")[0][0] == 0,
        )

        status = client.declared_body("/api/products", 2 * 1024 * 1024)
        self.check("a 2 MiB body: 413 from nginx (client_max_body_size)", status == 413, status)
        status, body = client.request("POST", "/api/products", {"name": "x" * 100_000}, tokens[0])
        self.check("a 100 kB body: 413 from the app (MAX_BODY_BYTES)", status == 413, status)

        # The notification worker is restarted by uWSGI when it dies.
        workers = [p for p in self.processes.descendants(entry.pid) if is_notification_worker(p)]
        self.require("one notification worker beside uWSGI", len(workers) == 1, workers)
        os.kill(workers[0], signal.SIGKILL)
        try:
            new = wait_until(
                "a new notification worker",
                lambda: [
                    p
                    for p in self.processes.descendants(entry.pid)
                    if is_notification_worker(p) and p != workers[0]
                ],
                30,
            )
            self.check(f"killed notification worker restarted by uWSGI (pid {new[0]})", True)
        except Failed as exc:
            self.check("killed notification worker restarted by uWSGI", False, exc)

        status, body = client.request("PUT", f"/api/products/{sku}", {"price": 500}, tokens[0])
        self.require("PUT price 300 -> 500 (admin): 200", status == 200, body)
        self.check(
            "the product reads back at 500",
            client.request("GET", f"/api/products/{sku}")[1]["price"] == 500,
        )
        self.views_expected[sku] += 1
        # 2 admins x (created + updated)
        expected = 2 * len(ADMINS)
        with suppress(Failed):
            wait_until("the emails in moto", lambda: len(self.moto.messages()) >= expected, 30)
        messages = self.moto.messages()
        self.check(
            f"SES got {expected} emails (created + updated, for each admin)",
            len(messages) == expected,
            messages,
        )
        for email, _ in ADMINS:
            mine = [m for m in messages if m["to"] == email and " updated: " in m["subject"]]
            good = [
                m
                for m in mine
                if "price: 300 -> 500" in m["subject"]
                and ("300 -> 500" in m["body"] or "300 \u2192 500" in m["body"])
            ]
            self.check(
                f"one '300 -> 500' email to {email}", len(mine) == 1 and len(good) == 1, mine
            )
        self.check_forwarded_for(entry_log, trusted=False)

    def check_process_users(self, root_pid: int) -> None:
        app_uid = pwd.getpwnam(APP_USER).pw_uid
        procs = [(pid, cmdline(pid), uid_of(pid)) for pid in self.processes.descendants(root_pid)]
        uwsgi = [p for p in procs if "uWSGI" in p[1] or p[1].startswith(UWSGI)]
        workers = [p for p in procs if "notifications worker" in p[1]]
        nginx_workers = [p for p in procs if p[1].startswith("nginx: worker")]
        nginx_master = [p for p in procs if p[1].startswith("nginx: master")]
        self.check(
            f"uWSGI master and workers run as {APP_USER} (uid drop)",
            len(uwsgi) >= 3 and all(uid == app_uid for _, _, uid in uwsgi),
            uwsgi,
        )
        self.check(
            f"the notification worker runs as {APP_USER}",
            len(workers) == 1 and workers[0][2] == app_uid,
            workers,
        )
        self.check(
            "nginx: master root (port 80), workers www-data",
            len(nginx_master) == 1
            and nginx_master[0][2] == 0
            and nginx_workers
            and all(uid == pwd.getpwnam("www-data").pw_uid for _, _, uid in nginx_workers),
            nginx_master + nginx_workers,
        )

    def check_forwarded_for(self, access_log: Path, trusted: bool) -> None:
        lines = [
            line
            for line in access_log.read_text(errors="replace").splitlines()
            if f'xff="{REAL_CLIENT}"' in line
        ]
        want = REAL_CLIENT if trusted else "127.0.0.1"
        ok = bool(lines) and all(line.startswith(f"{want} ") for line in lines)
        what = "used from a trusted proxy" if trusted else "ignored from an untrusted address"
        self.check(f"X-Forwarded-For {what} (access log on stdout)", ok, lines[:3])

    def stop_entrypoint(self, entry: subprocess.Popen, entry_log: Path) -> None:
        if entry.poll() is not None:
            self.check("entrypoint still running at the end", False, tail(entry_log))
            return
        started = time.monotonic()
        entry.send_signal(signal.SIGTERM)
        try:
            status = entry.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.check("SIGTERM: the entrypoint stops within 60s", False, tail(entry_log))
            return
        self.check(
            f"SIGTERM: graceful stop, exit 0 ({time.monotonic() - started:.1f}s)",
            status == 0,
            f"status {status}\n{tail(entry_log)}",
        )

    def after_single(self, database: Database, run: Path, entry_log: Path) -> None:
        output = entry_log.read_text(errors="replace")
        self.check(
            "uWSGI's graceful shutdown (q) and nginx's graceful stop ran",
            "graceful shutdown triggered" in output and "goodbye to uWSGI" in output,
            tail(entry_log),
        )
        self.check(
            "the notification worker stopped cleanly",
            "notifications worker: stopped after" in output,
            tail(entry_log),
        )
        self.check("the socket was removed (vacuum)", not (run / "uwsgi.sock").exists())
        counts = dict(
            database.query(
                "SELECT p.sku, COUNT(*) FROM product_views v JOIN products p ON p.id = v.product_id"
                " GROUP BY p.sku"
            )
        )
        self.check(
            "every read has its view row after the graceful stop",
            counts == self.views_expected,
            f"database {counts}, reads {self.views_expected}",
        )
        statuses = dict(
            database.query("SELECT status, COUNT(*) FROM notifications GROUP BY status")
        )
        self.check(
            "every notification sent",
            statuses == {"sent": 2 * len(ADMINS)},
            statuses,
        )
        left = self.left_running()
        self.check("nothing left running (uWSGI, workers, nginx)", not left, left)

    # ---------------------------------------------------------------- step 2

    def scale_out(self) -> None:
        log("\n== 2. Scale-out: two uWSGI instances behind one nginx, one database")
        assert self.moto is not None
        self.moto.reset()
        database = self.new_database("two")
        base = self.env(database)

        # Two instances starting at once: the migration lock makes them take turns.
        upgrades = [
            subprocess.Popen(
                [str(self.venv / "bin" / "flask"), "--app", "wsgi", "deploy", "upgrade"],
                env=base,
                cwd=self.app_dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=180)[0] for p in upgrades]
        self.require(
            "two `flask deploy upgrade` at once both succeed",
            all(p.returncode == 0 for p in upgrades),
            "\n---\n".join(outputs),
        )
        admins = database.query("SELECT COUNT(*) FROM users WHERE rol = 1")[0][0]
        self.check(
            "...taking turns on the lock, and one first admin",
            admins == 1 and all("migration lock taken" in out for out in outputs),
            f"{admins} admins\n" + "\n---\n".join(outputs),
        )
        self.second_admin(base)

        instances = []
        for name in ("a", "b"):
            run = self.runtime_dir(f"run-{name}")
            env = {
                **base,
                "WEB_SOCKET": str(run / "uwsgi.sock"),
                "WEB_FIFO": str(run / "uwsgi.fifo"),
            }
            process = self.processes.start(
                [UWSGI, "--ini", str(self.source / "app.ini")],
                self.workdir / f"uwsgi-{name}.log",
                env,
            )
            instances.append((name, process, run))
        port = free_port()
        conf = self.nginx_conf(
            "nginx-two", port, [run / "uwsgi.sock" for _, _, run in instances], True
        )
        nginx_log = self.workdir / "nginx-two.log"
        client = Client(port)
        nginx = None
        try:
            for name, process, run in instances:
                wait_until(
                    f"uWSGI {name}'s socket",
                    lambda p=process, r=run: self.socket_ready(p, r),
                    90,
                )
            nginx = self.processes.start(
                [NGINX, "-c", str(conf), "-g", "daemon off;"], nginx_log, {"PATH": SYSTEM_PATH}
            )
            wait_until("/healthz through nginx", lambda: self.healthy(client, nginx), 30)
            self.check("two uWSGI instances and nginx up", True)
            self.load(client, database, instances, nginx_log)
        finally:
            self.stop_scale_out(nginx, instances)
        self.after_scale_out(database, nginx_log)

    @staticmethod
    def socket_ready(process: subprocess.Popen, run: Path) -> bool:
        if process.poll() is not None:
            raise Failed(f"uWSGI exited with status {process.returncode} while starting")
        return (run / "uwsgi.sock").is_socket() and (run / "uwsgi.fifo").exists()

    def load(self, client: Client, database: Database, instances, nginx_log: Path) -> None:
        tokens = [client.login(email, password) for email, password in ADMINS]
        skus = [f"load-{self.run_id}-{n}" for n in range(3)]
        for sku in skus:
            product = {"sku": sku, "name": f"item {sku}", "price": 100, "mark": "m", "quantity": 1}
            status, body = client.request("POST", "/api/products", product, tokens[0])
            self.require(f"create {sku}", status == 201, body)

        prices = itertools.count(1001)
        lock = threading.Lock()
        reads: Counter = Counter()
        changes: list[tuple[str, int]] = []
        errors: list[str] = []
        deadline = time.monotonic() + self.args.seconds
        max_requests = 20_000  # per thread: a bound whatever the machine's speed

        def worker(n: int) -> None:
            rng = random.Random(n)
            for _ in range(max_requests):
                if time.monotonic() > deadline:
                    return
                sku = rng.choice(skus)
                try:
                    if rng.random() < 0.15:
                        with lock:
                            price = next(prices)
                        status, body = client.request(
                            "PUT", f"/api/products/{sku}", {"price": price}, rng.choice(tokens)
                        )
                        if status == 200:
                            with lock:
                                changes.append((sku, price))
                        else:
                            errors.append(f"PUT {sku} {price}: {status} {body}")
                    else:
                        status, body = client.request("GET", f"/api/products/{sku}")
                        if status == 200:
                            with lock:
                                reads[sku] += 1
                        else:
                            errors.append(f"GET {sku}: {status} {body}")
                except OSError as exc:
                    errors.append(f"{sku}: {type(exc).__name__}: {exc}")

        threads = [
            threading.Thread(target=worker, args=(n,), daemon=True)
            for n in range(self.args.threads)
        ]
        for thread in threads:
            thread.start()
        # Mid-way, a graceful reload of instance a's workers (`w`), as an operator would.
        name, _, run = instances[0]
        if self.args.reload:
            time.sleep(self.args.seconds * 0.4)
            fifo_command(run / "uwsgi.fifo", "w")
        for thread in threads:
            thread.join(timeout=self.args.seconds + 60)
        self.require("the load threads finished", not any(t.is_alive() for t in threads))

        total = sum(reads.values()) + len(changes)
        self.check(
            f"{self.args.threads} threads, {self.args.seconds:.0f}s: {sum(reads.values())} reads"
            f" and {len(changes)} price changes"
            + (f", a graceful reload (w) of instance {name} on the way" if self.args.reload else "")
            + ": no error",
            not errors and total > 0 and changes,
            "\n".join(errors[:20]) + (f"\n... {len(errors)} errors" if errors else ""),
        )
        self.views_expected = dict(reads)
        self.changes = changes
        self.skus = skus

        status, _ = client.request(
            "GET", f"/api/products/{skus[0]}", headers={"X-Forwarded-For": REAL_CLIENT}
        )
        if status == 200:
            self.views_expected[skus[0]] = self.views_expected.get(skus[0], 0) + 1
        time.sleep(0.5)  # the access log line is written after the answer
        self.check_forwarded_for(nginx_log, trusted=True)
        used = set(re.findall(r"upstream=unix:(\S+)", nginx_log.read_text(errors="replace")))
        self.check(
            "nginx spread the requests over both uWSGI instances",
            {str(run / "uwsgi.sock") for _, _, run in instances} <= used,
            used,
        )

        expected = len(ADMINS) * (len(skus) + len(changes))
        with suppress(Failed):
            wait_until("every email in moto", lambda: len(self.moto.messages()) >= expected, 60)

    def stop_scale_out(self, nginx: subprocess.Popen | None, instances) -> None:
        if nginx is not None and nginx.poll() is None:
            nginx.send_signal(signal.SIGQUIT)  # nginx -s quit
            try:
                self.check("nginx: graceful stop (SIGQUIT), exit 0", nginx.wait(timeout=30) == 0)
            except subprocess.TimeoutExpired:
                self.check("nginx: graceful stop within 30s", False)
        for name, process, run in instances:
            if process.poll() is not None:
                self.check(f"uWSGI {name} still running at the end", False, process.returncode)
                continue
            try:
                fifo_command(run / "uwsgi.fifo", "q")
            except OSError as exc:
                self.check(f"uWSGI {name}: q into its master FIFO", False, exc)
                process.terminate()
        for name, process, _ in instances:
            try:
                status = process.wait(timeout=60)
                self.check(f"uWSGI {name}: graceful shutdown (q), exit 0", status == 0, status)
            except subprocess.TimeoutExpired:
                self.check(f"uWSGI {name}: graceful shutdown within 60s", False)

    def after_scale_out(self, database: Database, nginx_log: Path) -> None:
        counts = dict(
            database.query(
                "SELECT p.sku, COUNT(*) FROM product_views v JOIN products p ON p.id = v.product_id"
                " GROUP BY p.sku"
            )
        )
        self.check(
            "every 200 read has exactly one view row",
            counts == self.views_expected,
            f"database {counts}, reads {self.views_expected}",
        )
        expected = len(ADMINS) * (len(self.skus) + len(self.changes))
        statuses = dict(
            database.query("SELECT status, COUNT(*) FROM notifications GROUP BY status")
        )
        self.check(
            f"notifications: {expected}, all sent",
            statuses == {"sent": expected},
            statuses,
        )
        messages = self.moto.messages()
        keys = Counter((m["to"], m["subject"], m["body"]) for m in messages)
        duplicates = [key for key, count in keys.items() if count > 1]
        self.check(
            f"SES got {expected} emails, no duplicate",
            len(messages) == expected and not duplicates,
            f"{len(messages)} emails; duplicates: {duplicates[:3]}",
        )
        pattern = re.compile(r"Product (\S+) updated: price: \S+ -> (\S+)$")
        got = Counter()
        for m in messages:
            match = pattern.search(m["subject"])
            if match:
                got[(m["to"], match.group(1), match.group(2))] += 1
        want = Counter(
            (email, sku, str(price)) for sku, price in self.changes for email, _ in ADMINS
        )
        self.check(
            "each price change emailed to each admin exactly once",
            got == want,
            f"missing {list((want - got).elements())[:5]}, "
            f"extra {list((got - want).elements())[:5]}",
        )
        left = self.left_running()
        self.check("nothing left running (uWSGI, workers, nginx)", not left, left)

    # ---------------------------------------------------------------- the end

    def teardown(self) -> None:
        if self.moto is not None:
            self.moto.stop()
        left = self.processes.kill_everything()
        self.check("no process of this run left running (moto included)", not left, left)
        if not self.args.keep:
            for database in self.databases:
                database.drop()
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"  kept {self.workdir} and the databases {[d.name for d in self.databases]}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="load duration (default 10)")
    parser.add_argument("--threads", type=int, default=8, help="load threads (default 8)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory and the databases"
    )
    parser.add_argument(
        "--reload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reload one instance's workers gracefully (w) during the load (default: yes)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        help="take every file from this tree instead of this one (e.g. a `git worktree`)",
    )
    args = parser.parse_args(argv)
    if not (1 <= args.seconds <= 60 and 1 <= args.threads <= 32):
        parser.error("--seconds must be 1-60 and --threads 1-32")
    return args


def interrupted(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    smoke = Smoke(args)
    try:
        smoke.prepare()
        for step in (smoke.single_instance, smoke.scale_out):
            try:
                step()
            except Failed as exc:
                smoke.check(f"{step.__name__} could not go on", False, exc)
            except Exception:
                smoke.check(f"{step.__name__} crashed", False, traceback.format_exc())
    except KeyboardInterrupt:
        smoke.check("interrupted", False)
    except Failed as exc:
        smoke.check("preparation", False, exc)
    except Exception:
        smoke.check("preparation crashed", False, traceback.format_exc())
    finally:
        smoke.teardown()
    failed = [name for name, ok, _ in smoke.results if not ok]
    log(f"\n== Summary ({time.monotonic() - started:.0f}s)")
    log(f"smoke: {len(smoke.results) - len(failed)} passed, {len(failed)} failed")
    for name in failed:
        log(f"  FAIL  {name}")
    log("SMOKE PASS" if not failed else "SMOKE FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
