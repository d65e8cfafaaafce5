"""The password guard: the login (with or without the trailing slash) and a new password
on PATCH /users/me are limited alike, per address before the hash is checked, per token
for a password change, and by a per-process slot count that refuses with 503."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
from limits import parse

from app.accounts import passwords, service
from app.accounts.guard import VerificationSlots
from app.accounts.models import User
from app.accounts.tokens import issue_token
from app.core import config
from app.core.extensions import db
from tests.conftest import PASSWORD

ATTACKER = "10.66.0.1"
ROOT = Path(__file__).resolve().parents[1]


def login(client, email: str, password: str, address: str, path: str = "/users/login"):
    body = {"email": email, "password": password}
    return client.post(path, json=body, environ_base={"REMOTE_ADDR": address})


def change_password(client, headers: dict, current: str, address: str = ATTACKER):
    body = {"password": "whatever-new-1", "current_password": current}
    return client.patch(
        "/users/me", headers=headers, json=body, environ_base={"REMOTE_ADDR": address}
    )


def fresh_token(app, user_id: int) -> dict:
    """Another token of the account (another jti), as another login would give."""
    with app.app_context():
        return {"Authorization": f"Bearer {issue_token(db.session.get(User, user_id))}"}


@pytest.fixture
def verifications(monkeypatch) -> list[str]:
    """Every argon2 verification the service runs, by the password it checked."""
    checked = []
    real = service.verify_password

    def counting(password, password_hash):
        checked.append(password)
        return real(password, password_hash)

    monkeypatch.setattr(service, "verify_password", counting)
    return checked


def test_70_wrong_current_passwords_from_one_address_are_limited_like_logins(
    app, client, reader, verifications
):
    """Each guess with a token of its own: the address's limit (10 a minute) binds; past
    it no guess is even checked, and the right password is refused too."""
    answers = [
        change_password(client, fresh_token(app, reader["id"]), f"wrong-{n}") for n in range(70)
    ]
    assert [a.status_code for a in answers[:10]] == [422] * 10
    assert {a.status_code for a in answers[10:]} == {429}
    assert all(int(a.headers["Retry-After"]) > 0 for a in answers[10:])
    assert answers[-1].json["code"] == 429
    assert len(verifications) == 10  # the 60 refused guesses cost no argon2

    right = change_password(client, fresh_token(app, reader["id"]), PASSWORD)
    assert right.status_code == 429
    assert len(verifications) == 10
    # It is the login's count: that address's logins wait too...
    assert login(client, reader["email"], PASSWORD, ATTACKER).status_code == 429
    # ...the password did not change, and its owner logs in from anywhere else.
    assert login(client, reader["email"], PASSWORD, "10.66.9.9").status_code == 200


def test_a_stolen_token_is_limited_on_its_own_and_cannot_lock_the_owner_out(app, client, reader):
    """5 wrong guesses a minute per token (LOGIN_TOKEN_FAILURES_LIMIT), whatever the
    addresses; the owner's login and other tokens are not affected."""
    stolen = reader["headers"]
    for n in range(5):
        assert change_password(client, stolen, f"wrong-{n}", f"10.67.0.{n}").status_code == 422
    refused = change_password(client, stolen, "wrong-5", "10.67.0.99")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    # the right password with that token waits as well
    assert change_password(client, stolen, PASSWORD, "10.67.1.1").status_code == 429

    owner = login(client, reader["email"], PASSWORD, "10.68.0.1")
    assert owner.status_code == 200
    mine = {"Authorization": f"Bearer {owner.json['access_token']}"}
    assert change_password(client, mine, PASSWORD, "10.68.0.1").status_code == 200
    assert login(client, reader["email"], "whatever-new-1", "10.68.0.1").status_code == 200


def test_a_right_current_password_gives_its_slots_back(app, client, reader):
    """Only failures count: a user who changes their password again and again is never
    limited."""
    password = PASSWORD
    for n in range(12):
        headers = fresh_token(app, reader["id"])
        new = f"changed-password-{n}"
        body = {"password": new, "current_password": password}
        answer = client.patch(
            "/users/me", headers=headers, json=body, environ_base={"REMOTE_ADDR": ATTACKER}
        )
        assert answer.status_code == 200, answer.json
        password = new


def test_concurrent_wrong_current_passwords_are_counted_before_the_hash_is_checked(app, reader):
    """20 guesses at once against a limit of 4: exactly 4 are checked (422), 16 refused."""
    limits = app.extensions["login_limits"]
    limits.client, limits.token = parse("4 per minute"), parse("1000 per minute")
    app.extensions["password_slots"] = VerificationSlots(32)
    start = threading.Barrier(20)
    answers = []

    def guess(n):
        client = app.test_client()
        start.wait()
        answers.append(change_password(client, reader["headers"], f"wrong-{n}").status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answers) == [422] * 4 + [429] * 16


def test_a_process_with_its_slots_taken_refuses_a_password_change_with_503(app, client, reader):
    slots = app.extensions["password_slots"]
    with contextlib.ExitStack() as verifying:  # other requests hold every slot
        for _ in range(app.config["LOGIN_CONCURRENCY"]):
            assert verifying.enter_context(slots.take())
        busy = change_password(client, reader["headers"], PASSWORD)
        assert busy.status_code == 503
        assert busy.json["code"] == 503
        assert busy.headers["Retry-After"] == "1"
        assert login(client, reader["email"], PASSWORD, "10.69.0.1").status_code == 503
    # refused before anything was counted: the token still has its 5 guesses
    for n in range(5):
        assert change_password(client, reader["headers"], f"wrong-{n}").status_code == 422
    assert change_password(client, reader["headers"], "wrong-5").status_code == 429


def test_a_login_with_and_without_the_trailing_slash_share_one_count(client, admin):
    for n in range(10):
        path = "/users/login/" if n % 2 else "/users/login"
        assert login(client, admin["email"], f"wrong-{n}", ATTACKER, path).status_code == 401
    for path in ("/users/login", "/users/login/"):
        refused = login(client, admin["email"], PASSWORD, ATTACKER, path)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0


def test_by_default_a_process_verifies_fewer_passwords_than_it_has_request_threads():
    """uWSGI's request threads per worker (app.ini's WEB_THREADS default) outnumber the
    password slots, so a slot count of 1 refuses the second check and leaves a thread for
    the reads."""
    defaults = [
        line.split("=", 2)[-1].strip()
        for line in (ROOT / "app.ini").read_text().splitlines()
        if line.startswith("set-ph = web_threads=")
    ]
    assert defaults == ["%(_)", "2"]
    assert config.TestConfig().LOGIN_CONCURRENCY == 1 < int(defaults[-1])


def test_a_password_verified_outside_the_guard_fails_loudly(app, reader):
    """No route can verify a password around the guard: inside a request the verification
    itself refuses (a 500 any test of such a route would show); commands still can."""
    with app.test_request_context("/users/me"):
        user = db.session.get(User, reader["id"])
        with pytest.raises(passwords.Unguarded):
            service.check_password(user, PASSWORD)
        with pytest.raises(passwords.Unguarded):
            service.authenticate(reader["email"], PASSWORD)
    with app.app_context():
        assert service.check_password(db.session.get(User, reader["id"]), PASSWORD)
