"""Searching the product names (?q=): whole words and prefixes, accents and case aside,
the best match first, through the full-text index of each database."""

from __future__ import annotations

import json
from decimal import Decimal

LIST = "/api/products"


def found(client, query: str) -> list[str]:
    response = client.get(f"{LIST}?{query}")
    assert response.status_code == 200, response.json
    return [p["sku"] for p in response.json]


def test_words_and_prefixes_are_found_accents_and_case_aside(client, make):
    make.product("shoe", name="Zapatos rojos de piel")
    make.product("truck", name="Camión eléctrico 🚚")
    make.product("tv", name="TV 4K (the best)")
    make.product("coat", name="Abrigo-impermeable_azul")

    assert found(client, "q=zapa") == ["shoe"]
    assert found(client, "q=ZAPATOS") == ["shoe"]
    assert found(client, "q=rojo%20zap") == ["shoe"]  # every word, in any order
    assert found(client, "q=zapatos%20azul") == []
    assert found(client, "q=camion%20ELECTRICO") == ["truck"]
    assert found(client, "q=CAMIÓN") == ["truck"]
    assert found(client, "q=tv") == ["tv"]  # short words and stopwords are words too
    assert found(client, "q=the%20best") == ["tv"]
    assert found(client, "q=4k") == ["tv"]
    assert found(client, "q=impermeable") == ["coat"]  # - and _ separate words
    assert found(client, "q=azul") == ["coat"]
    # Not inside a word: a substring search would need a scan of the catalog.
    assert found(client, "q=patos") == []
    assert found(client, "q=%25") == []  # no word at all: nothing
    assert len(found(client, "q=")) == 4  # an empty q filters nothing


def test_the_best_match_comes_first_and_the_other_filters_and_sorts_still_apply(client, make):
    make.product("once", name="Bota roja de agua para la lluvia", price=Decimal(30), mark="a")
    make.product("twice", name="Bota bota", price=Decimal(20), mark="a")
    make.product("other", name="Bota", price=Decimal(10), mark="b")
    for n in range(5):
        make.product(f"x{n}", name=f"Camisa {n}", price=Decimal(5))

    assert found(client, "q=bota")[0] == "twice"
    assert found(client, "q=bota&sort=relevance")[0] == "twice"
    assert found(client, "q=bota&sort=price") == ["other", "twice", "once"]
    assert found(client, "q=bota&sort=-price&mark=a") == ["once", "twice"]
    assert found(client, "q=bota&min_price=15&max_price=25") == ["twice"]
    page = client.get(f"{LIST}?q=bota&page_size=1&page=2")
    assert json.loads(page.headers["X-Pagination"])["total"] == 3
    assert len(page.json) == 1
    # The total of a ranked search, past its last page and with other filters too.
    past = client.get(f"{LIST}?q=bota&page_size=1&page=9")
    assert past.json == [] and json.loads(past.headers["X-Pagination"])["total"] == 3
    marked = client.get(f"{LIST}?q=bota&mark=a&page_size=1")
    assert json.loads(marked.headers["X-Pagination"])["total"] == 2


def test_a_product_is_found_as_soon_as_its_write_answers_and_never_once_deleted(
    client, make, admin
):
    headers = admin["headers"]
    new = {"sku": "k2", "name": "Botas de montaña", "price": 90, "mark": "k"}
    assert client.post(LIST, json=new, headers=headers).status_code == 201
    assert found(client, "q=montana") == ["k2"]

    assert client.put(f"{LIST}/k2", json={"name": "Sandalias"}, headers=headers).status_code == 200
    assert found(client, "q=montana") == []
    assert found(client, "q=sandal") == ["k2"]

    assert client.delete(f"{LIST}/k2", headers=headers).status_code == 204
    assert found(client, "q=sandal") == []
    again = {**new, "name": "Gorro"}  # the sku again: a new product
    assert client.post(LIST, json=again, headers=headers).status_code == 201
    assert found(client, "q=sandal") == []
    assert found(client, "q=gorro") == ["k2"]


def test_imported_products_are_found(client, admin):
    headers = admin["headers"]
    body = [
        {"sku": f"i{n}", "name": f"Linterna número {n}", "price": 1, "mark": "m"} for n in range(3)
    ]
    assert client.post("/api/catalog/import", json=body, headers=headers).status_code == 200
    assert found(client, "q=linterna%20numero") == ["i0", "i1", "i2"]
    body[1]["name"] = "Brújula"
    assert client.post("/api/catalog/import", json=body, headers=headers).status_code == 200
    assert found(client, "q=brujula") == ["i1"]
    assert found(client, "q=linterna") == ["i0", "i2"]
    export = client.get("/api/catalog/export?format=json&q=linterna", headers=headers)
    assert [p["sku"] for p in json.loads(export.get_data())] == ["i0", "i2"]


def test_relevance_needs_q_and_a_cursor_needs_another_sort(client, make):
    make.product("a", name="bota uno")
    make.product("b", name="bota dos")
    alone = client.get(f"{LIST}?sort=relevance")
    assert alone.status_code == 422 and "sort" in alone.json["errors"]["query"]
    walk = client.get(f"{LIST}?q=bota&cursor=")
    assert walk.status_code == 422 and "cursor" in walk.json["errors"]["query"]
    by_name = client.get(f"{LIST}?q=bota&cursor=&sort=name&page_size=1")
    assert [p["sku"] for p in by_name.json] == ["b"]
    cursor = json.loads(by_name.headers["X-Pagination"])["next_cursor"]
    rest = client.get(f"{LIST}?q=bota&cursor={cursor}&sort=name&page_size=1")
    assert [p["sku"] for p in rest.json] == ["a"]
