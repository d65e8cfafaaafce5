"""The product list by cursor: a keyset walk that costs the same at any depth, beside
the seed's page numbers."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest

from app import create_app
from app.catalog import service
from app.core import config
from app.core.extensions import db

LIST = "/api/products"
SORTS = ["created", "-created", "name", "-name", "price", "-price"]


def meta(response) -> dict:
    return json.loads(response.headers["X-Pagination"])


def walk(client, query: str = "", page_size: int = 4, between=None) -> list[str]:
    """Every sku of a cursor walk, page by page, following Link rel="next"."""
    seen, path, pages = [], f"{LIST}?cursor=&page_size={page_size}&{query}", 0
    while path:
        response = client.get(path)
        assert response.status_code == 200, response.json
        seen += [p["sku"] for p in response.json]
        pages += 1
        if between is not None:
            between(pages, list(seen))
        following = meta(response).get("next_cursor")
        if following is None:
            assert "Link" not in response.headers
            return seen
        link = response.headers["Link"]
        assert link.endswith('>; rel="next"')
        path = link[1 : link.index(">")]
        assert parse_qs(urlsplit(path).query)["cursor"] == [following]


def catalog(make, count: int = 23) -> None:
    names = ["Bota", "bota", "abrigo", "Zapato", "capa"]
    for n in range(count):
        make.product(f"p{n:02}", name=names[n % 5], price=Decimal(n % 3), mark="acme")


@pytest.mark.parametrize("sort", SORTS)
def test_a_cursor_walk_lists_every_product_once_in_the_lists_order(client, make, sort):
    catalog(make)
    listed = [p["sku"] for p in client.get(f"{LIST}?sort={sort}&page_size=100").json]
    assert walk(client, f"sort={sort}") == listed
    assert len(listed) == 23


def test_a_cursor_page_counts_nothing_unless_asked(client, make):
    catalog(make, 6)
    first = client.get(f"{LIST}?cursor=&page_size=4")
    assert len(first.json) == 4
    assert set(meta(first)) == {"page_size", "next_cursor"}
    counted = client.get(f"{LIST}?cursor=&page_size=4&count=true&mark=acme")
    assert meta(counted)["total"] == 6
    last = client.get(f"{LIST}?page_size=4&cursor={meta(first)['next_cursor']}")
    assert [p["sku"] for p in last.json] == ["p04", "p05"]
    assert meta(last) == {"page_size": 4}
    empty = client.get(f"{LIST}?cursor=&mark=nobody&count=true")
    assert empty.json == [] and meta(empty) == {"page_size": 20, "total": 0}


def test_the_filters_apply_to_a_walk(client, make):
    catalog(make, 12)
    make.product("other", name="Bota", price=Decimal(1), mark="zeta")
    assert walk(client, "mark=acme&min_price=1&sort=-price", page_size=2) == [
        "p11",
        "p08",
        "p05",
        "p02",
        "p10",
        "p07",
        "p04",
        "p01",
    ]  # fmt: skip  (ties: the newest first, as the list's descending order has them)
    assert walk(client, "mark=zeta", page_size=2) == ["other"]


@pytest.mark.parametrize("sort", ["created", "-price", "name"])
def test_a_walk_sees_each_product_live_throughout_once_while_others_come_and_go(
    client, make, admin, sort
):
    catalog(make, 20)
    live_throughout = {f"p{n:02}" for n in range(20)} - {"p01", "p03", "p17", "p10"}
    headers = admin["headers"]
    gone_unseen = []

    def changes(page: int, seen: list[str]) -> None:
        gone_unseen.extend(
            s for s in {1: ("p17", "p01"), 2: ("p03",)}.get(page, ()) if s not in seen
        )
        if page == 1:  # one not yet seen, one already seen (in created order) and a new one
            for sku in ("p17", "p01"):
                assert client.delete(f"{LIST}/{sku}", headers=headers).status_code == 204
            new = {"sku": "n1", "name": "abrigo", "price": 1, "mark": "acme"}
            assert client.post(LIST, json=new, headers=headers).status_code == 201
        if page == 2:
            assert client.delete(f"{LIST}/p03", headers=headers).status_code == 204
            assert client.delete(f"{LIST}/p10", headers=headers).status_code == 204
            new = {"sku": "p10", "name": "Zapato", "price": 2, "mark": "acme"}  # a sku again
            assert client.post(LIST, json=new, headers=headers).status_code == 201

    seen = walk(client, f"sort={sort}", page_size=3, between=changes)

    assert len(seen) == len(set(seen))  # none twice (p10 is a new product under an old sku)
    assert live_throughout <= set(seen)  # none of those live throughout missed
    assert gone_unseen and not set(gone_unseen) & set(seen)  # none deleted before its turn


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor",
        "eyJub3QiOiAiYSBjdXJzb3IifQ",  # {"not": "a cursor"}
        base64.urlsafe_b64encode(b'{"sort":"created","key":"yesterday","id":3}').decode(),
        base64.urlsafe_b64encode(b'{"sort":"price","key":"NaN","id":3}').decode(),
        base64.urlsafe_b64encode(b'{"sort":"name","key":"a","id":"3"}').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
    ],
)
def test_a_cursor_the_list_did_not_give_is_a_422_naming_cursor(client, cursor):
    sort = "price" if "NaN" in base64.urlsafe_b64decode(cursor + "==").decode("latin-1") else ""
    response = client.get(LIST, query_string={"cursor": cursor, "sort": sort or "created"})
    assert response.status_code == 422
    assert "cursor" in response.json["errors"]["query"]


def test_a_cursor_keeps_its_sort_and_does_not_go_with_page(client, make):
    catalog(make, 3)
    cursor = meta(client.get(f"{LIST}?cursor=&page_size=1&sort=price"))["next_cursor"]
    other_sort = client.get(f"{LIST}?cursor={cursor}&sort=name")
    assert other_sort.status_code == 422
    assert "sort=price" in other_sort.json["errors"]["query"]["cursor"][0]
    both = client.get(f"{LIST}?cursor={cursor}&sort=price&page=2")
    assert both.status_code == 422
    assert "page" in both.json["errors"]["query"]


def test_pages_by_number_still_work_at_any_depth(client, make):
    catalog(make, 9)
    deep = client.get(f"{LIST}?page=5&page_size=2")
    assert [p["sku"] for p in deep.json] == ["p08"]
    assert meta(deep)["total"] == 9 and meta(deep)["page"] == 5
    assert client.get(f"{LIST}?page=500&page_size=2").json == []


def test_a_page_past_the_reach_of_page_numbers_points_to_the_cursor(client, make, monkeypatch):
    monkeypatch.setattr(service, "DEEPEST_PAGED", 6)  # 50,000 products in use
    catalog(make, 9)
    last_in_reach = client.get(f"{LIST}?page=3&page_size=2")
    assert [p["sku"] for p in last_in_reach.json] == ["p04", "p05"]
    assert meta(last_in_reach) == {
        "total": 9,
        "total_pages": 5,
        "first_page": 1,
        "last_page": 3,
        "page": 3,
        "previous_page": 2,
    }
    assert 'rel="next"' not in last_in_reach.headers["Link"]
    assert "page=3&" in last_in_reach.headers["Link"].split(", ")[-1]  # rel="last"
    beyond = client.get(f"{LIST}?page=4&page_size=2")
    assert beyond.status_code == 422
    [hint] = beyond.json["errors"]["query"]["page"]
    assert "at most 3" in hint and "cursor" in hint
    # The same products are a walk by cursor away.
    assert walk(client, page_size=2) == [f"p{n:02}" for n in range(9)]
    # A page size that reaches the products in fewer pages, and a search, keep the rule.
    assert client.get(f"{LIST}?page=2&page_size=5").status_code == 200
    assert client.get(f"{LIST}?page=3&page_size=5").status_code == 422
    assert client.get(f"{LIST}?q=bota&page=7&page_size=1").status_code == 422


@pytest.fixture
def other(database):
    """A client of a second server on the same database (another process's app)."""
    other_app = create_app(config.TestConfig(database))
    yield other_app.test_client()
    with other_app.app_context():
        db.engine.dispose()


def test_the_total_follows_every_change_whichever_process_commits_it(client, other, make, admin):
    """A process counts the whole catalog again only after a change: another server's
    create, delete, restore and import each move the total this one shows."""
    headers = admin["headers"]

    def total() -> int:
        return meta(client.get(LIST))["total"]

    catalog(make, 3)
    assert total() == 3 and total() == 3
    shoe = {"sku": "shoe", "name": "Shoe", "price": 300, "mark": "acme", "quantity": 5}
    assert other.post(LIST, json=shoe, headers=headers).status_code == 201
    assert total() == 4
    [created] = other.get(f"{LIST}/shoe/history", headers=headers).json
    assert other.delete(f"{LIST}/shoe", headers=headers).status_code == 204
    assert total() == 3
    restored = other.post(f"{LIST}/shoe/revert", json={"to": created["id"]}, headers=headers)
    assert restored.status_code == 201, restored.json
    assert total() == 4
    imported = other.post(
        "/api/catalog/import",
        data=b"sku,name,price,mark,quantity\nsock,Sock,2,acme,1\nhat,Hat,3,acme,1\n",
        headers=headers,
        content_type="text/csv",
    )
    assert imported.json["created"]["count"] == 2, imported.json
    assert total() == 6


def test_a_walk_with_the_product_cache_sees_every_write(client, make, admin, streamed):
    catalog(make, 5)
    assert client.get(f"{LIST}?page_size=100").status_code == 200  # a cached page
    first = client.get(f"{LIST}?cursor=&page_size=2&count=true")
    assert meta(first)["total"] == 5
    cursor = meta(first)["next_cursor"]
    assert client.delete(f"{LIST}/p02", headers=admin["headers"]).status_code == 204
    again = client.get(f"{LIST}?cursor={cursor}&page_size=2&count=true")
    assert [p["sku"] for p in again.json] == ["p03", "p04"]
    assert meta(again)["total"] == 4
    assert [p["sku"] for p in client.get(f"{LIST}?page_size=100").json] == [
        "p00", "p01", "p03", "p04",
    ]  # fmt: skip


def test_the_openapi_document_describes_the_cursor(client):
    spec = client.get("/api/openapi.json").json
    get = spec["paths"]["/api/products"]["get"]
    names = {p["name"] for p in get["parameters"]}
    assert {"cursor", "count", "page", "page_size", "q", "sort"} <= names
    pagination = get["responses"]["200"]["headers"]["X-Pagination"]["description"]
    assert "next_cursor" in pagination
    export = spec["paths"]["/api/catalog/export"]["get"]
    assert "cursor" not in {p["name"] for p in export["parameters"]}
