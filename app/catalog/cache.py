"""Product answers kept in Redis (``REDIS_URL``): a read that finds its product there
answers without the database, and its view can go into the views stream in the same
round trip (one Lua script: GET the entry, XADD the view).

An entry is ``"<id> <version> <JSON body>"`` under ``marketplace:product:v1:<sku key>``;
the number of live products (the total of the unfiltered list, a full index scan in the
database) is kept the same way under ``marketplace:product-count:v1``, and each page of
the list (``"<total> <JSON body>"``, by the query as read, whatever its spelling) under
the pages' generation. Pages have a budget: at most ``PRODUCT_PAGE_CACHE_BYTES`` are
stored per ``PRODUCT_CACHE_SECONDS`` (so at most twice that is held at once); past it a
page is answered from the database and not stored, so made-up queries cannot fill Redis.
No read may see a product (or a page, a total) older than the last write that has
answered:

- **Writes invalidate** after their commit and before their answer leaves: every flush
  notes the products it changes (``note_changes`` below, a bulk statement says so itself),
  and the unit of work (app/core/unit_of_work.py) invalidates them after the commit
  (app/core/cache.py): their entries and the total are deleted, each gets a new
  generation (a random token).
- **Fills are guarded.** A read that misses gets the sku's generation and Redis's clock
  from the same script as its GET, reads the database, and stores its answer only if
  the generation is still the one it saw. A row read before a concurrent commit is
  therefore either stored before that commit's invalidation (which deletes it) or not
  at all.
- **Entries are short-lived:** each expires ``PRODUCT_CACHE_SECONDS`` after the miss that
  preceded its database read (Redis's clock). If a write cannot invalidate (Redis
  unreachable or refusing), it still answers, but only once that long has passed since
  its commit (retrying meanwhile): by then every entry that could hold the old product
  has expired, so its answer still means no process serves the old product.

Without ``REDIS_URL`` (or with ``PRODUCT_CACHE_SECONDS=0``) nothing is cached.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

import redis
from flask import Flask, current_app
from sqlalchemy import event

from app.catalog.models import Product
from app.catalog.schemas import SKU_PATTERN
from app.core import metrics, unit_of_work
from app.core.cache import Miss, Script, cached, miss_of, seconds
from app.core.extensions import db
from app.views.stream import VIEWS_STREAM

log = logging.getLogger(__name__)

# A new format (another JSON shape) gets a new prefix: during a rolling deploy the old
# and the new code never serve each other's entries.
ENTRY_PREFIX = "marketplace:product:v1:"
GENERATION_PREFIX = "marketplace:product-gen:"
COUNT_KEYS = ("marketplace:product-count:v1", "marketplace:product-count-gen")
# List pages live under the pages' generation (a random token), so a write drops them all
# at once by replacing it; entries under an older one are never read again and expire.
PAGE_PREFIX = "marketplace:products-page:v1:"
PAGE_GENERATION = "marketplace:products-page-gen"
PAGE_KEYS = (PAGE_PREFIX + "-", PAGE_GENERATION)  # as an (entry, generation) pair
# Only a sku one could create is looked up (any other is read, and not found).
CACHEABLE_SKU = re.compile(SKU_PATTERN)
# The bytes of pages stored in the current window (PRODUCT_CACHE_SECONDS long).
PAGE_BUDGET = "marketplace:products-page-bytes"
# Longer queries are not cached (any key is a key; these are not worth one).
PAGE_QUERY_MAX = 512

# KEYS: entry, generation, views stream. ARGV: "1" to record a view on a hit, then the
# view's user ("" anonymous), time and id. A hit returns the entry (after its XADD, the
# last write, so an error means no view was added); a miss returns
# {generation or "", seconds, micros}.
READ = """
local entry = redis.call('GET', KEYS[1])
if entry then
  if ARGV[1] == '1' then
    redis.call('XADD', KEYS[3], '*', 'p', string.match(entry, '^%d+'), 'u', ARGV[2],
      't', ARGV[3], 'i', ARGV[4])
  end
  return entry
end
local now = redis.call('TIME')
return {redis.call('GET', KEYS[2]) or '', now[1], now[2]}
"""

# KEYS: entry, generation, views stream. ARGV: the generation the miss saw, the entry's
# deadline (ms, Redis's clock), the entry, "1" to record a view, its product, user, time
# and id. Returns 1 if stored. The XADD comes last: an error means no view was added.
FILL = """
local stored = 0
if (redis.call('GET', KEYS[2]) or '') == ARGV[1] then
  local now = redis.call('TIME')
  local ttl = tonumber(ARGV[2]) - (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
  if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
    stored = 1
  end
end
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[3], '*', 'p', ARGV[5], 'u', ARGV[6], 't', ARGV[7], 'i', ARGV[8])
end
return stored
"""

# KEYS: the pages' generation. ARGV: the entries' prefix, the query. A hit returns
# "<total> <JSON body>"; a miss {generation or "", seconds, micros}.
READ_PAGE = """
local generation = redis.call('GET', KEYS[1]) or ''
local entry = redis.call('GET', ARGV[1] .. generation .. ':' .. ARGV[2])
if entry then
  return entry
end
local now = redis.call('TIME')
return {generation, now[1], now[2]}
"""

# KEYS: the pages' budget. ARGV: the entry's key (under the generation its miss saw), its
# deadline (ms), the entry, the budget (bytes), its window (ms). Returns 1 if stored. The
# entry counts against the budget whether it fits or not (the window's first fill starts
# the window).
FILL_PAGE = """
local now = redis.call('TIME')
local ttl = tonumber(ARGV[2]) - (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
if ttl <= 0 then
  return 0
end
local used = redis.call('INCRBY', KEYS[1], #ARGV[3])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if used > tonumber(ARGV[4]) then
  return 0
end
redis.call('SET', ARGV[1], ARGV[3], 'PX', ttl)
return 1
"""

SCRIPTS = {
    "read": Script(READ),
    "fill": Script(FILL),
    "read_page": Script(READ_PAGE),
    "fill_page": Script(FILL_PAGE),
}


class Answer(NamedTuple):
    """A product's answer as the API sends it."""

    product_id: int
    version: int
    body: str

    @property
    def etag(self) -> str:
        return Product.etag_of(self.product_id, self.version)

    def entry(self) -> str:
        return f"{self.product_id} {self.version} {self.body}"

    @classmethod
    def from_entry(cls, entry: str) -> Answer:
        product_id, version, body = entry.split(" ", 2)
        return cls(int(product_id), int(version), body)


class Unreadable(ValueError):
    """The entry found cannot be read (its view, if any, was added all the same)."""


def init_app(app: Flask) -> None:
    # Every session of the app (Flask-SQLAlchemy's class) notes the products it changes.
    session_class = db.session.session_factory.class_
    if not event.contains(session_class, "before_flush", note_changes):
        event.listen(session_class, "before_flush", note_changes)


def note_changes(session, _flush_context, _instances) -> None:
    """Before every flush: the products it changes are stale once it commits."""
    note_changed(
        session,
        (
            Product.key_of(instance.sku)
            for instance in (*session.new, *session.dirty, *session.deleted)
            if isinstance(instance, Product) and instance.sku
        ),
    )


def note_changed(session, sku_keys: Iterable[str]) -> None:
    """Products changed in ``session``'s transaction: invalidated after its commit. ORM
    changes are noted by themselves; a bulk statement must say what it changes."""
    pairs = [(ENTRY_PREFIX + key, GENERATION_PREFIX + key) for key in sku_keys]
    if pairs:
        unit_of_work.note_stale(session, [*pairs, COUNT_KEYS, PAGE_KEYS])


def _keys(sku_key: str) -> list[str]:
    return [ENTRY_PREFIX + sku_key, GENERATION_PREFIX + sku_key, VIEWS_STREAM]


def _read(
    keys: list[str],
    view: list | None,
    client: redis.Redis | None = None,
    lifetime: float | None = None,
) -> str | Miss:
    found = SCRIPTS["read"](keys, ["1", *view] if view else ["0", "", "", ""], client)
    if isinstance(found, str):
        return found
    return miss_of(found, seconds() if lifetime is None else lifetime)


def _fill(keys: list[str], miss: Miss, entry: str, view: list | None) -> bool:
    args = [miss.generation, miss.deadline_ms, entry, *(view or ["0", "", "", "", ""])]
    return bool(SCRIPTS["fill"](keys, args))


def read(
    sku_key: str,
    view: list | None,
    client: redis.Redis | None = None,
    lifetime: float | None = None,
) -> Answer | Miss:
    """The cached answer, its view (``[user or "", time, id]``) added to the stream; or
    what a fill needs (no view added). Raises redis.RedisError. Outside an app context,
    name the Redis ``client`` and the entries' ``lifetime``."""
    found = _read(_keys(sku_key), view, client, lifetime)
    if isinstance(found, str):
        metrics.PRODUCT_CACHE_HITS.inc()
        try:
            return Answer.from_entry(found)
        except ValueError as exc:
            raise Unreadable(f"product cache entry {sku_key!r}: {found[:80]!r}") from exc
    metrics.PRODUCT_CACHE_MISSES.inc()
    return found


def fill(sku_key: str, miss: Miss, answer: Answer, view: list | None) -> bool:
    """Store ``answer`` unless the product changed since ``miss`` (or it is too late),
    and add the view (if any: ``[user or "", time, id]``) to the stream. Raises
    redis.RedisError (no view added, unless it is a timeout after the script was sent)."""
    fields = ["1", answer.product_id, *view] if view else None
    return _fill(_keys(sku_key), miss, answer.entry(), fields)


def page(query: str, answer: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """A page of the product list for this query (one canonical text per distinct query):
    ``(total, JSON body)``, cached, else ``answer()`` (then cached, within the pages'
    budget). Redis failing, ``answer()`` answers."""
    budget = current_app.config["PRODUCT_PAGE_CACHE_BYTES"]
    if not seconds() or not budget or len(query) > PAGE_QUERY_MAX:
        return answer()
    try:
        found = SCRIPTS["read_page"]([PAGE_GENERATION], [PAGE_PREFIX, query])
    except redis.RedisError as exc:
        log.warning("product cache unavailable, listing from the database: %s", exc)
        return answer()
    if isinstance(found, str):
        metrics.PRODUCT_CACHE_HITS.inc()
        total, body = found.split(" ", 1)
        return int(total), body
    metrics.PRODUCT_CACHE_MISSES.inc()
    generation, secs, micros = found
    deadline_ms = int(secs) * 1000 + int(micros) // 1000 + int(seconds() * 1000)
    total, body = answer()
    key = f"{PAGE_PREFIX}{generation}:{query}"
    window_ms = max(1, int(seconds() * 1000))
    try:
        SCRIPTS["fill_page"](
            [PAGE_BUDGET], [key, deadline_ms, f"{total} {body}", budget, window_ms]
        )
    except redis.RedisError as exc:
        log.warning("product cache: the page was not stored: %s", exc)
    return total, body


def live_count(count: Callable[[], int]) -> int:
    """The number of live products: cached, else ``count()`` (then cached). Redis
    failing, ``count()`` answers."""
    return int(cached(COUNT_KEYS, lambda: str(count())))
