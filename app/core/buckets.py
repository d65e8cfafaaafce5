"""Token buckets: at most ``rate`` grants a second on average, ``burst`` at once.

``take(rate, burst)`` grants one token (0.0) or says how long to wait before asking again
(nothing is taken then). Two kinds, one rule:

- ``SharedBucket``: the bucket lives in Redis and one Lua script refills and takes it
  atomically, on Redis's own clock (``TIME``): every process and thread that shares the
  key shares the rate, whatever their clocks say.
- ``LocalBucket``: the same arithmetic in this process's memory, for a process without
  Redis (the rate is then this process's alone).
"""

from __future__ import annotations

import threading
import time

import redis

# KEYS[1]: the bucket; ARGV: rate (tokens a second), burst (the most it holds). Returns the
# seconds to wait as text (0: granted). The key expires once it would be full anyway.
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


def refill(tokens: float, elapsed: float, rate: float, burst: float) -> tuple[float, float]:
    """The bucket after ``elapsed`` seconds, and one token taken if there is one: (tokens
    left, seconds to wait; 0 when granted)."""
    tokens = min(burst, tokens + max(0.0, elapsed) * rate)
    if tokens >= 1:
        return tokens - 1, 0.0
    return tokens, (1 - tokens) / rate


class SharedBucket:
    def __init__(self, conn: redis.Redis, key: str):
        self.key = key
        self.script = conn.register_script(TAKE)

    def take(self, rate: float, burst: float) -> float:
        return float(self.script(keys=[self.key], args=[rate, burst]))


class LocalBucket:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: float | None = None
        self.at = 0.0

    def take(self, rate: float, burst: float) -> float:
        with self.lock:
            now = time.monotonic()
            if self.tokens is None:  # a new bucket is full
                self.tokens, self.at = burst, now
            self.tokens, wait = refill(self.tokens, now - self.at, rate, burst)
            self.at = now
            return wait
