"""Searching the product names (?q=): whole words and prefixes, accents and case aside,
the best match first, through the search's own index (product_words, kept by the
database's triggers)."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from urllib.parse import unquote

from sqlalchemy import text

from app.core.extensions import db
from app.core.text import search_words

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


def test_whole_words_come_first_then_the_shortest_names_then_the_oldest(client, make):
    make.product("long", name="Zapato rojo de cuero")
    make.product("plural", name="Zapatos rojos")
    make.product("alone", name="Zapato")
    make.product("blue", name="Zapato azul")
    make.product("green", name="Zapato verde")

    # zapato starts two words: those holding it whole first, by the words besides it.
    assert found(client, "q=zapato") == ["alone", "blue", "green", "long", "plural"]
    assert found(client, "q=zapatos") == ["plural"]  # one word: read in the index's order
    assert found(client, "q=zap") == ["alone", "plural", "blue", "green", "long"]
    assert found(client, "q=rojo") == ["long", "plural"]
    assert found(client, "q=rojo%20zapato") == ["long", "plural"]  # both whole first
    assert found(client, "q=zapato%20r") == ["long", "plural"]
    second = client.get(f"{LIST}?q=zapato&page_size=2&page=2")
    assert [p["sku"] for p in second.json] == ["green", "long"]
    assert json.loads(second.headers["X-Pagination"])["total"] == 5


VOCABULARY = ["bota", "botas", "botin", "rojo", "roja", "Rojó", "azul", "az", "cuero", "piel"]


def ranking(products: dict[str, list[str]], q: str) -> list[str]:
    """The documented ranking, computed here from the names' words."""
    terms = search_words(q)
    ranked = []
    for order, (sku, words) in enumerate(products.items()):
        if not terms or not all(any(w.startswith(t) for w in words) for t in terms):
            continue
        exact = sum(t in words for t in terms)
        others = 0
        for term in terms:
            held = {w for w in words if w.startswith(term)}
            others += min(len(words) - words.count(w) for w in held)
        ranked.append(((-exact, others, order), sku))
    return [sku for _, sku in sorted(ranked)]


def test_every_search_finds_and_ranks_what_the_names_hold_as_products_change(client, make, admin):
    headers = admin["headers"]
    pick = random.Random(29)
    live: dict[str, list[str]] = {}
    for n in range(40):
        name = " ".join(pick.choice(VOCABULARY) for _ in range(pick.randint(1, 4)))
        make.product(f"p{n:02d}", name=name)
        live[f"p{n:02d}"] = search_words(name)
    for sku in pick.sample(sorted(live), 8):  # renamed through the API
        name = " ".join(pick.choice(VOCABULARY) for _ in range(pick.randint(1, 4)))
        assert client.put(f"{LIST}/{sku}", json={"name": name}, headers=headers).status_code == 200
        live[sku] = search_words(name)
    for sku in pick.sample(sorted(live), 6):
        assert client.delete(f"{LIST}/{sku}", headers=headers).status_code == 204
        del live[sku]

    queries = ["bota", "botas", "bot", "b", "roj", "rojo", "ROJO", "az", "azul cuero", "bo r"]
    queries += ["piel bota", "cuero cuero", "botin roja az", "zz", "p"]
    for q in queries:
        expected = ranking(live, q)
        shown, page = [], 1
        while True:  # every page, by number, as a client reads them
            answer = client.get(f"{LIST}?q={q}&page_size=3&page={page}")
            assert json.loads(answer.headers["X-Pagination"])["total"] == len(expected), q
            if not answer.json:
                break
            shown += [p["sku"] for p in answer.json]
            page += 1
        assert shown == expected, q
        priced = found(client, f"q={q}&sort=price&page_size=100")
        assert sorted(priced) == sorted(expected), q
        marked = client.get(f"{LIST}?q={q}&mark=acme&page_size=100")  # the other path
        assert [p["sku"] for p in marked.json] == expected, q


def test_products_written_by_hand_in_sql_are_found_by_their_search(app, client, make):
    make.product("kept", name="Linterna frontal")
    with app.app_context():
        db.session.execute(
            text(
                "INSERT INTO products (sku, sku_lower, sku_key, name, search, price, mark,"
                " quantity, version, created_at, updated_at) VALUES ('sql', 'sql', 'sql',"
                " 'Linterna de mano', 'wwlinterna wwde wwmano', 1, 'm', 0, 1,"
                " '2026-01-01', '2026-01-01')"
            )
        )
        db.session.execute(text("UPDATE products SET deleted_at = '2026-01-02' WHERE sku = 'kept'"))
        db.session.commit()
    assert found(client, "q=linterna") == ["sql"]
    assert found(client, "q=frontal") == []
    with app.app_context():
        db.session.execute(text("UPDATE products SET search = 'wwfaro' WHERE sku = 'sql'"))
        db.session.commit()
    assert found(client, "q=linterna") == []
    assert found(client, "q=faro") == ["sql"]
    with app.app_context():
        db.session.execute(text("DELETE FROM products WHERE sku = 'sql'"))
        db.session.commit()
        assert db.session.execute(text("SELECT COUNT(*) FROM product_words")).scalar() == 0


def test_a_reverted_product_is_found_again(client, admin):
    headers = admin["headers"]
    new = {"sku": "lamp", "name": "Lámpara de pie", "price": 5, "mark": "m"}
    assert client.post(LIST, json=new, headers=headers).status_code == 201
    created = client.get(f"{LIST}/lamp/history", headers=headers).json[0]
    assert client.delete(f"{LIST}/lamp", headers=headers).status_code == 204
    assert found(client, "q=lampara") == []
    restored = client.post(f"{LIST}/lamp/revert", json={"to": created["id"]}, headers=headers)
    assert restored.status_code == 201
    assert found(client, "q=lampara%20pie") == ["lamp"]


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


def corrected(response) -> str | None:
    header = response.headers.get("X-Corrected-Query")
    return None if header is None else unquote(header)


def test_a_misspelt_word_is_corrected_when_the_search_finds_nothing(client, make, admin):
    make.product("red", name="Zapatos rojos", mark="x")
    make.product("blue", name="Zapatos azules", mark="y")
    make.product("one", name="Zapato")
    make.product("coat", name="Impermeable verde")
    make.product("boot", name="Bota")
    make.product("model", name="Modelo 12346")

    # One edit from 5 letters (zapatos and zapato are both one away: more products hold
    # zapatos), two from 9; the words that find something stay as they were typed.
    swapped = client.get(f"{LIST}?q=zapatso")
    assert [p["sku"] for p in swapped.json] == ["red", "blue"]
    assert corrected(swapped) == "zapatos"
    assert json.loads(swapped.headers["X-Pagination"])["total"] == 2
    twice = client.get(f"{LIST}?q=inpermeabel")
    assert [p["sku"] for p in twice.json] == ["coat"] and corrected(twice) == "impermeable"
    both = client.get(f"{LIST}?q=roj%20ZAPATSO")
    assert [p["sku"] for p in both.json] == ["red"] and corrected(both) == "roj zapatos"
    marked = client.get(f"{LIST}?q=zapatso&mark=y&sort=price")
    assert [p["sku"] for p in marked.json] == ["blue"] and corrected(marked) == "zapatos"
    walk = client.get(f"{LIST}?q=zapatso&cursor=&sort=name&page_size=1")
    assert [p["sku"] for p in walk.json] == ["blue"] and corrected(walk) == "zapatos"
    link = walk.headers["Link"]
    assert "q=zapatso" in link
    rest = client.get(link[1 : link.index(">")])  # rel="next" keeps q as sent
    assert [p["sku"] for p in rest.json] == ["red"] and corrected(rest) == "zapatos"

    # Found as typed: no correction.
    exact = client.get(f"{LIST}?q=zapato")
    assert len(exact.json) == 3 and corrected(exact) is None
    for q in (
        "zapotas%20azul",  # two edits in 7 letters: too far
        "bpta",  # fewer than 5 letters (one edit from bota)
        "sapatos",  # the first letter is taken as typed
        "12345",  # a number is not a misspelling (one edit from 12346)
        "modelo1",  # nor a word with a digit
        "zapatso%20verde",  # corrected, still nothing: the answer is for q as sent
        "zapatso%20qqqqqq",  # a word with no close one
    ):
        answer = client.get(f"{LIST}?q={q}")
        assert answer.json == [] and corrected(answer) is None, q

    # A word no live product holds any more is no correction.
    assert client.delete(f"{LIST}/coat", headers=admin["headers"]).status_code == 204
    gone = client.get(f"{LIST}?q=inpermeabel")
    assert gone.json == [] and corrected(gone) is None
