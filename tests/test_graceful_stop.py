"""A graceful stop of the real uWSGI server writes every buffered view first.

The container's entrypoint turns the SIGTERM it receives into uWSGI's graceful shutdown
(``q`` on the master FIFO): uWSGI's own SIGTERM handling with ``die-on-term`` kills
respawned workers without waiting for their exit hooks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from app.models import ProductView

ROOT = Path(__file__).resolve().parent.parent
UWSGI = Path(sys.executable).parent / "uwsgi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/products", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("uWSGI did not start serving")


def start_uwsgi(database: str, port: int, log, fifo: Path, *options: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "APP_ENV": "development",
        "SECRET_KEY": "a-test-secret-key-long-enough-for-hs256-signing",
        "MAIL_BACKEND": "console",
        "NOTIFY_SWEEP_SECONDS": "0",
        # Nothing is written until the server stops: only the shutdown flush can save them.
        "VIEWS_FLUSH_SECONDS": "3600",
        "VIEWS_BATCH": "1000000",
    }
    return subprocess.Popen(
        [
            str(UWSGI),
            "--http-socket",
            f"127.0.0.1:{port}",
            "--module",
            "wsgi:app",
            "--master",
            "--processes",
            "2",
            "--die-on-term",
            "--need-app",
            "--disable-logging",
            "--chdir",
            str(ROOT),
            "--master-fifo",
            str(fifo),
            *options,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def read(port: int, times: int) -> None:
    for _ in range(times):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/products/abc") as response:
            assert response.status == 200


class Server:
    """uWSGI serving the app on loopback; stopped gracefully through its master FIFO."""

    def __init__(self, database: str, tmp_path: Path, *options: str):
        self.port = free_port()
        self.fifo = tmp_path / "master.fifo"
        self.log_path = tmp_path / "uwsgi.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = start_uwsgi(database, self.port, self.log, self.fifo, *options)
        wait_for(self.port)

    def command(self, letter: str) -> None:
        with open(self.fifo, "w") as fifo:
            fifo.write(letter)

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.command("q")  # graceful shutdown: workers finish and run exit hooks
                self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def test_a_graceful_stop_flushes_buffered_views_of_every_worker(database, make, rows, tmp_path):
    make.product("abc")
    server = Server(database, tmp_path)
    try:
        read(server.port, 40)
        assert rows(ProductView) == []  # still buffered in the workers
    finally:
        server.stop()
    assert len(rows(ProductView)) == 40, server.output()


def test_a_graceful_reload_flushes_and_the_new_workers_too(database, make, rows, tmp_path):
    make.product("abc")
    server = Server(database, tmp_path)
    try:
        read(server.port, 25)
        server.command("w")  # graceful reload of every worker, as on a deploy
        deadline = time.monotonic() + 30
        while len(rows(ProductView)) < 25 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(rows(ProductView)) == 25, server.output()
        wait_for(server.port)
        read(server.port, 5)  # the new workers serve and buffer again
    finally:
        server.stop()
    assert len(rows(ProductView)) == 30, server.output()
