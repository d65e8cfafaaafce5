"""What every Redis cache of the service shares: Lua scripts run on a connection of the
thread's own, and the invalidation a unit of work runs after its commit.

An entry lives under a key beside a *generation* key. A write's invalidation deletes the
entry and gives the generation a new random value; a fill presents the generation its miss
saw and is refused if it changed (app/catalog/cache.py). Entries expire
``PRODUCT_CACHE_SECONDS`` after their miss, so a write that cannot reach Redis answers only
once that long has passed: by then no entry that could hold the old value is left.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import NamedTuple

import redis
from flask import current_app

from app.core import metrics, redis_client

log = logging.getLogger(__name__)

# How often a write whose invalidation failed tries again while it waits.
RETRY_SECONDS = 0.25

# KEYS: (entry, generation) pairs. ARGV: the new generation, its lifetime (s).
INVALIDATE = """
for i = 1, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  redis.call('SET', KEYS[i + 1], ARGV[1], 'EX', ARGV[2])
end
return #KEYS / 2
"""


def seconds() -> float:
    """How long an entry may live; 0 when there is no cache."""
    if redis_client.client() is None:
        return 0.0
    return current_app.config["PRODUCT_CACHE_SECONDS"]


class _Held:
    """A connection a thread took from the client's pool, given back to the pool when the
    thread ends (its thread-local value goes): `flask run` starts a thread per request,
    and each new thread then reuses a connection an ended one gave back."""

    def __init__(self, pool: redis.ConnectionPool):
        self.pool, self.pid = pool, os.getpid()
        self.connection = pool.get_connection()
        weakref.finalize(self, pool.release, self.connection).atexit = False


class Script:
    """A Lua script run on a connection the thread keeps (EVALSHA, EVAL if Redis does not
    have it yet): redis-py's connection and parser, without its per-command client
    machinery (pool, retry and observability wrappers), which cost a read more CPU than
    the round trip itself. A thread takes its connection from the client's pool at its
    first script and gives it back when it ends, so uWSGI's long-lived request threads
    keep theirs and short-lived threads never hold more than the threads alive. Errors
    are redis-py's; a failed connection is closed and the next call opens a new one."""

    local = threading.local()

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @classmethod
    def connection(cls, client: redis.Redis | None = None):
        pool = (client or redis_client.client()).connection_pool
        held = getattr(cls.local, "held", None)
        if held is None or held.pool is not pool or held.pid != os.getpid():
            held = cls.local.held = _Held(pool)  # one held before goes back to its pool
        return held.connection

    def __call__(self, keys: list[str], args: list, client: redis.Redis | None = None):
        conn = self.connection(client)
        conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            # Not run: Redis did not know the script (a restart). EVAL also loads it.
            conn.send_command("EVAL", self.source, len(keys), *keys, *args)
            return conn.read_response()


# KEYS: entry, generation. A hit returns the entry; a miss {generation or "", seconds, micros}.
READ_ENTRY = """
local entry = redis.call('GET', KEYS[1])
if entry then
  return entry
end
local now = redis.call('TIME')
return {redis.call('GET', KEYS[2]) or '', now[1], now[2]}
"""

# KEYS: entry, generation. ARGV: the generation the miss saw, the entry's deadline (ms,
# Redis's clock), the entry. Returns 1 if stored.
FILL_ENTRY = """
if (redis.call('GET', KEYS[2]) or '') == ARGV[1] then
  local now = redis.call('TIME')
  local ttl = tonumber(ARGV[2]) - (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
  if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
    return 1
  end
end
return 0
"""

_invalidate = Script(INVALIDATE)
_read_entry = Script(READ_ENTRY)
_fill_entry = Script(FILL_ENTRY)


class Miss(NamedTuple):
    """What a fill must present: the generation seen and the entry's deadline (ms)."""

    generation: str
    deadline_ms: int


def miss_of(found: list, lifetime: float) -> Miss:
    """A script's answer to a miss (generation, Redis's seconds and micros) as a Miss."""
    generation, secs, micros = found
    return Miss(generation, int(secs) * 1000 + int(micros) // 1000 + int(lifetime * 1000))


def cached(pair: tuple[str, str], compute: Callable[[], str]) -> str:
    """The entry under ``pair`` (entry key, generation key), else ``compute()``'s value,
    then stored unless the generation moved meanwhile (a write invalidated it). Redis
    failing, ``compute()`` answers."""
    lifetime = seconds()
    if not lifetime:
        return compute()
    try:
        found = _read_entry(list(pair), [])
    except redis.RedisError as exc:
        log.warning("cache unavailable, reading the database: %s", exc)
        return compute()
    if isinstance(found, str):
        return found
    value = compute()
    try:
        miss = miss_of(found, lifetime)
        _fill_entry(list(pair), [miss.generation, miss.deadline_ms, value])
    except redis.RedisError as exc:
        log.warning("cache: an entry was not stored: %s", exc)
    return value


def invalidate(pairs: Iterable[tuple[str, str]]) -> None:
    """After a commit that changed what these (entry, generation) keys cache, before its
    answer leaves: no process may serve the old value any more. Waits out the entries'
    lifetime (retrying) when Redis cannot be told."""
    pairs = sorted(set(pairs))
    if not pairs or not (lifetime := seconds()):
        return
    deadline = time.monotonic() + lifetime + RETRY_SECONDS
    keys = [key for pair in pairs for key in pair]
    # A generation outlives every entry filled before it: a fill that saw an older one
    # (or none) is refused, or past its own deadline, whatever expired meanwhile.
    args = [uuid.uuid4().hex, max(60, int(lifetime * 2) + 1)]
    while True:
        try:
            _invalidate(keys, args)
            return
        except redis.RedisError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                metrics.PRODUCT_CACHE_UNINVALIDATED.inc()
                log.warning(
                    "cache: could not invalidate %s (%s); answered after the entries' %ss "
                    "lifetime instead",
                    ", ".join(entry for entry, _generation in pairs),
                    exc,
                    lifetime,
                )
                return
            time.sleep(min(RETRY_SECONDS, left))
