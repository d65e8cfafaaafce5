"""What the service did and how it stands, in the Prometheus format (prometheus_client).

Counters and histograms are kept by each process. Under uWSGI, with
``PROMETHEUS_MULTIPROC_DIR`` set (the image's entrypoint sets it and empties it at each
start), prometheus_client keeps them in files there, so one scrape adds every web
worker's and the worker process's counts up. The state of the outbox and of the views
stream is read when scraped (``StateCollector``), once per scrape.
"""

from __future__ import annotations

import functools
import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter(
    "marketplace_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "marketplace_http_request_duration_seconds",
    "Time to answer, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LOGIN_FAILURES = Counter(
    "marketplace_login_failures_total",
    "Wrong passwords: logins refused (401) and wrong current passwords (422).",
)
LOGIN_LIMITED = Counter(
    "marketplace_login_limited_total", "Password attempts refused with 429 (too many failures)."
)
LOGIN_BUSY = Counter(
    "marketplace_login_busy_total",
    "Password attempts refused with 503: the process was verifying as many passwords as it may.",
)
DATABASE_ERRORS = Counter(
    "marketplace_database_errors_total",
    "Requests answered 503 because the database failed (unreachable, timed out, locked).",
)
VIEWS_RECORDED = Counter(
    "marketplace_views_recorded_total",
    "Product views recorded, by path: stream (Redis) or direct (database).",
    ["path"],
)
VIEWS_FALLBACK = Counter(
    "marketplace_views_fallback_total",
    "Views written directly to the database because the views stream failed "
    '(also counted in marketplace_views_recorded_total{path="direct"}).',
)
VIEWS_REPEATED = Counter(
    "marketplace_views_repeated_total",
    "Product reads not counted as views: the same client and product within VIEW_DEDUP_SECONDS.",
)
VIEWS_LOST = Counter(
    "marketplace_views_lost_total",
    "Product views that could be written neither to the stream nor to the database.",
)
VIEWS_APPLIED = Counter(
    "marketplace_views_applied_total",
    "Views the worker wrote from the stream to the database (replays not counted).",
)
VIEWS_STREAMED = VIEWS_RECORDED.labels("stream")
PRODUCT_CACHE = Counter(
    "marketplace_product_cache_total",
    "Product reads answered from the Redis cache (hit) or the database (miss), and writes "
    "whose cache invalidation failed (uninvalidated: answered after the entries' lifetime).",
    ["outcome"],
)
PRODUCT_CACHE_HITS = PRODUCT_CACHE.labels("hit")
PRODUCT_CACHE_MISSES = PRODUCT_CACHE.labels("miss")
PRODUCT_CACHE_UNINVALIDATED = PRODUCT_CACHE.labels("uninvalidated")
EMAILS = Counter(
    "marketplace_emails_total",
    "Send attempts by the worker, by outcome: sent, pending (retry), failed, unknown, lost "
    "(another sender had taken the email over), throttled (SES's rate; sent again, not "
    "counted as an attempt), quota (SES's daily quota spent; the email waits).",
    ["outcome"],
)
WEBHOOKS = Counter(
    "marketplace_webhook_attempts_total",
    "Webhook attempts by the worker, by outcome: delivered, retrying (refused, tried again "
    "later), failed (refused past the retry window), gone (410: the endpoint disabled), lost "
    "(its lease had run out).",
    ["outcome"],
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "marketplace_webhook_attempt_duration_seconds",
    "Time of one webhook attempt: the address check, connecting, and the answer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SES_EVENTS = Counter(
    "marketplace_ses_events_total",
    "Messages of SES's events queue by what they did: delivered, bounced, complained, failed "
    "(rejected), transient (bounce), delayed, repeated (already applied), unmatched (no such "
    "email), ignored (another event type), later (the email still being sent), malformed, "
    "error (not applied; read again).",
    ["outcome"],
)
COMMITS_UNCONFIRMED = Counter(
    "marketplace_commits_unconfirmed_total",
    "Writes whose commit the database did not confirm, by what the check then found.",
    ["found"],
)

# Every known label value from the start: a series at 0 rather than none, so that rate()
# and the dashboard's panels show 0 before the first event instead of "no data".
for _path in ("stream", "direct"):
    VIEWS_RECORDED.labels(_path)
for _outcome in ("sent", "pending", "failed", "unknown", "lost", "throttled", "quota"):
    EMAILS.labels(_outcome)
for _outcome in ("delivered", "retrying", "failed", "gone", "lost"):
    WEBHOOKS.labels(_outcome)
for _outcome in (
    "delivered",
    "bounced",
    "complained",
    "failed",
    "transient",
    "delayed",
    "repeated",
    "unmatched",
    "ignored",
    "later",
    "malformed",
    "error",
):
    SES_EVENTS.labels(_outcome)
for _found in ("committed", "not committed", "unknown"):
    COMMITS_UNCONFIRMED.labels(_found)


# The methods a route can have; any other request line counts as "other", so that no
# client can make up label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def count(route: str | None, method: str, status: int, seconds: float | None) -> None:
    """One answered request, and how long it took (when known). Labels come from closed
    sets: the app's URL rules ("unmatched" for any other path), the standard methods."""
    requests, latency = _children(
        route or "unmatched", method if method in METHODS else "other", status
    )
    requests.inc()
    if seconds is not None:
        latency.observe(seconds)


@functools.cache
def _children(route: str, method: str, status: int):
    """The request counter and latency histogram of one route, method and status (few:
    the routes are the app's own, "unmatched" for the rest)."""
    return REQUESTS.labels(route, method, str(status)), LATENCY.labels(route, method)


class StateCollector:
    """Gauges read when scraped: the outbox by status, its oldest pending email, the emails
    waiting for SES's daily quota, the bounce and complaint rates over 24 hours and 7 days,
    webhook
    deliveries waiting or failed and each endpoint's oldest waiting one, the views
    stream's length and what its consumers have not acknowledged yet."""

    def __init__(self, read_state):
        self.read_state = read_state

    def collect(self):
        state = self.read_state()
        statuses = GaugeMetricFamily(
            "marketplace_notifications", "Emails in the outbox, by status.", labels=["status"]
        )
        for status, count in state["notifications"].items():
            statuses.add_metric([status], count)
        yield statuses
        yield GaugeMetricFamily(
            "marketplace_notifications_oldest_pending_seconds",
            "Age of the oldest email still pending (0 when none).",
            value=state["oldest_pending_seconds"],
        )
        if state.get("waiting_for_quota") is not None:
            yield GaugeMetricFamily(
                "marketplace_notifications_waiting_for_quota",
                "Emails pending because SES's 24-hour sending quota is spent (0 when none).",
                value=state["waiting_for_quota"],
            )
        if state.get("rates") is not None:
            yield from _rate_gauges(state["rates"])
        if state.get("webhooks") is not None:
            yield from _webhook_gauges(state["webhooks"])
        if state.get("stream") is not None:
            stream = state["stream"]
            yield GaugeMetricFamily(
                "marketplace_views_stream_length", "Entries in the views stream.", stream["length"]
            )
            yield GaugeMetricFamily(
                "marketplace_views_stream_lag",
                "Views in the stream the worker has not read yet (consumer lag).",
                stream["lag"],
            )
            yield GaugeMetricFamily(
                "marketplace_views_stream_pending",
                "Views read by a worker but not yet written and acknowledged.",
                stream["pending"],
            )


def _rate_gauges(rates: dict):
    for kind, what in (("bounce", "bounced for good"), ("complaint", "were complained of")):
        gauge = GaugeMetricFamily(
            f"marketplace_email_{kind}_rate",
            f"Of the emails SES took in the window (by when they were sent), the share that "
            f"{what} (0 to 1; SES reviews an account at 5% bounces, 0.1% complaints).",
            labels=["window"],
        )
        for window, values in rates.items():
            gauge.add_metric([window], values[kind])
        yield gauge


def _webhook_gauges(webhooks: dict):
    deliveries = GaugeMetricFamily(
        "marketplace_webhook_deliveries",
        "Webhook deliveries to live endpoints waiting (pending, retrying) or failed.",
        labels=["status"],
    )
    for status, count in webhooks["deliveries"].items():
        deliveries.add_metric([status], count)
    yield deliveries
    # One series per endpoint: at most MAX_ENDPOINTS (app/notifications/webhooks/service.py).
    oldest = GaugeMetricFamily(
        "marketplace_webhook_oldest_pending_seconds",
        "Age of each endpoint's oldest delivery still waiting (0 when none).",
        labels=["endpoint"],
    )
    for endpoint, seconds in webhooks["oldest_pending_seconds"].items():
        oldest.add_metric([endpoint], seconds)
    yield oldest


def exposition(read_state) -> bytes:
    """The text a scrape gets: every process's counts, and the state now."""
    counts = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(counts)
    else:
        from prometheus_client import REGISTRY as counts
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(read_state))
    return generate_latest(counts) + generate_latest(state)
