"""What SES says happened to the emails it took: its events (SES -> SNS -> SQS, moto), the
rows' outcomes, the suppression list, and what an admin on it receives."""

from __future__ import annotations

import json

import boto3
import pytest
from sqlalchemy import select

from app.core.extensions import db
from app.notifications.mailers import NOTIFICATION_HEADER
from app.notifications.models import Notification, Suppression
from tests.test_notifications import (  # noqa: F401 (fixtures)
    REGION,
    SEED,
    admins,
    inbox,
    received,
    ses,
    settle,
)

FORMATS = ["sns", "raw"]


@pytest.fixture(params=FORMATS)
def events(request, app, ses):  # noqa: F811
    """SES's events queue as terraform builds it: an SNS topic delivering to an SQS queue
    (in SNS's envelope, or raw), whose dead-letter queue takes a message received 3 times
    unhandled. Yields a function that publishes one SES event (a dict, or any text)."""
    sqs = boto3.client("sqs", region_name=REGION)
    sns = boto3.client("sns", region_name=REGION)
    dead = sqs.create_queue(QueueName="ses-events-dead")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])
    redrive = {"deadLetterTargetArn": dead_arn["Attributes"]["QueueArn"], "maxReceiveCount": 3}
    url = sqs.create_queue(
        QueueName="ses-events",
        Attributes={"VisibilityTimeout": "0", "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    topic = sns.create_topic(Name="ses-events")["TopicArn"]
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn["QueueArn"],
        Attributes={"RawMessageDelivery": "true" if request.param == "raw" else "false"},
    )
    app.config["SES_EVENTS_QUEUE_URL"] = url

    def publish(event) -> None:
        sns.publish(TopicArn=topic, Message=event if isinstance(event, str) else json.dumps(event))

    publish.sqs = sqs
    publish.url = url
    publish.dead = dead
    return publish


def ses_event(kind: str, message_id: str, to: str, notification_id=None, **section) -> dict:
    """An SES event as its configuration set publishes it (event publishing's form)."""
    headers = [{"name": "To", "value": to}]
    if notification_id is not None:
        headers.append({"name": NOTIFICATION_HEADER, "value": str(notification_id)})
    event = {
        "eventType": kind,
        "mail": {
            "timestamp": "2026-12-06T10:00:00.000Z",
            "source": "catalog@example.com",
            "messageId": message_id,
            "destination": [to],
            "headersTruncated": False,
            "headers": headers,
        },
    }
    if section:
        event[kind[0].lower() + kind[1:]] = section
    return event


def bounce(row, bounce_type="Permanent", **kwargs) -> dict:
    return ses_event(
        "Bounce",
        row["ses_message_id"],
        row["recipient"],
        bounceType=bounce_type,
        bounceSubType="General",
        bouncedRecipients=[{"emailAddress": row["recipient"], "diagnosticCode": "550 5.1.1"}],
        **kwargs,
    )


def complaint(row, feedback="abuse") -> dict:
    extra = {"complaintFeedbackType": feedback} if feedback else {}
    return ses_event(
        "Complaint",
        row["ses_message_id"],
        row["recipient"],
        complainedRecipients=[{"emailAddress": row["recipient"].upper()}],
        **extra,
    )


def delivery(row) -> dict:
    return ses_event(
        "Delivery",
        row["ses_message_id"],
        row["recipient"],
        recipients=[row["recipient"]],
        smtpResponse="250 2.6.0 Message received",
    )


def emails(client, admin) -> dict[str, dict]:
    """The delivery log, by recipient (the newest email of each)."""
    log = client.get("/api/notifications?page_size=100", headers=admin["headers"]).json
    return {row["recipient"]: row for row in reversed(log)}


def statuses(client, admin) -> dict[str, str]:
    return {to: row["status"] for to, row in emails(client, admin).items()}


def suppressed(client, admin) -> dict[str, str]:
    answer = client.get("/api/suppressions", headers=admin["headers"])
    assert answer.status_code == 200
    return {entry["email"]: entry["reason"] for entry in answer.json}


@pytest.fixture
def sent(app, client, admins, ses):  # noqa: F811
    """A product created: each of the three admins' emails accepted by SES."""
    client.post("/api/products", json=SEED, headers=admins[0]["headers"])
    settle(app)
    rows = emails(client, admins[0])
    assert {row["status"] for row in rows.values()} == {"sent"}
    return rows


def test_a_delivery_turns_sent_into_delivered(app, client, admins, events, sent):  # noqa: F811
    events(delivery(sent["admin1@example.com"]))
    settle(app)
    assert statuses(client, admins[0]) == {
        "admin1@example.com": "delivered",
        "admin2@example.com": "sent",
        "admin3@example.com": "sent",
    }
    assert client.get("/api/notifications?status=delivered", headers=admins[0]["headers"]).json[0][
        "recipient"
    ] == ("admin1@example.com")
    assert events.sqs.receive_message(QueueUrl=events.url).get("Messages") is None


def test_a_permanent_bounce_bounces_the_email_and_suppresses_the_address(
    app,
    client,
    admins,  # noqa: F811
    events,
    sent,
):
    row = sent["admin2@example.com"]
    events(bounce(row))
    settle(app)
    after = emails(client, admins[0])["admin2@example.com"]
    assert after["status"] == "bounced"
    assert "Permanent" in after["last_error"]
    listed = client.get("/api/suppressions", headers=admins[0]["headers"]).json
    assert listed == [
        {
            "email": "admin2@example.com",
            "reason": "bounce",
            "since": listed[0]["since"],
            "notification_id": row["id"],
        }
    ]


def test_a_complaint_is_recorded_with_its_feedback_type_and_suppresses(
    app,
    client,
    admins,  # noqa: F811
    events,
    sent,
):
    events(complaint(sent["admin3@example.com"]))
    settle(app)
    after = emails(client, admins[0])["admin3@example.com"]
    assert (after["status"], after["last_error"]) == ("complained", "abuse")
    # The address SES names in capitals is the account's address.
    assert suppressed(client, admins[0]) == {"admin3@example.com": "complaint"}


def test_a_transient_bounce_or_a_delay_leaves_the_email_sent(
    app,
    client,
    admins,  # noqa: F811
    events,
    sent,
    caplog,
):
    caplog.set_level("INFO", logger="app.notifications.ses_events")
    row = sent["admin1@example.com"]
    events(bounce(row, bounce_type="Transient"))
    events(
        ses_event("DeliveryDelay", row["ses_message_id"], row["recipient"], delayType="MailboxFull")
    )
    settle(app)
    assert statuses(client, admins[0])["admin1@example.com"] == "sent"
    assert suppressed(client, admins[0]) == {}
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "transient bounce" in logged and "MailboxFull" in logged
    assert events.sqs.receive_message(QueueUrl=events.url).get("Messages") is None


def test_a_reject_fails_the_email(app, client, admins, events, sent):  # noqa: F811
    row = sent["admin1@example.com"]
    events(ses_event("Reject", row["ses_message_id"], row["recipient"], reason="Bad content"))
    settle(app)
    after = emails(client, admins[0])["admin1@example.com"]
    assert after["status"] == "failed" and "Bad content" in after["last_error"]


def test_the_notification_form_of_an_event_is_read_too(app, client, admins, events, sent):  # noqa: F811
    event = bounce(sent["admin1@example.com"])
    event["notificationType"] = event.pop("eventType")
    events(event)
    settle(app)
    assert statuses(client, admins[0])["admin1@example.com"] == "bounced"


def test_a_message_delivered_twice_changes_nothing_the_second_time(
    app,
    client,
    admins,  # noqa: F811
    events,
    sent,
):
    row = sent["admin1@example.com"]
    events(complaint(row))
    settle(app)
    first = client.get("/api/suppressions", headers=admins[0]["headers"]).json
    client.delete("/api/suppressions/admin1@example.com", headers=admins[0]["headers"])
    events(delivery(row))  # arrives late: the email is further on already
    events(complaint(row))  # the same message again
    settle(app)
    assert statuses(client, admins[0])["admin1@example.com"] == "complained"
    # The repeated complaint puts the address back, as the first one did.
    again = client.get("/api/suppressions", headers=admins[0]["headers"]).json
    assert [entry["email"] for entry in again] == [entry["email"] for entry in first]
    events(complaint(row))
    settle(app)
    assert client.get("/api/suppressions", headers=admins[0]["headers"]).json == again


def test_a_malformed_message_is_moved_aside_and_the_others_are_applied(
    app,
    client,
    admins,  # noqa: F811
    events,
    sent,
    caplog,
):
    events("this is not an SES event")
    events(json.dumps({"eventType": "Bounce"}))  # no mail
    events(delivery(sent["admin1@example.com"]))
    for _ in range(4):  # received again and again until the dead-letter queue takes them
        settle(app)
    assert statuses(client, admins[0])["admin1@example.com"] == "delivered"
    assert "malformed message" in caplog.text
    assert events.sqs.receive_message(QueueUrl=events.url).get("Messages") is None
    dead = events.sqs.receive_message(QueueUrl=events.dead, MaxNumberOfMessages=10)
    assert len(dead["Messages"]) == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'marketplace_ses_events_total{outcome="malformed"}' in metrics


def test_an_unknown_send_is_resolved_by_its_header(app, client, admins, events, sent):  # noqa: F811
    """A send whose answer was lost: SES's event names the email by its header."""
    row = sent["admin2@example.com"]
    with app.app_context():
        stored = db.session.get(Notification, row["id"])
        stored.status, stored.message_id, stored.sent_at = "unknown", None, None
        db.session.commit()
    events(
        ses_event(
            "Delivery",
            "0100-lost-answer",
            row["recipient"],
            notification_id=row["id"],
            recipients=[],
        )
    )
    settle(app)
    after = emails(client, admins[0])["admin2@example.com"]
    assert (after["status"], after["ses_message_id"]) == ("delivered", "0100-lost-answer")
    assert after["sent_at"] is not None


def test_a_suppressed_admin_gets_no_email_and_the_others_do(
    app,
    client,
    admins,  # noqa: F811
    events,
    sent,
    ses,  # noqa: F811
):
    events(bounce(sent["admin2@example.com"]))
    settle(app)
    before = len(ses.sent_messages)
    client.put("/api/products/d7iy6euiue", json={"price": 500}, headers=admins[0]["headers"])
    settle(app)
    new = [message.to for message in received(ses)[before:]]
    assert sorted(new) == ["admin1@example.com", "admin3@example.com"]
    log = client.get("/api/notifications?status=suppressed", headers=admins[0]["headers"]).json
    assert [(row["recipient"], row["ses_message_id"]) for row in log] == [
        ("admin2@example.com", None)
    ]
    assert "suppressed" in log[0]["last_error"]

    # Lifted: the next change reaches the address again.
    lifted = client.delete("/api/suppressions/Admin2@Example.com", headers=admins[0]["headers"])
    assert lifted.status_code == 204
    assert suppressed(client, admins[0]) == {}
    client.put("/api/products/d7iy6euiue", json={"price": 600}, headers=admins[0]["headers"])
    settle(app)
    assert len(inbox(ses)["admin2@example.com"]) == 2
    again = client.delete("/api/suppressions/admin2@example.com", headers=admins[0]["headers"])
    assert again.status_code == 404


def test_the_suppression_list_is_for_admins_only(client, make, admins):  # noqa: F811
    reader = make.reader(email="r2@example.com")
    assert client.get("/api/suppressions").status_code == 401
    assert client.get("/api/suppressions", headers=reader["headers"]).status_code == 403
    gone = client.delete("/api/suppressions/a@example.com", headers=reader["headers"])
    assert gone.status_code == 403


def test_without_a_queue_the_worker_reads_no_events(app, admins, sent, rows):  # noqa: F811
    assert app.config["SES_EVENTS_QUEUE_URL"] is None
    settle(app)
    assert {row.status for row in rows(Notification)} == {"sent"}
    with app.app_context():
        assert db.session.scalars(select(Suppression)).all() == []


def rate(metrics: str, kind: str, window: str) -> float:
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith(f'marketplace_email_{kind}_rate{{window="{window}"}}')
    )
    return float(line.split()[-1])


def test_the_bounce_and_complaint_rates_show_in_the_metrics(
    app,
    client,
    admins,  # noqa: F811
    events,
    sent,
):
    before = client.get("/metrics").get_data(as_text=True)
    assert rate(before, "bounce", "24h") == 0 and rate(before, "complaint", "7d") == 0
    events(bounce(sent["admin1@example.com"]))
    events(complaint(sent["admin2@example.com"]))
    events(delivery(sent["admin3@example.com"]))
    settle(app)
    metrics = client.get("/metrics").get_data(as_text=True)
    for window in ("24h", "7d"):
        assert rate(metrics, "bounce", window) == pytest.approx(1 / 3)
        assert rate(metrics, "complaint", window) == pytest.approx(1 / 3)
    for status in ("delivered", "bounced", "complained", "suppressed"):
        assert f'marketplace_notifications{{status="{status}"}}' in metrics


def test_an_event_for_an_email_still_being_sent_is_read_again_later(
    app,
    client,
    admins,  # noqa: F811
    events,
    sent,
):
    """SES's event outran the recording of its answer: it waits in the queue."""
    row = sent["admin1@example.com"]
    with app.app_context():
        stored = db.session.get(Notification, row["id"])
        stored.status, stored.message_id = "sending", None
        db.session.commit()
    events(ses_event("Delivery", row["ses_message_id"], row["recipient"], row["id"]))
    settle(app)
    assert statuses(client, admins[0])["admin1@example.com"] == "sending"
    with app.app_context():  # the answer is recorded
        stored = db.session.get(Notification, row["id"])
        stored.status, stored.message_id = "sent", row["ses_message_id"]
        db.session.commit()
    settle(app)
    assert statuses(client, admins[0])["admin1@example.com"] == "delivered"


def test_an_event_for_no_email_of_the_service_is_dropped(app, client, admins, events, sent):  # noqa: F811
    events(ses_event("Delivery", "0100-someone-else", "other@example.com"))
    settle(app)
    assert {row["status"] for row in emails(client, admins[0]).values()} == {"sent"}
    assert events.sqs.receive_message(QueueUrl=events.url).get("Messages") is None


def test_a_sender_taking_one_email_at_a_time_passes_over_many_suppressed_ones(
    app,
    client,
    admins,  # noqa: F811
    ses,  # noqa: F811
):
    """Claiming one row at a time, a long run of emails to suppressed addresses is written
    off batch after batch and the first deliverable email is still handed out."""
    from app.catalog import service as catalog
    from app.notifications import outbox, suppressions

    with app.app_context():
        suppressions.suppress("admin1@example.com", "bounce", None)
        suppressions.suppress("admin2@example.com", "complaint", None)
        db.session.commit()
        for n in range(30):
            catalog.create_product({**SEED, "sku": f"many-{n}"}, actor=None)
        db.session.commit()
        first = outbox.claim(1)
        assert [row.email.to for row in first] == ["admin3@example.com"]
        statuses = db.session.scalars(select(Notification.status)).all()
    assert statuses.count("suppressed") == 2
