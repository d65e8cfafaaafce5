"""The delivery log of product-change emails (admin only)."""

from flask.views import MethodView
from sqlalchemy import select

from app.auth import admin_required
from app.models import Notification
from app.openapi import Blueprint
from app.pagination import page_of
from app.schemas import (
    NotificationQuerySchema,
    NotificationSchema,
    NotificationSummaryQuerySchema,
    NotificationSummarySchema,
)
from app.services.notifications import delivery_summary

blp = Blueprint(
    "notifications",
    __name__,
    url_prefix="/api/notifications",
    description="Every product-change email: to whom, its status, attempts and errors.",
)


@blp.route("")
class Notifications(MethodView):
    @admin_required
    @blp.arguments(NotificationQuerySchema, location="query", as_kwargs=True)
    @blp.response(200, NotificationSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters, status=None, sku=None):
        """List product-change emails, newest first (admin)."""
        query = select(Notification)
        if status:
            query = query.where(Notification.status == status)
        if sku:
            query = query.where(Notification.sku == sku)
        return page_of(query.order_by(Notification.id.desc()), pagination_parameters)


@blp.route("/summary")
class NotificationSummary(MethodView):
    @admin_required
    @blp.arguments(NotificationSummaryQuerySchema, location="query", as_kwargs=True)
    @blp.response(200, NotificationSummarySchema)
    def get(self, days):
        """Count product-change emails by status per day of the last days (admin)."""
        return delivery_summary(days)
