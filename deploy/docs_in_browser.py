"""The published contract, checked as its users meet it (`make docs-check`, run by CI).

Serves the app on a free loopback port with an empty SQLite database and a known admin,
then:

1. opens the Swagger UI page (/api/docs) in headless Chromium (Debian's `chromium`) and
   checks that every operation of the OpenAPI document is drawn;
2. runs the Postman collection that `flask openapi postman` generates with newman (the
   Postman command-line runner, from the npm registry): every request in it, in order
   (log in, create, read, change, delete...), must answer 2xx.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NEWMAN = "newman@6.2.2"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "docs-check-admin-password"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("FAIL: Chromium is not installed (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="docs-check-"))
    os.environ.update(
        DATABASE_URL=f"sqlite:///{workdir / 'docs.db'}",
        SECRET_KEY="docs-check-secret-key-long-enough-0123456789",
    )
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db
    from app.services import accounts

    app = create_app()
    with app.app_context():
        upgrade()
        accounts.create_user(
            fullname="Docs Admin",
            username="docs-admin",
            email=ADMIN_EMAIL,
            password=ADMIN_PASSWORD,
            role=1,
        )
        db.session.commit()
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(f"{base}/api/openapi.json", timeout=10) as response:
            spec = json.load(response)
        started = time.monotonic()
        dom = subprocess.run(
            [
                chromium(),
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
        took = time.monotonic() - started
        collection_ok = run_collection(app, base, workdir)
    finally:
        server.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    # Swagger UI draws one block per operation, its path in a data-path attribute.
    missing = [path for path in spec["paths"] if f'data-path="{path}"' not in dom]
    expected = sum(1 for ops in spec["paths"].values() for method in ops if method != "parameters")
    operations = dom.count('class="opblock-summary-path"')
    print(
        f"Swagger UI rendered in {took:.1f}s: {operations} operations drawn, {expected} in the spec"
    )
    if missing or operations != expected:
        print(f"FAIL: routes missing from the rendered page: {missing}")
        return 1
    print("PASS: every route of the OpenAPI document is listed at /api/docs")
    return 0 if collection_ok else 1


def run_collection(app, base: str, workdir: Path) -> bool:
    """Run the generated Postman collection with newman; True when every request is 2xx."""
    result = app.test_cli_runner().invoke(args=["openapi", "postman", "--base-url", base])
    collection = workdir / "marketplace.postman_collection.json"
    collection.write_text(result.output)
    items = sum(len(folder["item"]) for folder in json.loads(result.output)["item"])
    done = subprocess.run(
        [
            "npx",
            "--yes",
            NEWMAN,
            "run",
            str(collection),
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
    print(done.stdout[-3000:], done.stderr[-2000:])
    if done.returncode != 0:
        print(f"FAIL: the Postman collection ({items} requests) did not run cleanly with newman")
        return False
    print(f"PASS: newman ran all {items} requests of the Postman collection, every one 2xx")
    return True


if __name__ == "__main__":
    sys.exit(main())
