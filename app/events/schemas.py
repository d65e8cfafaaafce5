"""Change events as the API shows them, and the feed's query."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.events.models import EventType


class ActorSchema(Schema):
    id = fields.Integer()
    email = fields.String(metadata={"example": "admin@example.com"})


class EventSchema(Schema):
    """One committed change. ``sku`` for a product's events, ``user_id`` for an account's;
    ``reverted_to`` only on a revert."""

    id = fields.Integer(metadata={"example": 42})
    type = fields.String(metadata={"example": "product.updated", "enum": list(EventType)})
    at = fields.String(metadata={"format": "date-time", "example": "2026-12-06T10:15:00+00:00"})
    actor = fields.Nested(
        ActorSchema,
        allow_none=True,
        metadata={"description": "Who made the change; null: an operator (command line)."},
    )
    sku = fields.String(metadata={"example": "d7iy6euiue"})
    user_id = fields.Integer()
    changes = fields.Dict(
        metadata={
            "example": {"price": {"old": 300, "new": 500}},
            "description": "Each changed field as {old, new}; a new password shows only "
            '{"changed": true}.',
        }
    )
    version = fields.Integer(
        allow_none=True, metadata={"description": "The product's version after it."}
    )
    reverted_to = fields.Integer(
        metadata={"description": "The event whose values a revert restored."}
    )


class FeedQuerySchema(Schema):
    after = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=2**63 - 1),
        metadata={"description": "The last id you have seen (0: from the start)."},
    )
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    type = fields.String(
        validate=validate.OneOf(list(EventType)), metadata={"description": "Only this type."}
    )


class FeedSchema(Schema):
    events = fields.List(fields.Nested(EventSchema))
    last_id = fields.Integer(
        metadata={
            "description": "The id of the page's last event, or the `after` given: the "
            "next page is ?after=<last_id>."
        }
    )
