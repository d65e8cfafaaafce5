"""Operator commands: `flask users create-admin` and `flask users ensure-admin`."""

import re
import shlex

import pytest

from app.accounts.models import Role, User
from tests.conftest import bearer, login


def flask_users(runner, command: str):
    """Run `flask users <command>` against the test app."""
    return runner.invoke(args=["users", *shlex.split(command)])


# ---------------------------------------------------------------- create-admin


def test_create_admin_makes_an_admin_who_can_log_in(runner, client, rows):
    result = flask_users(
        runner,
        "create-admin --email Ops@Example.com --password ops-password-1"
        " --fullname 'Ops Team' --username ops",
    )

    assert result.exit_code == 0, result.output
    assert "ops@example.com" in result.output
    [user] = rows(User)
    assert user.email == "ops@example.com"
    assert user.username == "ops"
    assert user.fullname == "Ops Team"
    assert user.role == Role.ADMIN
    response = login(client, "ops@example.com", "ops-password-1")
    assert response.status_code == 200
    headers = bearer(response.get_json()["Token"])
    assert client.get("/api/users", headers=headers).status_code == 200


def test_create_admin_defaults_username_from_the_email(runner, rows):
    result = flask_users(runner, "create-admin --email boss@example.com --password 12345678")

    assert result.exit_code == 0, result.output
    [user] = rows(User)
    assert user.username == "boss"
    assert user.fullname == "Administrator"


def test_create_admin_refuses_a_short_password(runner, client, rows):
    result = flask_users(runner, "create-admin --email ops@example.com --password 1234567")

    assert result.exit_code != 0
    assert "8 characters" in result.output
    assert rows(User) == []
    assert login(client, "ops@example.com", "1234567").status_code == 401


def test_create_admin_promotes_an_existing_reader(runner, client, reader, rows):
    result = flask_users(runner, "create-admin --email Reader@Example.com --password promoted-pass")

    assert result.exit_code == 0, result.output
    [user] = rows(User)
    assert user.id == reader["id"]
    assert user.role == Role.ADMIN
    assert login(client, "reader@example.com", "promoted-pass").status_code == 200


def test_create_admin_with_a_taken_username_fails_cleanly(runner, make, rows):
    make.reader(username="ops")

    result = flask_users(
        runner, "create-admin --email ops@example.com --password ops-password-1 --username OPS"
    )

    assert result.exit_code == 1
    assert "username already exists" in result.output
    assert "Traceback" not in result.output
    assert [user.username for user in rows(User)] == ["ops"]


@pytest.fixture
def terminal(app, monkeypatch):
    """create-admin as typed on a terminal, with no ADMIN_PASSWORD in the environment."""
    app.config["ADMIN_PASSWORD"] = None
    monkeypatch.setattr("app.cli.stdin_is_terminal", lambda: True)


def test_create_admin_asks_twice_for_a_hidden_password(runner, client, rows, terminal):
    result = runner.invoke(
        args=["users", "create-admin", "--email", "ops@example.com"],
        input="typed-password-1\ntyped-password-1\n",
    )

    assert result.exit_code == 0, result.output
    assert "Password (at least 8 characters):" in result.output
    assert "Repeat the password:" in result.output
    assert "typed-password-1" not in result.output  # hidden: never echoed
    [user] = rows(User)
    assert (user.email, user.role) == ("ops@example.com", Role.ADMIN)
    assert login(client, "ops@example.com", "typed-password-1").status_code == 200


def test_create_admin_asks_again_after_a_mismatch_or_a_short_password(
    runner, client, rows, terminal
):
    typed = ["short", "first-try-pass", "other-try-pass", "final-password", "final-password"]
    result = runner.invoke(
        args=["users", "create-admin", "--email", "ops@example.com"], input="\n".join(typed) + "\n"
    )

    assert result.exit_code == 0, result.output
    assert "must be at least 8 characters" in result.output
    assert "do not match" in result.output
    assert login(client, "ops@example.com", "final-password").status_code == 200
    assert login(client, "ops@example.com", "first-try-pass").status_code == 401


def test_create_admin_reads_admin_password_from_the_environment(app, runner, client, rows):
    app.config["ADMIN_PASSWORD"] = "from-the-env-1"  # Config reads it from os.environ

    result = flask_users(runner, "create-admin --email ops@example.com")

    assert result.exit_code == 0, result.output
    assert "ADMIN_PASSWORD" in result.output
    assert "from-the-env-1" not in result.output
    assert login(client, "ops@example.com", "from-the-env-1").status_code == 200


def test_create_admin_refuses_a_short_admin_password(app, runner, rows):
    app.config["ADMIN_PASSWORD"] = "short"

    result = flask_users(runner, "create-admin --email ops@example.com")

    assert result.exit_code == 1
    assert "ADMIN_PASSWORD must be at least 8 characters" in result.output
    assert rows(User) == []


def test_create_admin_without_a_terminal_or_admin_password_fails_clearly(app, runner, rows):
    app.config["ADMIN_PASSWORD"] = None

    result = runner.invoke(
        args=["users", "create-admin", "--email", "ops@example.com"], input="piped-password\n"
    )

    assert result.exit_code == 1
    assert "no terminal to ask for one: set ADMIN_PASSWORD" in result.output
    assert "Traceback" not in result.output
    assert rows(User) == []


def test_create_admin_password_option_still_wins(app, runner, client):
    app.config["ADMIN_PASSWORD"] = "from-the-env-1"

    result = flask_users(runner, "create-admin --email ops@example.com --password given-pass-1")

    assert result.exit_code == 0, result.output
    assert login(client, "ops@example.com", "given-pass-1").status_code == 200
    assert login(client, "ops@example.com", "from-the-env-1").status_code == 401


def test_create_admin_on_a_real_terminal_does_not_echo_the_password(app, database, client):
    """`flask users create-admin` in a pseudo-terminal, as an operator types it."""
    import os
    import pty
    import select
    import subprocess
    import sys
    from pathlib import Path

    flask = Path(sys.executable).with_name("flask")
    env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_PASSWORD", "ADMIN_EMAIL")} | {
        "DATABASE_URL": database,
        "SECRET_KEY": "pty-test-secret-key-long-enough-0123456789",
    }
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [flask, "users", "create-admin", "--email", "tty@example.com"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        close_fds=True,
    )
    os.close(follower)
    screen = b""

    def read_until(text: bytes) -> None:
        nonlocal screen
        while text not in screen:
            # A guard against a hang (a prompt that never comes), not a measure of speed.
            assert select.select([leader], [], [], 60)[0], screen
            chunk = os.read(leader, 1024)
            assert chunk, screen
            screen += chunk

    try:
        read_until(b"Password (at least 8 characters): ")
        os.write(leader, b"terminal-pass-1\n")
        read_until(b"Repeat the password: ")
        os.write(leader, b"terminal-pass-1\n")
        read_until(b"is ready.")
    except OSError:  # the terminal closed: the process ended early
        pass
    finally:
        assert process.wait(timeout=60) == 0, screen
        os.close(leader)
    assert b"terminal-pass-1" not in screen
    assert login(client, "tty@example.com", "terminal-pass-1").status_code == 200


# ---------------------------------------------------------------- ensure-admin


def generated_password(output: str) -> str:
    match = re.search(r"First admin password \(shown only once\): (\S+)", output)
    assert match, output
    return match.group(1)


def test_ensure_admin_on_an_empty_database_prints_a_working_password(app, runner, client, rows):
    app.config["ADMIN_EMAIL"] = None
    app.config["ADMIN_PASSWORD"] = None

    result = flask_users(runner, "ensure-admin")

    assert result.exit_code == 0, result.output
    password = generated_password(result.output)
    assert result.output.count(password) == 1
    [user] = rows(User)
    assert (user.email, user.role) == ("admin@example.com", Role.ADMIN)
    assert login(client, "admin@example.com", password).status_code == 200


def test_ensure_admin_again_creates_nothing(app, runner, client, rows):
    app.config["ADMIN_EMAIL"] = None
    app.config["ADMIN_PASSWORD"] = None
    password = generated_password(flask_users(runner, "ensure-admin").output)

    again = flask_users(runner, "ensure-admin")

    assert again.exit_code == 0, again.output
    assert "An admin account exists already." in again.output
    assert "password" not in again.output
    assert len(rows(User)) == 1
    # The first password still works: the second run changed nothing.
    assert login(client, "admin@example.com", password).status_code == 200


def test_ensure_admin_does_nothing_when_an_admin_exists(runner, admin, rows):
    result = flask_users(runner, "ensure-admin")

    assert result.exit_code == 0
    assert "An admin account exists already." in result.output
    assert [user.id for user in rows(User)] == [admin["id"]]


def test_ensure_admin_uses_the_configured_email_and_password(app, runner, client, rows):
    app.config["ADMIN_EMAIL"] = "Owner@Shop.example"
    app.config["ADMIN_PASSWORD"] = "owner-password-1"

    result = flask_users(runner, "ensure-admin")

    assert result.exit_code == 0, result.output
    assert "owner@shop.example" in result.output
    assert "shown only once" not in result.output
    assert "owner-password-1" not in result.output
    [user] = rows(User)
    assert (user.email, user.role) == ("owner@shop.example", Role.ADMIN)
    assert login(client, "owner@shop.example", "owner-password-1").status_code == 200


def test_ensure_admin_promotes_a_reader_with_the_configured_email(
    app, runner, client, reader, rows
):
    app.config["ADMIN_EMAIL"] = "reader@example.com"
    app.config["ADMIN_PASSWORD"] = "now-an-admin-1"

    result = flask_users(runner, "ensure-admin")

    assert result.exit_code == 0, result.output
    [user] = rows(User)
    assert (user.id, user.role) == (reader["id"], Role.ADMIN)
    assert login(client, "reader@example.com", "now-an-admin-1").status_code == 200


# ---------------------------------------------------------------- production


@pytest.fixture
def production_runner(database, monkeypatch):
    """`flask ...` as the image runs it (APP_ENV=production) on the test database."""
    import secrets

    from app import create_app
    from app.core.config import ProductionConfig

    for name, value in {
        "DATABASE_URL": database,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "MAIL_BACKEND": "console",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("ADMIN_EMAIL", "ADMIN_PASSWORD", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    return create_app(ProductionConfig()).test_cli_runner()


@pytest.mark.parametrize("command", ["users ensure-admin", "deploy upgrade"])
def test_production_never_prints_a_generated_password(app, production_runner, rows, command):
    result = production_runner.invoke(args=shlex.split(command))

    assert result.exit_code == 1
    assert "set ADMIN_PASSWORD" in result.output
    assert "Traceback" not in result.output
    assert "password (shown only once)" not in result.output
    assert rows(User) == []


def test_production_creates_the_first_admin_from_admin_password(
    app, production_runner, monkeypatch, client, rows
):
    production_runner.app.config["ADMIN_PASSWORD"] = "from-the-secret-store-1"

    result = production_runner.invoke(args=["users", "ensure-admin"])

    assert result.exit_code == 0, result.output
    assert "from-the-secret-store-1" not in result.output
    [user] = rows(User)
    assert user.role == Role.ADMIN
    assert login(client, "admin@example.com", "from-the-secret-store-1").status_code == 200


def test_production_with_an_admin_needs_no_admin_password(production_runner, admin):
    result = production_runner.invoke(args=["users", "ensure-admin"])

    assert result.exit_code == 0
    assert "An admin account exists already." in result.output


def test_a_short_admin_password_is_refused(app, runner, rows):
    app.config["ADMIN_PASSWORD"] = "short"

    result = flask_users(runner, "ensure-admin")

    assert result.exit_code == 1
    assert "at least 8 characters" in result.output
    assert rows(User) == []
