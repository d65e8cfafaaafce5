"""Catalog import: a row of a large file costs what a row of a small one does, and far less
than a product created on its own.

Measured in-process (the test client, no HTTP) on MariaDB, in alternating rounds:

- the time per row of a 10,000-row CSV import (new products, then the same file with every
  price changed) divided by the same for a 1,000-row file: about 1 when the work grows
  with the file (no query per row, nothing quadratic);
- the time of a 300-row import of new products divided by 300 `POST /api/products` of
  the same products: what one file saves over a product at a time.
"""

from __future__ import annotations

import statistics
import time

from common import (
    MARIADB,
    Result,
    Target,
    close_in_process_app,
    drop_databases,
    in_process_app,
    recreate_database,
    say,
)

DATABASE = "bench_import"
LARGE, SMALL, SINGLES = 10_000, 1_000, 300


def csv_file(prefix: str, rows: int, cents: int) -> bytes:
    lines = [f"{prefix}{n:05},Product {n},{n}.{cents:02},mark{n % 7},{n}" for n in range(rows)]
    return ("sku,name,price,mark,quantity\n" + "\n".join(lines) + "\n").encode()


def run(ctx) -> list[Result]:
    recreate_database(DATABASE)
    app, client, headers = in_process_app(MARIADB.url(DATABASE))

    def imported(body: bytes, expect: str, rows: int) -> float:
        began = time.perf_counter()
        answer = client.post(
            "/api/catalog/import", data=body, content_type="text/csv", headers=headers
        )
        took = time.perf_counter() - began
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()[expect]["count"] == rows, answer.get_json()
        return took

    try:
        per_row: dict[int, list[float]] = {LARGE: [], SMALL: []}
        for round_ in range(max(ctx.rounds, 1)):
            sizes = (LARGE, SMALL) if round_ % 2 == 0 else (SMALL, LARGE)
            for size in sizes:
                prefix = f"r{round_}-{size}-"
                created = imported(csv_file(prefix, size, 50), "created", size)
                changed = imported(csv_file(prefix, size, 75), "updated", size)
                per_row[size].append((created + changed) / (2 * size))
        large, small = (statistics.median(per_row[s]) for s in (LARGE, SMALL))

        products = [
            {"sku": f"single-{n}", "name": f"Product {n}", "price": n, "mark": "m", "quantity": 1}
            for n in range(SINGLES)
        ]
        began = time.perf_counter()
        for product in products:
            assert client.post("/api/products", json=product, headers=headers).status_code == 201
        singles = time.perf_counter() - began
        body = csv_file("batch-", SINGLES, 0)
        batch = imported(body, "created", SINGLES)
    finally:
        close_in_process_app(app)
        if not ctx.keep_databases:
            drop_databases(DATABASE)
    say(
        f"import: {1 / large:,.0f} rows/s at {LARGE:,} rows, {1 / small:,.0f} rows/s at "
        f"{SMALL:,}; {SINGLES} rows in {batch * 1000:.0f} ms vs {SINGLES} POSTs in "
        f"{singles * 1000:.0f} ms"
    )
    return [
        Result(
            name=f"POST /api/catalog/import: time per row, {LARGE:,} / {SMALL:,} rows",
            measured=f"{large * 1e6:.0f} / {small * 1e6:.0f} us ({1 / large:,.0f} rows/s)",
            ratio=large / small,
            target=Target("<=", 1.5),
            details={"large_rows_per_s": 1 / large, "small_rows_per_s": 1 / small},
        ),
        Result(
            name=f"{SINGLES} new products: one import / {SINGLES} POST /api/products",
            measured=f"{batch * 1000:.0f} / {singles * 1000:.0f} ms",
            ratio=batch / singles,
            target=Target("<=", 0.2),
            details={"import_ms": batch * 1000, "posts_ms": singles * 1000},
        ),
    ]
