"""Catalog import and export: CSV or JSON in, all or nothing, one summary email per admin;
the export gives back the same columns, and importing it changes nothing."""

from __future__ import annotations

import csv
import io
import json
import random
import threading
import tracemalloc
from decimal import Decimal

import pytest
from sqlalchemy import event, func, select

from app.catalog import bulk
from app.catalog.models import Product
from app.core.extensions import db
from app.core.spreadsheets import QUOTED_STARTS, csv_cell
from app.notifications.models import Notification
from tests.test_notifications import inbox, ses, settle  # noqa: F401 (the ses fixture)

IMPORT = "/api/catalog/import"
EXPORT = "/api/catalog/export"
HEADER = "sku,name,price,mark,quantity\n"


def post_csv(client, text: str, headers: dict, query: str = "", **extra):
    body = text.encode("utf-8") if isinstance(text, str) else text
    return client.post(
        IMPORT + query, data=body, headers={**headers, **extra}, content_type="text/csv"
    )


def products(app) -> dict[str, dict]:
    """The live products, by sku, as the API shows them."""
    with app.app_context():
        rows = db.session.scalars(select(Product).where(Product.deleted_at.is_(None)))
        return {
            p.sku: {
                "name": p.name,
                "price": p.price,
                "mark": p.mark,
                "quantity": p.quantity,
                "version": p.version,
            }
            for p in rows
        }


def notification_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Notification))


def row_errors(response) -> list[tuple]:
    return [(e["row"], e["field"]) for e in response.json["errors"]["rows"]]


# ---------------------------------------------------------------- importing


def test_a_csv_import_creates_updates_and_leaves_the_rest(app, client, make, admin, rows):
    make.product("shoe", name="zapatos", price=Decimal("300.00"), mark="chabelo", quantity=5)
    make.product("hat", name="sombrero", price=Decimal("20.00"), mark="acme", quantity=1)
    before = client.get("/api/products/shoe").headers["ETag"]
    text = (
        HEADER + "shoe,zapatos,500,chabelo,5\nHAT,sombrero,20.00,acme,1\nsock,calcetin,2.5,acme,9\n"
    )

    response = post_csv(client, text, admin["headers"])

    assert response.status_code == 200, response.json
    assert response.json == {
        "dry_run": False,
        "rows": 3,
        "created": {"count": 1, "skus": ["sock"]},
        "updated": {"count": 1, "skus": ["shoe"]},
        "unchanged": {"count": 1, "skus": ["hat"]},
    }
    catalog = products(app)
    assert catalog["shoe"]["price"] == Decimal("500.00") and catalog["shoe"]["version"] == 2
    assert catalog["hat"]["version"] == 1  # a sku in another case is the same product
    assert catalog["sock"] == {
        "name": "calcetin",
        "price": Decimal("2.50"),
        "mark": "acme",
        "quantity": 9,
        "version": 1,
    }
    after = client.get("/api/products/shoe")
    assert after.json["price"] == 500 and after.headers["ETag"] != before
    assert client.get("/api/products/sock").json["name"] == "calcetin"


def test_a_json_import_leaves_out_quantity_to_keep_it(app, client, make, admin):
    make.product("shoe", name="zapatos", price=Decimal("300.00"), mark="chabelo", quantity=5)
    body = [
        {"sku": "shoe", "name": "zapatos rojos", "price": 300, "mark": "chabelo"},
        {"sku": "sock", "name": "calcetin", "price": 19.99, "mark": "acme"},
    ]
    response = client.post(IMPORT, json=body, headers=admin["headers"])

    assert response.status_code == 200, response.json
    assert response.json["created"] == {"count": 1, "skus": ["sock"]}
    assert response.json["updated"] == {"count": 1, "skus": ["shoe"]}
    catalog = products(app)
    assert catalog["shoe"]["name"] == "zapatos rojos" and catalog["shoe"]["quantity"] == 5
    assert catalog["sock"]["quantity"] == 0 and catalog["sock"]["price"] == Decimal("19.99")


def test_a_deleted_products_sku_creates_a_new_product(app, client, make, admin, rows):
    make.product("shoe", name="zapatos")
    assert client.delete("/api/products/shoe", headers=admin["headers"]).status_code == 204

    response = post_csv(client, HEADER + "shoe,botas,80,acme,2\n", admin["headers"])

    assert response.json["created"]["skus"] == ["shoe"]
    assert len(rows(Product, Product.sku == "shoe")) == 2  # the deleted one keeps its history
    assert client.get("/api/products/shoe").json["name"] == "botas"


def test_a_dry_run_reports_the_same_and_writes_and_sends_nothing(app, client, make, admin):
    make.product("shoe", name="zapatos", price=Decimal("300.00"), mark="chabelo", quantity=5)
    text = HEADER + "shoe,zapatos,500,chabelo,5\nsock,calcetin,2,acme,9\n"
    before = products(app)

    response = post_csv(client, text, admin["headers"], "?dry_run=true")

    assert response.status_code == 200
    assert response.json["dry_run"] is True
    assert response.json["created"]["skus"] == ["sock"]
    assert response.json["updated"]["skus"] == ["shoe"]
    assert products(app) == before
    assert notification_count(app) == 0
    bad = post_csv(client, HEADER + "sock,calcetin,-2,acme,9\n", admin["headers"], "?dry_run=1")
    assert bad.status_code == 422 and row_errors(bad) == [(2, "price")]


def test_one_bad_row_refuses_the_whole_file(app, client, make, admin):
    make.product("shoe", name="zapatos", price=Decimal("300.00"), mark="chabelo", quantity=5)
    before = products(app)
    text = HEADER + "shoe,zapatos,500,chabelo,5\nsock,calcetin,2,acme,9\nbad,,-1,acme,1.5\n"

    response = post_csv(client, text, admin["headers"])

    assert response.status_code == 422
    assert response.json["code"] == 422
    assert "nothing was imported" in response.json["message"]
    errors = response.json["errors"]["rows"]
    assert {(e["row"], e["field"]) for e in errors} == {
        (4, "name"),
        (4, "price"),
        (4, "quantity"),
    }
    assert all(e["message"] for e in errors)
    assert next(e for e in errors if e["field"] == "price")["message"] == "Must be 0 or more."
    assert products(app) == before
    assert notification_count(app) == 0


def test_rows_are_counted_as_a_user_counts_them(client, admin):
    # CSV: line numbers (the header is line 1; a blank line still counts).
    text = HEADER + "a,x,1,m,1\n\nb,x,oops,m,1\nc,x,1,m\n"
    response = post_csv(client, text, admin["headers"])
    assert response.status_code == 422
    assert row_errors(response) == [(4, "price"), (5, None)]
    assert "cells" in response.json["errors"]["rows"][1]["message"]
    # JSON: the index in the array.
    body = [
        {"sku": "a", "name": "x", "price": 1, "mark": "m"},
        {"sku": "b", "name": "x", "price": "1", "mark": "m", "colour": "red"},
        "c",
    ]
    response = client.post(IMPORT, json=body, headers=admin["headers"])
    assert response.status_code == 422
    assert set(row_errors(response)) == {(1, "price"), (1, "colour"), (2, None)}


def test_a_sku_twice_in_the_file_names_both_rows(app, client, admin):
    text = HEADER + "shoe,zapatos,1,m,1\nhat,x,1,m,1\nSHOE,botas,2,m,1\n"
    response = post_csv(client, text, admin["headers"])
    assert response.status_code == 422
    [error] = response.json["errors"]["rows"]
    assert (error["row"], error["field"]) == (4, "sku")
    assert "row 2" in error["message"]
    assert products(app) == {}


def test_the_header_must_name_the_columns(client, admin):
    response = post_csv(client, "sku,name,colour,mark\nshoe,x,red,m\n", admin["headers"])
    assert response.status_code == 422
    assert set(row_errors(response)) == {(1, "colour"), (1, "price")}
    messages = {e["field"]: e["message"] for e in response.json["errors"]["rows"]}
    assert messages["colour"].startswith("Unknown column")
    assert messages["price"].startswith("Missing column")
    twice = post_csv(client, "sku,name,price,mark,name\n", admin["headers"])
    assert row_errors(twice) == [(1, "name")]


def test_the_header_is_read_in_any_case_and_quantity_is_optional(app, client, admin):
    text = '\ufeffSKU, Name ,price,MARK\r\nshoe,"zapatos, rojos",3,m\r\n'  # Excel's CSV UTF-8
    response = post_csv(client, text, admin["headers"])
    assert response.status_code == 200, response.json
    assert products(app)["shoe"]["quantity"] == 0
    assert products(app)["shoe"]["name"] == "zapatos, rojos"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"", "text/csv", 422, "empty"),
        (b"\n\n", "text/csv", 422, "empty"),
        (
            "sku,name,price,mark\nshoe,caf\xe9,1,m\n".encode("latin-1"),
            "text/csv",
            400,
            "not UTF-8 text (byte 29)",
        ),
        (b'sku,name,price,mark\nshoe,"open,1,m\n', "text/csv", 400, "line"),
        (b"sku,name,price,mark\n", "text/csv; charset=latin-1", 415, "UTF-8"),
        (b'{"sku": "shoe"}', "application/json", 422, "array"),
        (b"[{", "application/json", 400, "JSON"),
        (b"", "application/json", 422, "empty"),
        (b"sku,name\n", "text/plain", 415, "CSV"),
    ],
)
def test_a_file_that_cannot_be_read_says_why(client, admin, body, content_type, status, words):
    response = client.post(IMPORT, data=body, content_type=content_type, headers=admin["headers"])
    assert response.status_code == status, response.json
    assert words in response.json["message"]
    assert response.json["code"] == status


def test_a_header_without_rows_imports_nothing(client, admin):
    response = post_csv(client, HEADER, admin["headers"])
    assert response.status_code == 200
    assert response.json["rows"] == 0 and response.json["created"]["count"] == 0


def test_readers_get_403_and_anonymous_callers_401(client, reader):
    for method, url in (("post", IMPORT), ("get", EXPORT)):
        call = getattr(client, method)
        anonymous = call(url, data=HEADER, content_type="text/csv")
        assert anonymous.status_code == 401 and anonymous.json["code"] == 401
        refused = call(url, data=HEADER, content_type="text/csv", headers=reader["headers"])
        assert refused.status_code == 403 and refused.json["code"] == 403


def test_the_import_takes_bodies_larger_than_other_routes_up_to_its_limit(app, client, admin):
    rows = [f"sku-{n},{'n' * 150},{n},acme,{n}" for n in range(1000)]
    text = HEADER + "\n".join(rows) + "\n"
    assert len(text) > app.config["MAX_CONTENT_LENGTH"]
    assert post_csv(client, text, admin["headers"]).status_code == 200
    big = client.post("/api/products", data="x" * len(text), headers=admin["headers"])
    assert big.status_code == 413  # other routes keep the global limit

    app.config["IMPORT_MAX_BODY_BYTES"] = 1000
    response = post_csv(client, text, admin["headers"])
    assert response.status_code == 413
    assert response.json["message"] == "The request body is too large."


def test_more_rows_than_the_limit_are_refused(app, client, admin):
    app.config["IMPORT_MAX_ROWS"] = 3
    text = HEADER + "".join(f"s{n},x,1,m,1\n" for n in range(4))
    response = post_csv(client, text, admin["headers"])
    assert response.status_code == 422 and "at most 3" in response.json["message"]
    body = [{"sku": f"s{n}", "name": "x", "price": 1, "mark": "m"} for n in range(4)]
    assert client.post(IMPORT, json=body, headers=admin["headers"]).status_code == 422
    assert products(app) == {}


def test_a_retry_with_the_same_idempotency_key_imports_once(app, client, admin):
    text = HEADER + "shoe,zapatos,1,m,1\n"
    first = post_csv(client, text, admin["headers"], **{"Idempotency-Key": "import-1"})
    again = post_csv(client, text, admin["headers"], **{"Idempotency-Key": "import-1"})
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert notification_count(app) == 1


def test_a_dry_runs_idempotency_key_cannot_stand_for_the_real_import(app, client, admin):
    """The query string is part of the request: the real import with the dry run's key is
    refused with a 422 that says so (nothing is imported, nothing replayed), and goes
    through with a new key."""
    text = HEADER + "shoe,zapatos,1,m,1\n"
    dry = post_csv(client, text, admin["headers"], "?dry_run=true", **{"Idempotency-Key": "k"})
    assert dry.status_code == 200 and dry.json["dry_run"] is True

    real = post_csv(client, text, admin["headers"], **{"Idempotency-Key": "k"})
    assert real.status_code == 422
    assert real.json["message"] == (
        "This Idempotency-Key was used for a different request; use a new key."
    )
    assert real.json["errors"] == {
        "headers": {"Idempotency-Key": ["Used for a different request."]}
    }
    assert "Idempotent-Replayed" not in real.headers
    assert products(app) == {} and notification_count(app) == 0

    fresh = post_csv(client, text, admin["headers"], **{"Idempotency-Key": "k-2"})
    assert fresh.status_code == 200 and fresh.json["dry_run"] is False
    assert fresh.json["created"] == {"count": 1, "skus": ["shoe"]}
    assert products(app)["shoe"]["name"] == "zapatos"


class Statements:
    """Counts the SQL statements the app sends (an executemany counts once)."""

    def __init__(self, app):
        self.app, self.count = app, 0

    def __enter__(self):
        with self.app.app_context():
            self.engine = db.engine
        event.listen(self.engine, "before_cursor_execute", self.counted)
        return self

    def counted(self, *args):
        self.count += 1

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self.counted)


def test_ten_thousand_rows_in_a_few_statements(app, client, admin):
    lines = [f"sku-{n:05},Product {n},{n}.5,mark{n % 7},{n}" for n in range(10_000)]
    with Statements(app) as created:
        response = post_csv(client, HEADER + "\n".join(lines) + "\n", admin["headers"])
    assert response.status_code == 200, response.json
    assert response.json["created"]["count"] == 10_000
    assert len(response.json["created"]["skus"]) == bulk.LISTED_SKUS
    assert response.json["created"]["skus"][0] == "sku-00000"

    # Every other product gets a new price.
    lines = [
        f"sku-{n:05},Product {n},{n + 1 if n % 2 else n}.5,mark{n % 7},{n}" for n in range(10_000)
    ]
    with Statements(app) as changed:
        response = post_csv(client, HEADER + "\n".join(lines) + "\n", admin["headers"])
    assert response.status_code == 200, response.json
    assert response.json["updated"]["count"] == 5_000
    assert response.json["unchanged"]["count"] == 5_000
    catalog = products(app)
    assert len(catalog) == 10_000
    assert catalog["sku-00001"]["price"] == Decimal("2.50")
    assert catalog["sku-00001"]["version"] == 2 and catalog["sku-00002"]["version"] == 1
    # No statement per row: reads by chunks of skus, writes by chunks of rows.
    assert created.count < 60 and changed.count < 60, (created.count, changed.count)
    assert notification_count(app) == 2  # one summary per import for the one admin


# ---------------------------------------------------------------- the summary email


def test_one_summary_email_per_admin_with_the_first_changes(app, client, make, ses):  # noqa: F811
    admins = [make.admin(email=f"admin{n}@example.com", fullname=f"Admin {n}") for n in (1, 2)]
    make.admin(email="gone@example.com", deleted=True)
    make.reader(email="reader@example.com")
    make.product("shoe", name="zapatos", price=Decimal("300.00"), mark="chabelo", quantity=5)
    new = "".join(f"new-{n:02},item {n},1,acme,1\n" for n in range(30))
    text = HEADER + "shoe,zapatos,500,chabelo,4\n" + new

    response = post_csv(client, text, admins[1]["headers"])
    assert response.status_code == 200

    with app.app_context():
        outbox = list(db.session.scalars(select(Notification).order_by(Notification.id)))
        assert [(n.recipient, n.event_count) for n in outbox] == [
            ("admin1@example.com", 31),
            ("admin2@example.com", 31),
        ]
        assert outbox[0].summary == {"created": 30, "updated": 1, "unchanged": 0}
    settle(app)
    mail = inbox(ses)
    assert set(mail) == {"admin1@example.com", "admin2@example.com"}
    [message] = mail["admin1@example.com"]
    assert message.subject == "[Marketplace] Catalog import: 30 created, 1 updated, 0 unchanged"
    assert "A catalog import changed 31 products" in message.text
    assert "shoe updated: price: 300 -> 500; quantity: 5 -> 4" in message.text
    assert "new-00 created: name: item 0; price: 1; mark: acme; quantity: 1" in message.text
    assert "the first 20 of 31" in message.text and "new-19 created" not in message.text
    assert "Admin 2 <admin2@example.com>" in message.text and " UTC" in message.text
    assert "price: 300 \u2192 500" in message.html
    log = client.get("/api/notifications", headers=admins[0]["headers"]).json
    assert [(n["event"], n["sku"], n["status"]) for n in log] == [("imported", None, "sent")] * 2
    assert log[0]["changes"]["products"][0]["sku"] == "shoe"


def test_an_import_that_changes_nothing_emails_nobody(app, client, make, admin):
    make.product("shoe", name="zapatos", price=Decimal("300.00"), mark="chabelo", quantity=5)
    response = post_csv(client, HEADER + "shoe,zapatos,300,chabelo,5\n", admin["headers"])
    assert response.json["unchanged"] == {"count": 1, "skus": ["shoe"]}
    assert notification_count(app) == 0


# ---------------------------------------------------------------- exporting


def parse_csv(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))


def test_the_export_lists_live_products_in_the_import_columns(app, client, make, admin):
    make.product("shoe", name="zapatos", price=Decimal("300.00"), mark="chabelo", quantity=5)
    make.product("sock", name="calcetin", price=Decimal("19.99"), mark="acme", quantity=0)
    make.product("gone", name="x")
    client.delete("/api/products/gone", headers=admin["headers"])

    response = client.get(EXPORT, headers=admin["headers"])
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "text/csv"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="catalog-') and disposition.endswith(
        '.csv"'
    )
    assert response.get_data(as_text=True).splitlines()[0] == HEADER.strip()
    assert parse_csv(response) == [
        {"sku": "shoe", "name": "zapatos", "price": "300", "mark": "chabelo", "quantity": "5"},
        {"sku": "sock", "name": "calcetin", "price": "19.99", "mark": "acme", "quantity": "0"},
    ]
    as_json = client.get(EXPORT + "?format=json", headers=admin["headers"])
    assert as_json.mimetype == "application/json"
    assert as_json.headers["Content-Disposition"].endswith('.json"')
    assert json.loads(as_json.get_data()) == [
        {"sku": "shoe", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5},
        {"sku": "sock", "name": "calcetin", "price": 19.99, "mark": "acme", "quantity": 0},
    ]


def test_the_export_takes_the_lists_filters_and_order(app, client, make, admin, monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK", 2)  # several keyset chunks, with ties across them
    for n, price in enumerate([5, 1, 5, 5, 3, 5, 0]):
        make.product(f"p{n}", name=f"item {n}", price=Decimal(price), mark="acme", quantity=n)
    make.product("other", name="item x", price=Decimal(4), mark="zeta")

    def skus(query: str) -> list[str]:
        response = client.get(f"{EXPORT}?format=json&{query}", headers=admin["headers"])
        assert response.status_code == 200, response.json
        return [p["sku"] for p in json.loads(response.get_data())]

    listed = client.get("/api/products?sort=-price&mark=acme&page_size=100").json
    assert skus("sort=-price&mark=acme") == [p["sku"] for p in listed]
    assert skus("sort=price&min_price=1&max_price=4") == ["p1", "p4", "other"]
    assert skus("in_stock=false") == ["p0"]
    assert len(skus("")) == 8
    # Imported rows share their creation time: the export's default order breaks ties by id.
    make.product("p9", name="item 9")
    body = [{"sku": f"n{n}", "name": "new", "price": 1, "mark": "new"} for n in range(7)]
    assert client.post(IMPORT, json=body, headers=admin["headers"]).status_code == 200
    assert skus("mark=new") == [f"n{n}" for n in range(7)]
    assert skus("mark=new&sort=-created") == [f"n{n}" for n in reversed(range(7))]
    assert client.get(f"{EXPORT}?format=xml", headers=admin["headers"]).status_code == 422


FORMULAS = ["=1+1", "+1", "-2", "@SUM(A1)", "'quoted", "''=twice", 'café, crème "rojo"']


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_importing_an_export_changes_nothing(app, client, make, admin, export_format):
    for n, name in enumerate(FORMULAS):
        make.product(f"p{n}", name=name, price=Decimal("1234567.89") / (n + 1), mark="acme")
    make.product("zero", name="nada", price=Decimal("0.00"), mark="-x", quantity=0)
    before = products(app)
    exported = client.get(
        f"{EXPORT}?format={export_format}&bom=true", headers=admin["headers"]
    ).get_data()
    if export_format == "csv":
        cells = [row["name"] for row in parse_csv_bytes(exported)]
        assert "'=1+1" in cells and "''quoted" in cells  # a spreadsheet shows text

    content_type = "text/csv" if export_format == "csv" else "application/json"
    response = client.post(
        IMPORT, data=exported, content_type=content_type, headers=admin["headers"]
    )

    assert response.status_code == 200, response.json
    assert response.json["unchanged"]["count"] == len(before)
    assert response.json["created"]["count"] == response.json["updated"]["count"] == 0
    assert products(app) == before
    assert notification_count(app) == 0


# Cells the CSV writer quotes or guards, and cells it writes as they are.
TRICKY = [
    ("plain", "zapatos", "300.00", "acme", 5),
    ("tenths", "camisa", "19.90", "acme", 0),
    ("cents", "Gorra azul", "0.05", "Acme2", 1),
    ("zero", "regalo", "0.00", "acme", 0),
    ("big", "tren", "9999999999.99", "acme", 2147483647),
    ("digits", "42", "42.50", "7up", 9),
    ("comma", "Zapatos, talla 42", "19.99", "acme", 0),
    ("quote", 'dice "hola"', "19.99", "acme", 1),
    ("lines", "una\nlinea\r\notra", "0.10", "acme", 2),
    ("formula", "=1+1", "1.00", "-x", 3),
    ("minus", "-2", "3.30", "acme", 2),
    ("accent", "Édith", "176366.84", "ñandú", 4),
    ("wide", "\uff1d1", "1.05", "acme", 6),
    ("-dash", "9 vidas", "100.00", "@m", 7),
    ("space", " espacio", "2.50", "acme ", 8),
]


def test_the_csv_export_writes_each_cell_as_the_csv_writer_would(
    app, client, make, admin, monkeypatch
):
    """Every line is the same text, byte for byte, as Python's CSV writer makes of the
    product's cells: quoted where they hold a comma, a quote or a line end, guarded where
    a spreadsheet would run them, prices as the API shows them."""
    monkeypatch.setattr(bulk, "CHUNK", 4)  # several chunks
    for sku, name, price, mark, quantity in TRICKY:
        make.product(sku, name=name, price=Decimal(price), mark=mark, quantity=quantity)
    expected = io.StringIO()
    writer = csv.writer(expected)
    writer.writerow(["sku", "name", "price", "mark", "quantity"])
    for sku, name, price, mark, quantity in TRICKY:
        number = Decimal(price)
        shown = int(number) if number == number.to_integral_value() else float(number)
        writer.writerow([csv_cell(cell) for cell in (sku, name, shown, mark, quantity)])

    response = client.get(EXPORT, headers=admin["headers"])

    assert response.status_code == 200
    assert response.get_data(as_text=True) == expected.getvalue()
    assert "'=1+1" in expected.getvalue() and '"Zapatos, talla 42"' in expected.getvalue()


def test_random_cells_of_every_kind_are_written_as_the_csv_writer_would(
    app, client, make, admin, monkeypatch
):
    """Names, marks and skus of random pieces (every first character a spreadsheet may
    run, commas, quotes, line ends, spaces, accents, four-byte characters) and prices
    of every shape: the export is, byte for byte, the CSV writer's text of them."""
    monkeypatch.setattr(bulk, "CHUNK", 7)  # several chunks
    pieces = [*QUOTED_STARTS, ",", '"', "\r", "\n", "\r\n", " ", "a", "Ñ", "é", "😀", "x,y", "''"]
    draw = random.Random(20261207)

    def text() -> str:
        return "".join(draw.choice(pieces) for _ in range(draw.randint(1, 6)))

    made = []
    for n in range(60):
        price = Decimal(draw.choice(["0", "1", "10", "100", "9999999999"])) + Decimal(
            draw.choice(["0", "0.01", "0.1", "0.5", "0.05", "0.99", "0.9"])
        )
        made.append((f"{text()}{n}", text(), price, text(), draw.randint(0, 10**6)))
        make.product(
            made[-1][0], name=made[-1][1], price=price, mark=made[-1][3], quantity=made[-1][4]
        )
    expected = io.StringIO()
    writer = csv.writer(expected)
    writer.writerow(["sku", "name", "price", "mark", "quantity"])
    for sku, name, price, mark, quantity in made:  # the order of creation, the export's
        shown = int(price) if price == price.to_integral_value() else float(price)
        writer.writerow([csv_cell(cell) for cell in (sku, name, shown, mark, quantity)])

    response = client.get(EXPORT, headers=admin["headers"])

    assert response.status_code == 200
    assert response.get_data(as_text=True) == expected.getvalue()


def test_a_chunk_of_the_longest_names_comes_out_whole(app, client, admin):
    """A chunk of products whose names and marks are as long as allowed, of four-byte
    characters and characters that JSON escapes: over a megabyte in one chunk (two
    sorted by name), every character back as it went in."""
    name = '"\\ñ' + "😀" * 197
    mark = "😀" * 100
    body = [
        {"sku": f"L{n:04}", "name": name, "price": 1, "mark": mark} for n in range(bulk.CHUNK + 1)
    ]
    assert client.post(IMPORT, json=body, headers=admin["headers"]).status_code == 200

    as_json = json.loads(client.get(f"{EXPORT}?format=json", headers=admin["headers"]).get_data())
    as_csv = parse_csv(client.get(EXPORT, headers=admin["headers"]))
    by_name = parse_csv(client.get(f"{EXPORT}?sort=name", headers=admin["headers"]))

    for exported in (as_json, as_csv, by_name):
        assert [row["sku"] for row in exported] == [row["sku"] for row in body]
        assert {(row["name"], row["mark"]) for row in exported} == {(name, mark)}


def parse_csv_bytes(raw: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))


def test_the_routes_are_in_the_openapi_document(client):
    spec = client.get("/api/openapi.json").json
    post = spec["paths"]["/api/catalog/import"]["post"]
    assert set(post["requestBody"]["content"]) == {"text/csv", "application/json"}
    assert {"200", "401", "403", "413", "422"} <= set(post["responses"])
    get = spec["paths"]["/api/catalog/export"]["get"]
    assert set(get["responses"]["200"]["content"]) == {"text/csv", "application/json"}
    assert {"401", "403"} <= set(get["responses"])
    names = {p["name"] for p in get["parameters"]}
    assert {"q", "mark", "min_price", "max_price", "in_stock", "sort", "format"} <= names


def test_a_change_during_an_export_shows_in_the_next_one_on_mariadb(
    app, client, make, admin, monkeypatch
):
    monkeypatch.setattr(bulk, "CHUNK", 2)
    for n in range(6):
        make.product(f"p{n}", price=Decimal(10 * (n + 1)))
    response = client.get(
        f"{EXPORT}?format=json&sort=price", headers=admin["headers"], buffered=False
    )
    body = iter(response.response)
    start = next(body) + next(body)  # "[" and the first chunk
    with app.app_context():  # another session commits while the download goes on
        product = db.session.scalar(select(Product).where(Product.sku == "p5"))
        product.price = Decimal(1)  # now first in price order, a place already sent
        db.session.commit()
        dialect = db.engine.dialect.name
    rest = b"".join(chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in body)
    response.close()
    start = start if isinstance(start, bytes) else start.encode()
    exported = [(p["sku"], p["price"]) for p in json.loads(start + rest)]
    if dialect == "sqlite":
        # Each chunk sees the latest commit: the moved product went where it was read.
        assert exported == [(f"p{n}", 10 * (n + 1)) for n in range(5)]
    else:
        # One snapshot: every product once, as it was when the download began.
        assert exported == [(f"p{n}", 10 * (n + 1)) for n in range(6)]


def reading_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "read-ahead"]


def test_a_download_the_client_leaves_ends_its_reading(app, client, make, admin, monkeypatch):
    """One connection reads a download (on MariaDB a thread's, reading the chunks ahead:
    the request's own is given back first; SQLite reads in the request's thread), and a
    client that goes away in the middle leaves nothing behind: the thread stops, every
    connection is back in the pool."""
    monkeypatch.setattr(bulk, "CHUNK", 2)
    for n in range(10):
        make.product(f"p{n}")
    with app.app_context():
        pool, dialect = db.engine.pool, db.engine.dialect.name
    in_use = pool.checkedout()
    response = client.get(EXPORT, headers=admin["headers"], buffered=False)
    body = iter(response.response)
    first = next(body) + next(body)  # the header line and the first chunk
    assert first.count(b"\n") == 3
    assert reading_threads() == ([] if dialect == "sqlite" else ["read-ahead"])
    assert pool.checkedout() == in_use + 1

    response.close()

    assert reading_threads() == []
    assert pool.checkedout() == in_use


# ---------------------------------------------------------------- hostile files


def test_a_refused_file_lists_the_first_100_errors_and_counts_them_all(app, client, admin):
    lines = [f"sku-{n},,-{n},acme,x" for n in range(1, 301)]  # 3 errors a row
    response = post_csv(client, HEADER + "\n".join(lines) + "\n", admin["headers"])
    assert response.status_code == 422
    assert response.json["message"] == (
        "900 errors in 300 rows (the first 100 are listed); nothing was imported."
    )
    listed = row_errors(response)
    assert len(listed) == 100
    assert listed[:3] == [(2, "name"), (2, "price"), (2, "quantity")]
    assert listed[-1][0] == 35  # rows in order: 33 whole rows, then the 34th's first error
    assert products(app) == {}


def test_every_line_counts_towards_the_row_limit(app, client, admin):
    """A line with the wrong number of cells is a product row too: a file of more lines
    than IMPORT_MAX_ROWS is refused as soon as it is read that far."""
    app.config["IMPORT_MAX_ROWS"] = 3
    response = post_csv(client, HEADER + "x\n" * 4, admin["headers"])
    assert response.status_code == 422 and "at most 3" in response.json["message"]
    assert post_csv(client, HEADER + "x\n" * 3, admin["headers"]).json["message"] == (
        "3 errors in 3 rows; nothing was imported."
    )


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        # 5.2 million lines of one cell each: more rows than an import takes
        ("text/csv", HEADER.encode() + b"x\n" * 5_200_000),
        # 20,000 rows (as many as an import takes), each with an error in every cell
        ("text/csv", HEADER.encode() + b"".join(
            f"{'?' * 150}{n},{'n' * 230},-{'9' * 20},{'m' * 101},x{n}\n".encode()
            for n in range(20_000)
        )),
        # 3.5 million elements, each an object missing every required field
        ("application/json", b"[{}" + b",{}" * 3_490_000 + b"]"),
    ],
    ids=["lines-of-x", "rows-of-bad-values", "empty-objects"],
)  # fmt: skip
def test_a_10_mib_hostile_file_is_refused_within_a_bounded_memory(
    app, client, admin, content_type, body
):
    """Peak Python memory while the file is read, checked and refused (tracemalloc, the
    body itself excluded: it is the client's): a CSV file is read as it arrives, under
    8 MiB whatever it holds; a JSON array is decoded whole, one element at a time, under
    three times its size. Errors are counted, not kept."""
    assert 10_000_000 < len(body) <= app.config["IMPORT_MAX_BODY_BYTES"]
    headers = admin["headers"]
    client.get("/users/me", headers=headers)  # the first request's one-time imports
    tracemalloc.start()
    try:
        response = client.post(IMPORT, data=body, content_type=content_type, headers=headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 422, response.json
    assert len(response.json["errors"]["rows"]) <= bulk.LISTED_ERRORS
    bound = 8 * 2**20 if content_type == "text/csv" else 3 * len(body)
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB"
    assert products(app) == {}


def test_each_chunk_after_the_first_is_one_statement_on_mariadb_two_on_sqlite(
    app, client, make, admin, monkeypatch
):
    """The chunks after a position: MariaDB reads "after (key, id)" as one index range, one
    statement a chunk; SQLite, the rows that tie with the last key, then those beyond."""
    monkeypatch.setattr(bulk, "CHUNK", 2)
    for n in range(7):
        make.product(f"p{n}")
    with app.app_context():
        engine = db.engine
    chunk_reads = []

    def count(_conn, _cursor, statement, *_args):
        if "JOIN (SELECT products.id" in statement:
            chunk_reads.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        exported = parse_csv(client.get(EXPORT, headers=admin["headers"]))
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert len(exported) == 7
    assert len(chunk_reads) == (1 + 3 * 2 if engine.dialect.name == "sqlite" else 4)


@pytest.mark.parametrize("sort", ["created", "-created", "name", "-name", "price", "-price"])
def test_an_export_across_many_chunks_lists_each_live_product_once_in_the_lists_order(
    app, client, make, admin, monkeypatch, sort
):
    monkeypatch.setattr(bulk, "CHUNK", 3)  # eight chunk boundaries, ties across most
    names = ["Bota", "bota", "abrigo", "Zapato", "bota", "capa"]
    for n in range(20):
        make.product(f"p{n:02}", name=names[n % 6], price=Decimal(n % 4), mark="acme")
    body = [{"sku": f"i{n}", "name": "bota", "price": 2, "mark": "acme"} for n in range(5)]
    assert client.post(IMPORT, json=body, headers=admin["headers"]).status_code == 200
    for sku in ("p03", "p10", "i2"):
        assert client.delete(f"/api/products/{sku}", headers=admin["headers"]).status_code == 204

    listed = client.get(f"/api/products?sort={sort}&page_size=100").json
    response = client.get(f"{EXPORT}?format=json&sort={sort}", headers=admin["headers"])
    exported = [p["sku"] for p in json.loads(response.get_data())]

    assert len(listed) == 22
    assert exported == [p["sku"] for p in listed]
    as_csv = client.get(f"{EXPORT}?sort={sort}", headers=admin["headers"])
    assert [row["sku"] for row in parse_csv(as_csv)] == exported
