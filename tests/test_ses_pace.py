"""The pace of the emails: never faster than SES allows, a throttled send sent again
without counting as an attempt, and emails waiting, visibly, while the daily quota is
spent."""

from __future__ import annotations

import threading
import time

import pytest
from botocore.exceptions import ClientError

from app.core import redis_client
from app.core.buckets import LocalBucket, SharedBucket, refill
from app.notifications.mailers import build_mailer
from app.notifications.models import Notification, NotificationTry
from app.notifications.pace import Pace
from app.worker import CLAIM_WITHIN
from tests.test_notifications import (  # noqa: F401 (fixtures)
    ADMIN_ADDRESSES,
    SEED,
    admins,
    inbox,
    ses,
    settle,
    time_passes,
)

RATE = 40.0
BURST = 1.0


def granted_in(buckets, seconds: float) -> tuple[int, float]:
    """Senders, one thread per bucket, each taking tokens as fast as it is given them for
    ``seconds``: how many were granted in all, and over how long."""
    granted = []
    lock = threading.Lock()
    start = time.monotonic()

    def sender(bucket):
        while (now := time.monotonic()) - start < seconds:
            wait = bucket.take(RATE, BURST)
            if wait == 0:
                with lock:
                    granted.append(now)
            else:
                time.sleep(min(wait, 0.05))

    threads = [threading.Thread(target=sender, args=(bucket,)) for bucket in buckets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(granted), time.monotonic() - start


def test_the_bucket_arithmetic_never_grants_more_than_rate_times_seconds_plus_burst():
    tokens, granted, clock = BURST, 0, 0.0
    for step in [0.001, 0.013, 0.0, 0.004, 0.007] * 400:  # asked often
        clock += step
        tokens, wait = refill(tokens, step, RATE, BURST)
        granted += wait == 0
        assert granted <= RATE * clock + BURST
    assert granted >= RATE * clock - 1  # and it does grant what the rate allows


def test_two_senders_sharing_redis_never_exceed_the_rate_together(redis_url):
    key = "test:pace"
    first = redis_client.connect(redis_url, timeout=2)
    first.delete(key)
    second = redis_client.connect(redis_url, timeout=2)
    buckets = [SharedBucket(first, key), SharedBucket(second, key)]
    granted, seconds = granted_in(buckets * 2, 1.0)  # two threads on each connection
    assert granted <= RATE * seconds + BURST
    assert granted >= RATE * seconds / 2  # the bucket is shared, not starved


def test_without_redis_the_threads_of_a_process_share_its_bucket():
    bucket = LocalBucket()
    granted, seconds = granted_in([bucket] * 3, 0.5)
    assert RATE * seconds / 2 <= granted <= RATE * seconds + BURST


def test_the_rate_is_read_from_ses_unless_set(app, ses):  # noqa: F811
    stopping = threading.Event()
    with app.app_context():
        app.config["SES_MAX_SEND_RATE"] = None
        from_ses = Pace(app.config, build_mailer(app.config), None)
        assert from_ses.current_rate() == ses.get_send_quota().max_send_rate
        app.config["SES_MAX_SEND_RATE"] = 50.0
        assert Pace(app.config, build_mailer(app.config), None).current_rate() == 50.0
        app.config["SES_MAX_SEND_RATE"] = 0.0
        unlimited = Pace(app.config, build_mailer(app.config), None)
        assert unlimited.current_rate() is None
        assert all(unlimited.wait(stopping) for _ in range(100))


@pytest.mark.parametrize(
    ("rate", "claimed"),
    [(1.0, 15), (0.1, 1), (14.0, 25), (0.0, 25)],  # the sandbox, slower, production, none
)
def test_a_sender_claims_no_more_emails_than_it_can_send_within_half_their_lease(
    app, rate, claimed
):
    """Two senders sharing the rate, a claim's lease of 60 s, WORKER_BATCH 25: at a slow
    rate the claimed rows would otherwise wait past their lease for their turn."""
    app.config["SES_MAX_SEND_RATE"] = rate
    with app.app_context():
        pace = Pace(app.config, build_mailer(app.config), None)
        assert pace.claimable(25, senders=2, within=CLAIM_WITHIN) == claimed


def ses_refuses(mailer, message: str, refused: list[int], times: int) -> None:
    """SES answers sends with its Throttling error and ``message`` until it has refused
    ``times`` (``refused[0]`` counts them, across mailers)."""

    def refuse(**_kwargs):
        if refused[0] < times:
            refused[0] += 1
            error = {"Error": {"Code": "Throttling", "Message": message}}
            raise ClientError(error, "SendRawEmail")

    mailer.client.meta.events.register("before-send.ses.SendRawEmail", refuse)


def test_a_throttled_send_is_sent_again_and_not_counted_as_an_attempt(
    app,
    client,
    admins,  # noqa: F811
    ses,  # noqa: F811
    rows,
    monkeypatch,
):
    import app.notifications.mailers as mailers

    real = mailers.SESMailer.__init__
    refused = [0]

    def throttled_twice(self, *args):
        real(self, *args)
        ses_refuses(self, "Maximum sending rate exceeded.", refused, 2)

    monkeypatch.setattr(mailers.SESMailer, "__init__", throttled_twice)
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    settle(app)
    assert refused == [2]
    throttled = [row for row in rows(Notification) if row.status == "pending"]
    assert len(throttled) == 2
    assert {row.attempts for row in throttled} == {0}
    time_passes(app)
    settle(app)
    assert set(inbox(ses)) == ADMIN_ADDRESSES
    assert {(row.status, row.attempts) for row in rows(Notification)} == {("sent", 1)}
    assert [t.outcome for t in rows(NotificationTry)].count("throttled") == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'marketplace_emails_total{outcome="throttled"}' in metrics


def test_a_spent_daily_quota_keeps_the_emails_pending_with_the_reason_and_a_metric(
    app,
    client,
    admins,  # noqa: F811
    ses,  # noqa: F811
    rows,
    monkeypatch,
):
    import app.notifications.mailers as mailers

    real = mailers.SESMailer.__init__
    quota = {"spent": True}

    def daily_quota(self, *args):
        real(self, *args)
        if quota["spent"]:
            ses_refuses(self, "Daily message quota exceeded.", [0], 1000)

    monkeypatch.setattr(mailers.SESMailer, "__init__", daily_quota)
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    settle(app)
    waiting = rows(Notification)
    assert {(row.status, row.attempts) for row in waiting} == {("pending", 0)}
    assert all("daily sending quota" in row.last_error for row in waiting)
    log = client.get("/api/notifications?status=pending", headers=admins[0]["headers"]).json
    assert all("daily sending quota" in row["last_error"] for row in log)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "marketplace_notifications_waiting_for_quota 3.0" in metrics

    quota["spent"] = False  # a new day
    time_passes(app)
    settle(app)
    assert set(inbox(ses)) == ADMIN_ADDRESSES
    assert {(row.status, row.last_error) for row in rows(Notification)} == {("sent", None)}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "marketplace_notifications_waiting_for_quota 0.0" in metrics
