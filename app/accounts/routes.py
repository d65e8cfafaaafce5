"""Your own account, any role: log in for a token, read your account, change your name or
password, log out."""

from flask import current_app, request
from flask.views import MethodView
from flask_jwt_extended import current_user, get_jwt
from flask_smorest import abort

from app.accounts import guard, service
from app.accounts.models import User
from app.accounts.schemas import LoginSchema, MeUpdateSchema, TokenSchema, UserSchema
from app.accounts.tokens import issue_token, login_required
from app.core.errors import ErrorSchema
from app.core.extensions import db
from app.core.openapi import Blueprint
from app.core.unit_of_work import commit, transaction

account_blp = Blueprint(
    "account",
    __name__,
    url_prefix="/users",
    description="Your own account (rol 1 or 2): log in for a bearer token, read your account, "
    "change your name or password, log out.",
)


@account_blp.route("/login")
class Login(MethodView):
    @account_blp.arguments(
        LoginSchema, example={"email": "admin@example.com", "password": "rgu7ue56ie"}
    )
    @account_blp.response(200, TokenSchema)
    @account_blp.alt_response(401, schema=ErrorSchema, description="Wrong email or password.")
    @account_blp.alt_response(
        429, schema=ErrorSchema, description="Too many failed attempts (Retry-After)."
    )
    @account_blp.alt_response(
        503, schema=ErrorSchema, description="Too many password checks at once (Retry-After)."
    )
    def post(self, credentials):
        """Log in with email and password; returns a bearer token."""
        email = credentials["email"]
        user = guard.verify(
            lambda: service.authenticate(email, credentials["password"]),
            address=request.remote_addr,
            account=email,
        )
        if user is None:
            abort(401, message="Wrong email or password.")
        if db.session.dirty:
            commit()  # keeps a rehashed password, if argon2's parameters moved on
        token = issue_token(user)
        lifetime = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
        return {
            "Token": token,
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(lifetime.total_seconds()),
        }


def own_account(lock: bool = False) -> User:
    """The row of the token's own account (401 if it is gone meanwhile)."""
    user = User.active(current_user.id, lock=lock)
    if user is None:
        abort(401, message="The token is no longer valid for this account; log in again.")
    return user


def check_current_password(user: User, password: str) -> None:
    """The current password, verified through the password guard like a login, and also
    limited per token: a stolen token cannot guess it faster than a login could."""
    ok = guard.verify(
        lambda: service.check_password(user, password),
        address=request.remote_addr,
        account=user.email,
        token=get_jwt()["jti"],
    )
    if not ok:
        raise service.WrongPassword()


@account_blp.route("/me")
class Me(MethodView):
    @login_required
    @account_blp.response(200, UserSchema)
    def get(self):
        """Read your own account."""
        return own_account()

    @login_required
    @transaction
    @account_blp.arguments(
        MeUpdateSchema,
        example={"fullname": "Arnoldo M."},
        description="A new password needs current_password and ends every session of the "
        "account, this token's too: log in again with the new password.",
    )
    @account_blp.response(200, UserSchema)
    @account_blp.alt_response(
        429, schema=ErrorSchema, description="Too many wrong passwords (Retry-After)."
    )
    @account_blp.alt_response(
        503, schema=ErrorSchema, description="Too many password checks at once (Retry-After)."
    )
    def patch(self, data):
        """Change your own name or password (a new password needs current_password)."""
        if "password" in data:  # checked before the row is locked (argon2 takes a while)
            check_current_password(own_account(), data["current_password"])
        return service.change_own_account(own_account(lock=True), data)


@account_blp.route("/logout")
class Logout(MethodView):
    @login_required
    @transaction
    @account_blp.response(204)
    def post(self):
        """Log out: the token sent stops working at once (other sessions stay)."""
        token = get_jwt()
        service.revoke_token(token["jti"], current_user.id, token.get("exp"))
