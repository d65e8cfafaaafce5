"""Liveness and readiness for the load balancer and the container's HEALTHCHECK."""

import logging

from flask.views import MethodView
from flask_smorest import abort
from marshmallow import Schema, fields
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.core.extensions import db
from app.core.openapi import Blueprint

log = logging.getLogger(__name__)

health_blp = Blueprint("health", __name__, description="Is the service up, and can it serve?")


class HealthSchema(Schema):
    status = fields.String(metadata={"example": "ok"})


@health_blp.route("/healthz")
class Health(MethodView):
    @health_blp.response(200, HealthSchema)
    def get(self):
        """The process is alive (no dependency is checked)."""
        return {"status": "ok"}


@health_blp.route("/readyz")
class Ready(MethodView):
    @health_blp.response(200, HealthSchema)
    @health_blp.alt_response(503, description="The database is unreachable.")
    def get(self):
        """The database answers: the instance can take traffic."""
        try:
            db.session.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            log.warning("not ready: %s", exc)
            db.session.rollback()
            abort(503, message="The database is unreachable.")
        return {"status": "ready"}
