"""The published contract as its users meet it (`make docs-check`): the Swagger UI page
drawn by headless Chromium lists every operation, and newman runs the generated Postman
collection, every request 2xx. The app serves an empty SQLite database on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.system import harness as h
from tools.postman import postman_collection

pytestmark = pytest.mark.browser
NEWMAN = "newman@6.2.2"
ADMIN_PASSWORD = "docs-check-admin-password"
CHROMIUM_FLAGS = [*h.CHROMIUM_FLAGS, "--virtual-time-budget=15000"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("docs")
    app = h.in_process_app(workdir / "docs.db", "docs-check-secret-key-long-enough-0123456789")
    from app.accounts import service as accounts
    from app.core.extensions import db

    with app.app_context():
        accounts.create_user(
            fullname="Docs Admin",
            username="docs-admin",
            email="admin@example.com",
            password=ADMIN_PASSWORD,
            role=1,
        )
        db.session.commit()
    with h.serve_wsgi(app) as base:
        yield app, base, workdir
    with app.app_context():
        db.engine.dispose()


def test_swagger_ui_in_chromium_draws_every_operation(served):
    _app, base, workdir = served
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if browser is None:
        pytest.fail("Chromium is not installed: see docs/testing.md")
    spec = h.Http(int(base.rsplit(":", 1)[1])).get("/api/openapi.json").json
    dom = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={workdir / 'profile'}",
            "--dump-dom",
            f"{base}/api/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    # Swagger UI draws one block per operation, its path in a data-path attribute.
    assert [path for path in spec["paths"] if f'data-path="{path}"' not in dom] == []
    operations = sum(
        1 for ops in spec["paths"].values() for method in ops if method != "parameters"
    )
    assert dom.count('class="opblock-summary-path"') == operations
    # The padlocks, before Authorize: none where no token is taken (login, health), open
    # wherever one is (admin routes and the public reads that accept one alike).
    security = [
        op["security"]
        for ops in spec["paths"].values()
        for method, op in ops.items()
        if method != "parameters"
    ]
    assert dom.count('aria-label="authorization button unlocked"') == sum(
        1 for s in security if {"bearerAuth": []} in s
    )
    assert 'aria-label="authorization button locked"' not in dom


def test_newman_runs_the_postman_collection_every_request_2xx(served):
    app, base, workdir = served
    if not shutil.which("npx"):
        pytest.fail("npx (Node.js) is not installed: see docs/testing.md")
    made = postman_collection(app.test_client().get("/api/openapi.json").json, base)
    collection = workdir / "marketplace.postman_collection.json"
    collection.write_text(json.dumps(made))
    assert sum(len(folder["item"]) for folder in made["item"]) > 0
    done = subprocess.run(
        [
            "npx",
            "--yes",
            NEWMAN,
            "run",
            collection,
            "--env-var",
            f"admin_password={ADMIN_PASSWORD}",
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
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
