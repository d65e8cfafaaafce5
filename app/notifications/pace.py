"""The pace of the emails: the worker processes together never send faster than the SES
account's maximum send rate.

The rate is SES's own (GetSendQuota's ``MaxSendRate``, read again every
``SES_QUOTA_REFRESH_SECONDS``: AWS raises it as the account grows) unless
``SES_MAX_SEND_RATE`` sets it (0: no pace, for a stand-in without limits). Each send
first takes a token from a bucket (app/core/buckets.py): with Redis the bucket is shared
by every sender of every worker process; without it, it is this process's own. The
bucket holds one token at most, so no second ever sees more than the rate (plus one).

Should SES throttle a send all the same (another sender on the account), the email is
sent again a second later and the try is not counted (app/notifications/outbox.py).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from app.core.buckets import LocalBucket, SharedBucket

log = logging.getLogger(__name__)

KEY = "marketplace:ses:send-rate"
BURST = 1.0
# Until SES has said: the rate of a new account (the sandbox's).
DEFAULT_RATE = 1.0
# The longest a sender sleeps at once while waiting for a token (it checks for a stop).
LONGEST_NAP = 1.0


class Pace:
    def __init__(self, config, mailer, conn: redis.Redis | None):
        self.fixed = config["SES_MAX_SEND_RATE"]
        self.refresh_seconds = config["SES_QUOTA_REFRESH_SECONDS"]
        self.mailer = mailer
        self.shared = SharedBucket(conn, KEY) if conn is not None else None
        self.local = LocalBucket()
        self.lock = threading.Lock()
        self.rate: float | None = DEFAULT_RATE  # until SES has said
        self.read_at: float | None = None

    def current_rate(self) -> float | None:
        """Emails a second the senders may send (None: no limit)."""
        if self.fixed is not None:
            return self.fixed or None
        with self.lock:
            now = time.monotonic()
            if self.read_at is None or now - self.read_at >= self.refresh_seconds:
                self.read_at = now
                try:
                    rate = self.mailer.max_send_rate()
                except Exception as exc:  # keep the last rate known
                    log.warning("pace: SES's send quota could not be read: %s", exc)
                else:
                    if rate != self.rate:
                        log.info("pace: the maximum send rate is %s a second", rate)
                    self.rate = rate
            return self.rate

    def claimable(self, most: int, senders: int, within: float) -> int:
        """How many emails one of ``senders`` sharing the pace claims at once: at most
        ``most``, and no more than it can send within ``within`` seconds at the current
        rate (at least one), so that a slow rate does not leave claimed rows waiting
        past their lease."""
        rate = self.current_rate()
        if not rate:
            return most
        return max(1, min(most, int(rate / senders * within)))

    def _take(self, rate: float) -> float:
        if self.shared is not None:
            try:
                return self.shared.take(rate, BURST)
            except redis.RedisError as exc:
                log.warning("pace: the shared bucket failed, pacing this process alone: %s", exc)
        return self.local.take(rate, BURST)

    def take_now(self) -> bool:
        """Take a send's turn if it has come already (never waits)."""
        rate = self.current_rate()
        return not rate or self._take(rate) <= 0

    def wait(self, stopping: threading.Event) -> bool:
        """Wait for this send's turn; False if the worker is stopping meanwhile."""
        while not stopping.is_set():
            rate = self.current_rate()
            if not rate:
                return True
            wait = self._take(rate)
            if wait <= 0:
                return True
            stopping.wait(min(wait, LONGEST_NAP))
        return False
