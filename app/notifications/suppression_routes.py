"""The suppression list: addresses no email is sent to (admin only)."""

from flask.views import MethodView
from flask_smorest import abort

from app.accounts.tokens import admin_required
from app.core.errors import ErrorSchema
from app.core.extensions import db
from app.core.openapi import Blueprint
from app.core.unit_of_work import transaction
from app.notifications import suppressions
from app.notifications.schemas import SuppressionSchema

suppressions_blp = Blueprint(
    "suppressions",
    __name__,
    url_prefix="/api/suppressions",
    description="Addresses that bounced for good or complained: their emails are never "
    "handed to SES until the entry is lifted. Admin only.",
)


@suppressions_blp.route("")
class Suppressions(MethodView):
    @admin_required
    @suppressions_blp.response(200, SuppressionSchema(many=True))
    def get(self):
        """List the suppressed addresses, newest first (admin)."""
        return list(db.session.scalars(suppressions.listing()))


@suppressions_blp.route("/<path:email>")
class SuppressionByEmail(MethodView):
    @admin_required
    @transaction
    @suppressions_blp.response(204)
    @suppressions_blp.alt_response(404, schema=ErrorSchema, description="Not suppressed.")
    def delete(self, email):
        """Lift an address's suppression: later emails go to it again (admin)."""
        if not suppressions.lift(email):
            abort(404, message="That address is not suppressed.")
