"""Liveness and readiness, as the load balancer and HEALTHCHECK see them."""

from app import create_app
from app.accounts.models import Role, User
from app.core import config
from app.views.models import ProductView


def test_healthz_and_readyz_answer_when_the_database_is_up(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"status": "ready"}


def test_readyz_is_503_json_when_the_database_is_unreachable():
    # Port 1 on loopback: nothing listens there.
    app = create_app(config.TestConfig("mysql://root@127.0.0.1:1/marketplace"))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["code"] == 503
    assert "database" in response.json["message"]


def test_a_read_while_the_database_is_unreachable_is_a_json_503():
    app = create_app(config.TestConfig("mysql://root@127.0.0.1:1/marketplace"))
    response = app.test_client().get("/api/products/abc")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_deploy_upgrade_migrates_and_creates_the_first_admin_once(app, runner, rows):
    app.config.update(ADMIN_EMAIL="ops@example.com", ADMIN_PASSWORD="first-admin-pw")
    first = runner.invoke(args=["deploy", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "Created the first admin: ops@example.com" in first.output
    second = runner.invoke(args=["deploy", "upgrade"])
    assert second.exit_code == 0, second.output
    assert "An admin account exists already." in second.output
    assert [u.email for u in rows(User, User.role == Role.ADMIN)] == ["ops@example.com"]


def _kill_pooled_connection(app) -> None:
    """Have MariaDB drop the connection the app's pool holds (as a restart would)."""
    import pymysql
    from sqlalchemy import text

    from app.core.extensions import db

    with app.app_context():
        victim = db.session.execute(text("SELECT CONNECTION_ID()")).scalar()
        db.session.remove()
        url = db.engine.url
    admin = pymysql.connect(
        host=url.host, port=url.port or 3306, user=url.username, password=url.password or ""
    )
    with admin.cursor() as cursor:
        cursor.execute(f"KILL {int(victim)}")
    admin.close()


def test_after_the_database_drops_its_connections_the_service_recovers(app, client, make, rows):
    """No ping before each request: a lost connection costs one 503, then the pool is new."""
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # An embedded database has no server connection to lose: the read simply works.
        make.product("abc")
        assert client.get("/api/products/abc").status_code == 200
        return
    make.product("abc")
    assert client.get("/api/products/abc").status_code == 200
    _kill_pooled_connection(app)
    first = client.get("/api/products/abc")
    if first.status_code == 503:  # the read's own query met the dropped connection
        assert first.json["code"] == 503 and first.headers["Retry-After"]
    else:  # the view's write met it, and went again on a fresh connection
        assert first.status_code == 200
    assert client.get("/api/products/abc").status_code == 200
    assert len(rows(ProductView)) == 1 + (first.status_code == 200) + 1
