"""Load and faults against nginx + uWSGI (the shipped files) + MariaDB + moto, counted row
by row after a graceful stop (`make reliability`; --load-seconds, --clients,
--outage-seconds, --ses-outage-seconds shorten or lengthen them).

1. Load: clients for a while over 50 products: 80% product reads, 15% list pages, 5% price
   changes by 3 admins. 2. A private MariaDB shut down and started again under the same
   load. 3. SES rejecting every send for a minute while the admins edit.
Each scenario's figures go to reliability-results.json.
"""

from __future__ import annotations

import time

import pytest

from tests.system import harness as h
from tests.system.scenarios import assert_nothing_lost_or_doubled, drained, finish, mixed, serve

pytestmark = pytest.mark.reliability
RECOVERY_LIMIT = 15.0  # seconds after MariaDB answers again, by which requests succeed
DRAIN_LIMIT = 60.0  # seconds for the outbox to empty after a load (it takes about one)
SES_DRAIN_LIMIT = 90.0  # retries 2, 4, 8, 16, 32 s apart: at most ~32 s to the next try


# ---------------------------------------------------------------- 1. load


@pytest.fixture(scope="module")
def loaded(deployment, mariadb, moto, opts, results):
    run = serve(deployment, mariadb, moto, "rel_load")
    run.load = h.Load(run.stack.port, run.skus, run.tokens).run(
        mixed(opts.clients), opts.load_seconds
    )
    run.drained = drained(run, moto, DRAIN_LIMIT)
    finish(run, moto, results, "load")
    return run


def test_load_every_answer_200(loaded):
    assert set(loaded.load.statuses()) == {200}, loaded.load.samples


def test_load_outbox_drains_within_a_minute(loaded):
    assert loaded.drained is not None


def test_load_every_read_has_its_view_and_every_change_its_emails_once(loaded):
    assert_nothing_lost_or_doubled(loaded)


# ---------------------------------------------------------------- 2. MariaDB down


@pytest.fixture(scope="module")
def db_outage(deployment, reaper, moto, opts, results):
    workdir = reaper.workdir / "mariadb-outage"
    workdir.mkdir()
    db = h.MariaDB.private(reaper, workdir)
    run = serve(deployment, db, moto, "rel_dbdown")
    run.load = h.Load(run.stack.port, run.skus, run.tokens).start(mixed(opts.clients))
    t = run.timeline
    try:
        time.sleep(10)
        t["stop"] = time.monotonic()
        db.stop()
        t["down"] = time.monotonic()
        time.sleep(opts.outage_seconds)
        db.start()
        t["up"] = time.monotonic()
        time.sleep(20)
    finally:
        if db.process.poll() is not None:
            db.start()
        run.load.stop()
    reads = sum(run.load.reads().values())
    began = time.monotonic()
    run.views_in = None
    try:
        h.wait_until(
            "the views held in the stream",
            lambda: sum(h.view_counts(db, run.name).values()) >= reads,
            20,
        )
        run.views_in = time.monotonic() - began
    except h.HarnessError:
        pass
    run.drained = drained(run, moto, DRAIN_LIMIT)
    finish(run, moto, results, "mariadb_outage")
    worker_log = run.stack.worker_log()  # the worker's own, when not under uWSGI's
    run.uwsgi_log = run.stack.uwsgi_log().read_text(errors="replace") + (
        worker_log.read_text(errors="replace") if worker_log.exists() else ""
    )
    yield run
    reaper.stop(db.process, timeout=60)


def test_db_outage_answers_200_before(db_outage):
    before = [r for r in db_outage.load.requests if r.end < db_outage.timeline["stop"]]
    assert before and {r.status for r in before} == {200}


def test_db_outage_answers_json_503_with_retry_after_meanwhile_and_nothing_else(db_outage):
    t, requests = db_outage.timeline, db_outage.load.requests
    during = [r for r in requests if t["stop"] <= r.end <= t["up"]]
    assert any(r.status == 503 and r.json_503 for r in during)
    assert all(r.status == 200 or (r.status == 503 and r.json_503) for r in requests), (
        db_outage.load.samples
    )


def test_db_outage_no_request_hangs_or_loses_its_connection(db_outage):
    statuses = db_outage.load.statuses()
    assert statuses[h.TIMEOUT] == statuses[h.NO_ANSWER] == 0, db_outage.load.samples
    assert "upstream prematurely closed connection" not in db_outage.stack.log.read_text()


def test_db_outage_recovers_without_a_restart(db_outage):
    t, requests = db_outage.timeline, db_outage.load.requests
    bad_after = [r.end for r in requests if r.end > t["up"] and r.status != 200]
    recovery = max(bad_after, default=t["up"]) - t["up"]
    assert recovery <= RECOVERY_LIMIT
    assert requests[-1].end - (t["up"] + recovery) >= 5  # and 200s for a while after
    assert "DAMN ! worker" not in db_outage.uwsgi_log
    assert "Respawned uWSGI worker" not in db_outage.uwsgi_log


def test_db_outage_views_read_through_it_wait_in_the_stream_and_arrive_without_a_stop(
    db_outage,
):
    """Redis held the views while the database was away; the worker wrote them after."""
    assert db_outage.views_in is not None
    assert "worker: writing views failed, retrying" in db_outage.uwsgi_log


def test_db_outage_outbox_drains_within_a_minute(db_outage):
    assert db_outage.drained is not None


def test_db_outage_every_read_has_its_view_and_every_change_its_emails_once(db_outage):
    """A PUT answered 503 may have committed: it must then be emailed like the others."""
    assert_nothing_lost_or_doubled(db_outage)


# ---------------------------------------------------------------- 3. SES failing


@pytest.fixture(scope="module")
def ses_outage(deployment, mariadb, moto, opts, results):
    run = serve(deployment, mariadb, moto, "rel_sesdown", NOTIFY_RETRY_BASE_SECONDS=2)
    editors = [h.Role(put=1.0, list=0.0, think=0.5, admin=a) for a in range(3)]
    readers = [h.Role(put=0.0, list=0.2, think=0.05)] * 5
    run.load = h.Load(run.stack.port, run.skus, run.tokens).start(editors + readers)
    t, outage = run.timeline, opts.ses_outage_seconds
    tried = "attempts > 0 AND claim_token IS NULL"  # an attempt that has ended
    try:
        time.sleep(5)
        t["fails"] = time.monotonic()
        moto.reject_sends()
        try:
            time.sleep(3)
            run.emails_at_start = len(moto.emails())
            time.sleep(outage - 5)
            run.emails_at_end = len(moto.emails())
            run.held = run.db.query(
                run.name,
                f"SELECT status, COUNT(*), SUM({tried}), SUM({tried} AND last_error IS NOT NULL),"
                f" SUM({tried} AND last_error LIKE '%MessageRejected%') FROM notifications"
                " GROUP BY status",
            )
            time.sleep(2)
        finally:
            moto.accept_sends()
            t["back"] = time.monotonic()
        time.sleep(5)
    finally:
        run.load.stop()
    run.drained = drained(run, moto, SES_DRAIN_LIMIT)
    finish(run, moto, results, "ses_outage")
    return run


def test_ses_outage_editing_goes_on_every_answer_200(ses_outage):
    t = ses_outage.timeline
    puts = [
        r
        for r in ses_outage.load.requests
        if r.kind == h.PUT and t["fails"] <= r.start <= t["back"]
    ]
    assert puts and set(ses_outage.load.statuses()) == {200}, ses_outage.load.samples


def test_ses_outage_the_outbox_holds_tried_rows_with_their_error(ses_outage):
    held = {status: [int(v or 0) for v in rest] for status, *rest in ses_outage.held}
    _rows, attempted, with_error, rejected = held.get("pending", [0, 0, 0, 0])
    assert attempted > 0 and with_error == attempted and rejected > 0, held
    assert "failed" not in held
    assert ses_outage.emails_at_end == ses_outage.emails_at_start  # nothing got through


def test_ses_outage_every_held_email_is_delivered_once_ses_is_back(ses_outage):
    assert ses_outage.drained is not None
    assert_nothing_lost_or_doubled(ses_outage)
