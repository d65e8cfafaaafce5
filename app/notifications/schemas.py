"""The delivery log's outputs and filters."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.core.fields import Text
from app.notifications.messages import delivery_changes, kind_of
from app.notifications.models import NotificationKind, NotificationStatus

# What the log calls the emails that do not tell of one change.
KINDS = {NotificationKind.IMPORT: "imported", NotificationKind.WEBHOOK_DISABLED: "webhook_disabled"}


class NotificationSchema(Schema):
    id = fields.Integer()
    recipient = fields.String(metadata={"example": "admin@example.com"})
    event_id = fields.Function(
        lambda row: row.event.id,
        metadata={
            "type": "integer",
            "example": 42,
            "description": "The change event it tells of (GET /api/events); for an import's "
            "summary, the first of the import's events.",
        },
    )
    sku = fields.Function(
        lambda row: row.event.sku if row.kind == NotificationKind.CHANGE else None,
        allow_none=True,
        metadata={
            "type": "string",
            "example": "d7iy6euiue",
            "description": "null for an import's summary and a disabled webhook.",
        },
    )
    event = fields.Function(
        lambda row: KINDS.get(row.kind) or kind_of(row.event),
        metadata={
            "type": "string",
            "example": "updated",
            "description": "created, updated, deleted, imported (an import's summary) or "
            "webhook_disabled (the service turned a webhook endpoint off).",
        },
    )
    changes = fields.Function(
        delivery_changes,
        metadata={
            "type": "object",
            "example": {"price": {"old": 300, "new": 500}},
            "description": "Each changed field as {old, new}; for an import's summary, the "
            "counts (created, updated, unchanged) and the first products changed "
            "(products: [{sku, event, changes}]).",
        },
    )
    status = fields.String(
        metadata={
            "example": "sent",
            "description": "pending, sending, sent (accepted by SES), delivered (the "
            "recipient's server accepted it), bounced (a permanent bounce), complained "
            "(marked as spam), suppressed (never handed to SES: the address is on the "
            "suppression list), failed (SES refused or rejected it) or unknown (SES may or may "
            "not have taken it; resent only on purpose).",
        }
    )
    ses_message_id = fields.String(
        attribute="message_id",
        allow_none=True,
        metadata={
            "example": "0100018c1d2e3f4a-5b6c7d8e-aaaa-bbbb-cccc-000000000000-000000",
            "description": "SES's MessageId of the email (null until SES accepted it); "
            "SES's events name the email by it.",
        },
    )
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime(format="iso")
    sent_at = fields.DateTime(format="iso", allow_none=True)


class TrySchema(Schema):
    at = fields.DateTime(format="iso")
    outcome = fields.String(
        metadata={
            "example": "sent",
            "description": "sent, retry (refused, tried again later), failed (refused for "
            "good) or unknown (SES may or may not have taken it).",
        }
    )
    error = fields.String(allow_none=True)
    duration_ms = fields.Integer(allow_none=True)


class NotificationDetailSchema(NotificationSchema):
    tries = fields.List(
        fields.Nested(TrySchema), metadata={"description": "Every try, oldest first."}
    )


class NotificationQuerySchema(Schema):
    status = fields.String(validate=validate.OneOf([s.value for s in NotificationStatus]))
    sku = Text(validate=validate.Length(min=1, max=64))


MAX_SUMMARY_DAYS = 366


class NotificationSummaryQuerySchema(Schema):
    days = fields.Integer(
        load_default=7,
        validate=validate.Range(min=1, max=MAX_SUMMARY_DAYS),
        metadata={"description": "How many UTC days, today included (7 by default)."},
    )


def status_count(description: str) -> fields.Integer:
    return fields.Integer(metadata={"description": description})


class DeliveryCountsSchema(Schema):
    pending = status_count("Due, or waiting for a retry (or for SES's daily quota).")
    sending = status_count("Handed to SES, its answer not yet recorded.")
    sent = status_count("Accepted by SES.")
    failed = status_count("Refused by SES every time.")
    unknown = status_count("SES may or may not have taken it.")
    delivered = status_count("Accepted by the recipient's mail server.")
    bounced = status_count("Bounced for good.")
    complained = status_count("Marked as spam by the recipient.")
    suppressed = status_count("Never handed to SES: the address is suppressed.")


class DeliveryDaySchema(DeliveryCountsSchema):
    date = fields.Date(metadata={"description": "The UTC day the emails were written."})


class NotificationSummarySchema(DeliveryCountsSchema):
    start = fields.Date(data_key="from")
    end = fields.Date(data_key="to")
    days = fields.Integer()
    by_day = fields.List(fields.Nested(DeliveryDaySchema))


class SuppressionSchema(Schema):
    email = fields.String(metadata={"example": "admin@example.com"})
    reason = fields.String(
        metadata={
            "example": "bounce",
            "description": "bounce (the address bounced for good) or complaint (its owner "
            "marked an email as spam).",
        }
    )
    since = fields.DateTime(format="iso")
    notification_id = fields.Integer(
        allow_none=True,
        metadata={"description": "The email whose bounce or complaint put it here."},
    )
