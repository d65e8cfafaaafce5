"""Your own account: read it, change your name or password, log out. Any role."""

from flask import current_app, request
from flask.views import MethodView
from flask_jwt_extended import current_user, get_jwt
from flask_smorest import abort

from app import metrics
from app.api.auth import too_many
from app.api.users import IDEMPOTENCY_KEY
from app.auth import login_required
from app.errors import ErrorSchema
from app.openapi import Blueprint
from app.schemas import MeUpdateSchema, UserSchema
from app.services import accounts
from app.writes import writes

blp = Blueprint(
    "account",
    __name__,
    url_prefix="/users",
    description="Your own account (rol 1 or 2): read it, change your name or password, log out.",
)


def check_current_password(password: str) -> None:
    """The current password, verified like a login: a wrong one counts against the
    account's failed-login limit, so a stolen token cannot guess it faster."""
    limits = current_app.extensions["login_limits"]
    with current_app.extensions["password_slots"].take() as free:
        if not free:
            metrics.LOGIN_BUSY.inc()
            abort(
                503,
                message="Too many password checks at once; try again in a second.",
                headers={"Retry-After": "1"},
            )
        ok = accounts.check_password(current_user, password)
    if not ok:
        metrics.LOGIN_FAILURES.inc()
        if wait := limits.failed(request.remote_addr, current_user.email):
            too_many(wait)
        raise accounts.WrongPassword()


@blp.route("/me")
class Me(MethodView):
    @login_required
    @blp.response(200, UserSchema)
    def get(self):
        """Read your own account."""
        return current_user

    @blp.doc(parameters=IDEMPOTENCY_KEY)
    @login_required
    @writes
    @blp.arguments(
        MeUpdateSchema,
        example={"fullname": "Arnoldo M."},
        description="A new password needs current_password and ends every session of the "
        "account, this token's too: log in again with the new password.",
    )
    @blp.response(200, UserSchema)
    @blp.alt_response(429, schema=ErrorSchema, description="Too many wrong passwords.")
    @blp.alt_response(503, schema=ErrorSchema, description="Too many password checks at once.")
    def patch(self, data):
        """Change your own name or password (a new password needs current_password)."""
        if "password" in data:
            check_current_password(data["current_password"])
        user = accounts.lock_user(current_user.id)
        if user is None:
            abort(401, message="The token is no longer valid for this account; log in again.")
        return accounts.change_own_account(user, data)


@blp.route("/logout")
class Logout(MethodView):
    @login_required
    @writes
    @blp.response(204)
    def post(self):
        """Log out: the token sent stops working at once (other sessions stay)."""
        token = get_jwt()
        accounts.revoke_token(token["jti"], current_user.id, token.get("exp"))
