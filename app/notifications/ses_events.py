"""What SES tells of the emails it took: its events, read from an SQS queue.

SES's configuration set publishes Bounce, Complaint, Delivery, Reject and DeliveryDelay
events to an SNS topic that delivers them to an SQS queue (terraform/ses_events.tf);
`flask worker` reads that queue (``SES_EVENTS_QUEUE_URL``) with long polling:

- A message is deleted only once its effect is committed; one received twice finds its
  effect made and changes nothing, so a message is never lost and never counts twice.
- Both forms are read: SNS's envelope (``{"Type": "Notification", "Message": "<json>"}``)
  and raw message delivery (the event itself). The event is SES's own JSON: event
  publishing's ``eventType`` or a notification's ``notificationType``.
- An email's row is found by SES's message id (``mail.messageId``, kept on the row when SES
  answered), else by the ``X-Marketplace-Notification-Id`` header among ``mail.headers``:
  that resolves a send whose answer was lost (``unknown``).
- Delivery: ``sent`` (or ``unknown``) becomes ``delivered``. A permanent bounce:
  ``bounced``, a complaint: ``complained`` (its ``complaintFeedbackType`` in
  ``last_error``); both put the recipients on the suppression list. Reject: ``failed``
  (SES took the email, then refused to send it). A transient bounce or a DeliveryDelay
  changes nothing: it is logged, SES keeps trying.
- A message that is not such an event is logged, counted and left alone: it comes back
  after the queue's visibility timeout and, after a few receives, SQS moves it to the
  dead-letter queue. It never holds the others back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr

import boto3
from botocore.config import Config as BotoConfig
from sqlalchemy import select

from app.core import metrics
from app.core.addresses import lookup_email
from app.core.columns import utcnow
from app.core.dialect import locked
from app.core.extensions import db
from app.core.unit_of_work import unit_of_work
from app.notifications.mailers import NOTIFICATION_HEADER
from app.notifications.models import Notification, NotificationStatus, SuppressionReason
from app.notifications.suppressions import suppress

log = logging.getLogger(__name__)

Status = NotificationStatus
# SQS's longest long poll; a receive returns at once when a message arrives.
LONG_POLL_SECONDS = 20
# The statuses each outcome may follow: an event about an email already further on (a
# Delivery arriving after the complaint) or the same event again changes nothing.
OUTCOMES = {
    Status.DELIVERED: {Status.SENT, Status.UNKNOWN},
    Status.BOUNCED: {Status.SENT, Status.UNKNOWN, Status.DELIVERED},
    Status.COMPLAINED: {Status.SENT, Status.UNKNOWN, Status.DELIVERED},
    Status.FAILED: {Status.SENT, Status.UNKNOWN},
}


# What a message did when its effect is made (it is then deleted): the others stay.
KEPT = ("malformed", "later", "error")


class Malformed(ValueError):
    """The message is not an SES event the service reads."""


class NotYet(Exception):
    """The event's email is still being sent here: read the message again later."""


@dataclass(frozen=True)
class SesEvent:
    kind: str  # Bounce, Complaint, Delivery, Reject, DeliveryDelay (others are ignored)
    message_id: str
    notification_id: int | None = None
    bounce_type: str | None = None  # Permanent, Transient, Undetermined
    addresses: list[str] = field(default_factory=list)  # bounced or complained
    detail: str | None = None
    timestamp: datetime | None = None


def _json_object(text, what: str) -> dict:
    if not isinstance(text, str | bytes):
        raise Malformed(f"{what} is not text")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise Malformed(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not a JSON object")
    return value


def _header_id(mail: dict) -> int | None:
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == (
            NOTIFICATION_HEADER.lower()
        ):
            try:
                return int(str(header.get("value", "")).strip())
            except ValueError:
                return None
    return None


def _addresses(entries) -> list[str]:
    if not isinstance(entries, list):
        return []
    found = []
    for entry in entries:
        address = entry.get("emailAddress") if isinstance(entry, dict) else None
        if isinstance(address, str) and (address := parseaddr(address)[1] or address):
            found.append(lookup_email(address))
    return found


def _timestamp(mail: dict) -> datetime | None:
    try:
        return datetime.fromisoformat(str(mail.get("timestamp", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


def read(body) -> SesEvent:
    """The SES event a queue message holds, in either form; Malformed if none."""
    data = _json_object(body, "the message")
    if data.get("Type") == "Notification" and "Message" in data:
        data = _json_object(data["Message"], "the SNS message")
    kind = data.get("eventType") or data.get("notificationType")
    mail = data.get("mail")
    if not isinstance(kind, str) or not isinstance(mail, dict):
        raise Malformed("no eventType or notificationType, or no mail")
    message_id = mail.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise Malformed("no mail.messageId")
    common = {
        "kind": kind,
        "message_id": message_id,
        "notification_id": _header_id(mail),
        "timestamp": _timestamp(mail),
    }
    section = data.get(kind[:1].lower() + kind[1:]) or {}
    if not isinstance(section, dict):
        raise Malformed(f"{kind} is not an object")
    if kind == "Bounce":
        bounce_type = section.get("bounceType")
        recipients = section.get("bouncedRecipients")
        diagnostic = next(
            (r.get("diagnosticCode") for r in recipients or [] if isinstance(r, dict)), None
        )
        detail = f"{bounce_type}/{section.get('bounceSubType')}" + (
            f": {diagnostic}" if diagnostic else ""
        )
        return SesEvent(
            **common, bounce_type=bounce_type, addresses=_addresses(recipients), detail=detail
        )
    if kind == "Complaint":
        feedback = section.get("complaintFeedbackType")
        return SesEvent(
            **common,
            addresses=_addresses(section.get("complainedRecipients")),
            detail=feedback if isinstance(feedback, str) else None,
        )
    if kind == "Reject":
        return SesEvent(**common, detail=f"rejected by SES: {section.get('reason')}")
    if kind == "DeliveryDelay":
        return SesEvent(**common, detail=str(section.get("delayType")))
    return SesEvent(**common)


# ---------------------------------------------------------------- applying an event


def _row(event: SesEvent) -> Notification | None:
    row = locked(select(Notification).where(Notification.message_id == event.message_id))
    if row is None and event.notification_id is not None:
        row = locked(select(Notification).where(Notification.id == event.notification_id))
        if row is not None and row.message_id not in (None, event.message_id):
            return None  # another email's header (a forwarded copy): not this one
    return row


def apply(event: SesEvent) -> str:
    """Make the event's effect (committed); what it was, for the log and the metrics."""
    if event.kind == "Bounce" and event.bounce_type != "Permanent":
        log.info("email %s: transient bounce (%s)", event.message_id, event.detail)
        return "transient"
    if event.kind == "DeliveryDelay":
        log.info("email %s: delivery delayed (%s)", event.message_id, event.detail)
        return "delayed"
    target, values = {
        "Delivery": (Status.DELIVERED, {"last_error": None}),
        "Bounce": (Status.BOUNCED, {"last_error": f"bounce: {event.detail}"[:1000]}),
        "Complaint": (Status.COMPLAINED, {"last_error": event.detail}),
        "Reject": (Status.FAILED, {"last_error": (event.detail or "")[:1000]}),
    }.get(event.kind, (None, {}))
    if target is None:
        log.info("email %s: SES event %s ignored", event.message_id, event.kind)
        return "ignored"
    with unit_of_work():
        row = _row(event)
        if row is not None and row.status in (Status.PENDING, Status.SENDING):
            raise NotYet(f"notification {row.id} is {row.status}")
        if target in (Status.BOUNCED, Status.COMPLAINED):
            reason = (
                SuppressionReason.BOUNCE
                if target == Status.BOUNCED
                else SuppressionReason.COMPLAINT
            )
            for address in event.addresses or ([row.recipient] if row is not None else []):
                suppress(address, reason, row.id if row is not None else None)
        if row is None:
            log.warning("SES event %s for an email not found (%s)", event.kind, event.message_id)
            return "unmatched"
        if row.status not in OUTCOMES[target]:
            return "repeated"
        log.info("notification %s: %s (SES %s)", row.id, target, event.kind)
        if row.message_id is None:  # a send whose answer was lost, resolved
            row.message_id = event.message_id
        if row.sent_at is None:
            row.sent_at = event.timestamp or utcnow()
        row.status = target
        for name, value in values.items():
            setattr(row, name, value)
    return str(target)


# ---------------------------------------------------------------- the queue


class EventsQueue:
    """The SQS queue SES's events arrive in."""

    def __init__(self, url: str, region: str | None, wait_seconds: int = LONG_POLL_SECONDS):
        self.url = url
        self.wait_seconds = wait_seconds
        self.client = boto3.client(
            "sqs",
            region_name=region,
            config=BotoConfig(connect_timeout=5, read_timeout=wait_seconds + 10),
        )

    def step(self, wait: bool = True) -> int:
        """Receive up to 10 messages (long polling when ``wait``) and handle each; how many
        were applied and deleted."""
        response = self.client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_seconds if wait else 0,
        )
        return sum(self.handle(message) not in KEPT for message in response.get("Messages", []))

    def handle(self, message: dict) -> str:
        """Apply one message's event, then delete it; a malformed one, or one whose effect
        could not be committed, stays (it comes back, or goes to the dead-letter queue)."""
        try:
            outcome = apply(read(message.get("Body")))
        except Malformed as exc:
            log.error("SES events: malformed message %s: %s", message.get("MessageId"), exc)
            outcome = "malformed"
        except NotYet as exc:
            log.info("SES events: message %s read again later: %s", message.get("MessageId"), exc)
            outcome = "later"
        except Exception:
            log.exception("SES events: message %s not applied", message.get("MessageId"))
            db.session.rollback()
            outcome = "error"
        metrics.SES_EVENTS.labels(outcome).inc()
        if outcome not in KEPT:
            self.client.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return outcome
