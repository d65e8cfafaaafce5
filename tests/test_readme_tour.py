"""The README's tour, run from the README itself.

Its ```sh blocks run as a reader runs them: in order, in one bash, against `make run` (the
block that starts it, as written) on an empty SQLite database and a free port. Each output
is compared with the fenced block printed right under the command, where there is one:
``…`` stands for anything, a timestamp, a date or a 32-hex-digit id for another one of its
kind, and a line break followed by indentation for any whitespace. One substitution, and
only in the commands: the README's address, http://127.0.0.1:8000, becomes the server's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TOUR = "## A tour of the API"
ADDRESS = "http://127.0.0.1:8000"  # the README's; replaced by the test server's
FENCE = re.compile(r"^```(?P<lang>\S*)\n(?P<body>.*?)^```\n", re.M | re.S)
# A step whose answer waits on the worker may be run again until it matches: reading the
# delivery log changes nothing, and the worker sends within a second or so.
WORKER_FED = re.compile(r"/api/notifications\b")
START_SECONDS = 120
STEP_SECONDS = 30
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00"
DATE = r"\d{4}-\d\d-\d\d"
HEX_ID = r"[0-9a-f]{32}"
SPECIAL = re.compile(rf"…|{TIMESTAMP}|{DATE}|{HEX_ID}|\n[ \t]*")


@dataclass
class Step:
    line: int  # of the README, for the failure message
    command: str
    expected: str | None  # the block printed under it


def tour_blocks(text: str) -> tuple[str, list[Step]]:
    """The tour's `make run` command and its steps, in the README's order."""
    start = text.index(TOUR)
    end = text.find("\n## ", start + len(TOUR))
    section = text[start : end if end != -1 else len(text)]
    offset = text[:start].count("\n") + 1
    blocks = list(FENCE.finditer(section))
    server, steps = None, []
    for i, block in enumerate(blocks):
        if block["lang"] != "sh":
            continue
        line = offset + section[: block.start()].count("\n")
        if re.search(r"(^|\s)make run\b", block["body"]):
            server = block["body"].strip()
            continue
        after = blocks[i + 1] if i + 1 < len(blocks) else None
        printed = after is not None and after.start() == block.end() and after["lang"] != "sh"
        steps.append(Step(line, block["body"], after["body"] if printed else None))
    assert server, f"the tour starts the server with `make run` in a ```sh block ({TOUR})"
    return server, steps


def pattern(expected: str) -> re.Pattern[str]:
    parts, position = [], 0
    for token in SPECIAL.finditer(expected):
        parts.append(re.escape(expected[position : token.start()]))
        text = token.group()
        if text == "…":
            parts.append(".*?")
        elif text.startswith("\n"):
            parts.append(r"\s*")
        elif re.fullmatch(TIMESTAMP, text):
            parts.append(TIMESTAMP)
        elif re.fullmatch(DATE, text):
            parts.append(DATE)
        else:
            parts.append(HEX_ID)
        position = token.end()
    parts.append(re.escape(expected[position:]))
    return re.compile("".join(parts), re.S)


def differences(expected: str, output: str) -> list[str]:
    """What of ``expected`` the output lacks (nothing: it matches). An HTTP answer printed
    with ``curl -i`` matches its status line, each header shown (any others may follow),
    and its body."""
    expected, output = expected.strip(), output.replace("\r\n", "\n").strip()
    if not expected.startswith("HTTP/"):
        return [] if pattern(expected).fullmatch(output) else ["the output"]
    head, _, body = expected.partition("\n\n")
    got_head, _, got_body = output.partition("\n\n")
    status, *headers = head.splitlines()
    got_status, *got_headers = got_head.splitlines()
    missing = [] if got_status == status else [status]
    received = {}
    for line in got_headers:
        name, _, value = line.partition(":")
        received[name.strip().lower()] = value.strip()
    for line in headers:
        name, _, value = line.partition(":")
        if not pattern(value.strip()).fullmatch(received.get(name.strip().lower(), "")):
            missing.append(line)
    if not pattern(body.strip()).fullmatch(got_body.strip()):
        missing.append("the body")
    return missing


def error_bodies(output: str) -> list[dict]:
    """The JSON error bodies in an output: {"code": 4xx/5xx, "status": ...}."""
    found = []
    for line in output.splitlines():
        try:
            body = json.loads(line)
        except ValueError:
            continue
        code = body.get("code") if isinstance(body, dict) else None
        if isinstance(code, int) and code >= 400 and "status" in body:
            found.append(body)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Shell:
    """One bash, fed one step at a time, as a reader types them; ``curl`` counted."""

    MARK = "__step_done__"

    def __init__(self, env: dict[str, str], cwd: Path, counter: Path):
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
        self.send(f'curl() {{ echo >> "{counter}"; command curl "$@"; }}\nset -e -o pipefail\n')

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def run(self, command: str) -> str:
        # Nothing a step runs may read the rest of the script: its stdin is /dev/null.
        self.send(f"{{\n{command}\n}} </dev/null\nprintf '\\n%s\\n' {self.MARK}\n")
        assert self.process.stdout is not None
        out, end = self.process.stdout.fileno(), f"\n{self.MARK}\n".encode()
        printed, deadline = b"", time.monotonic() + STEP_SECONDS
        while not printed.endswith(end):
            ready, _, _ = select.select([out], [], [], 1)
            chunk = os.read(out, 65536) if ready else b""
            if ready and not chunk:
                raise AssertionError(f"the shell stopped (a command failed):\n{printed.decode()}")
            if not ready and time.monotonic() > deadline:
                raise AssertionError(f"the step did not finish:\n{printed.decode()}")
            printed += chunk
        return printed[: -len(end)].decode()

    def close(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self.process.wait(timeout=10)


@pytest.fixture
def server(tmp_path):
    """The tour's own `make run` line, on an empty database and a free port; its output."""
    for tool in ("make", "curl", "bash"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed: see the README's prerequisites")
    command, steps = tour_blocks(README.read_text(encoding="utf-8"))
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
        # Not the developer's instance/: a database and a key of the test's own.
        "DATABASE_URL": f"sqlite:///{tmp_path / 'marketplace.db'}",
        "SECRET_KEY": secrets.token_urlsafe(48),
    }
    log = tmp_path / "make-run.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=ROOT,
            env={**env, "PORT": str(port)},  # the Makefile's PORT ?= 8000
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while "Running on" not in log.read_text():
            assert process.poll() is None, f"make run stopped:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"make run did not serve:\n{log.read_text()}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", env, steps, log
    finally:
        # make, its shell, `flask run` and `flask worker`: the session started here.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_tour_works_as_printed(server, tmp_path):
    base, env, steps, log = server
    counter = tmp_path / "requests"
    counter.touch()
    shell = Shell(env, ROOT, counter)
    failures, outputs = [], []
    try:
        for step in steps:
            command = step.command.replace(ADDRESS, base)
            output = shell.run(command)
            if step.expected is not None and WORKER_FED.search(command):
                deadline = time.monotonic() + 10
                while differences(step.expected, output) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    output = shell.run(command)
            outputs.append(output)
            if step.expected is None:
                if errors := error_bodies(output):
                    failures.append(f"README line {step.line}: errors nobody shows: {errors}")
            elif missing := differences(step.expected, output):
                failures.append(f"README line {step.line}: {missing} differ; it printed:\n{output}")
    finally:
        shell.close()
    assert failures == [], "\n\n".join(failures)

    # What `make run` printed meanwhile: each request once, by the app, with its id.
    printed = log.read_text()
    requests = [line for line in printed.splitlines() if " INFO app.requests: " in line]
    assert len(requests) == len(counter.read_text().splitlines())
    assert not re.search(r' - - \[[^]]+\] "', printed), "the development server's own line"
    for body in (e for output in outputs for e in error_bodies(output)):
        assert len([r for r in requests if f"request_id={body['request_id']}" in r]) == 1
    assert "Traceback" not in printed and " ERROR " not in printed, printed
    # The emails the tour caused, written by the worker; the one the README shows.
    text = README.read_text(encoding="utf-8")
    shown = re.search(r"^Subject: \[Marketplace\] .*$", text[text.index(TOUR) :], re.M)
    assert shown and shown.group() in printed
    # Failed logins are counted in the web process, which says so once.
    assert printed.count("login limits: counted in this process's memory") == 1


def test_the_matcher_fails_what_differs():
    """The comparison itself: elisions, timestamps and ids are free, the rest is not."""
    shown = '{"a":1,…,"at":"2026-12-06T08:19:16.590033+00:00",\n "id":"%s"}' % ("3f2c" * 8)
    same = '{"a":1,"b":2,"at":"2027-01-01T00:00:00.1+00:00","id":"%s"}' % ("0a1b" * 8)
    assert differences(shown, same) == []
    assert differences(shown, same.replace('"a":1', '"a":2')) == ["the output"]
    answer = "HTTP/1.1 201 CREATED\r\nServer: x\r\nLocation: /api/products/a\r\n\r\n{}\n"
    assert differences("HTTP/1.1 201 CREATED\nLocation: /api/products/a\n\n{}", answer) == []
    assert differences("HTTP/1.1 201 CREATED\nLocation: /api/products/b\n\n{}", answer) == [
        "Location: /api/products/b"
    ]
    assert differences("HTTP/1.1 200 OK", answer) == ["HTTP/1.1 200 OK", "the body"]
