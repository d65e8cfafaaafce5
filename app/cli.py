"""Operator commands: `flask users ...` (and `flask db ...` from Flask-Migrate)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from flask_migrate import upgrade

from app.accounts import service as accounts
from app.accounts.passwords import MIN_PASSWORD_LENGTH
from app.core import dialect
from app.core.errors import RuleError
from app.core.unit_of_work import unit_of_work
from app.events import journal
from app.notifications import outbox
from app.views import rollups
from app.worker import Worker

users = AppGroup("users", help="Manage accounts.")


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _long_enough(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise click.BadParameter(f"must be at least {MIN_PASSWORD_LENGTH} characters")
    return password


def new_admin_password() -> str:
    """The password for create-admin when --password is not given: ADMIN_PASSWORD (what
    ensure-admin reads too) for scripts, else asked twice on the terminal, never echoed."""
    password = current_app.config.get("ADMIN_PASSWORD")
    if password:
        click.echo("Using the password in ADMIN_PASSWORD.", err=True)
        try:
            return _long_enough(password)
        except click.BadParameter as exc:
            raise click.ClickException(f"ADMIN_PASSWORD {exc.message}.") from exc
    if not stdin_is_terminal():
        raise click.ClickException(
            "No password given and no terminal to ask for one: set ADMIN_PASSWORD in the "
            "environment of this command (or run it on a terminal to be asked)."
        )
    return click.prompt(
        f"Password (at least {MIN_PASSWORD_LENGTH} characters)",
        hide_input=True,
        confirmation_prompt="Repeat the password",
        value_proc=_long_enough,
    )


@users.command("create-admin")
@click.option("--email", required=True)
@click.option(
    "--password",
    default=None,
    help="Discouraged: it stays in ps and the shell history. Without it the password "
    "comes from ADMIN_PASSWORD, or is asked for (hidden, twice) on a terminal.",
)
@click.option("--fullname", default="Administrator", show_default=True)
@click.option("--username", default=None, help="Defaults to the part of the email before @.")
def create_admin(email: str, password: str | None, fullname: str, username: str | None) -> None:
    """Create an admin account (or promote and reset an existing one with this email)."""
    if password is None:
        password = new_admin_password()
    elif len(password) < MIN_PASSWORD_LENGTH:
        raise click.BadParameter(
            f"must be at least {MIN_PASSWORD_LENGTH} characters", param_hint="--password"
        )
    try:
        with unit_of_work():
            user = accounts.make_admin(email, password, fullname=fullname, username=username)
    except RuleError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"Admin {user.email} (id {user.id}) is ready.")


@users.command("ensure-admin")
def ensure_admin() -> None:
    """Create the first admin when none exists (ADMIN_EMAIL / ADMIN_PASSWORD, or generated
    outside production)."""
    config = current_app.config
    password = config.get("ADMIN_PASSWORD")
    if password and len(password) < MIN_PASSWORD_LENGTH:
        raise click.ClickException(
            f"ADMIN_PASSWORD must be at least {MIN_PASSWORD_LENGTH} characters."
        )
    if not password and config["APP_ENV"] == "production" and not accounts.admin_count():
        # A generated password printed here would live on in the logs (CloudWatch...).
        raise click.ClickException(
            "No admin exists yet: set ADMIN_PASSWORD (and ADMIN_EMAIL) to create the first "
            "admin; in production no password is generated or printed."
        )
    try:
        with unit_of_work():
            first = accounts.ensure_first_admin(config.get("ADMIN_EMAIL"), password)
    except RuleError as exc:
        raise click.ClickException(f"ADMIN_EMAIL {exc.message}") from exc
    if first is None:
        click.echo("An admin account exists already.")
        return
    click.echo(f"Created the first admin: {first.user.email}")
    if first.generated_password:
        line = "=" * 64
        click.echo(
            f"{line}\n  First admin password (shown only once): "
            f"{first.generated_password}\n  Log in with POST /users/login, then change it.\n{line}"
        )


@click.command("worker")
@with_appcontext
@click.option(
    "--once", is_flag=True, help="Apply the views stream and send what is due, then exit."
)
def worker(once: bool) -> None:
    """Run the worker: write the views stream to the database, send the emails and the
    webhooks."""
    app = current_app._get_current_object()
    if once:
        process = Worker(app)
        entries, emails = process.drain()
        attempts = process.drain_webhooks()
        click.echo(
            f"worker: {entries} view entr(ies) applied, {emails} email(s) attempted, "
            f"{attempts} webhook attempt(s)"
        )
        return
    # The handlers go in before the worker connects to anything: from here on a SIGTERM
    # is a graceful stop, and one that came earlier ended a process that had taken no work
    # (docker/entrypoint.sh counts that as a clean stop).
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    Worker(app, stopping).run()


notifications = AppGroup("notifications", help="Re-queue product-change emails.")


@notifications.command("retry")
@click.option("--id", "ids", type=int, multiple=True, help="A failed or unknown email's id.")
@click.option("--all-failed", is_flag=True, help="Every failed email.")
@click.option(
    "--unknown",
    "all_unknown",
    is_flag=True,
    help="Every email whose outcome is unknown (a recipient may get it twice).",
)
def notifications_retry(ids: tuple[int, ...], all_failed: bool, all_unknown: bool) -> None:
    """Queue failed or unknown emails again (attempts start over). Each email carries its
    notification id in the X-Marketplace-Notification-Id header, so a recipient's system
    can tell a deliberate resend from a new email."""
    if not ids and not all_failed and not all_unknown:
        raise click.UsageError("give --id N (repeatable), --all-failed or --unknown")
    count = outbox.requeue(list(ids), all_failed=all_failed, all_unknown=all_unknown)
    click.echo(f"{count} notification(s) queued again")


stats = AppGroup("stats", help="Product view statistics.")
views = AppGroup("views", help="Raw product view records.")
DAY = click.DateTime(formats=["%Y-%m-%d"])
ROLLUP_LOCK = "marketplace_stats_rollup"


@stats.command("rollup")
@click.option("--from", "start", type=DAY, help="First day (UTC); default 30 days ago.")
@click.option("--to", "end", type=DAY, help="Last day (UTC); default yesterday.")
def stats_rollup(start, end) -> None:
    """Rebuild the per-day roll-ups of a range from the raw view rows, and the weekly
    rankings of its weeks from the days.

    Meant for past days: views still being written for a day in the range (today) can
    be missed by the rebuild, so the default range ends yesterday (the weekly pass is
    safe on the week being written). One run at a time (MariaDB: a named lock).
    """
    end = end.date() if end else datetime.now(UTC).date() - timedelta(days=1)
    start = start.date() if start else end - timedelta(days=29)
    if start > end:
        raise click.BadParameter("must not be after --to", param_hint="--from")
    with dialect.named_lock(ROLLUP_LOCK, 0) as got:
        if not got:
            # Two runs would both add a week's difference to it, and rewrite each other's
            # days between a read and a write.
            raise click.ClickException("another flask stats rollup is running: try again later")
        with progress("rolling up", (end - start).days + 1, "days") as advance:
            count, first = rollups.rebuild_rollups(start, end, advance)
    if first is None:
        click.echo(
            f"no raw views in that range: its days keep their roll-ups ({advance.seconds:.1f}s)"
        )
        return
    if first > start:
        click.echo(f"raw views start on {first}; earlier days keep their roll-ups")
    click.echo(f"rolled up {count} view(s) from {first} to {end} in {advance.seconds:.1f}s")


@views.command("prune")
@click.option("--before", required=True, type=DAY, help="Delete raw views before this day.")
def views_prune(before) -> None:
    """Delete raw view rows before a day; the daily roll-ups (the statistics) stay."""
    with progress("pruning", rollups.views_before(before.date()), "views") as advance:
        count = rollups.prune_views(before.date(), advance)
    click.echo(f"deleted {count} raw view(s) before {before.date()} in {advance.seconds:.1f}s")


class Progress:
    """``advance(n)`` moves the bar; ``seconds`` is the time taken, for the summary."""

    def __init__(self, bar) -> None:
        self.bar, self.started, self.seconds = bar, time.monotonic(), 0.0

    def __call__(self, done: int) -> None:
        self.bar.update(done)


@contextmanager
def progress(label: str, total: int, unit: str):
    """A bar on stderr while long work runs, when stderr is a terminal; nothing
    otherwise (cron, CI, a pipe: the command's one-line summary says it all)."""
    bar = click.progressbar(
        length=max(total, 1),
        label=f"{label} ({total} {unit})",
        file=sys.stderr,
        hidden=not sys.stderr.isatty(),
        show_pos=True,
        show_percent=True,
    )
    with bar:
        advance = Progress(bar)
        try:
            yield advance
        finally:
            advance.seconds = time.monotonic() - advance.started


deploy = AppGroup("deploy", help="Start-up tasks for a new release.")
MIGRATION_LOCK = "marketplace_migrations"


@deploy.command("upgrade")
@click.option("--lock-timeout", default=300, show_default=True, help="Seconds to wait.")
def deploy_upgrade(lock_timeout: int) -> None:
    """Migrate the database and ensure the first admin, one instance at a time.

    On MySQL/MariaDB a named lock (GET_LOCK) makes instances that start together take
    turns: the first migrates, the others wait and then find nothing left to do.
    """
    with migration_lock(lock_timeout):
        upgrade()
        ensure_admin.callback()


@contextmanager
def migration_lock(timeout: int):
    with dialect.named_lock(MIGRATION_LOCK, timeout) as got:
        if not got:
            raise click.ClickException(
                f"another instance held the migration lock for over {timeout}s"
            )
        click.echo("migration lock taken")
        yield


events = AppGroup("events", help="The journal of changes.")


@events.command("verify")
def events_verify() -> None:
    """Walk the chain of events and name the first one that does not match its hash."""
    checked, broken = journal.verify()
    if broken is not None:
        raise click.ClickException(
            f"event {broken.event_id}: {broken.reason} ({checked} event(s) before it hold)"
        )
    click.echo(f"{checked} event(s) checked: the chain holds")


GROUPS = (users, notifications, stats, views, events, deploy, worker)
