"""The delivery log of product-change emails (admin only)."""

from flask.views import MethodView
from flask_smorest import abort
from sqlalchemy import select

from app.accounts.tokens import admin_required
from app.core.errors import ErrorSchema
from app.core.extensions import db
from app.core.openapi import Blueprint
from app.core.pagination import page_of
from app.core.text import key
from app.events.models import Event
from app.notifications.models import Notification
from app.notifications.schemas import (
    NotificationDetailSchema,
    NotificationQuerySchema,
    NotificationSchema,
    NotificationSummaryQuerySchema,
    NotificationSummarySchema,
)
from app.notifications.service import delivery_summary

notifications_blp = Blueprint(
    "notifications",
    __name__,
    url_prefix="/api/notifications",
    description="Every product-change email: to whom, its status, attempts and errors.",
)


@notifications_blp.route("")
class Notifications(MethodView):
    @admin_required
    @notifications_blp.arguments(NotificationQuerySchema, location="query", as_kwargs=True)
    @notifications_blp.response(200, NotificationSchema(many=True))
    @notifications_blp.paginate()
    def get(self, pagination_parameters, status=None, sku=None):
        """List product-change emails, newest first (admin)."""
        query = select(Notification)
        if status:
            query = query.where(Notification.status == status)
        if sku:
            query = query.where(Notification.event.has(Event.sku_key == key(sku)))
        return page_of(query.order_by(Notification.id.desc()), pagination_parameters)


@notifications_blp.route("/<int(max=2147483647):notification_id>")
class NotificationById(MethodView):
    @admin_required
    @notifications_blp.response(200, NotificationDetailSchema)
    @notifications_blp.alt_response(404, schema=ErrorSchema, description="No such email.")
    def get(self, notification_id):
        """Read one product-change email with every try (admin)."""
        row = db.session.get(Notification, notification_id)
        if row is None:
            abort(404, message=f"No email with id {notification_id}.")
        return row


@notifications_blp.route("/summary")
class NotificationSummary(MethodView):
    @admin_required
    @notifications_blp.arguments(NotificationSummaryQuerySchema, location="query", as_kwargs=True)
    @notifications_blp.response(200, NotificationSummarySchema)
    def get(self, days):
        """Count product-change emails by status per day of the last days (admin)."""
        return delivery_summary(days)
