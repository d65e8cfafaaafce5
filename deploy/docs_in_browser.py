"""Open the Swagger UI page (/api/docs) in headless Chromium and check every route shows.

Run by `make docs-check` and CI. Serves the app on a free loopback port with an empty
SQLite database, renders the page (JavaScript included) and reads the resulting DOM.
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

    app = create_app()
    with app.app_context():
        upgrade()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
