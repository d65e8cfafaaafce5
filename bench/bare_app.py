"""A bare Flask app serving products from memory: the ceiling the service is compared with.

It answers ``GET /api/products/<sku>`` with the same JSON the service returns, from a dict
and nothing else (no database, schema, auth or extensions). BENCH_BARE_PRODUCTS holds the
JSON object ``{sku: product}`` to serve; without it, one sample product is served.
``GET /api/products`` answers BENCH_BARE_LIST (``{"items": [...], "headers": {...}}``:
one page of the list and its pagination headers), whatever the query; ``GET /healthz``
is the harness's readiness check. The benchmarks serve it as the service is served: the
harness stages it as the app's wsgi.py, under the same app.ini (bench/common.py, serve).
"""

from __future__ import annotations

import json
import os

from flask import Flask, abort, jsonify

SAMPLE = {
    "d7iy6euiue": {
        "sku": "d7iy6euiue",
        "name": "zapatos",
        "price": 300,
        "mark": "chabelo",
        "quantity": 5,
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
    }
}

PRODUCTS = {
    sku.lower(): product
    for sku, product in (
        json.loads(os.environ.get("BENCH_BARE_PRODUCTS") or "null") or SAMPLE
    ).items()
}

LIST = json.loads(os.environ.get("BENCH_BARE_LIST") or "null") or {"items": [], "headers": {}}

app = Flask(__name__)


@app.get("/api/products/<string:sku>")
def product(sku: str):
    found = PRODUCTS.get(sku.lower())
    if found is None:
        abort(404)
    return jsonify(found)


@app.get("/api/products")
def products():
    return jsonify(LIST["items"]), LIST["headers"]


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")
