"""Counters of what the service did, in the Prometheus data model (prometheus_client).

Under uWSGI every process counts for itself; with ``PROMETHEUS_MULTIPROC_DIR`` set
(the Docker image sets it) prometheus_client keeps the counts in files there, so one
scrape adds every worker's up.
"""

from __future__ import annotations

from prometheus_client import Counter

VIEWS_RECORDED = Counter(
    "marketplace_views_recorded_total",
    "Product views recorded, by path: stream (Redis) or direct (database).",
    ["path"],
)
VIEWS_LOST = Counter(
    "marketplace_views_lost_total",
    "Product views that could be written neither to the stream nor to the database.",
)
VIEWS_APPLIED = Counter(
    "marketplace_views_applied_total",
    "Views the worker wrote from the stream to the database (replays not counted).",
)
EMAILS = Counter(
    "marketplace_emails_total",
    "Send attempts by the worker, by outcome: sent, pending (retry), failed, unknown.",
    ["outcome"],
)
COMMITS_UNCONFIRMED = Counter(
    "marketplace_commits_unconfirmed_total",
    "Writes whose commit the database did not confirm, by what the check then found.",
    ["found"],
)
