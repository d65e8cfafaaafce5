"""Login limits, response headers, CORS, tokens that must be refused, hostile input."""

from __future__ import annotations

import base64
import contextlib
import json

import jwt as pyjwt
import pytest
from limits import parse

from app.accounts.models import User
from tests.conftest import PASSWORD, bearer, login

WRONG = {"email": "admin@example.com", "password": "not-the-password"}


def test_ten_failed_logins_a_minute_then_429_with_retry_after(client, admin):
    for _ in range(10):
        assert login(client, **WRONG).status_code == 401
    refused = login(client, **WRONG)
    assert refused.status_code == 429
    assert refused.json["code"] == 429
    assert int(refused.headers["Retry-After"]) > 0
    # that address waits, even with the right password...
    right = {"email": "admin@example.com", "password": PASSWORD}
    assert login(client, **right).status_code == 429
    # ...but it cannot lock the admin out: from another address the admin logs in
    assert login(client, **right, address="10.2.2.2").status_code == 200


def test_failures_are_limited_per_account_across_addresses(app, client, admin):
    # 50 a minute by default; 12 here to keep the test short
    app.extensions["login_limits"].account = parse("12 per minute")
    for n in range(12):
        assert login(client, **WRONG, address=f"10.0.0.{n + 1}").status_code == 401
    assert login(client, **WRONG, address="10.0.0.99").status_code == 429
    # another account from a fresh address is not affected
    other = {"email": "someone@example.com", "password": "whatever-1"}
    assert login(client, **other, address="10.0.0.100").status_code == 401
    # and the right password still opens the account
    right = {"email": "admin@example.com", "password": PASSWORD}
    assert login(client, **right, address="10.0.0.101").status_code == 200


def test_nobody_can_lock_an_admin_out(client, admin, caplog):
    """6 addresses x 9 wrong guesses a minute, each under its own limit of 10: past the
    account's 50, the guessers are slowed down, the admin still logs in."""
    answers = [
        login(client, **WRONG, address=f"10.6.0.{n}").status_code
        for n in range(6)
        for _ in range(9)
    ]
    assert answers.count(401) == 50 and answers.count(429) == 4
    right = {"email": "admin@example.com", "password": PASSWORD}
    assert login(client, **right, address="10.6.1.1").status_code == 200
    # while the account is over its limit, another wrong password answers 429...
    assert login(client, **WRONG, address="10.6.0.0").status_code == 429
    # ...and the address that sent it waits for the window, as the last guesser does
    assert login(client, **right, address="10.6.0.0").status_code == 429
    assert login(client, **right, address="10.6.0.5").status_code == 429
    [warning] = [r for r in caplog.records if "reached its limit" in r.getMessage()]
    assert "'admin@example.com'" in warning.getMessage()


def test_concurrent_failures_are_counted_atomically(app, admin):
    """Attempts that arrive together cannot all slip under the limit (each takes its slot
    before its password is verified)."""
    import threading

    from app.accounts.guard import VerificationSlots

    app.extensions["login_limits"].client = parse("4 per minute")
    app.extensions["password_slots"] = VerificationSlots(32)
    app.config["ARGON2_MEMORY_KIB"] = 8 * 1024  # the unknown email's dummy hash: 10 ms
    start = threading.Barrier(20)
    answers = []

    def attempt(n):
        client = app.test_client()
        start.wait()
        body = {"email": f"guess{n}@example.com", "password": "wrong-password"}
        answers.append(login(client, **body, address="10.20.0.1").status_code)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(answers) == [401] * 4 + [429] * 16


def test_a_process_busy_verifying_answers_503_at_once(app, client, admin):
    slots = app.extensions["password_slots"]
    with contextlib.ExitStack() as verifying:  # other requests verify LOGIN_CONCURRENCY passwords
        for _ in range(app.config["LOGIN_CONCURRENCY"]):
            assert verifying.enter_context(slots.take())
        busy = login(client, **WRONG)
        assert busy.status_code == 503
        assert busy.json["code"] == 503
        assert busy.headers["Retry-After"] == "1"
    # the refused attempt was not counted: the address still has its 10 failures
    for _ in range(10):
        assert login(client, **WRONG).status_code == 401
    assert login(client, **WRONG).status_code == 429


def test_an_unreachable_limit_store_does_not_stop_logins(database, admin, monkeypatch):
    from app import create_app
    from app.core import config

    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "redis://127.0.0.1:1/0")  # nothing listens
    client = create_app(config.TestConfig(database)).test_client()
    assert login(client, **WRONG).status_code == 401
    right = {"email": "admin@example.com", "password": PASSWORD}
    assert login(client, **right).status_code == 200


def test_failures_are_limited_per_client_across_accounts(client, admin):
    for n in range(10):
        body = {"email": f"guess{n}@example.com", "password": "whatever-1"}
        assert login(client, **body, address="10.9.9.9").status_code == 401
    assert login(client, **WRONG, address="10.9.9.9").status_code == 429
    ok = login(client, "admin@example.com", PASSWORD, address="10.9.9.8")
    assert ok.status_code == 200


def test_successful_logins_never_count_against_the_limit(client, admin):
    right = {"email": "admin@example.com", "password": PASSWORD}
    for _ in range(25):
        assert login(client, **right).status_code == 200


def test_responses_carry_security_headers(client, make):
    make.product("abc")
    response = client.get("/api/products/abc")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    token = login(client, **WRONG)
    assert token.headers["Cache-Control"] == "no-store"


def test_https_answers_carry_strict_transport_security(app, client, make):
    make.product("abc")
    secure = client.get("/api/products/abc", base_url="https://shop.example")
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
    # what uWSGI makes of nginx's "HTTPS on" (the load balancer's X-Forwarded-Proto)
    forwarded = client.get("/api/products", environ_overrides={"wsgi.url_scheme": "https"})
    assert forwarded.headers["Strict-Transport-Security"] == "max-age=31536000"
    # over plain HTTP the header means nothing to a browser, and is not sent
    assert "Strict-Transport-Security" not in client.get("/api/products/abc").headers
    app.config["HSTS_MAX_AGE"] = 0
    off = client.get("/api/products/abc", base_url="https://shop.example")
    assert "Strict-Transport-Security" not in off.headers


def test_cors_is_same_origin_by_default(client):
    response = client.get("/api/products", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_origins_are_configurable(database, monkeypatch):
    from app import create_app
    from app.core import config

    monkeypatch.setenv("CORS_ORIGINS", "https://shop.example, https://admin.example")
    app = create_app(config.TestConfig(database))
    client = app.test_client()
    allowed = client.get("/api/products", headers={"Origin": "https://shop.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "X-Pagination" in allowed.headers["Access-Control-Expose-Headers"]
    other = client.get("/api/products", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


# ---------------------------------------------------------------- tokens


def forged(payload: dict, key: str = "another-key-entirely-0123456789abcdef") -> str:
    return pyjwt.encode(payload, key, algorithm="HS256")


def test_an_unsigned_alg_none_token_is_refused(client, admin):
    claims = pyjwt.decode(admin["token"], options={"verify_signature": False})
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = base64.urlsafe_b64encode(json.dumps(claims).encode())
    token = f"{header.decode().rstrip('=')}.{body.decode().rstrip('=')}."
    response = client.get("/api/users", headers=bearer(token))
    assert response.status_code == 401


def test_a_token_signed_with_another_key_is_refused(client, admin):
    claims = pyjwt.decode(admin["token"], options={"verify_signature": False})
    response = client.get("/api/users", headers=bearer(forged(claims)))
    assert response.status_code == 401


def test_tokens_carry_no_password_material(client, admin, rows):
    password_hash = rows(User, User.id == admin["id"])[0].password_hash
    claims = pyjwt.decode(admin["token"], options={"verify_signature": False})
    text = json.dumps(claims)
    assert PASSWORD not in text and password_hash not in text and "argon2" not in text
    assert set(claims) <= {"sub", "ver", "rol", "iat", "nbf", "exp", "jti", "type", "fresh", "csrf"}


# ---------------------------------------------------------------- hostile input

HOSTILE = [
    "'; DROP TABLE users; --",
    "<script>alert(1)</script>",
    '" OR 1=1 --',
    "{{7*7}} ${7*7}",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_in_user_fields_are_stored_verbatim(client, admin, text):
    body = {
        "fullname": text,
        "password": text + "-long-enough",
        "username": "plain.user",
        "email": "plain@example.com",
        "rol": 2,
    }
    created = client.post("/api/users", json=body, headers=admin["headers"])
    assert created.status_code == 201
    read = client.get(f"/api/users/{created.json['id']}", headers=admin["headers"])
    assert read.json["fullname"] == text
    assert login(client, "plain@example.com", text + "-long-enough").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/products/..%2F..%2Fetc%2Fpasswd",
        "/api/products/../../etc/passwd",
        "/api/products/%00",
        "/api/products/a%2Fb",
    ],
)
def test_path_traversal_in_a_sku_is_a_json_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.json["code"] == 404


def test_huge_numbers_are_422_not_500(client, admin):
    body = {"sku": "big", "name": "x", "price": 10**400, "mark": "m", "quantity": 10**30}
    response = client.post("/api/products", json=body, headers=admin["headers"])
    assert response.status_code == 422
    assert {"price", "quantity"} <= set(response.json["errors"]["json"])


def test_swagger_ui_is_served_without_a_cdn(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/docs/static/swagger-ui-bundle.js" in html
    assert "//cdn" not in html and "unpkg" not in html
    with client.get("/api/docs/static/swagger-ui-bundle.js") as script:
        assert script.status_code == 200 and len(script.data) > 100_000


@pytest.mark.parametrize("variable", ["REDIS_URL", "RATELIMIT_STORAGE_URI"])
def test_with_redis_storage_every_process_shares_the_limit(
    database, admin, monkeypatch, redis_url, variable
):
    """Two app instances (two uWSGI processes, say) count failures in one Redis: the
    views stream's (REDIS_URL, nothing else to set) or one of its own."""
    import uuid

    from app import create_app
    from app.core import config

    monkeypatch.setenv(variable, redis_url)
    monkeypatch.setenv("LOGIN_FAILURES_LIMIT", "4 per minute")
    first = create_app(config.TestConfig(database)).test_client()
    second = create_app(config.TestConfig(database)).test_client()
    address = f"10.77.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"  # fresh each run
    body = {"email": f"{uuid.uuid4().hex}@example.com", "password": "wrong-password"}
    assert login(first, **body, address=address).status_code == 401
    assert login(second, **body, address=address).status_code == 401
    assert login(first, **body, address=address).status_code == 401
    assert login(second, **body, address=address).status_code == 401
    assert login(first, **body, address=address).status_code == 429


def test_an_email_longer_than_254_characters_is_422_on_every_database(client, admin, rows):
    from app.accounts.models import User

    before = len(rows(User))
    long_email = "a" * 250 + "@example.com"
    body = {
        "fullname": "Long",
        "password": "long-enough-1",
        "username": "longmail",
        "email": long_email,
        "rol": 2,
    }
    response = client.post("/api/users", json=body, headers=admin["headers"])
    assert response.status_code == 422
    assert "email" in response.json["errors"]["json"]
    assert len(rows(User)) == before
    assert login(client, long_email, "x").status_code == 422


@pytest.mark.parametrize(
    "query", ["to=0001-01-05", "from=9999-12-31&to=9999-12-31", "from=0001-01-01&to=0001-01-02"]
)
def test_dates_at_the_ends_of_the_calendar_are_422(client, make, admin, query):
    make.product("abc")
    for path in ("/api/stats/products", "/api/products/abc/stats"):
        response = client.get(f"{path}?{query}", headers=admin["headers"])
        assert response.status_code == 422, (path, query)


# ---------------------------------------------------------------- text that is not text

LONE_SURROGATE = "\ud800"  # JSON's "\ud800": valid JSON, not encodable as UTF-8


def test_a_lone_surrogate_in_the_login_is_422_naming_the_field(client, admin):
    for field in ("password", "email"):
        body = {"email": "admin@example.com", "password": PASSWORD, field: LONE_SURROGATE}
        response = login(client, **body)
        assert response.status_code == 422, field
        assert list(response.json["errors"]["json"]) == [field]
    assert login(client, "admin@example.com", PASSWORD).status_code == 200


@pytest.mark.parametrize("field", ["name", "mark", "sku"])
def test_a_lone_surrogate_in_a_product_write_is_422_naming_the_field(client, admin, make, field):
    make.product("abc")
    body = {"sku": "new-1", "name": "n", "price": 1, "mark": "m", field: f"x{LONE_SURROGATE}"}
    created = client.post("/api/products", json=body, headers=admin["headers"])
    assert created.status_code == 422
    assert list(created.json["errors"]["json"]) == [field]
    changed = client.put(
        "/api/products/abc", json={field: LONE_SURROGATE}, headers=admin["headers"]
    )
    assert changed.status_code == 422
    assert list(changed.json["errors"]["json"]) == [field]


@pytest.mark.parametrize("field", ["fullname", "password", "username", "email"])
def test_a_lone_surrogate_in_a_user_write_is_422_naming_the_field(client, admin, field):
    body = {
        "fullname": "New",
        "password": "long-enough-1",
        "username": "new.user",
        "email": "new@example.com",
        field: f"ok{LONE_SURROGATE}ok",
    }
    created = client.post("/api/users", json=body, headers=admin["headers"])
    assert created.status_code == 422
    assert list(created.json["errors"]["json"]) == [field]
    changed = client.patch(
        f"/api/users/{admin['id']}", json={field: [LONE_SURROGATE]}, headers=admin["headers"]
    )
    assert changed.status_code == 422
    assert list(changed.json["errors"]["json"]) == [field]


def test_a_lone_surrogate_in_a_field_name_is_400(client, admin):
    response = client.post("/api/products", json={LONE_SURROGATE: "x"}, headers=admin["headers"])
    assert response.status_code == 400
    assert response.json["code"] == 400
    assert "surrogate" in response.json["message"]


# ---------------------------------------------------------------- control characters

CONTROLS = [
    "line\nbreak",
    "carriage\r\nBcc: victim@evil.example",
    "esc\x1b[31m",
    "nul\x00",
    "c1\x85c1",
]


@pytest.mark.parametrize("text", CONTROLS)
def test_control_characters_in_product_text_are_422_naming_the_field(client, admin, make, text):
    before = make.product("abc")
    for field in ("name", "mark"):
        body = {"sku": "new-1", "name": "n", "price": 1, "mark": "m", field: text}
        created = client.post("/api/products", json=body, headers=admin["headers"])
        assert created.status_code == 422, field
        assert list(created.json["errors"]["json"]) == [field]
        changed = client.put("/api/products/abc", json={field: text}, headers=admin["headers"])
        assert changed.status_code == 422, field
        assert list(changed.json["errors"]["json"]) == [field]
    assert client.get("/api/products/abc").json["name"] == before["name"]


@pytest.mark.parametrize("text", CONTROLS)
def test_control_characters_in_a_fullname_are_422(client, admin, text):
    body = {
        "fullname": text,
        "password": "long-enough-1",
        "username": "new.user",
        "email": "new@example.com",
    }
    created = client.post("/api/users", json=body, headers=admin["headers"])
    assert created.status_code == 422
    assert list(created.json["errors"]["json"]) == ["fullname"]
    changed = client.patch(
        f"/api/users/{admin['id']}", json={"fullname": text}, headers=admin["headers"]
    )
    assert changed.status_code == 422


def test_a_stored_name_with_a_line_break_cannot_forge_an_email_header(app, make):
    """A row written before the API refused control characters: the email stays one
    header per line, one body line per value."""
    from app.core.columns import utcnow
    from app.events.models import Event
    from app.notifications.mailers import mime_message
    from app.notifications.messages import render
    from app.notifications.models import Notification

    forged = "shoes\r\nBcc: victim@evil.example"
    event = Event(
        type="product.created",
        at=utcnow(),
        sku="abc",
        changes={"name": {"old": None, "new": forged}},
        snapshot={"name": forged},
    )
    row = Notification(id=7, recipient="admin@example.com", event=event)
    with app.app_context():
        email = render(row)
    raw = mime_message(email, "shop@example.com").decode()
    headers = raw.split("\r\n\r\n", 1)[0]
    assert "\r\nBcc:" not in headers
    assert not any(line.startswith("Bcc:") for line in email.text.splitlines())
