"""One suite, two databases: SQLite always, MariaDB when TEST_DATABASE_URL is set.

The schema comes from the committed migrations (``flask db upgrade``), once per database;
each test then starts from empty tables.
"""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal
from unittest.mock import patch

import pytest
from flask_migrate import upgrade
from sqlalchemy import MetaData, create_engine, select, text

from app import create_app
from app.accounts import service as accounts
from app.accounts.models import Role, User
from app.accounts.passwords import hash_password
from app.accounts.tokens import issue_token
from app.catalog.models import Product
from app.core.config import TestConfig, database_url
from app.core.extensions import db
from tests.system import harness as h

PASSWORD = "correct-horse-42"
BACKENDS = ["sqlite"] + (["mariadb"] if os.environ.get("TEST_DATABASE_URL") else [])


def login(client, email: str, password: str = PASSWORD, *, path="/users/login", address=None):
    """Log in as a user would (``path``: another spelling of the route; ``address``: the
    client's IP, for the limits); the answer."""
    environ = {"REMOTE_ADDR": address} if address else {}
    return client.post(path, json={"email": email, "password": password}, environ_base=environ)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def drop_everything(url: str) -> None:
    """Empty the test database completely, migrations' bookkeeping included."""
    engine = create_engine(database_url(url))
    with engine.begin() as conn:
        if conn.dialect.name in ("mysql", "mariadb"):
            conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
        meta = MetaData()
        meta.reflect(conn)
        meta.drop_all(conn)
    engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def no_shared_redis():
    """The suite never uses the Redis a shell may point at (REDIS_URL for `make run`): the
    tests that need Redis take the ``redis_url`` fixture's own server."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("REDIS_URL", "RATELIMIT_STORAGE_URI"):
            env.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session", params=BACKENDS)
def database(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    else:
        url = os.environ["TEST_DATABASE_URL"]
    drop_everything(url)
    app = create_app(TestConfig(url))
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return url


@pytest.fixture
def app(database):
    app = create_app(TestConfig(database))
    yield app
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as conn:
            for table in reversed(db.metadata.sorted_tables):
                conn.execute(table.delete())
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class Factory:
    """Makes users (through the accounts service) and products, and tokens for the users."""

    def __init__(self, app, password_hash: str):
        self.app = app
        self.password_hash = password_hash
        self.counter = 0

    def user(
        self, role: int = Role.ADMIN, email: str | None = None, deleted: bool = False, **fields
    ) -> dict:
        self.counter += 1
        # The service hashes every password (0.1 s of argon2 each): reuse one real hash of
        # PASSWORD, so logins still verify it for real.
        with (
            self.app.app_context(),
            patch.object(accounts, "hash_password", return_value=self.password_hash),
        ):
            user = accounts.create_user(
                fullname=fields.pop("fullname", f"User {self.counter}"),
                username=fields.pop("username", f"user{self.counter}"),
                email=email or f"user{self.counter}@example.com",
                password=PASSWORD,
                role=role,
            )
            if deleted:
                user.soft_delete()
            db.session.commit()
            return {
                "id": user.id,
                "email": user.email,
                "role": user.role,
                "token": issue_token(user),
                "headers": self.headers(user),
            }

    def admin(self, **kwargs) -> dict:
        return self.user(role=Role.ADMIN, **kwargs)

    def reader(self, **kwargs) -> dict:
        return self.user(role=Role.READER, **kwargs)

    @staticmethod
    def headers(user: User) -> dict:
        return bearer(issue_token(user))

    def expired_headers(self, user_id: int) -> dict:
        with self.app.app_context():
            user = db.session.get(User, user_id)
            from flask_jwt_extended import create_access_token

            token = create_access_token(
                identity=str(user.id),
                additional_claims={"ver": user.token_version},
                expires_delta=timedelta(seconds=-10),
            )
        return bearer(token)

    def product(self, sku: str | None = None, **fields) -> dict:
        """A product already in the catalog: no change announced, so no admin is emailed."""
        self.counter += 1
        sku = sku or f"sku-{self.counter}"
        values = {
            "name": f"Product {self.counter}",
            "price": Decimal("10.00"),
            "mark": "acme",
            "quantity": 1,
        } | fields
        with self.app.app_context():
            db.session.add(Product(sku=sku, **values))  # the model derives sku_key
            db.session.commit()
        return {"sku": sku, **values}


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def make(app, password_hash) -> Factory:
    return Factory(app, password_hash)


@pytest.fixture
def admin(make) -> dict:
    return make.admin(email="admin@example.com")


@pytest.fixture
def reader(make) -> dict:
    return make.reader(email="reader@example.com")


@pytest.fixture
def rows(app):
    """rows(Model, *where) -> the matching rows, read in a fresh session."""

    def fetch(model, *where):
        with app.app_context():
            return list(db.session.scalars(select(model).where(*where)))

    return fetch


@pytest.fixture
def api_schema(app):
    import schemathesis

    return schemathesis.openapi.from_wsgi("/api/openapi.json", app)


@pytest.fixture
def admin_headers(admin) -> dict:
    return admin["headers"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A Redis of the suite's own (TEST_REDIS_URL, or the system tests' private
    redis-server on a free loopback port, stopped at the end): tests empty it, so never
    the machine's."""
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    assert not h.missing_binaries(h.REDIS_SERVER), "redis-server is needed (apt-get install)"
    reaper = h.Reaper(tmp_path_factory.mktemp("redis"), adopt_orphans=False)
    server = h.Redis(reaper, reaper.workdir)
    yield server.url
    reaper.stop(server.process, timeout=10)


@pytest.fixture
def streamed(app, redis_url):
    """The app as in production: views go through the Redis stream (emptied first)."""
    from app.core import redis_client
    from app.views import recorder

    conn = redis_client.connect(redis_url, timeout=2)
    conn.flushdb()
    app.config["REDIS_URL"] = redis_url
    redis_client.init_app(app)
    recorder.init_app(app)  # the view policy: the stream
    yield conn
    conn.close()
