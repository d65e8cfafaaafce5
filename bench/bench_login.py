"""Login timing: an unknown email must cost what a wrong password costs (no enumeration).

Measured in-process (the cost is argon2's, not the server's): median time of
`POST /users/login` for an unknown email divided by the same for a known email with a
wrong password, alternating the two, on an SQLite file. The summary shows the faster of
the two divided by the slower: >= 0.8 means neither answer gives the other away.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, Result, Target, say

ATTEMPTS = 40


def run(ctx) -> list[Result]:
    sys.path.insert(0, str(REPO_ROOT))
    workdir = Path(tempfile.mkdtemp(prefix="bench-login-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'login.db'}"
    os.environ.setdefault("SECRET_KEY", "bench-login-secret-key-long-enough-0123456789")
    from flask_migrate import upgrade

    from app import create_app
    from app.accounts import service as accounts
    from app.core.extensions import db

    # Measure, do not limit.
    os.environ["LOGIN_FAILURES_LIMIT"] = os.environ["LOGIN_ACCOUNT_FAILURES_LIMIT"] = (
        "100000 per minute"
    )
    app = create_app()
    with app.app_context():
        upgrade()
        accounts.create_user(
            fullname="Known",
            username="known",
            email="known@example.com",
            password="the-right-password",
            role=1,
        )
        db.session.commit()
    client = app.test_client()
    bodies = {
        "unknown": {"email": "nobody@example.com", "password": "a-wrong-password"},
        "wrong": {"email": "known@example.com", "password": "a-wrong-password"},
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
    return [
        Result(
            name="POST /users/login: unknown email vs wrong password (faster / slower)",
            measured=f"{unknown:.1f} / {wrong:.1f} ms",
            ratio=min(ratio, 1 / ratio),
            target=Target(">=", 0.8),
            details={"ratio": ratio, "unknown_ms": unknown, "wrong_ms": wrong},
        )
    ]
