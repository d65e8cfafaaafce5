"""Long operator commands (`flask stats rollup`, `flask views prune`): a progress bar on a
terminal, only the one-line summary (rows, seconds) anywhere else."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from app.views.models import ProductView
from tests.test_views_stats import seed_views

ROOT = Path(__file__).resolve().parent.parent
DAYS = {date(2026, 1, 10): (3, []), date(2026, 1, 20): (2, [])}
ROLLUP = ["stats", "rollup", "--from", "2026-01-01", "--to", "2026-01-31"]
PRUNE = ["views", "prune", "--before", "2026-01-15"]
SUMMARY = {
    "rollup": r"rolled up 5 view\(s\) from 2026-01-10 to 2026-01-31 in \d+\.\ds",
    "prune": r"deleted 3 raw view\(s\) before 2026-01-15 in \d+\.\ds",
}


@pytest.fixture
def views(app, make):
    make.product("abc")
    seed_views(app, "abc", DAYS)


def on_a_terminal(app, args: list[str]) -> str:
    """Run `flask <args>` with its stdout and stderr on a pseudo-terminal; what it showed."""
    leader, follower = pty.openpty()
    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"]}
    env.pop("APP_ENV", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        assert process.wait(60) == 0, shown.decode(errors="replace")
    return shown.decode(errors="replace")


@pytest.mark.parametrize(("name", "args"), [("rollup", ROLLUP), ("prune", PRUNE)])
def test_not_on_a_terminal_only_the_summary_is_printed(runner, views, name, args):
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 + (name == "rollup"), lines  # rollup: where raw views start
    assert re.fullmatch(SUMMARY[name], lines[-1]), lines
    assert "[" not in result.output and "%" not in result.output


def test_a_range_without_views_says_so(runner, views, rows):
    result = runner.invoke(args=["stats", "rollup", "--from", "2025-01-01", "--to", "2025-01-31"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"no raw views in that range: its days keep their roll-ups \(\d+\.\ds\)\n", result.output
    )


def test_on_a_terminal_rollup_shows_its_days_advance(app, views):
    shown = on_a_terminal(app, ROLLUP)
    assert "rolling up (31 days)" in shown
    assert re.search(r"\[#{36}\]\s+31/31\s+100%", shown), shown  # the bar, full at the end
    assert re.search(SUMMARY["rollup"], shown), shown


def test_on_a_terminal_prune_shows_its_rows_advance(app, views, rows):
    shown = on_a_terminal(app, PRUNE)
    assert "pruning (3 views)" in shown
    assert re.search(r"\[#{36}\]\s+3/3\s+100%", shown), shown
    assert re.search(SUMMARY["prune"], shown), shown
    assert len(rows(ProductView)) == 2
