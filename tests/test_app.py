"""The application factory: configuration, errors and the published API description."""

import ast
import base64
import logging
import os
import re
import secrets
import string
import subprocess
import sys
from pathlib import Path

import click
import jwt
import pytest

import app.core.config as settings
from app import create_app
from app.core.config import Config, ConfigError, ProductionConfig, database_url
from app.core.extensions import db
from tests.conftest import PASSWORD

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No settings from the caller's shell; a throwaway database and instance folder.

    Emails go to the console so that only the setting under test can stop the app.
    """
    for name in (
        "APP_ENV",
        "SECRET_KEY",
        "TOKEN_TTL_SECONDS",
        "ADMIN_EMAIL",
        "ADMIN_PASSWORD",
        "REDIS_URL",
        "RATELIMIT_STORAGE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.setenv("MAIL_BACKEND", "console")
    monkeypatch.setenv("NOTIFY_SWEEP_SECONDS", "0")
    monkeypatch.setattr(settings, "INSTANCE_DIR", tmp_path / "instance")
    return monkeypatch


# ---------------------------------------------------------------- production secrets


@pytest.mark.parametrize("secret", [None, "", "too-short", "x" * 31])
def test_production_refuses_a_missing_or_weak_secret_key(clean_env, secret):
    if secret is not None:
        clean_env.setenv("SECRET_KEY", secret)

    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app(ProductionConfig())


def test_app_env_production_goes_through_the_same_check(clean_env):
    clean_env.setenv("APP_ENV", "production")

    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app()


def test_production_starts_with_a_strong_secret_key(clean_env):
    key = secrets.token_urlsafe(48)
    clean_env.setenv("APP_ENV", "production")
    clean_env.setenv("SECRET_KEY", key)

    app = create_app()

    assert app.config["SECRET_KEY"] == key
    assert app.config["JWT_SECRET_KEY"] == key
    assert app.test_client().get("/api/openapi.json").status_code == 200
    # Production never invents a key of its own on disk.
    assert not (settings.INSTANCE_DIR / "secret_key").exists()


@pytest.mark.parametrize(
    "secret",
    [
        "a" * 48,
        " " * 32,
        "changeme-changeme-changeme-changeme",
        "secretsecretsecretsecretsecretsecret",
        "password-password-password-password!",
        "0123456789012345678901234567890123456789",
        "my secret key that is long enough for hs256",
        "CHANGE-ME-replace-this-secret-key-placeholder",
        # Keys typed by hand that the first rules let through:
        "abcdefghijklmnopqrstuvwxyz0123456789",
        "correct-horse-battery-staple-correct-horse",
        "correct-horse-battery-staple-correct-horse-battery-staple",
        "Correct-Horse-Battery-Staple-Correct-Horse-Battery",
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA9876543210",
        "qwertyuiopasdfghjklzxcvbnm1234567890QWERTYUIOPASDFGHJKLZXCVBNM",
        "Tr0ub4dor&3-Tr0ub4dor&3-Tr0ub4dor&3-Tr0ub4dor&3",
        "P@ssw0rd!2024-Marketplace-Production-Signing-Key",
        "MARKETPLACE-PRODUCTION-SIGNING-KEY-2026-DO-NOT-SHARE",
        "deadbeefcafebabe0123456789abcdef" * 2,
        "1234567890" * 7,
        secrets.token_urlsafe(31),
        secrets.token_hex(31),
    ],
)
def test_production_refuses_a_low_entropy_secret_key(clean_env, secret):
    clean_env.setenv("SECRET_KEY", secret)

    with pytest.raises(ConfigError, match=r"SECRET_KEY .*: set it to a random string"):
        create_app(ProductionConfig())


ALPHANUMERIC = string.ascii_letters + string.digits
KEY_GENERATORS = {
    "secrets.token_urlsafe(48)": lambda: secrets.token_urlsafe(48),
    "secrets.token_urlsafe(32)": lambda: secrets.token_urlsafe(32),
    "secrets.token_hex(32)": lambda: secrets.token_hex(32),
    "openssl rand -base64 32": lambda: base64.b64encode(os.urandom(32)).decode(),
    "openssl rand -hex 48": lambda: os.urandom(48).hex(),
    "terraform random_password (64, no special)": lambda: "".join(
        secrets.choice(ALPHANUMERIC) for _ in range(64)
    ),
}


@pytest.mark.parametrize("make_key", KEY_GENERATORS.values(), ids=KEY_GENERATORS)
def test_production_takes_random_secret_keys(clean_env, make_key):
    key = make_key()
    clean_env.setenv("SECRET_KEY", key)
    assert create_app(ProductionConfig()).config["SECRET_KEY"] == key
    # The rules refuse (almost) no key a generator prints: not one of 10,000 here.
    assert [key for key in (make_key() for _ in range(10_000)) if settings.weak_secret(key)] == []


def test_the_documented_way_to_make_a_key_makes_one_production_takes(clean_env):
    """Every key-making command the README and docs/ show (and the error message names)
    prints a key the production check takes."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "terraform"]
    text = "\n".join(p.read_text() for p in pages if p.is_file())
    commands = set(re.findall(r"python3? -c ['\"](import secrets; print\([^'\"]+\))['\"]", text))
    assert settings.MAKE_A_KEY.split(" -c ")[1].strip('"') in commands
    for command in commands:
        key = subprocess.run(
            [sys.executable, "-c", command], capture_output=True, text=True, check=True
        ).stdout.strip()
        clean_env.setenv("SECRET_KEY", key)
        assert create_app(ProductionConfig()).config["SECRET_KEY"] == key, command


@pytest.mark.parametrize("value", ["", " "])
def test_an_app_env_set_but_empty_is_refused(clean_env, value):
    clean_env.setenv("APP_ENV", value)
    clean_env.setenv("SECRET_KEY", secrets.token_urlsafe(48))

    with pytest.raises(ConfigError, match="APP_ENV is set but empty"):
        create_app()


def test_a_configuration_error_is_one_line_without_a_traceback(clean_env):
    """What an operator sees from `flask` (and uWSGI) when the environment is wrong."""
    import os
    import subprocess
    import sys

    clean_env.setenv("APP_ENV", "")
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "users", "ensure-admin"],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "configuration error: APP_ENV is set but empty: set APP_ENV=production "
        "(or development), or unset it."
    ]


# ---------------------------------------------------------------- production login limits


def production(clean_env):
    clean_env.setenv("APP_ENV", "production")
    clean_env.setenv("SECRET_KEY", secrets.token_urlsafe(48))


PER_PROCESS = "login limits: counted in this process's memory"


def per_process_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(PER_PROCESS)]


def test_production_without_redis_counts_login_failures_per_process_and_says_so_once(
    clean_env, caplog
):
    """One container, `docker run` with no Redis: it starts, and its log says how logins
    are counted, once, however many requests follow."""
    production(clean_env)
    caplog.set_level(logging.INFO)

    app = create_app()
    client = app.test_client()
    for _ in range(3):
        client.post("/users/login", json={"email": "nobody@example.com", "password": "wrong"})

    assert app.config["RATELIMIT_STORAGE_URI"] == "memory://"
    assert per_process_lines(caplog) == [
        f"{PER_PROCESS} (no REDIS_URL): 10 per 1 minute per address and 50 per 1 minute per "
        "account in each process; set REDIS_URL to share one count between processes and "
        "containers"
    ]


@pytest.mark.parametrize(("command", "lines"), [("run", 1), ("worker", 0), ("db", 0)])
def test_only_the_web_process_logs_how_logins_are_counted(clean_env, caplog, command, lines):
    """`flask run` (and uWSGI, which has no command) serve logins; the worker and the
    migrations build the app too, and say nothing about logins."""
    production(clean_env)
    caplog.set_level(logging.INFO)

    with click.Context(click.Command(command), info_name=command):
        create_app()

    assert len(per_process_lines(caplog)) == lines


def test_production_counts_login_failures_in_the_views_redis_by_default(clean_env, caplog):
    production(clean_env)
    clean_env.setenv("REDIS_URL", "rediss://cache.example:6379/0")
    caplog.set_level(logging.INFO)

    app = create_app()

    assert app.config["RATELIMIT_STORAGE_URI"] == "rediss://cache.example:6379/0"
    assert not app.extensions["login_limits"].per_process
    assert per_process_lines(caplog) == []


def test_ratelimit_storage_uri_overrides_the_views_redis(clean_env, caplog):
    production(clean_env)
    clean_env.setenv("REDIS_URL", "redis://cache.example:6379/0")
    clean_env.setenv("RATELIMIT_STORAGE_URI", "memory://")
    caplog.set_level(logging.INFO)

    assert create_app().extensions["login_limits"].per_process
    [line] = per_process_lines(caplog)
    assert line.startswith(f"{PER_PROCESS} (RATELIMIT_STORAGE_URI): ")


def test_an_unknown_app_env_is_refused(clean_env):
    clean_env.setenv("APP_ENV", "staging")

    with pytest.raises(ConfigError, match="APP_ENV"):
        create_app()


def test_a_non_numeric_token_ttl_is_refused(clean_env):
    clean_env.setenv("SECRET_KEY", secrets.token_urlsafe(48))
    clean_env.setenv("TOKEN_TTL_SECONDS", "an hour")

    with pytest.raises(ConfigError, match="TOKEN_TTL_SECONDS"):
        create_app()


# ---------------------------------------------------------------- development defaults


def test_development_without_secret_key_generates_one_and_keeps_it(clean_env):
    first = create_app(Config())

    key = first.config["SECRET_KEY"]
    assert len(key.encode()) >= settings.MIN_SECRET_BYTES
    assert (settings.INSTANCE_DIR / "secret_key").read_text().strip() == key
    # A restart reads the same key back, so tokens issued before it still verify.
    assert create_app(Config()).config["SECRET_KEY"] == key


def test_development_prefers_secret_key_from_the_environment(clean_env):
    clean_env.setenv("SECRET_KEY", "a-key-from-the-environment")

    assert create_app().config["SECRET_KEY"] == "a-key-from-the-environment"
    assert not (settings.INSTANCE_DIR / "secret_key").exists()


# ---------------------------------------------------------------- database URLs


def test_seed_mysql_url_is_mapped_to_pymysql_with_utf8mb4():
    assert (
        database_url("mysql://root:root@host:3306/db")
        == "mysql+pymysql://root:root@host:3306/db?charset=utf8mb4"
    )


def test_existing_query_string_and_charset_are_kept():
    assert (
        database_url("mysql://u:p@h/db?ssl=true")
        == "mysql+pymysql://u:p@h/db?ssl=true&charset=utf8mb4"
    )
    assert (
        database_url("mysql://u:p@h/db?charset=latin1") == "mysql+pymysql://u:p@h/db?charset=latin1"
    )
    assert database_url("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


@pytest.mark.parametrize("raw", [None, ""])
def test_default_database_is_an_sqlite_file_under_instance(raw):
    url = database_url(raw)

    assert url.startswith("sqlite:///")
    path = Path(url.removeprefix("sqlite:///"))
    assert path.parent == REPO / "instance"
    assert path.suffix == ".db"


def test_default_database_url_is_used_when_database_url_is_unset(clean_env):
    clean_env.delenv("DATABASE_URL")
    clean_env.setenv("SECRET_KEY", "dev-key")

    uri = create_app().config["SQLALCHEMY_DATABASE_URI"]

    assert uri == f"sqlite:///{settings.INSTANCE_DIR / 'marketplace.db'}"


# ---------------------------------------------------------------- token lifetime


def test_token_ttl_seconds_sets_expires_in(monkeypatch, database, make, admin):
    monkeypatch.setenv("TOKEN_TTL_SECONDS", "120")
    short_lived = create_app(settings.TestConfig(database))

    try:
        response = short_lived.test_client().post(
            "/users/login", json={"email": "admin@example.com", "password": PASSWORD}
        )
    finally:
        with short_lived.app_context():
            db.engine.dispose()

    assert response.status_code == 200
    body = response.get_json()
    assert body["expires_in"] == 120
    claims = jwt.decode(body["Token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


# ---------------------------------------------------------------- errors


def test_unknown_route_is_a_json_404(client):
    response = client.get("/api/nothing-here")

    assert response.status_code == 404
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"code", "status", "message", "request_id"}
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["code"] == 404
    assert body["status"] == "Not Found"


def test_wrong_method_is_a_json_405_with_allow(client):
    response = client.get("/users/login")

    assert response.status_code == 405
    assert response.get_json()["code"] == 405
    assert "POST" in response.headers["Allow"]
    assert "GET" not in response.headers["Allow"]


def test_a_crash_is_a_json_500_without_details(app, client):
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals: password=hunter2")

    response = client.get("/boom")

    assert response.status_code == 500
    assert set(response.get_json()) == {"code", "status", "message", "request_id"}
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    assert "hunter2" not in text


@pytest.mark.parametrize(
    "method, path, kwargs",
    [
        ("get", "/nowhere", {}),
        ("delete", "/users/login", {}),
        ("post", "/users/login", {"data": "{not json", "content_type": "application/json"}),
        ("post", "/users/login", {"data": "email=a", "content_type": "text/plain"}),
        ("post", "/users/login", {"json": {"email": 5, "password": []}}),
        ("get", "/api/products", {"headers": {"Authorization": "Bearer x.y.z"}}),
        ("get", "/api/users/abc", {}),
    ],
)
def test_error_responses_never_contain_a_traceback(client, method, path, kwargs):
    response = getattr(client, method)(path, **kwargs)

    assert 400 <= response.status_code < 500
    assert response.is_json
    assert {"code", "status", "message"} <= set(response.get_json())
    assert "Traceback" not in response.get_data(as_text=True)


# ---------------------------------------------------------------- OpenAPI


def test_openapi_describes_the_routes_and_bearer_auth(client):
    response = client.get("/api/openapi.json")

    assert response.status_code == 200
    spec = response.get_json()
    assert {
        "/users/login",
        "/api/products",
        "/api/products/{sku}",
        "/api/users",
        "/api/users/{user_id}",
    } <= set(spec["paths"])
    assert (
        spec["components"]["securitySchemes"]["bearerAuth"].items()
        >= {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
        }.items()
    )
    assert spec["paths"]["/api/users"]["get"]["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/users/login"]["post"]["security"] == []


def loaded_nodes(node: ast.AST):
    """Every node run when the module loads or a function runs, except TYPE_CHECKING blocks."""
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        return
    yield node
    for child in ast.iter_child_nodes(node):
        yield from loaded_nodes(child)


def app_imports() -> dict[str, set[str]]:
    """Module -> the app modules it imports when loaded (imports for type checkers left out)."""
    root = Path(settings.__file__).resolve().parents[1]
    modules = {
        ".".join(("app", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for path in root.rglob("*.py")
    }
    graph = {}
    for path in root.rglob("*.py"):
        name = ".".join(("app", *path.relative_to(root).with_suffix("").parts))
        found: set[str] = set()
        for node in loaded_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                subs = {f"{node.module}.{alias.name}" for alias in node.names}
                found |= (subs & modules) or {node.module}
        graph[name.removesuffix(".__init__")] = (found & modules) - {name}
    return graph


def test_the_app_modules_import_one_another_without_a_cycle():
    graph = app_imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path, module))
        if module not in done:
            for imported in graph[module]:
                visit(imported, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_errors_and_config_import_nothing_that_touches_the_database():
    graph = app_imports()
    assert graph["app.core.errors"] == set()
    assert graph["app.core.config"] == set()


FEATURES = ("accounts", "catalog", "notifications", "views", "stats", "ops")


def test_core_imports_no_feature_and_only_the_factory_imports_routes():
    graph = app_imports()
    feature_modules = {m for m in graph if m.split(".")[1:2] and m.split(".")[1] in FEATURES}
    core = [m for m in graph if m.startswith("app.core")]
    assert {m: graph[m] & feature_modules for m in core if graph[m] & feature_modules} == {}
    routes = {m for m in graph if m.rsplit(".", 1)[-1].endswith("routes")}
    importers = {m: graph[m] & routes for m in graph if m != "app" and graph[m] & routes}
    assert importers == {}
