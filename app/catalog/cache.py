"""Product answers kept in Redis (``REDIS_URL``): a read that finds its product there
answers without the database, and its view goes into the views stream in the same
round trip (one Lua script: GET the entry, XADD the view).

An entry is ``"<id> <version> <JSON body>"`` under ``marketplace:product:v1:<sku key>``;
the number of live products (the total of the unfiltered list, a full index scan in the
database) is kept the same way under ``marketplace:product-count:v1``, and each page of
the list (``"<total> <JSON body>"``, by query string) under the pages' generation. No
read may see a product (or a page, a total) older than the last write that has answered:

- **Writes invalidate** after their commit and before their answer leaves
  (``app/writes.py``): one script deletes the entries of the products changed and the
  total, and gives each a new generation (a random token).
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

import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import NamedTuple

import redis
from flask import Flask, current_app
from sqlalchemy import event

from app.catalog.models import Product
from app.catalog.schemas import SKU_PATTERN
from app.core import metrics, redis_client
from app.core.extensions import db
from app.views import stream

log = logging.getLogger(__name__)

# A new format (another JSON shape) gets a new prefix: during a rolling deploy the old
# and the new code never serve each other's entries.
ENTRY_PREFIX = "marketplace:product:v1:"
GENERATION_PREFIX = "marketplace:product-gen:"
COUNT_KEYS = ["marketplace:product-count:v1", "marketplace:product-count-gen"]
# List pages live under the pages' generation (a random token), so a write drops them all
# at once by replacing it; entries under an older one are never read again and expire.
PAGE_PREFIX = "marketplace:products-page:v1:"
PAGE_GENERATION = "marketplace:products-page-gen"
PAGE_KEYS = [PAGE_PREFIX + "-", PAGE_GENERATION]  # as an (entry, generation) pair
# Only a sku one could create is looked up (any other is read, and not found).
CACHEABLE_SKU = re.compile(SKU_PATTERN)
# Longer query strings are not cached (any key is a key; these are not worth one).
PAGE_QUERY_MAX = 512
# Products changed in a session's transaction, invalidated after its commit.
CHANGED = "changed_skus"
# How often a write whose invalidation failed tries again while it waits.
RETRY_SECONDS = 0.25

# KEYS: entry, generation, views stream. ARGV: "1" to record a view on a hit, its user
# ("" anonymous) and time. A hit returns the entry (after its XADD, the last write, so an
# error means no view was added); a miss returns {generation or "", seconds, micros}.
READ = """
local entry = redis.call('GET', KEYS[1])
if entry then
  if ARGV[1] == '1' then
    redis.call('XADD', KEYS[3], '*', 'p', string.match(entry, '^%d+'), 'u', ARGV[2], 't', ARGV[3])
  end
  return entry
end
local now = redis.call('TIME')
return {redis.call('GET', KEYS[2]) or '', now[1], now[2]}
"""

# KEYS: entry, generation, views stream. ARGV: the generation the miss saw, the entry's
# deadline (ms, Redis's clock), the entry, "1" to record a view, its product, user, time.
# Returns 1 if stored. The XADD comes last: an error means no view was added.
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
  redis.call('XADD', KEYS[3], '*', 'p', ARGV[5], 'u', ARGV[6], 't', ARGV[7])
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

# ARGV: the entry's key (under the generation its miss saw), its deadline (ms), the entry.
FILL_PAGE = """
local now = redis.call('TIME')
local ttl = tonumber(ARGV[2]) - (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
if ttl > 0 then
  redis.call('SET', ARGV[1], ARGV[3], 'PX', ttl)
  return 1
end
return 0
"""

# KEYS: (entry, generation) pairs. ARGV: the new generation, its lifetime (s).
INVALIDATE = """
for i = 1, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  redis.call('SET', KEYS[i + 1], ARGV[1], 'EX', ARGV[2])
end
return #KEYS / 2
"""


class Answer(NamedTuple):
    """A product's answer as the API sends it."""

    product_id: int
    version: int
    body: str

    @property
    def etag(self) -> str:
        return f"{self.product_id}-{self.version}"

    def entry(self) -> str:
        return f"{self.product_id} {self.version} {self.body}"

    @classmethod
    def from_entry(cls, entry: str) -> Answer:
        product_id, version, body = entry.split(" ", 2)
        return cls(int(product_id), int(version), body)


class Miss(NamedTuple):
    """What a fill must present: the generation seen and the entry's deadline (ms)."""

    generation: str
    deadline_ms: int


def init_app(app: Flask) -> None:
    # Every session of the app (Flask-SQLAlchemy's class) notes the products it changes.
    session_class = db.session.session_factory.class_
    if not event.contains(session_class, "before_flush", _note_changes):
        event.listen(session_class, "before_flush", _note_changes)


def _note_changes(session, _flush_context, _instances) -> None:
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
    session.info.setdefault(CHANGED, set()).update(sku_keys)


def changed(session) -> set[str]:
    """The sku keys changed in ``session`` since the last call (taken out)."""
    return session.info.pop(CHANGED, set())


def seconds() -> float:
    """How long an entry may live; 0 when there is no cache."""
    if redis_client.client() is None:
        return 0.0
    return current_app.config["PRODUCT_CACHE_SECONDS"]


class Script:
    """A Lua script run on a connection of this thread's own (EVALSHA, EVAL if Redis does
    not have it yet): redis-py's connection and parser, without its per-command client
    machinery (pool, retry and observability wrappers), which cost a read more CPU than
    the round trip itself. Errors are redis-py's; a failed connection is closed and the
    next call opens a new one."""

    local = threading.local()

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @classmethod
    def connection(cls, client: redis.Redis | None = None):
        pool = (client or redis_client.client()).connection_pool
        local = cls.local
        if getattr(local, "pool", None) is not pool or local.pid != os.getpid():
            local.connection, local.pool, local.pid = pool.make_connection(), pool, os.getpid()
        return local.connection

    def __call__(self, keys: list[str], args: list, client: redis.Redis | None = None):
        conn = self.connection(client)
        conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            # Not run: Redis did not know the script (a restart). EVAL also loads it.
            conn.send_command("EVAL", self.source, len(keys), *keys, *args)
            return conn.read_response()


SCRIPTS = {
    "read": Script(READ),
    "fill": Script(FILL),
    "read_page": Script(READ_PAGE),
    "fill_page": Script(FILL_PAGE),
    "invalidate": Script(INVALIDATE),
}


def _keys(sku_key: str) -> list[str]:
    return [ENTRY_PREFIX + sku_key, GENERATION_PREFIX + sku_key, stream.VIEWS_STREAM]


def _read(
    keys: list[str],
    view: tuple[str, float] | None,
    client: redis.Redis | None = None,
    lifetime: float | None = None,
) -> str | Miss:
    args = ["1", *view] if view is not None else ["0", "", ""]
    found = SCRIPTS["read"](keys, args, client)
    if isinstance(found, str):
        return found
    generation, secs, micros = found
    now_ms = int(secs) * 1000 + int(micros) // 1000
    return Miss(generation, now_ms + int((seconds() if lifetime is None else lifetime) * 1000))


def _fill(keys: list[str], miss: Miss, entry: str, view: list | None) -> bool:
    args = [miss.generation, miss.deadline_ms, entry, *(view or ["0", "", "", ""])]
    return bool(SCRIPTS["fill"](keys, args))


def read(
    sku_key: str,
    view: tuple[str, float] | None,
    client: redis.Redis | None = None,
    lifetime: float | None = None,
) -> Answer | Miss:
    """The cached answer, its view (``(user or "", time)``) added to the stream; or what
    a fill needs (no view added). Raises redis.RedisError. Outside an app context, name
    the Redis ``client`` and the entries' ``lifetime``."""
    found = _read(_keys(sku_key), view, client, lifetime)
    if isinstance(found, str):
        metrics.PRODUCT_CACHE_HITS.inc()
        return Answer.from_entry(found)
    metrics.PRODUCT_CACHE_MISSES.inc()
    return found


def fill(sku_key: str, miss: Miss, answer: Answer, view: tuple[str, float] | None) -> bool:
    """Store ``answer`` unless the product changed since ``miss`` (or it is too late),
    and add the view (if any) to the stream. Raises redis.RedisError (no view added,
    unless it is a timeout after the script was sent)."""
    fields = ["1", answer.product_id, *view] if view is not None else None
    return _fill(_keys(sku_key), miss, answer.entry(), fields)


def page(query: str, answer: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """A page of the product list for this query string: ``(total, JSON body)``, cached,
    else ``answer()`` (then cached). Redis failing, ``answer()`` answers."""
    if not seconds() or len(query) > PAGE_QUERY_MAX:
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
    try:
        SCRIPTS["fill_page"]([], [key, deadline_ms, f"{total} {body}"])
    except redis.RedisError as exc:
        log.warning("product cache: the page was not stored: %s", exc)
    return total, body


def live_count(count: Callable[[], int]) -> int:
    """The number of live products: cached, else ``count()`` (then cached). Redis
    failing, ``count()`` answers."""
    if not seconds():
        return count()
    keys = [*COUNT_KEYS, stream.VIEWS_STREAM]
    try:
        found = _read(keys, None)
    except redis.RedisError as exc:
        log.warning("product cache unavailable, counting in the database: %s", exc)
        return count()
    if isinstance(found, str):
        return int(found)
    total = count()
    try:
        _fill(keys, found, str(total), None)
    except redis.RedisError as exc:
        log.warning("product cache: the total was not stored: %s", exc)
    return total


def invalidate(sku_keys: Iterable[str]) -> None:
    """After a commit that changed these products, before its answer leaves: no process
    may serve them from the cache any more. Waits out the entries' lifetime (retrying)
    when Redis cannot be told."""
    sku_keys = sorted(set(sku_keys))
    if not sku_keys or not (lifetime := seconds()):
        return
    deadline = time.monotonic() + lifetime + RETRY_SECONDS
    keys = [key for sku_key in sku_keys for key in _keys(sku_key)[:2]]
    keys += COUNT_KEYS + PAGE_KEYS
    # A generation outlives every entry filled before it: a fill that saw an older one
    # (or none) is refused, or past its own deadline, whatever expired meanwhile.
    args = [uuid.uuid4().hex, max(60, int(lifetime * 2) + 1)]
    while True:
        try:
            SCRIPTS["invalidate"](keys, args)
            return
        except redis.RedisError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                metrics.PRODUCT_CACHE_UNINVALIDATED.inc()
                log.warning(
                    "product cache: could not invalidate %s (%s); answered after the "
                    "entries' %ss lifetime instead",
                    ", ".join(sku_keys),
                    exc,
                    lifetime,
                )
                return
            time.sleep(min(RETRY_SECONDS, left))
