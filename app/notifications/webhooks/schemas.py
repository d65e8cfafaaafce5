"""Webhook endpoints and deliveries as the API takes and shows them."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate

from app.core.fields import Text
from app.notifications.webhooks.models import DeliveryStatus
from app.notifications.webhooks.service import TYPES


def _types(value: list[str]) -> None:
    unknown = [t for t in value if t not in TYPES]
    if unknown:
        raise ValidationError(
            f"Unknown event type(s): {', '.join(map(str, unknown))}; known: {', '.join(TYPES)}."
        )


class EventTypes(fields.List):
    """A list of event types a webhook receives: known ones, each once, at least one."""

    def __init__(self, **kwargs):
        super().__init__(
            fields.String(validate=validate.Length(max=64)),
            validate=[validate.Length(min=1, max=len(TYPES)), _types],
            metadata={
                "example": ["product.updated"],
                "description": "Event types to receive: " + ", ".join(TYPES) + ".",
                "items": {"enum": list(TYPES)},
            },
            **kwargs,
        )

    def _deserialize(self, value, attr, data, **kwargs):
        return list(dict.fromkeys(super()._deserialize(value, attr, data, **kwargs)))


URL_FIELD = {"example": "https://erp.example.com/hooks/catalog"}


class WebhookCreateSchema(Schema):
    url = Text(required=True, validate=validate.Length(min=1, max=2000), metadata=URL_FIELD)
    events = EventTypes(load_default=lambda: list(TYPES))
    description = Text(load_default="", validate=validate.Length(max=500))


class WebhookUpdateSchema(Schema):
    url = Text(validate=validate.Length(min=1, max=2000), metadata=URL_FIELD)
    events = EventTypes()
    description = Text(validate=validate.Length(max=500))
    active = fields.Boolean(truthy={True}, falsy={False})


class WebhookHealthSchema(Schema):
    state = fields.String(
        metadata={
            "description": "healthy, failing (attempts refused since the last "
            "success) or disabled.",
            "example": "healthy",
        }
    )
    pending = fields.Integer(metadata={"description": "Deliveries not tried yet."})
    retrying = fields.Integer(metadata={"description": "Deliveries refused, to be retried."})
    failed = fields.Integer(metadata={"description": "Deliveries refused for 72 hours."})
    oldest_pending_seconds = fields.Float(
        metadata={"description": "Age of the oldest delivery waiting (0: none)."}
    )
    last_success_at = fields.DateTime(format="iso", allow_none=True)
    failing_since = fields.DateTime(format="iso", allow_none=True)
    disabled_reason = fields.String(
        allow_none=True,
        metadata={"description": "Why the service turned it off (null when an admin did)."},
    )


class WebhookSchema(Schema):
    id = fields.Integer()
    url = fields.String(metadata=URL_FIELD)
    events = fields.List(fields.String(), metadata={"example": ["product.updated"]})
    description = fields.String()
    active = fields.Boolean()
    created_at = fields.DateTime(format="iso")
    health = fields.Nested(WebhookHealthSchema)


class WebhookSecretSchema(WebhookSchema):
    secret = fields.String(
        metadata={
            "example": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwXrxJbXNQ9Jk=",
            "description": "The signing secret: shown only in this answer. Verify each "
            "delivery's webhook-signature with it (Standard Webhooks).",
        }
    )


class WebhookAttemptSchema(Schema):
    at = fields.DateTime(format="iso")
    status_code = fields.Integer(
        allow_none=True, metadata={"description": "The answer's status; null: no answer."}
    )
    duration_ms = fields.Integer()
    error = fields.String(allow_none=True)
    response_excerpt = fields.String(
        allow_none=True, metadata={"description": "The start of the answer's body."}
    )


class WebhookDeliverySchema(Schema):
    id = fields.Integer()
    event_id = fields.Function(
        lambda row: row.event.id, metadata={"type": "integer", "example": 42}
    )
    webhook_id = fields.String(
        metadata={
            "example": "msg_2b5kq4zq6xw3m7r1h0c9d8e7fa",
            "description": "The webhook-id header: the same on every attempt of it.",
        }
    )
    status = fields.String(
        metadata={
            "example": "delivered",
            "enum": [s.value for s in DeliveryStatus],
            "description": "pending (not tried yet), retrying, delivered (answered 2xx) or "
            "failed (refused for 72 hours).",
        }
    )
    attempts = fields.List(
        fields.Nested(WebhookAttemptSchema),
        attribute="attempt_rows",
        metadata={"description": "Every attempt, oldest first."},
    )


class WebhookDeliveryQuerySchema(Schema):
    status = fields.String(validate=validate.OneOf([s.value for s in DeliveryStatus]))


class WebhookReplaySchema(Schema):
    after = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=0, max=2**63 - 1),
        metadata={"description": "Send again every event after this one (0: all)."},
    )


class WebhookReplayedSchema(Schema):
    queued = fields.Integer(metadata={"description": "Deliveries queued."})
