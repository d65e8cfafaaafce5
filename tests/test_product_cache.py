"""Product reads: the fast answers equal marshmallow's, and the Redis cache never serves a
product older than the last write that has answered, while every read is still a view."""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from flask import jsonify
from flask_smorest.pagination import PaginationMixin
from prometheus_client import REGISTRY
from sqlalchemy import select

from app import create_app
from app.catalog import cache
from app.catalog.models import Product
from app.catalog.schemas import ProductSchema
from app.core import config, redis_client
from app.core.cache import invalidate
from app.core.extensions import db
from app.views import stream
from app.views.models import ProductView
from app.worker import Worker

PRODUCTS = [
    # name, price, quantity: plain, decimals, accents and emoji (escaped in the JSON),
    # quotes, zero stock, the largest price
    ("zapatos", Decimal("300.00"), 5),
    ("Camión eléctrico 🚚", Decimal("19.99"), 0),
    ('botas "de agua" \\ <b>', Decimal("0.50"), 7),
    ("x" * 200, Decimal("9999999999.99"), 2_147_483_647),
]


@pytest.fixture
def catalog(app, make):
    skus = []
    for n, (name, price, quantity) in enumerate(PRODUCTS):
        skus.append(make.product(f"Sku-{n}", name=name, price=price, quantity=quantity)["sku"])
    with app.app_context():  # microseconds that isoformat shows, and a whole second
        product = db.session.scalar(select(Product).where(Product.sku == "Sku-0"))
        product.updated_at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
        product.created_at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
        db.session.commit()
    return skus


def marshmallow_answer(app, *skus: str, many: bool = False) -> bytes:
    """What flask-smorest answered through ProductSchema (jsonify of its dump)."""
    with app.app_context():
        rows = [db.session.scalar(select(Product).where(Product.sku == sku)) for sku in skus]
        data = ProductSchema(many=many).dump(rows if many else rows[0])
        return jsonify(data).get_data()


def assert_same_reads(app, client, skus) -> None:
    for sku in skus:
        for path in (f"/api/products/{sku}", f"/api/products/{sku.lower()}/"):
            answer = client.get(path)
            assert answer.status_code == 200
            assert answer.get_data() == marshmallow_answer(app, sku)
            assert answer.mimetype == "application/json"
            assert answer.headers["Content-Length"] == str(len(answer.get_data()))


def test_a_product_reads_byte_for_byte_as_marshmallow_dumps_it(app, client, catalog):
    assert_same_reads(app, client, catalog)


def test_cached_answers_are_byte_for_byte_the_same(app, client, catalog, streamed):
    assert_same_reads(app, client, catalog)  # misses, then hits
    assert streamed.exists(cache.ENTRY_PREFIX + "sku-0")
    assert_same_reads(app, client, catalog)  # from the cache only
    first, again = client.get("/api/products/Sku-1"), client.get("/api/products/Sku-1")

    def same(answer):  # every request has its own X-Request-ID
        return {k: v for k, v in answer.headers.items() if k != "X-Request-ID"}

    assert same(first) == same(again)


@pytest.mark.parametrize(
    "query", ["", "?page=2&page_size=2", "?page=3&page_size=1&sort=-price", "?page=9"]
)
def test_a_list_page_reads_as_marshmallow_and_flask_smorest_built_it(app, client, catalog, query):
    answer = client.get(f"/api/products{query}")
    assert answer.status_code == 200
    shown = [item["sku"] for item in answer.json]
    assert answer.get_data() == (marshmallow_answer(app, *shown, many=True) if shown else b"[]\n")
    args = dict(pair.split("=") for pair in query.lstrip("?").split("&") if pair)
    page, size = int(args.get("page", 1)), int(args.get("page_size", 20))
    meta = PaginationMixin._make_pagination_metadata(page, size, len(PRODUCTS))
    assert answer.headers["X-Pagination"] == json.dumps(meta)
    if len(PRODUCTS) > size:
        assert 'rel="first"' in answer.headers["Link"]


def test_the_cached_list_total_follows_creates_and_deletes(client, admin, make, streamed):
    for n in range(3):
        make.product(f"p{n}")
    total = lambda: json.loads(client.get("/api/products").headers["X-Pagination"])["total"]  # noqa: E731
    assert total() == 3 and total() == 3  # counted, then cached
    new = {"sku": "p9", "name": "n", "price": 1, "mark": "m"}
    assert client.post("/api/products", json=new, headers=admin["headers"]).status_code == 201
    assert total() == 4
    assert client.delete("/api/products/p0", headers=admin["headers"]).status_code == 204
    assert total() == 3


def test_cached_list_pages_follow_every_change(client, admin, make, streamed):
    make.product("abc", price=Decimal("10.00"))
    make.product("def", price=Decimal("20.00"))
    path = "/api/products?sort=price&page_size=1&page=2"
    first = client.get(path)
    assert client.get(path).get_data() == first.get_data()  # a hit
    assert first.json[0]["sku"] == "def"
    assert streamed.keys(cache.PAGE_PREFIX + "*")
    changed = client.put("/api/products/def", json={"price": 5}, headers=admin["headers"])
    assert changed.status_code == 200
    again = client.get(path)
    assert again.json[0]["sku"] == "abc"
    assert again.headers["X-Pagination"] == first.headers["X-Pagination"]
    assert again.headers["Link"] == first.headers["Link"]
    assert client.get("/api/products?page_size=0").status_code == 422  # still validated


def test_an_import_is_read_at_once_from_the_cache(client, admin, make, streamed):
    make.product("shoe", price=Decimal("300.00"))
    list_path = "/api/products?sort=price"
    assert client.get("/api/products/shoe").json["price"] == 300  # cached from here on
    assert client.get("/api/products/SOCK").status_code == 404
    assert [p["sku"] for p in client.get(list_path).json] == ["shoe"]
    csv = "sku,name,price,mark,quantity\nshoe,zapatos,500,chabelo,5\nsock,calcetin,2.5,acme,9\n"
    imported = client.post(
        "/api/catalog/import",
        data=csv.encode(),
        headers=admin["headers"],
        content_type="text/csv",
    )
    assert imported.status_code == 200, imported.json
    assert client.get("/api/products/shoe").json["price"] == 500
    assert client.get("/api/products/sock").json["name"] == "calcetin"
    assert [p["sku"] for p in client.get(list_path).json] == ["sock", "shoe"]
    assert json.loads(client.get("/api/products").headers["X-Pagination"])["total"] == 2


def test_every_change_is_read_at_once_from_the_cache(app, client, admin, make, streamed):
    make.product("abc", price=Decimal("10.00"))
    path, auth = "/api/products/abc", admin["headers"]
    first = client.get(path)
    assert client.get(path).headers["ETag"] == first.headers["ETag"]  # a hit
    for method, change in (("put", {"price": 11}), ("patch", {"quantity": 9})):
        changed = getattr(client, method)(path, json=change, headers=auth)
        assert changed.status_code == 200
        read = client.get(path)
        assert read.get_data() == changed.get_data()
        assert read.headers["ETag"] == changed.headers["ETag"] != first.headers["ETag"]
    assert client.delete(path, headers=auth).status_code == 204
    assert client.get(path).status_code == 404
    again = {"sku": "ABC", "name": "again", "price": 5, "mark": "m"}
    assert client.post("/api/products", json=again, headers=auth).status_code == 201
    assert client.get(path).json["name"] == "again"


def test_cached_reads_are_views_304_included_head_not(app, client, make, reader, rows, streamed):
    make.product("abc")
    tag = client.get("/api/products/abc").headers["ETag"]  # a miss: fills, a view
    assert client.get("/api/products/abc").status_code == 200  # hits from here on
    assert client.get("/api/products/abc", headers=reader["headers"]).status_code == 200
    again = client.get("/api/products/abc", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.headers["ETag"] == tag
    assert client.head("/api/products/abc").status_code == 200
    assert client.get("/api/products/nope").status_code == 404
    assert streamed.xlen(stream.VIEWS_STREAM) == 4
    Worker(app).drain()
    views = rows(ProductView)
    assert sorted(v.user_id or 0 for v in views) == [0, 0, 0, reader["id"]]


def test_tokens_on_cached_reads_are_checked_as_before(client, make, reader, streamed):
    make.product("abc")
    client.get("/api/products/abc")  # cached from here on
    signed = client.get("/api/products/abc", headers=reader["headers"])
    assert signed.status_code == 200 and signed.headers["Cache-Control"] == "no-store"
    assert "Cache-Control" not in client.get("/api/products/abc").headers
    bad = client.get("/api/products/abc", headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401 and bad.json["code"] == 401


def test_a_fill_from_before_a_change_is_refused(app, make, streamed):
    make.product("abc")
    answer = cache.Answer(1, 1, '{"old": true}\n')
    with app.test_request_context():
        miss = cache.read("abc", None)
        assert isinstance(miss, cache.Miss)
        # A write committed between the miss and the fill.
        invalidate([(cache.ENTRY_PREFIX + "abc", cache.GENERATION_PREFIX + "abc")])
        assert not cache.fill("abc", miss, answer, None)
        late = cache.Miss(cache.read("abc", None).generation, 0)  # its deadline is past
        assert not cache.fill("abc", late, answer, None)
        assert isinstance(cache.read("abc", None), cache.Miss)
        fresh = cache.read("abc", None)
        assert cache.fill("abc", fresh, answer, None)
        assert cache.read("abc", None) == answer


def dead_redis_url() -> str:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def test_a_write_that_cannot_invalidate_answers_once_no_old_copy_can_be_served(
    database, app, client, admin, make, streamed
):
    make.product("abc", price=Decimal("10.00"))
    app.config["PRODUCT_CACHE_SECONDS"] = 1.0
    assert client.get("/api/products/abc").json["price"] == 10  # cached for others too

    # Another instance, which cannot reach Redis when it changes the product.
    cut_off = create_app(config.TestConfig(database))
    cut_off.config["PRODUCT_CACHE_SECONDS"] = 1.0
    cut_off.extensions["redis"] = redis_client.connect(dead_redis_url(), timeout=0.2)
    before = REGISTRY.get_sample_value(
        "marketplace_product_cache_total", {"outcome": "uninvalidated"}
    )
    changed = cut_off.test_client().put(
        "/api/products/abc", json={"price": 11}, headers=admin["headers"]
    )
    assert changed.status_code == 200 and changed.json["price"] == 11
    assert (
        REGISTRY.get_sample_value("marketplace_product_cache_total", {"outcome": "uninvalidated"})
        == (before or 0) + 1
    )
    assert client.get("/api/products/abc").json["price"] == 11
    with cut_off.app_context():
        db.engine.dispose()


# ---------------------------------------------------------------- processes


def read_until_stopped(database: str, redis_url: str, workdir: str, name: str) -> None:
    """A reader process: its own app, reading one product until told to stop; what each
    read started at (the machine's monotonic clock) and what it showed, to a file."""
    settings = config.TestConfig(database)
    settings.REDIS_URL = redis_url
    app = create_app(settings)
    client = app.test_client()
    stop, seen = Path(workdir) / "stop", []
    deadline = time.monotonic() + 60
    while not stop.exists() and time.monotonic() < deadline:
        began = time.monotonic()
        answer = client.get("/api/products/race")
        seen.append([began, answer.status_code, (answer.json or {}).get("price")])
        if len(seen) == 1:
            (Path(workdir) / f"{name}.ready").touch()
    hits = REGISTRY.get_sample_value("marketplace_product_cache_total", {"outcome": "hit"})
    result = {"seen": seen, "hits": hits or 0}
    (Path(workdir) / f"{name}.json").write_text(json.dumps(result))


def test_no_read_after_a_writes_answer_shows_the_old_price(
    database, app, client, admin, make, streamed, redis_url, tmp_path
):
    make.product("race", price=Decimal("100.00"))
    spawn = multiprocessing.get_context("spawn")
    names = ["reader-1", "reader-2"]
    readers = [
        spawn.Process(target=read_until_stopped, args=(database, redis_url, str(tmp_path), n))
        for n in names
    ]
    for process in readers:
        process.start()
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"{n}.ready").exists() for n in names):
            assert time.monotonic() < deadline, "the readers did not start"
            assert all(p.is_alive() for p in readers), "a reader died"
            time.sleep(0.05)
        answered = []  # (when the write's answer was back, its price)
        for price in range(101, 131):
            changed = client.put(
                "/api/products/race", json={"price": price}, headers=admin["headers"]
            )
            assert changed.status_code == 200
            answered.append((time.monotonic(), price))
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        (tmp_path / "stop").touch()
        for process in readers:
            process.join(30)
    results = [json.loads((tmp_path / f"{n}.json").read_text()) for n in names]
    assert all(result["hits"] > 0 for result in results)  # the cache was read
    stale = []
    for result in results:
        for began, status, price in result["seen"]:
            assert status == 200
            current = max((p for at, p in answered if at < began), default=100)
            if price < current:
                stale.append((began, price, current))
    assert stale == []
    assert sum(len(r["seen"]) for r in results) > len(answered)


def test_list_pages_take_one_entry_per_query_and_no_more_than_their_budget(
    app, client, make, streamed
):
    """However a query string is spelt, one query is one entry; and distinct queries (each
    a full page of 100 products, about 40 KB) store at most PRODUCT_PAGE_CACHE_BYTES in a
    window of PRODUCT_CACHE_SECONDS: the rest are answered from the database."""
    for n in range(100):
        make.product(f"p{n:03}", name=f"{n:03} " + "n" * 196)  # 200, the most a name has
    app.config["PRODUCT_CACHE_SECONDS"] = 60  # one window for the whole test
    spellings = [
        "page=1&page_size=100",
        "page_size=100&page=1",
        "page=01&page_size=0100",
        "page_size=100&sort=created",
        "page_size=100&page=1&page=1",
    ]
    first = client.get("/api/products?" + spellings[0])
    for query in spellings:
        answer = client.get("/api/products?" + query)
        assert answer.get_data() == first.get_data()
    assert len(streamed.keys(cache.PAGE_PREFIX + "*")) == 1

    budget = app.config["PRODUCT_PAGE_CACHE_BYTES"]
    for n in range(300):
        answer = client.get(f"/api/products?page_size=100&max_price={100 + n}")
        assert answer.status_code == 200 and len(answer.json) == 100
    entries = streamed.keys(cache.PAGE_PREFIX + "*")
    stored = sum(streamed.strlen(key) for key in entries)
    assert 0 < stored <= budget, (stored, budget)
    assert len(first.get_data()) * 300 > 5 * budget  # without the budget: far more
    # a page past the budget is still answered, from the database
    assert client.get("/api/products?page_size=100&max_price=999").json == first.json


def test_a_server_with_a_thread_per_request_keeps_using_redis(app, make, streamed, caplog):
    """`flask run` (a new thread for each request) with REDIS_URL: each thread takes a
    connection from the client's pool and gives it back when it ends, so 300 requests
    hold no more connections than threads alive, and the 300th is still a cache hit."""
    import threading
    import urllib.request

    from werkzeug.serving import make_server

    make.product("abc")
    before = max(int(c["id"]) for c in streamed.client_list())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hits = REGISTRY.get_sample_value("marketplace_product_cache_total", {"outcome": "hit"}) or 0
    try:
        for n in range(150):
            for path in ("/api/products/abc", "/api/products?page_size=5"):
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}") as answer:
                    assert answer.status == 200, (n, path)
    finally:
        server.shutdown()
        thread.join(10)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    now = REGISTRY.get_sample_value("marketplace_product_cache_total", {"outcome": "hit"})
    assert now - hits >= 2 * 150 - 2  # all but the two first reads
    # Redis's own count: the server's connections, one per thread alive and reused (a
    # thread still ending while the next request's begins may hold one more a moment):
    # a few, not one per request.
    opened = [c for c in streamed.client_list() if int(c["id"]) > before]
    assert len(opened) <= 5, opened
