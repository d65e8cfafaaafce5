"""Users: admins list, create, change and delete accounts (admins and read-only)."""

from flask import url_for
from flask.views import MethodView
from flask_jwt_extended import current_user
from flask_smorest import abort
from sqlalchemy import select

from app.accounts import service
from app.accounts.models import User
from app.accounts.schemas import UserCreateSchema, UserSchema, UserUpdateSchema
from app.accounts.tokens import admin_required
from app.core.errors import ErrorSchema
from app.core.extensions import db
from app.core.openapi import Blueprint
from app.core.pagination import page_of
from app.core.unit_of_work import transaction
from app.events import journal
from app.events.schemas import EventSchema

users_blp = Blueprint(
    "users",
    __name__,
    url_prefix="/api/users",
    description="Accounts: admins (rol 1) and read-only users (rol 2). Admin only.",
)

SEED_USER = {
    "fullname": "arnoldo",
    "password": "cheutere",
    "username": "marado",
    "email": "josuecevedo@xd.com",
    "rol": 2,
}


def get_or_404(user_id: int) -> User:
    user = User.active(user_id)
    if user is None:
        abort(404, message=f"No user with id {user_id}.")
    return user


def lock_or_404(user_id: int) -> User:
    user = User.active(user_id, lock=True)
    if user is None:
        abort(404, message=f"No user with id {user_id}.")
    return user


def update(user_id: int, data: dict) -> User:
    user = lock_or_404(user_id)
    service.update_user(user, data, actor=current_user)
    return user


@users_blp.route("")
class Users(MethodView):
    @admin_required
    @users_blp.response(200, UserSchema(many=True))
    @users_blp.paginate()
    def get(self, pagination_parameters):
        """List active users (admin)."""
        live = select(User).where(User.is_active).order_by(User.id)
        return page_of(live, pagination_parameters)

    @admin_required
    @transaction
    @users_blp.arguments(UserCreateSchema, example=SEED_USER)
    @users_blp.response(201, UserSchema, headers={"Location": {"schema": {"type": "string"}}})
    @users_blp.alt_response(409, schema=ErrorSchema, description="Email or username taken.")
    def post(self, data):
        """Create a user (admin); rol 1 makes an admin, rol 2 a read-only account."""
        user = service.create_user(**data, actor=current_user)
        return user, {"Location": url_for("users.UsersById", user_id=user.id)}


@users_blp.route("/<int(max=2147483647):user_id>")
class UsersById(MethodView):
    @admin_required
    @users_blp.response(200, UserSchema)
    @users_blp.alt_response(404, schema=ErrorSchema, description="No such user.")
    def get(self, user_id):
        """Read one user (admin)."""
        return get_or_404(user_id)

    @admin_required
    @transaction
    @users_blp.arguments(UserUpdateSchema, example={"rol": 1})
    @users_blp.response(200, UserSchema)
    @users_blp.alt_response(409, schema=ErrorSchema, description="Taken, or the last admin.")
    def put(self, data, user_id):
        """Change some fields of a user (admin)."""
        return update(user_id, data)

    @admin_required
    @transaction
    @users_blp.arguments(UserUpdateSchema, example={"fullname": "Arnoldo M."})
    @users_blp.response(200, UserSchema)
    @users_blp.alt_response(409, schema=ErrorSchema, description="Taken, or the last admin.")
    def patch(self, data, user_id):
        """Change some fields of a user (admin); same as PUT."""
        return update(user_id, data)

    @admin_required
    @transaction
    @users_blp.response(204)
    @users_blp.alt_response(409, schema=ErrorSchema, description="The last active admin.")
    def delete(self, user_id):
        """Delete a user (admin); their tokens stop working at once."""
        service.delete_user(lock_or_404(user_id), actor=current_user)


@users_blp.route("/<int(max=2147483647):user_id>/history")
class UserHistory(MethodView):
    @admin_required
    @users_blp.response(200, EventSchema(many=True))
    @users_blp.paginate()
    def get(self, pagination_parameters, user_id):
        """The changes of an account, newest first, a deleted one's too (admin)."""
        if db.session.get(User, user_id) is None:
            abort(404, message=f"No user with id {user_id}, ever.")
        found = page_of(journal.of_user(user_id), pagination_parameters)
        return [event.public() for event in found]
