"""The webhook fault runs' count, from the receiver's side: what arrived, per webhook-id,
against the events the database holds and the changes the clients were told of.

- events_expected: product events committed after the endpoints were registered, each
  owed to every endpoint (``deliveries_expected`` = events x endpoints).
- delivered: (endpoint, event) pairs that arrived at least once; ``missing`` those that
  never did, ``unexpected`` arrivals of events not owed.
- requests / duplicates: every POST the receiver got, and those beyond the first per
  webhook-id (at least once: a sender killed mid-send, or an answer that came too late,
  is sent again under the same id).
- ids_per_event_max / events_per_id_max: an event arrives under one webhook-id per
  endpoint, and a webhook-id always carries the same event (both must be 1).
- order_breaks: arrivals of a product's event after an arrival of a later event of the
  same product at the same endpoint (must be 0).
- puts_missing: PUTs answered 200 whose change never arrived at some endpoint.
- ids_not_in_log: webhook-ids that arrived but that the delivery log does not name.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from tests.system.receiver import Receiver


def last_event_id(db, database: str) -> int:
    return db.query(database, "SELECT COALESCE(MAX(id), 0) FROM events")[0][0]


def open_deliveries(db, database: str) -> int:
    sql = "SELECT COUNT(*) FROM webhook_deliveries WHERE status IN ('pending', 'retrying')"
    return db.query(database, sql)[0][0]


def tally(run, scenario: str, receiver: Receiver, paths: list[str], after: int, requests) -> dict:
    db, database = run.db, run.database
    sql = "SELECT id, sku FROM events WHERE id > %s AND type LIKE 'product.%%'"
    expected = dict(db.query(database, sql, after))
    log = {
        webhook_id: (url.rsplit("/", 1)[-1], event_id, status)
        for webhook_id, url, event_id, status in db.query(
            database,
            "SELECT d.webhook_id, w.url, e.id, d.status FROM webhook_deliveries d"
            " JOIN webhook_endpoints w ON w.id = d.endpoint_id"
            " JOIN events e ON e.row_id = d.event_row_id",
        )
    }
    ids_of: dict[tuple[str, int], set[str]] = defaultdict(set)
    events_of: dict[str, set[tuple[str, int]]] = defaultdict(set)
    highest: dict[tuple[str, str], int] = {}
    breaks = 0
    prices: set[tuple[str, str, int]] = set()
    for got in receiver.received:
        path, body = got.path.rsplit("/", 1)[-1], json.loads(got.body)
        data = body["data"]
        key = (path, data["event_id"])
        ids_of[key].add(got.webhook_id)
        events_of[got.webhook_id].add(key)
        line = (path, data["sku"])
        if data["event_id"] < highest.get(line, 0):
            breaks += 1
        highest[line] = max(highest.get(line, 0), data["event_id"])
        if body["type"] == "product.updated" and "price" in data["changes"]:
            prices.add((path, data["sku"], int(float(data["changes"]["price"]["new"]))))
    owed = {(path, event_id) for path in paths for event_id in expected}
    confirmed = {(r.sku, r.price) for r in requests if r.kind == "put" and r.status == 200}
    per_id = receiver.per_webhook_id()
    statuses = Counter(status for _path, _event, status in log.values())
    return {
        "scenario": scenario,
        "endpoints": len(paths),
        "events_expected": len(expected),
        "deliveries_expected": len(owed),
        "delivered": len(owed & set(ids_of)),
        "requests": len(receiver.received),
        "duplicates": sum(count - 1 for count in per_id.values()),
        "ids_per_event_max": max((len(ids) for ids in ids_of.values()), default=0),
        "events_per_id_max": max((len(keys) for keys in events_of.values()), default=0),
        "order_breaks": breaks,
        "puts_confirmed": len(confirmed),
        "puts_missing": sorted(
            (path, sku, price)
            for path in paths
            for sku, price in confirmed
            if (path, sku, price) not in prices
        )[:5],
        "missing": sorted(owed - set(ids_of))[:5],
        "unexpected": sorted(set(ids_of) - owed)[:5],
        "ids_not_in_log": sorted(set(per_id) - set(log))[:5],
        "delivery_statuses": dict(statuses),
    }


def check(entry: dict) -> None:
    """The promises: every owed delivery arrived, under one webhook-id, in order per
    product, and every confirmed change with them."""
    e = entry
    assert e["missing"] == [] and e["delivered"] == e["deliveries_expected"], e
    assert e["unexpected"] == [] and e["ids_not_in_log"] == [], e
    assert e["ids_per_event_max"] == 1 and e["events_per_id_max"] == 1, e
    assert e["order_breaks"] == 0, e
    assert e["puts_missing"] == [], e
    assert set(e["delivery_statuses"]) == {"delivered"}, e
    assert e["requests"] == e["delivered"] + e["duplicates"], e
