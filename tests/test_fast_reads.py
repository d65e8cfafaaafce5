"""An anonymous product read is answered ahead of Flask (app/catalog/fast.py): the client,
the logs and the metrics cannot tell it from the route's own answer, and every read is
exactly one view, whatever Redis does."""

from __future__ import annotations

import contextlib
import logging

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import delete

from app import create_app
from app.catalog import cache, routes
from app.catalog.fast import FastReads
from app.catalog.models import Product
from app.core import config, redis_client
from app.core.extensions import db
from app.views import recorder, stream
from app.views.models import ProductView
from app.worker import Worker
from tests.conftest import PASSWORD
from tests.system.harness import FaultProxy

ROUTE = "/api/products/<string:sku>"


@pytest.fixture
def product(make, client, streamed):
    make.product("Abc-1", name="zapatos")
    assert client.get("/api/products/Abc-1").status_code == 200  # a miss fills the cache
    assert streamed.exists(cache.ENTRY_PREFIX + "abc-1")
    return "Abc-1"


@pytest.fixture
def route_reads(app, monkeypatch):
    """How many reads reached the route (the layer in front did not answer them)."""
    calls = []
    real = routes.read_product

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(routes, "read_product", counted)
    return calls


@contextlib.contextmanager
def route_only(app):
    """The app with nothing in front of Flask: its route answers every read."""
    front = app.wsgi_app.wsgi_app  # inside TrailingSlashOptional
    assert isinstance(front, FastReads)
    app.wsgi_app.wsgi_app = front.flask
    try:
        yield
    finally:
        app.wsgi_app.wsgi_app = front


def views(conn) -> int:
    return conn.xlen(stream.VIEWS_STREAM)


def requests_counted(status: int) -> float:
    labels = {"route": ROUTE, "method": "GET", "status": str(status)}
    return REGISTRY.get_sample_value("marketplace_http_requests_total", labels) or 0


REQUESTS = [
    pytest.param({}, {}, id="plain"),
    pytest.param({"X-Request-ID": "client-id-7"}, {}, id="the client's request id"),
    pytest.param({"X-Request-ID": "not valid!"}, {}, id="an invalid request id"),
    pytest.param({"If-None-Match": '"1-1"'}, {}, id="not modified"),
    pytest.param({"If-None-Match": 'W/"1-1", "x"'}, {}, id="not modified, weak"),
    pytest.param({"If-None-Match": '"9-9"'}, {}, id="another version"),
    pytest.param({}, {"base_url": "https://localhost"}, id="over https"),
]


@pytest.mark.parametrize(("headers", "where"), REQUESTS)
def test_a_cached_read_answers_exactly_as_the_route_does(
    app, client, product, streamed, route_reads, caplog, headers, where
):
    app.config["HSTS_MAX_AGE"] = 600
    caplog.set_level(logging.INFO, "app.requests")

    def read():
        before, counted = views(streamed), requests_counted(304) + requests_counted(200)
        caplog.clear()
        answer = client.get(f"/api/products/{product}", headers=headers, **where)
        assert views(streamed) == before + 1, "each read is one view"
        assert requests_counted(304) + requests_counted(200) == counted + 1
        (line,) = [r for r in caplog.records if r.name == "app.requests"]
        shown = {k: getattr(line, k, None) for k in ("request_id", "method", "route", "status")}
        return answer, shown, line.getMessage()

    ahead, ahead_line, ahead_message = read()
    assert route_reads == [], "answered ahead of the route"
    with route_only(app):
        routed, routed_line, routed_message = read()
    assert route_reads == [product]

    assert (ahead.status, ahead.get_data()) == (routed.status, routed.get_data())
    assert ahead.status_code in (200, 304)
    if headers.get("X-Request-ID") == "client-id-7":
        assert ahead.headers == routed.headers
    else:  # each answer has an id of its own
        assert ahead.headers["X-Request-ID"] != routed.headers["X-Request-ID"]
        same = lambda answer: [(k, v) for k, v in answer.headers if k != "X-Request-ID"]  # noqa: E731
        assert same(ahead) == same(routed)
    assert ahead_line["request_id"] == ahead.headers["X-Request-ID"]
    assert {**ahead_line, "request_id": None} == {**routed_line, "request_id": None}
    assert ahead_line["route"] == ROUTE and ahead_line["status"] == ahead.status_code
    assert ahead_message == routed_message
    if where:
        assert ahead.headers["Strict-Transport-Security"] == "max-age=600"


def test_a_read_the_cache_does_not_hold_is_answered_ahead_one_view_and_fills_it(
    app, client, make, streamed, route_reads
):
    make.product("fresh")
    asked = []
    real = cache.SCRIPTS["read"]
    cache.SCRIPTS["read"] = lambda *args: asked.append(args[0][0]) or real(*args)
    try:
        answer = client.get("/api/products/fresh")
    finally:
        cache.SCRIPTS["read"] = real
    assert answer.status_code == 200 and answer.json["sku"] == "fresh"
    assert route_reads == []
    assert asked == [cache.ENTRY_PREFIX + "fresh"], "Redis is asked once"
    assert views(streamed) == 1
    assert streamed.exists(cache.ENTRY_PREFIX + "fresh")


def test_a_missing_product_is_the_routes_404(client, streamed, route_reads):
    answer = client.get("/api/products/nope")
    assert answer.status_code == 404 and answer.json["message"] == "No product with sku 'nope'."
    assert route_reads == ["nope"] and views(streamed) == 0


@pytest.mark.parametrize(
    "request_kwargs",
    [
        pytest.param({"method": "HEAD"}, id="HEAD"),
        pytest.param({"query_string": "page=2"}, id="a query string"),
    ],
)
def test_reads_the_layer_does_not_answer_go_to_the_route(
    client, product, route_reads, request_kwargs
):
    answer = client.open(f"/api/products/{product}", **{"method": "GET", **request_kwargs})
    assert route_reads == ([product] if answer.status_code == 200 else [])
    if "query_string" in request_kwargs:
        assert answer.status_code == 422 and "page" in answer.json["errors"]["query"]
    else:
        assert answer.status_code == 200


@pytest.mark.parametrize(
    ("setting", "reads", "counted"),
    [
        pytest.param({"VIEW_DEDUP_SECONDS": 60}, 3, 1, id="views counted once a window"),
        pytest.param({"VIEW_RECORDING": "direct"}, 3, 3, id="views written by the read"),
    ],
)
def test_the_view_policy_holds_ahead_of_flask_too(
    app, client, product, route_reads, rows, setting, reads, counted
):
    app.config.update(setting)
    recorder.init_app(app)  # the view policy is chosen when the app is built
    for _ in range(reads):
        assert client.get(f"/api/products/{product}").status_code == 200
    assert route_reads == []
    Worker(app).drain()
    assert len(rows(ProductView)) == 1 + counted  # the fixture's own read, then these


def test_with_cors_a_cached_read_carries_its_headers(database, monkeypatch, redis_url):
    monkeypatch.setenv("CORS_ORIGINS", "https://shop.example")
    monkeypatch.setenv("REDIS_URL", redis_url)
    app = create_app(config.TestConfig(database))
    with app.app_context():
        db.session.add(Product(sku="cors-1", name="n", price=1, mark="m", quantity=1))
        db.session.commit()
    try:
        client = app.test_client()
        for _ in range(2):  # a miss, then the cache's copy
            answer = client.get("/api/products/cors-1", headers={"Origin": "https://shop.example"})
            assert answer.status_code == 200
            assert answer.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    finally:
        with app.app_context():
            db.session.execute(delete(Product))
            db.session.commit()


def test_a_token_read_is_answered_ahead_as_the_route_answers_and_counted_for_its_reader(
    app, client, product, reader, streamed, route_reads
):
    headers = reader["headers"]
    ahead = client.get(f"/api/products/{product}", headers=headers)
    assert route_reads == [], "answered ahead of the route"
    with route_only(app):
        routed = client.get(f"/api/products/{product}", headers=headers)
    assert route_reads == [product]
    assert (ahead.status, ahead.get_data()) == (routed.status, routed.get_data())
    same = lambda answer: [(k, v) for k, v in answer.headers if k != "X-Request-ID"]  # noqa: E731
    assert same(ahead) == same(routed) and ahead.headers["Cache-Control"] == "no-store"
    readers = [fields["u"] for _, fields in streamed.xrange(stream.VIEWS_STREAM)[-2:]]
    assert readers == [str(reader["id"])] * 2


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda c, h, u: c.post("/users/logout", headers=h), id="logged out"),
        pytest.param(
            lambda c, h, u: c.patch(
                "/users/me",
                json={"password": "a-new-password-1", "current_password": PASSWORD},
                headers=h,
            ),
            id="a new password",
        ),
        pytest.param(
            lambda c, h, u: c.delete(f"/api/users/{u['id']}", headers=u["admin"]),
            id="deleted",
        ),
    ],
)
def test_a_token_that_stopped_being_good_is_refused_at_once_ahead_too(
    client, product, make, admin, streamed, spoil
):
    """The reader's token passed (its account's state cached in Redis); the write that ends
    it answers only once no copy of that state can let it pass again."""
    user = make.reader(email="going@example.com")
    user["admin"] = admin["headers"]
    assert client.get(f"/api/products/{product}", headers=user["headers"]).status_code == 200
    assert streamed.exists("marketplace:account:v1:" + str(user["id"]))
    assert spoil(client, user["headers"], user).status_code in (200, 204)
    refused = client.get(f"/api/products/{product}", headers=user["headers"])
    assert refused.status_code == 401 and refused.json["code"] == 401


def test_a_token_read_ahead_once_is_refused_when_the_token_expires(app, client, product, make):
    """The layer remembers a token it has checked, but not past the token's expiry."""
    import time
    from datetime import timedelta

    from flask_jwt_extended import create_access_token, decode_token

    user = make.reader(email="short@example.com")
    with app.app_context():
        short = create_access_token(
            identity=str(user["id"]),
            additional_claims={"ver": 1, "rol": 2},
            expires_delta=timedelta(seconds=2),
        )
        expiry = decode_token(short)["exp"]
    headers = {"Authorization": f"Bearer {short}"}
    assert client.get(f"/api/products/{product}", headers=headers).status_code == 200
    assert client.get(f"/api/products/{product}", headers=headers).status_code == 200
    time.sleep(max(0.0, expiry - time.time()) + 0.05)
    refused = client.get(f"/api/products/{product}", headers=headers)
    assert refused.status_code == 401 and "expired" in refused.json["message"]


def test_a_token_read_without_redis_asks_the_database_and_refuses_a_revoked_token(
    app, client, make
):
    make.product("abc")
    user = make.reader(email="no-redis@example.com")
    assert client.get("/api/products/abc", headers=user["headers"]).status_code == 200
    assert client.post("/users/logout", headers=user["headers"]).status_code == 204
    assert client.get("/api/products/abc", headers=user["headers"]).status_code == 401


def test_with_views_off_a_cached_read_is_answered_and_no_view(app, client, product, streamed):
    app.config["VIEW_RECORDING"] = "off"
    recorder.init_app(app)
    before = views(streamed)
    hits = REGISTRY.get_sample_value("marketplace_product_cache_total", {"outcome": "hit"})
    assert client.get(f"/api/products/{product}").status_code == 200
    assert views(streamed) == before
    after = REGISTRY.get_sample_value("marketplace_product_cache_total", {"outcome": "hit"})
    assert after == hits + 1


@pytest.mark.parametrize("fault", ["drop_down", "drop_up"])
def test_a_read_whose_view_redis_may_have_taken_is_still_exactly_one_view(
    app, client, product, streamed, redis_url, rows, fault
):
    """The script went out and no answer came back (or Redis stalled before running it):
    the view is written directly under its own id, and the stream's copy of it, if any,
    changes nothing when the worker writes it."""
    Worker(app).drain()
    before = len(rows(ProductView))
    proxy = FaultProxy(redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"])
    try:
        app.extensions["redis"] = redis_client.connect(
            f"redis://127.0.0.1:{proxy.port}/0", timeout=0.3
        )
        assert client.get(f"/api/products/{product}").status_code == 200  # through the proxy
        with proxy.fault(fault):
            answer = client.get(f"/api/products/{product}")
    finally:
        proxy.close()
    assert answer.status_code == 200 and answer.json["name"] == "zapatos"
    app.extensions["redis"] = streamed
    Worker(app).drain()
    assert len(rows(ProductView)) == before + 2, "one view per read"
    assert streamed.xlen(stream.VIEWS_STREAM) <= 1  # what the worker wrote is trimmed


def test_an_entry_that_cannot_be_read_is_answered_from_the_database_and_one_view(
    app, client, product, streamed, rows, route_reads
):
    streamed.set(cache.ENTRY_PREFIX + "abc-1", "1 not-a-version {}", ex=60)
    before = views(streamed)
    answer = client.get(f"/api/products/{product}")
    assert answer.status_code == 200 and answer.json["name"] == "zapatos"
    assert route_reads == []
    assert views(streamed) == before + 1, "the script's view, not a second one"
