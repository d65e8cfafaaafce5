"""The delivery log of product-change emails (admin only)."""

from flask.views import MethodView
from sqlalchemy import select

from app.accounts.tokens import admin_required
from app.core.openapi import Blueprint
from app.core.pagination import page_of
from app.notifications.models import Notification
from app.notifications.schemas import (
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
            query = query.where(Notification.sku == sku)
        return page_of(query.order_by(Notification.id.desc()), pagination_parameters)


@notifications_blp.route("/summary")
class NotificationSummary(MethodView):
    @admin_required
    @notifications_blp.arguments(NotificationSummaryQuerySchema, location="query", as_kwargs=True)
    @notifications_blp.response(200, NotificationSummarySchema)
    def get(self, days):
        """Count product-change emails by status per day of the last days (admin)."""
        return delivery_summary(days)
