"""Login timing: an unknown email must cost what a wrong password costs (no enumeration).

Measured in-process (the cost is argon2's, not the server's): median time of
`POST /users/login` for an unknown email divided by the same for a known email with a
wrong password, alternating the two, on an SQLite file. The summary shows the faster of
the two divided by the slower: >= 0.8 means neither answer gives the other away.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import IN_PROCESS_ADMIN, Result, Target, in_process_app, say

ATTEMPTS = 40
UNLIMITED = "100000 per minute"  # measure, do not limit


def run(ctx) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-login-"))
    try:
        _app, client, _headers = in_process_app(
            f"sqlite:///{workdir / 'login.db'}",
            LOGIN_FAILURES_LIMIT=UNLIMITED,
            LOGIN_ACCOUNT_FAILURES_LIMIT=UNLIMITED,
        )
        return [measure(client)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(client) -> Result:
    known = IN_PROCESS_ADMIN[0]
    bodies = {
        "unknown": {"email": "nobody@example.com", "password": "a-wrong-password"},
        "wrong": {"email": known, "password": "a-wrong-password"},
    }
    times: dict[str, list[float]] = {"unknown": [], "wrong": []}
    for n in range(ATTEMPTS):
        order = ("unknown", "wrong") if n % 2 == 0 else ("wrong", "unknown")
        for kind in order:
            began = time.perf_counter()
            status = client.post("/users/login", json=bodies[kind]).status_code
            times[kind].append(time.perf_counter() - began)
            assert status == 401, status
    unknown = statistics.median(times["unknown"]) * 1000
    wrong = statistics.median(times["wrong"]) * 1000
    ratio = unknown / wrong
    say(
        f"login: unknown email {unknown:.1f} ms, wrong password {wrong:.1f} ms (median of "
        f"{ATTEMPTS})"
    )
    return Result(
        name="POST /users/login: unknown email vs wrong password (faster / slower)",
        measured=f"{unknown:.1f} / {wrong:.1f} ms",
        ratio=min(ratio, 1 / ratio),
        target=Target(">=", 0.8),
        details={"ratio": ratio, "unknown_ms": unknown, "wrong_ms": wrong},
    )
