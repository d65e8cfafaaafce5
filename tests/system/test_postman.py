"""The generated Postman collection is safe on a database that holds real data: newman runs
it twice in a row against one that already has the README's example product and user and
two admins, and every row that was there before is exactly as it was; what the runs
created is deleted. When its creates fail, the requests that need them are skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.system import harness as h
from tests.system.test_docs import NEWMAN
from tools.postman import postman_collection

pytestmark = pytest.mark.browser
ADMIN = ("admin@example.com", "postman-check-admin-password")
SECOND_ADMIN = ("second.admin@example.com", "postman-check-second-admin")
README_USER = {
    "fullname": "arnoldo",
    "password": "cheutere",
    "username": "marado",
    "email": "josuecevedo@xd.com",
    "role": 2,
}
# As the README's tour leaves it (created at 300 x 5, then changed): values that differ
# from the OpenAPI examples, so a request sending an example to it would show.
README_PRODUCT = {
    "sku": "d7iy6euiue",
    "name": "zapatos",
    "price": Decimal("500"),
    "mark": "chabelo",
    "quantity": 7,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on loopback over a SQLite file holding the README's examples."""
    workdir = tmp_path_factory.mktemp("postman")
    app = h.in_process_app(
        workdir / "postman.db", "postman-check-secret-key-long-enough-0123456789"
    )
    from app.accounts import service as accounts
    from app.catalog.models import Product
    from app.core.extensions import db

    with app.app_context():
        for n, (email, password) in enumerate((ADMIN, SECOND_ADMIN), start=1):
            accounts.create_user(
                fullname=f"Admin {n}",
                username=f"admin-{n}",
                email=email,
                password=password,
                role=1,
            )
        accounts.create_user(**README_USER)
        db.session.add(Product(**README_PRODUCT))
        db.session.commit()
    seen: list[tuple[str, str]] = []  # (method, path) of every request the app got
    with h.serve_wsgi(recording(app, seen)) as base:
        yield app, base, workdir, seen
    with app.app_context():
        db.engine.dispose()


def recording(app, seen: list):
    def wsgi(environ, start_response):
        seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        return app(environ, start_response)

    return wsgi


def snapshot(app) -> dict:
    """Every column of every user and product row, by table and id."""
    from app.accounts.models import User
    from app.catalog.models import Product
    from app.core.extensions import db

    tables = {}
    with app.app_context():
        for model in (User, Product):
            rows = db.session.execute(select(model.__table__)).mappings()
            tables[model.__tablename__] = {row["id"]: dict(row) for row in rows}
        db.session.remove()
    return tables


def newman(app, base: str, workdir, email: str, password: str) -> subprocess.CompletedProcess:
    if not shutil.which("npx"):
        pytest.fail("npx (Node.js) is not installed: install the prerequisites (README, .ci/run)")
    spec = app.test_client().get("/api/openapi.json").json
    collection = workdir / "marketplace.postman_collection.json"
    collection.write_text(json.dumps(postman_collection(spec, base)))
    return subprocess.run(
        [
            "npx",
            "--yes",
            NEWMAN,
            "run",
            collection,
            "--env-var",
            f"admin_email={email}",
            "--env-var",
            f"admin_password={password}",
            "--reporters",
            "cli",
            "--color",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def changed_rows(before: dict, after: dict) -> dict:
    return {
        table: {
            row_id: (row, after[table].get(row_id))
            for row_id, row in rows.items()
            if after[table].get(row_id) != row
        }
        for table, rows in before.items()
    }


def test_two_runs_change_nothing_they_did_not_create(served):
    app, base, workdir, _seen = served
    before = snapshot(app)
    runs = [newman(app, base, workdir, *ADMIN) for _ in range(2)]
    after = snapshot(app)
    assert changed_rows(before, after) == {"users": {}, "products": {}}
    for n, done in enumerate(runs, start=1):
        assert done.returncode == 0, f"run {n}:\n" + done.stdout[-4000:] + done.stderr[-2000:]
    # Each run made its own product and user, with random names, and deleted them.
    created = {
        table: [row for row_id, row in rows.items() if row_id not in before[table]]
        for table, rows in after.items()
    }
    assert len(created["users"]) == len(created["products"]) == 2
    assert all(u["username"].startswith("postman-") for u in created["users"])
    assert all(p["sku"].startswith("postman-") for p in created["products"])
    assert all(row["deleted_at"] is not None for rows in created.values() for row in rows)
    assert len({p["sku"] for p in created["products"]}) == 2


def test_when_the_creates_fail_the_requests_needing_them_are_skipped(served):
    """A read-only account's creates get 403: nothing is read, changed or deleted in
    their place (no fallback to an existing sku or user id)."""
    app, base, workdir, seen = served
    before = snapshot(app)
    seen.clear()
    done = newman(app, base, workdir, README_USER["email"], README_USER["password"])
    assert done.returncode != 0  # the creates did fail, and newman says so
    assert changed_rows(before, snapshot(app)) == {"users": {}, "products": {}}
    assert snapshot(app) == before  # nothing created either
    # Exactly the requests that need nothing created reached the service (the others
    # carry a skip script), and none changed or named an existing row.
    collection = json.loads((workdir / "marketplace.postman_collection.json").read_text())
    unconditional = [
        (item["request"]["method"], item["request"]["url"]["raw"].replace("{{baseUrl}}", ""))
        for folder in collection["item"]
        for item in folder["item"]
        if "pm.execution.skipRequest()" not in json.dumps(item.get("event", []))
    ]
    assert seen == unconditional
    assert ("POST", "/api/products") in seen and ("POST", "/api/users") in seen
    assert {method for method, _path in seen} == {"GET", "POST"}
    assert [path for _method, path in seen if "d7iy6euiue" in path or "/api/users/" in path] == []
    assert "skipped: the product this request needs" in " ".join(done.stdout.split())
