"""Product-change emails: one per active admin, through SES (moto), never lost, never twice.

The web process only writes the rows; the worker (`flask worker`) sends them. Tests run
the worker's drain (`flask worker --once`) where the service would have it running.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from email import message_from_string, policy

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends
from sqlalchemy import select, update

from app.catalog import service as catalog
from app.catalog.models import Product
from app.core.columns import utcnow
from app.core.extensions import db
from app.notifications import outbox
from app.notifications.mailers import NOTIFICATION_HEADER, SESMailer, build_mailer
from app.notifications.models import Notification
from app.worker import Worker
from tests.system import harness as h

SENDER = "catalog@example.com"
REGION = "us-east-1"
SEED = {"sku": "d7iy6euiue", "name": "zapatos", "price": 300, "mark": "chabelo", "quantity": 5}


@pytest.fixture
def ses(app, monkeypatch):
    """SES stood in for by moto, the sender verified; yields moto's record of sent mail."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    app.config.update(MAIL_BACKEND="ses", EMAIL_SOURCE=SENDER, REGION_NAME=REGION)
    with mock_aws():
        boto3.client("ses", region_name=REGION).verify_email_identity(EmailAddress=SENDER)
        yield ses_backends[DEFAULT_ACCOUNT_ID][REGION]


@pytest.fixture
def admins(make):
    """Three active admins, plus a deleted admin and a reader who must never be emailed."""
    people = [make.admin(email=f"admin{n}@example.com", fullname=f"Admin {n}") for n in (1, 2, 3)]
    make.admin(email="gone@example.com", deleted=True)
    make.reader(email="reader@example.com")
    return people


@dataclass(frozen=True)
class Received:
    to: str
    source: str
    subject: str
    text: str
    html: str
    notification_id: int


def received(ses) -> list[Received]:
    """What moto's SES accepted, parsed as a recipient's mail client would."""
    mail = []
    for raw in ses.sent_messages:
        message = message_from_string(raw.raw_data, policy=policy.default)
        mail.append(
            Received(
                to=message["To"],
                source=raw.source,
                subject=message["Subject"],
                text=message.get_body(("plain",)).get_content(),
                html=message.get_body(("html",)).get_content(),
                notification_id=int(message[NOTIFICATION_HEADER]),
            )
        )
    return mail


def settle(app) -> tuple[int, int]:
    """What the running worker would do next: send every email due now."""
    return Worker(app).drain()


def inbox(ses) -> dict[str, list[Received]]:
    mail: dict[str, list] = {}
    for message in received(ses):
        mail.setdefault(message.to, []).append(message)
    return mail


ADMIN_ADDRESSES = {"admin1@example.com", "admin2@example.com", "admin3@example.com"}


def test_creating_a_product_emails_every_active_admin_once(app, client, admins, ses):
    response = client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    assert response.status_code == 201
    settle(app)

    mail = inbox(ses)
    assert set(mail) == ADMIN_ADDRESSES
    assert all(len(messages) == 1 for messages in mail.values())
    message = mail["admin2@example.com"][0]
    assert message.source == SENDER
    assert "d7iy6euiue" in message.subject and "created" in message.subject
    assert "zapatos" in message.text
    assert "Admin 1" in message.text and "admin1@example.com" in message.text


def test_a_price_change_says_old_and_new_by_whom_and_when(app, client, make, admins, ses):
    make.product("d7iy6euiue", name="zapatos", price=300)
    response = client.put(
        "/api/products/d7iy6euiue/", json={"price": 500}, headers=admins[1]["headers"]
    )
    assert response.status_code == 200
    settle(app)

    mail = inbox(ses)
    assert set(mail) == ADMIN_ADDRESSES
    message = mail["admin3@example.com"][0]
    assert "price: 300 -> 500" in message.subject
    assert "price: 300 -> 500" in message.text
    assert "price: 300 \u2192 500" in message.html
    assert "Admin 2" in message.text and "admin2@example.com" in message.text
    assert " UTC" in message.text
    assert len(ses.sent_messages) == 3


def test_deleting_a_product_emails_every_admin(app, client, make, admins, ses):
    make.product("d7iy6euiue", name="zapatos")
    assert (
        client.delete("/api/products/d7iy6euiue", headers=admins[0]["headers"]).status_code == 204
    )
    settle(app)
    mail = inbox(ses)
    assert set(mail) == ADMIN_ADDRESSES
    assert "deleted" in mail["admin1@example.com"][0].subject


def test_an_update_that_changes_nothing_sends_nothing(app, client, make, admins, ses, rows):
    make.product("d7iy6euiue", name="zapatos", price=300)
    response = client.put(
        "/api/products/d7iy6euiue",
        json={"price": 300, "name": "zapatos"},
        headers=admins[0]["headers"],
    )
    assert response.status_code == 200
    settle(app)
    assert ses.sent_messages == []
    assert rows(Notification) == []


def test_a_rolled_back_change_emails_nobody(app, make, admins, ses, rows):
    make.product("d7iy6euiue", price=300)
    with app.app_context():
        product = Product.by_sku("d7iy6euiue")
        catalog.update_product(product, {"price": 999}, actor=None)
        db.session.rollback()
    settle(app)
    assert rows(Notification) == []
    assert ses.sent_messages == []


def test_a_refused_request_writes_no_notification(app, client, make, admins, ses, rows):
    make.product("d7iy6euiue")
    response = client.put(
        "/api/products/d7iy6euiue", json={"price": -5}, headers=admins[0]["headers"]
    )
    assert response.status_code == 422
    settle(app)
    assert rows(Notification) == []


def test_notify_actor_false_leaves_the_acting_admin_out(app, client, admins, ses):
    app.config["NOTIFY_ACTOR"] = False
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    settle(app)
    assert set(inbox(ses)) == ADMIN_ADDRESSES - {"admin1@example.com"}


def test_the_rows_are_written_with_the_change_and_sent_after_it(app, client, admins, ses, rows):
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    settle(app)
    sent = rows(Notification)
    assert len(sent) == 3
    assert {row.status for row in sent} == {"sent"}
    assert all(row.attempts == 1 and row.sent_at and row.message_id for row in sent)


def unverify_sender() -> None:
    boto3.client("ses", region_name=REGION).delete_identity(Identity=SENDER)


def time_passes(app) -> None:
    """Make every scheduled retry due now, as if its backoff had elapsed."""
    with app.app_context():
        db.session.execute(update(Notification).values(next_attempt_at=utcnow()))
        db.session.commit()


def run_worker(runner) -> str:
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_web_request_only_writes_the_rows_and_the_worker_sends_them(
    app, client, runner, admins, ses, rows
):
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    assert ses.sent_messages == []
    assert {row.status for row in rows(Notification)} == {"pending"}

    run_worker(runner)
    assert set(inbox(ses)) == ADMIN_ADDRESSES
    assert len(ses.sent_messages) == 3
    run_worker(runner)  # a second pass finds nothing to send again
    assert len(ses.sent_messages) == 3


def test_a_crashed_senders_lease_expires_and_the_email_goes_out_once(
    app, client, runner, admins, ses, rows
):
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    with app.app_context():
        claimed = outbox.claim(limit=10)  # a sender takes the rows, then dies
        assert len(claimed) == 3
    run_worker(runner)
    assert ses.sent_messages == []  # the claim's lease still holds

    with app.app_context():
        db.session.execute(
            update(Notification).values(claimed_until=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
    run_worker(runner)
    assert len(ses.sent_messages) == 3
    assert {row.status for row in rows(Notification)} == {"sent"}


def test_ses_failing_then_recovering_delivers_each_email_exactly_once(
    app, client, runner, admins, ses, rows
):
    unverify_sender()  # SES now rejects every send
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])

    run_worker(runner)
    failing = rows(Notification)
    assert all(row.next_attempt_at > utcnow() for row in failing)  # backing off
    run_worker(runner)  # not due yet: nothing is attempted
    assert {row.attempts for row in rows(Notification)} == {1}
    time_passes(app)
    run_worker(runner)
    failing = rows(Notification)
    assert ses.sent_messages == []
    assert {row.status for row in failing} == {"pending"}
    assert {row.attempts for row in failing} == {2}
    assert all("MessageRejected" in row.last_error for row in failing)

    boto3.client("ses", region_name=REGION).verify_email_identity(EmailAddress=SENDER)
    time_passes(app)
    run_worker(runner)
    time_passes(app)
    run_worker(runner)
    assert set(inbox(ses)) == ADMIN_ADDRESSES
    assert len(ses.sent_messages) == 3
    assert {row.status for row in rows(Notification)} == {"sent"}


def test_after_the_last_attempt_an_email_is_failed_then_retry_requeues_it(
    app, client, runner, admins, ses, rows
):
    app.config.update(NOTIFY_MAX_ATTEMPTS=2)
    unverify_sender()
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    run_worker(runner)
    time_passes(app)
    run_worker(runner)
    failed = rows(Notification)
    assert {row.status for row in failed} == {"failed"}
    assert all(row.attempts == 2 and "MessageRejected" in row.last_error for row in failed)
    time_passes(app)
    run_worker(runner)
    assert ses.sent_messages == []  # failed rows are not retried on their own

    boto3.client("ses", region_name=REGION).verify_email_identity(EmailAddress=SENDER)
    one = failed[0].id
    result = runner.invoke(args=["notifications", "retry", "--id", str(one)])
    assert "1 notification(s) queued again" in result.output
    run_worker(runner)
    assert len(ses.sent_messages) == 1

    result = runner.invoke(args=["notifications", "retry", "--all-failed"])
    assert "2 notification(s) queued again" in result.output
    run_worker(runner)
    assert len(ses.sent_messages) == 3
    assert {row.status for row in rows(Notification)} == {"sent"}


def test_retry_needs_an_id_or_all_failed(runner):
    result = runner.invoke(args=["notifications", "retry"])
    assert result.exit_code != 0
    assert "--all-failed" in result.output


def test_two_workers_at_once_send_each_email_exactly_once(app, make, admins, ses, rows):
    with app.app_context():
        for n in range(15):
            catalog.create_product(
                {"sku": f"p{n}", "name": f"Product {n}", "price": 10, "mark": "m", "quantity": 1},
                actor=None,
            )
        db.session.commit()
    assert len(rows(Notification)) == 45

    start = threading.Barrier(2)

    def worker():
        start.wait()
        Worker(app).drain()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(ses.sent_messages) == 45
    assert len({m.notification_id for m in received(ses)}) == 45
    assert {row.status for row in rows(Notification)} == {"sent"}
    assert all(row.attempts == 1 for row in rows(Notification))


# ---------------------------------------------------------------- the delivery log


def test_admins_read_the_delivery_log_filtered_by_status_and_sku(app, client, make, admins, ses):
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    client.post("/api/products", json={**SEED, "sku": "other"}, headers=admins[0]["headers"])
    client.put("/api/products/d7iy6euiue", json={"price": 500}, headers=admins[0]["headers"])
    settle(app)
    headers = admins[1]["headers"]

    everything = client.get("/api/notifications", headers=headers)
    assert everything.status_code == 200
    assert len(everything.json) == 9
    assert '"total": 9' in everything.headers["X-Pagination"]

    log = client.get("/api/notifications?sku=D7IY6EUIUE&status=sent", headers=headers).json
    assert len(log) == 6
    newest = log[0]
    assert set(newest) == {
        "id",
        "recipient",
        "sku",
        "event",
        "changes",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "sent_at",
        "event_id",
        "ses_message_id",
    }
    assert newest["event"] == "updated"
    assert newest["changes"] == {"price": {"old": 300, "new": 500}}
    assert newest["status"] == "sent" and newest["attempts"] == 1
    # SES's MessageId, the name its events give the email.
    assert newest["ses_message_id"] in {message.id for message in ses.sent_messages}
    assert client.get("/api/notifications?status=failed", headers=headers).json == []


def test_the_delivery_log_is_for_admins_only(client, make, admins):
    reader = make.reader(email="r2@example.com")
    assert client.get("/api/notifications").status_code == 401
    assert client.get("/api/notifications", headers=reader["headers"]).status_code == 403
    bad = client.get("/api/notifications?status=lost", headers=admins[0]["headers"])
    assert bad.status_code == 422
    assert "status" in bad.json["errors"]["query"]


def test_console_mailer_logs_the_email(app, client, admins, caplog):
    caplog.set_level("INFO", logger="app.mail")
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    settle(app)
    logged = [r.getMessage() for r in caplog.records if r.name == "app.mail"]
    assert len(logged) == 3
    assert any("admin2@example.com" in line and "d7iy6euiue" in line for line in logged)


def test_a_row_taken_over_by_another_sender_mid_batch_is_not_sent_twice(app, make, admins, ses):
    """A batch's later rows may outlive their lease; a new holder must not be doubled."""
    from app.notifications.mailers import SESMailer

    with app.app_context():
        catalog.create_product(SEED, actor=None)
        db.session.commit()

    class SlowBatchMailer(SESMailer):
        """SES (moto) for real; while the first email goes out, another sender takes a
        row of this batch over, as happens when a lease runs out."""

        stolen = False

        def send(self, email):
            if not self.stolen:
                self.stolen = True
                with app.app_context():
                    db.session.execute(
                        update(Notification)
                        .where(Notification.recipient == "admin3@example.com")
                        .values(
                            claim_token="another-sender",
                            claimed_until=utcnow() + timedelta(minutes=5),
                        )
                    )
                    db.session.commit()
            return super().send(email)

    with app.app_context():
        rows = outbox.claim(10)
        assert [
            status
            for row in rows
            for status in outbox.deliver([row], SlowBatchMailer(SENDER, REGION))
        ] == [
            "sent",
            "sent",
            "lost",
        ]
    assert set(inbox(ses)) == {"admin1@example.com", "admin2@example.com"}
    with app.app_context():
        taken = db.session.scalar(
            select(Notification).where(Notification.recipient == "admin3@example.com")
        )
        assert (taken.status, taken.claim_token) == ("pending", "another-sender")


def test_a_send_recorded_late_because_the_database_was_away_is_not_sent_again(
    app, runner, make, admins, ses, rows, monkeypatch
):
    """SES accepted the email but the database refused the 'sent' update for a moment:
    the sender keeps trying to record it, so the email is not sent a second time later."""
    from sqlalchemy.exc import OperationalError

    with app.app_context():
        catalog.create_product(SEED, actor=None)
        db.session.commit()
    monkeypatch.setattr(outbox.time, "sleep", lambda _seconds: None)
    real_commit = db.session.commit
    calls = {"n": 0}

    def flaky_commit():
        calls["n"] += 1
        if calls["n"] in (3, 4):  # after the claim and the first start: the 'sent' update
            raise OperationalError("UPDATE notifications", {}, Exception("server has gone away"))
        return real_commit()

    monkeypatch.setattr(db.session, "commit", flaky_commit)
    with app.app_context():
        for row in outbox.claim(10):
            outbox.deliver([row], build_mailer(app.config))
    monkeypatch.setattr(db.session, "commit", real_commit)

    assert len(ses.sent_messages) == 3
    assert {row.status for row in rows(Notification)} == {"sent"}
    run_worker(runner)
    assert len(ses.sent_messages) == 3


def test_a_lost_answer_to_the_sending_mark_still_sends_the_email_once(
    app, make, admins, ses, rows, monkeypatch
):
    """The 'sending' mark committed but its answer was lost: the retry finds the mark
    its own and sends, instead of leaving the row to become unknown unsent."""
    from sqlalchemy.exc import OperationalError

    with app.app_context():
        catalog.create_product(SEED, actor=None)
        db.session.commit()
    monkeypatch.setattr(outbox.time, "sleep", lambda _seconds: None)
    real_commit = db.session.commit
    calls = {"n": 0}

    def commit_answer_lost():
        calls["n"] += 1
        real_commit()
        if calls["n"] == 1:  # the first row's 'sending' mark
            raise OperationalError("COMMIT", {}, Exception("Lost connection during query"))

    with app.app_context():
        claimed = outbox.claim(10)
        monkeypatch.setattr(db.session, "commit", commit_answer_lost)
        outcomes = [
            status for row in claimed for status in outbox.deliver([row], build_mailer(app.config))
        ]
    monkeypatch.setattr(db.session, "commit", real_commit)

    assert outcomes == ["sent"] * 3
    assert len(ses.sent_messages) == 3
    assert {(row.status, row.attempts) for row in rows(Notification)} == {("sent", 1)}


# ---------------------------------------------------------------- outcomes that are unknown


def ses_times_out(mailer: SESMailer) -> SESMailer:
    """SES (moto) behind a network that loses its answers: botocore's read timeout."""

    def lose_the_answer(request, **_kwargs):
        raise ReadTimeoutError(endpoint_url=request.url)

    mailer.client.meta.events.register("before-send.ses.SendRawEmail", lose_the_answer)
    return mailer


def test_each_email_names_its_notification_for_the_recipients_system(app, client, admins, ses):
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    settle(app)
    with app.app_context():
        ids = set(db.session.scalars(select(Notification.id)))
    assert {message.notification_id for message in received(ses)} == ids


def test_every_recipient_of_a_change_gets_the_same_email_ending_with_its_own_id(
    app, client, admins, ses
):
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    settle(app)
    mail = received(ses)
    assert len(mail) == 3
    assert len({(m.subject, m.html) for m in mail}) == 1
    texts = {m.notification_id: m.text.rstrip().splitlines() for m in mail}
    for notification_id, lines in texts.items():
        assert lines[-1] == f"Notification {notification_id}"
        assert lines[:-1] == texts[mail[0].notification_id][:-1]


def test_emails_sent_together_each_get_their_own_outcome_and_try(
    app, client, make, admins, ses, rows
):
    """The rows a sender sends together are marked and recorded together: each with what
    SES answered to its own email."""
    from app.notifications.mailers import NotAccepted, OutcomeUnknown
    from app.notifications.models import NotificationTry

    make.product("d7iy6euiue", price=300)
    make.product("other-sku", price=10)
    for sku in ("d7iy6euiue", "other-sku"):
        client.put(f"/api/products/{sku}", json={"price": 500}, headers=admins[0]["headers"])
    with app.app_context():
        claimed = outbox.claim(10)
        refused, unanswered = claimed[1].id, claimed[4].id

        class Answers(SESMailer):
            def send(self, email):
                if email.notification_id == refused:
                    raise NotAccepted("MessageRejected: a bad address")
                if email.notification_id == unanswered:
                    raise OutcomeUnknown("read timeout")
                return super().send(email)

        outcomes = outbox.deliver(claimed, Answers(SENDER, REGION))
    assert len(claimed) == 6
    assert outcomes == ["sent", "pending", "sent", "sent", "unknown", "sent"]
    by_id = {row.id: row for row in rows(Notification)}
    sent = [row for row in by_id.values() if row.status == "sent"]
    assert len({row.message_id for row in sent}) == 4
    assert {m.notification_id for m in received(ses)} == {row.id for row in sent}
    assert by_id[refused].status == "pending" and "bad address" in by_id[refused].last_error
    assert by_id[unanswered].status == "unknown"
    assert all(row.attempts == 1 and row.claim_token is None for row in by_id.values())
    tries = {t.notification_id: t.outcome for t in rows(NotificationTry)}
    assert tries == {
        row.id: {"sent": "sent", "pending": "retry", "unknown": "unknown"}[row.status]
        for row in by_id.values()
    }


def test_a_send_failing_unexpectedly_mid_batch_keeps_what_ses_answered_before_it(
    app, client, make, admins, ses, rows
):
    """An error no mailer outcome covers stops the batch: the emails sent before it are
    recorded sent, the one it hit is left to become unknown, the ones after it are due
    again (never handed to SES)."""
    make.product("d7iy6euiue", price=300)
    client.put("/api/products/d7iy6euiue", json={"price": 500}, headers=admins[0]["headers"])
    with app.app_context():
        claimed = outbox.claim(10)
        broken = claimed[1].id

        class Broken(SESMailer):
            def send(self, email):
                if email.notification_id == broken:
                    raise RuntimeError("a bug in the mailer")
                return super().send(email)

        with pytest.raises(RuntimeError):
            outbox.deliver(claimed, Broken(SENDER, REGION))
    by_id = {row.id: row for row in rows(Notification)}
    first, last = claimed[0].id, claimed[2].id
    assert (by_id[first].status, by_id[broken].status, by_id[last].status) == (
        "sent",
        "sending",
        "pending",
    )
    assert (by_id[last].attempts, by_id[last].claim_token) == (0, None)
    assert {m.notification_id for m in received(ses)} == {first}


def test_a_row_of_a_batch_requeued_during_the_send_keeps_the_operators_change(
    app, client, make, admins, ses, rows
):
    """An operator requeues one row while its batch is being sent: the others get their
    result; that row is not overwritten (it is due again, as the operator asked)."""
    make.product("d7iy6euiue", price=300)
    client.put("/api/products/d7iy6euiue", json={"price": 500}, headers=admins[0]["headers"])
    with app.app_context():
        claimed = outbox.claim(10)
        requeued = claimed[0].id

        class OperatorMeanwhile(SESMailer):
            def send(self, email):
                message_id = super().send(email)
                if email.notification_id == claimed[-1].id:
                    with app.app_context():
                        db.session.execute(
                            update(Notification)
                            .where(Notification.id == requeued)
                            .values(status="pending", claim_token=None, claimed_until=None)
                        )
                        db.session.commit()
                return message_id

        outcomes = outbox.deliver(claimed, OperatorMeanwhile(SENDER, REGION))
    assert outcomes == ["sent"] * 3
    by_id = {row.id: row for row in rows(Notification)}
    assert by_id[requeued].status == "pending"
    assert {row.status for row_id, row in by_id.items() if row_id != requeued} == {"sent"}


def test_a_send_ses_did_not_answer_is_unknown_listed_and_not_resent(
    app, client, runner, admins, ses, rows
):
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    with app.app_context():
        mailer = ses_times_out(build_mailer(app.config))
        outcomes = [status for row in outbox.claim(10) for status in outbox.deliver([row], mailer)]
    assert outcomes == ["unknown"] * 3
    assert {row.status for row in rows(Notification)} == {"unknown"}
    assert all("outcome unknown" in row.last_error for row in rows(Notification))

    time_passes(app)
    run_worker(runner)
    assert ses.sent_messages == []  # never resent by itself

    listed = client.get("/api/notifications?status=unknown", headers=admins[1]["headers"])
    assert listed.status_code == 200
    assert len(listed.json) == 3 and {n["status"] for n in listed.json} == {"unknown"}

    result = runner.invoke(args=["notifications", "retry", "--unknown"])
    assert "3 notification(s) queued again" in result.output
    run_worker(runner)
    assert set(inbox(ses)) == ADMIN_ADDRESSES
    assert {row.status for row in rows(Notification)} == {"sent"}


def test_a_sender_that_died_during_a_send_leaves_it_unknown_not_resent(
    app, client, runner, admins, ses, rows
):
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    with app.app_context():
        row = outbox.claim(1)[0]
        assert outbox.start([row])  # marked as being sent... and the process is killed
    run_worker(runner)
    assert len(ses.sent_messages) == 2  # the other two; this one is still in flight
    with app.app_context():
        db.session.execute(
            update(Notification)
            .where(Notification.id == row.id)
            .values(claimed_until=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
    run_worker(runner)
    assert len(ses.sent_messages) == 2
    abandoned = rows(Notification, Notification.id == row.id)[0]
    assert abandoned.status == "unknown"
    assert "stopped during the send" in abandoned.last_error


def test_a_sender_cut_off_from_the_database_past_its_lease_keeps_its_row_and_records_sent(
    app, client, admins, ses, rows
):
    """MariaDB frozen longer than the lease: the worker's own sender is alive holding SES's
    answer, so the row is not taken for abandoned; once through, it records the send."""
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    seen = {}

    class CutOffMailer(SESMailer):
        def send(self, email):
            message_id = super().send(email)
            with app.app_context():  # the lease runs out while the database is away
                db.session.execute(
                    update(Notification)
                    .where(Notification.id == row.id)
                    .values(claimed_until=utcnow() - timedelta(seconds=1))
                )
                db.session.commit()
                seen["expired"] = outbox.expire_abandoned_sends()
                seen["status"] = rows(Notification, Notification.id == row.id)[0].status
            return message_id

    with app.app_context():
        row = outbox.claim(1)[0]
        assert outbox.deliver([row], CutOffMailer(SENDER, REGION)) == ["sent"]
    assert seen == {"expired": [], "status": "sending"}
    recorded = rows(Notification, Notification.id == row.id)[0]
    assert recorded.status == "sent" and recorded.message_id
    assert len(ses.sent_messages) == 1


def test_ses_answer_is_recorded_however_long_the_database_is_away(
    app, client, admins, ses, rows, monkeypatch
):
    """The database refuses the result for longer than any retry budget: the sender keeps
    SES's answer and records it when the database answers, never leaving it unknown."""
    from sqlalchemy.exc import OperationalError

    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    clock = {"now": 0.0}
    monkeypatch.setattr(outbox.time, "monotonic", lambda: clock["now"])

    def pause(seconds):
        clock["now"] += seconds

    monkeypatch.setattr(outbox.time, "sleep", pause)
    real_commit = db.session.commit
    away_until = outbox.RECORD_RETRY_SECONDS * 10

    def commit():
        if "sent" in state and clock["now"] < away_until:
            raise OperationalError("COMMIT", {}, Exception("Lost connection during query"))
        return real_commit()

    state = {}

    class Mailer(SESMailer):
        def send(self, email):
            message_id = super().send(email)
            state["sent"] = message_id
            return message_id

    with app.app_context():
        row = outbox.claim(1)[0]
        monkeypatch.setattr(db.session, "commit", commit)
        assert outbox.deliver([row], Mailer(SENDER, REGION)) == ["sent"]
    monkeypatch.setattr(db.session, "commit", real_commit)
    assert clock["now"] >= away_until
    recorded = rows(Notification, Notification.id == row.id)[0]
    assert (recorded.status, recorded.message_id) == ("sent", state["sent"])
    assert outbox.held() == set()


def test_a_worker_asked_to_stop_gives_up_recording_after_a_while(
    app, client, admins, ses, rows, monkeypatch
):
    """The database gone for good and the worker asked to stop: the sender does not hang,
    it gives up RECORD_RETRY_SECONDS after the stop (the row stays sending, to become
    unknown after its lease) and frees its hold."""
    from sqlalchemy.exc import OperationalError

    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    clock = {"now": 0.0}
    monkeypatch.setattr(outbox.time, "monotonic", lambda: clock["now"])
    stopping = threading.Event()

    def pause(seconds):
        clock["now"] += seconds
        if clock["now"] > 600:
            stopping.set()

    monkeypatch.setattr(outbox.time, "sleep", pause)
    real_commit = db.session.commit
    gone = {}

    def commit():
        if gone:
            raise OperationalError("COMMIT", {}, Exception("Can't connect to MySQL server"))
        return real_commit()

    class Mailer(SESMailer):
        def send(self, email):
            gone["since"] = clock["now"]
            return super().send(email)

    with app.app_context():
        row = outbox.claim(1)[0]
        monkeypatch.setattr(db.session, "commit", commit)
        with pytest.raises(OperationalError):
            outbox.deliver([row], Mailer(SENDER, REGION), stopping)
    monkeypatch.setattr(db.session, "commit", real_commit)
    assert 600 < clock["now"] <= 600 + outbox.RECORD_RETRY_SECONDS + 10
    assert rows(Notification, Notification.id == row.id)[0].status == "sending"
    assert outbox.held() == set()


def test_a_late_answer_overrides_another_process_marking_the_row_unknown(
    app, client, admins, ses, rows
):
    """A second worker process, not knowing this sender is alive, marks the row unknown
    after the lease: the sender's answer, once through, still records it sent."""
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])

    class OtherProcessExpires(SESMailer):
        def send(self, email):
            message_id = super().send(email)
            with app.app_context():
                db.session.execute(
                    update(Notification)
                    .where(Notification.id == row.id)
                    .values(status="unknown", claimed_until=None)
                )
                db.session.commit()
            return message_id

    with app.app_context():
        row = outbox.claim(1)[0]
        assert outbox.deliver([row], OtherProcessExpires(SENDER, REGION)) == ["sent"]
    recorded = rows(Notification, Notification.id == row.id)[0]
    assert recorded.status == "sent" and recorded.message_id
    assert len(ses.sent_messages) == 1


def test_a_graceful_stop_gives_back_the_emails_it_had_not_started(app, client, admins, ses, rows):
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    worker = Worker(app)
    with app.app_context():
        claimed = outbox.claim(10)
        assert len(claimed) == 3
        worker.stop()
        assert outbox.release(claimed[1:]) == 2
    due_now = [row for row in rows(Notification) if row.claim_token is None]
    assert len(due_now) == 2
    settle(app)
    assert len(ses.sent_messages) == 2  # the first is still claimed by its sender


def test_the_emails_of_changes_made_while_a_sender_lingers_are_claimed_together(
    app, client, admins, ses, rows, monkeypatch
):
    """The first change after a quiet spell is claimed at once; the changes made while
    its emails are sent gather (WORKER_LINGER_SECONDS) and one claim takes them all."""
    app.config.update(WORKER_SENDERS=1, WORKER_POLL_SECONDS=0.01, WORKER_LINGER_SECONDS=2.0)
    claimed = []
    claim = outbox.claim
    monkeypatch.setattr(
        outbox, "claim", lambda limit: claimed.append(len(found := claim(limit))) or found
    )
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        client.post("/api/products", json=SEED, headers=admins[0]["headers"])
        h.wait_until("the first change's emails", lambda: len(ses.sent_messages) == 3, 20)
        for n in range(3):
            product = {**SEED, "sku": f"{SEED['sku']}-{n}"}
            client.post("/api/products", json=product, headers=admins[0]["headers"])
        h.wait_until("every email", lambda: len(ses.sent_messages) == 12, 20)
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert [size for size in claimed if size] == [3, 9]
    assert {row.status for row in rows(Notification)} == {"sent"}


def test_the_worker_process_wakes_on_a_commit_and_stops_on_request(app, client, admins, ses, rows):
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        client.post("/api/products", json=SEED, headers=admins[0]["headers"])
        deadline = utcnow() + timedelta(seconds=20)
        while len(ses.sent_messages) < 3 and utcnow() < deadline:
            threading.Event().wait(0.05)
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert set(inbox(ses)) == ADMIN_ADDRESSES
    assert {row.status for row in rows(Notification)} == {"sent"}
