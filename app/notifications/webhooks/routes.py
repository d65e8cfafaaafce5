"""Webhook endpoints, their delivery log, retry and replay (admin only)."""

from flask import url_for
from flask.views import MethodView
from flask_smorest import abort
from sqlalchemy.orm import selectinload

from app.accounts.tokens import admin_required
from app.core.errors import ErrorSchema
from app.core.extensions import db
from app.core.openapi import Blueprint
from app.core.pagination import page_of
from app.core.unit_of_work import transaction
from app.notifications.webhooks import service
from app.notifications.webhooks.models import WebhookDelivery, WebhookEndpoint
from app.notifications.webhooks.schemas import (
    WebhookCreateSchema,
    WebhookDeliveryQuerySchema,
    WebhookDeliverySchema,
    WebhookReplayedSchema,
    WebhookReplaySchema,
    WebhookSchema,
    WebhookSecretSchema,
    WebhookUpdateSchema,
)

webhooks_blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/api/webhooks",
    description="Endpoints that receive the catalog's changes as signed webhooks (Standard "
    "Webhooks), their delivery log, retry and replay. Admin only.",
)

SEED_WEBHOOK = {
    "url": "https://erp.example.com/hooks/catalog",
    "events": ["product.created", "product.updated", "product.deleted"],
    "description": "ERP",
}
ID = "<int(max=2147483647):webhook_id>"
NOT_FOUND = {"schema": ErrorSchema, "description": "No such webhook endpoint."}


def get_or_404(webhook_id: int, lock: bool = False) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.by_id(webhook_id, lock=lock)
    if endpoint is None:
        abort(404, message=f"No webhook endpoint with id {webhook_id}.")
    return endpoint


def shown(endpoint: WebhookEndpoint, health: dict | None = None, secret: str | None = None):
    """An endpoint as the API shows it (its secret only when just made)."""
    body = {
        name: getattr(endpoint, name)
        for name in ("id", "url", "events", "description", "active", "created_at")
    }
    body["health"] = health or service.health([endpoint])[endpoint.id]
    if secret is not None:
        body["secret"] = secret
    return body


@webhooks_blp.route("")
class Webhooks(MethodView):
    @admin_required
    @webhooks_blp.response(200, WebhookSchema(many=True))
    def get(self):
        """List the webhook endpoints with their health (admin)."""
        endpoints = list(db.session.scalars(service.live_endpoints()))
        health = service.health(endpoints)
        return [shown(endpoint, health[endpoint.id]) for endpoint in endpoints]

    @admin_required
    @transaction
    @webhooks_blp.arguments(WebhookCreateSchema, example=SEED_WEBHOOK)
    @webhooks_blp.response(
        201, WebhookSecretSchema, headers={"Location": {"schema": {"type": "string"}}}
    )
    @webhooks_blp.alt_response(409, schema=ErrorSchema, description="Too many endpoints.")
    def post(self, data):
        """Register an endpoint (admin); the answer shows its signing secret, once."""
        endpoint, secret = service.create_endpoint(**data)
        location = url_for("webhooks.WebhookById", webhook_id=endpoint.id)
        return shown(endpoint, secret=secret), {"Location": location}


@webhooks_blp.route(f"/{ID}")
class WebhookById(MethodView):
    @admin_required
    @webhooks_blp.response(200, WebhookSchema)
    @webhooks_blp.alt_response(404, **NOT_FOUND)
    def get(self, webhook_id):
        """Read one endpoint with its health (admin)."""
        return shown(get_or_404(webhook_id))

    @admin_required
    @transaction
    @webhooks_blp.arguments(WebhookUpdateSchema, example={"active": True})
    @webhooks_blp.response(200, WebhookSchema)
    @webhooks_blp.alt_response(404, **NOT_FOUND)
    def patch(self, data, webhook_id):
        """Change an endpoint's url, events, description or active (admin)."""
        return shown(service.update_endpoint(get_or_404(webhook_id, lock=True), data))

    @admin_required
    @transaction
    @webhooks_blp.response(204)
    @webhooks_blp.alt_response(404, **NOT_FOUND)
    def delete(self, webhook_id):
        """Delete an endpoint (admin): nothing more is sent to it."""
        service.delete_endpoint(get_or_404(webhook_id, lock=True))


@webhooks_blp.route(f"/{ID}/rotate-secret")
class RotateSecret(MethodView):
    @admin_required
    @transaction
    @webhooks_blp.response(200, WebhookSecretSchema)
    @webhooks_blp.alt_response(404, **NOT_FOUND)
    def post(self, webhook_id):
        """Give an endpoint a new secret (admin); the old one also signs for 24 hours."""
        endpoint = get_or_404(webhook_id, lock=True)
        secret = service.rotate_secret(endpoint)
        return shown(endpoint, secret=secret)


@webhooks_blp.route(f"/{ID}/deliveries")
class Deliveries(MethodView):
    @admin_required
    @webhooks_blp.arguments(WebhookDeliveryQuerySchema, location="query", as_kwargs=True)
    @webhooks_blp.response(200, WebhookDeliverySchema(many=True))
    @webhooks_blp.alt_response(404, **NOT_FOUND)
    @webhooks_blp.paginate(page_size=100)
    def get(self, pagination_parameters, webhook_id, status=None):
        """List an endpoint's deliveries with every attempt, newest first (admin)."""
        query = service.deliveries(get_or_404(webhook_id), status)
        return page_of(
            query.options(selectinload(WebhookDelivery.attempt_rows)), pagination_parameters
        )


@webhooks_blp.route(f"/{ID}/deliveries/<int(max=9223372036854775807):delivery_id>/retry")
class RetryDelivery(MethodView):
    @admin_required
    @transaction
    @webhooks_blp.response(202, WebhookDeliverySchema)
    @webhooks_blp.alt_response(404, schema=ErrorSchema, description="No such delivery.")
    @webhooks_blp.alt_response(409, schema=ErrorSchema, description="The endpoint is disabled.")
    def post(self, webhook_id, delivery_id):
        """Send a delivery again now, under the same webhook-id (admin)."""
        endpoint = get_or_404(webhook_id, lock=True)
        delivery = db.session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.endpoint_id != endpoint.id:
            abort(404, message=f"No delivery {delivery_id} of webhook endpoint {webhook_id}.")
        return service.retry(endpoint, delivery)


@webhooks_blp.route(f"/{ID}/replay")
class Replay(MethodView):
    @admin_required
    @transaction
    @webhooks_blp.arguments(WebhookReplaySchema, example={"after": 0})
    @webhooks_blp.response(202, WebhookReplayedSchema)
    @webhooks_blp.alt_response(404, **NOT_FOUND)
    @webhooks_blp.alt_response(409, schema=ErrorSchema, description="The endpoint is disabled.")
    def post(self, data, webhook_id):
        """Queue every event after one again for an endpoint, same webhook-ids (admin)."""
        endpoint = get_or_404(webhook_id, lock=True)
        return {"queued": service.replay(endpoint, data["after"])}
