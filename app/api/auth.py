"""Login: email and password in, a bearer token out."""

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import abort

from app import metrics
from app.auth import issue_token
from app.errors import ErrorSchema
from app.extensions import db
from app.openapi import Blueprint
from app.schemas import LoginSchema, TokenSchema
from app.services.accounts import authenticate

blp = Blueprint("auth", __name__, url_prefix="/users", description="Log in for a bearer token.")


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema, example={"email": "admin@example.com", "password": "rgu7ue56ie"})
    @blp.response(200, TokenSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Wrong email or password.")
    @blp.alt_response(429, schema=ErrorSchema, description="Too many failed attempts.")
    @blp.alt_response(503, schema=ErrorSchema, description="Too many logins at once.")
    def post(self, credentials):
        """Log in with email and password; returns a bearer token."""
        limits = current_app.extensions["login_limits"]
        address, email = request.remote_addr, credentials["email"]
        with current_app.extensions["password_slots"].take() as free:
            if not free:
                metrics.LOGIN_BUSY.inc()
                abort(
                    503,
                    message="Too many logins at once; try again in a second.",
                    headers={"Retry-After": "1"},
                )
            if wait := limits.reserve(address):
                too_many(wait)
            user = authenticate(email, credentials["password"])
        if user is None:
            metrics.LOGIN_FAILURES.inc()
            if wait := limits.failed(address, email):
                too_many(wait)
            abort(401, message="Wrong email or password.")
        limits.succeeded(address)
        if db.session.dirty:
            db.session.commit()  # keeps a rehashed password, if argon2's parameters moved on
        token = issue_token(user)
        lifetime = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
        return {
            "Token": token,
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(lifetime.total_seconds()),
        }


def too_many(wait: int):
    metrics.LOGIN_LIMITED.inc()
    abort(
        429,
        message=f"Too many failed logins; try again in {wait} s.",
        headers={"Retry-After": str(wait)},
    )
