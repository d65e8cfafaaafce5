"""Login: email and password in, a bearer token out."""

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import abort

from app.auth import issue_token
from app.errors import ErrorSchema
from app.extensions import db, limiter
from app.rest import Blueprint
from app.schemas import LoginSchema, TokenSchema
from app.security import login_failures_limit
from app.services.accounts import authenticate

blp = Blueprint("auth", __name__, url_prefix="/users", description="Log in for a bearer token.")


def _client() -> str:
    return f"client:{request.remote_addr}"


def _account() -> str:
    body = request.get_json(silent=True)
    email = body.get("email") if isinstance(body, dict) else None
    return f"account:{email.strip().lower() if isinstance(email, str) else ''}"


def _failed(response) -> bool:
    # Only failed attempts count: a busy office behind one address is never locked out.
    return response.status_code == 401


@blp.route("/login")
class Login(MethodView):
    decorators = [
        limiter.limit(
            login_failures_limit, key_func=_client, deduct_when=_failed, scope="login-client"
        ),
        limiter.limit(
            login_failures_limit, key_func=_account, deduct_when=_failed, scope="login-account"
        ),
    ]

    @blp.doc(security=[])
    @blp.arguments(LoginSchema, example={"email": "admin@example.com", "password": "rgu7ue56ie"})
    @blp.response(200, TokenSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Wrong email or password.")
    @blp.alt_response(429, schema=ErrorSchema, description="Too many failed attempts.")
    def post(self, credentials):
        """Log in with email and password; returns a bearer token."""
        user = authenticate(credentials["email"], credentials["password"])
        if user is None:
            abort(401, message="Wrong email or password.")
        db.session.commit()  # keeps a rehashed password, if argon2's parameters moved on
        token = issue_token(user)
        lifetime = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
        return {
            "Token": token,
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(lifetime.total_seconds()),
        }
