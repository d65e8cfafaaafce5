"""The event feed (admin): every committed change, in order, never skipping one; beside
the emails (and webhooks), the way other systems learn of changes by asking."""

from flask.views import MethodView

from app.accounts.tokens import admin_required
from app.core.openapi import Blueprint
from app.events import journal
from app.events.schemas import FeedQuerySchema, FeedSchema

events_blp = Blueprint(
    "events",
    __name__,
    url_prefix="/api/events",
    description="Every committed change of a product or an account, oldest first (admin).",
)


@events_blp.route("")
class Feed(MethodView):
    @admin_required
    @events_blp.arguments(FeedQuerySchema, location="query")
    @events_blp.response(200, FeedSchema)
    def get(self, query):
        """Read the events after an id, oldest first (admin): poll with ?after=<last_id>."""
        types = [query["type"]] if query.get("type") else None
        found = journal.feed(query["after"], query["limit"], types)
        return {
            "events": [event.public() for event in found],
            "last_id": found[-1].id if found else query["after"],
        }
