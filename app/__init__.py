"""The Marketplace catalog service."""

from __future__ import annotations

from flask import Flask

from app import cli
from app.accounts import guard, tokens
from app.accounts.admin_routes import users_blp
from app.accounts.routes import account_blp
from app.catalog import cache
from app.catalog.bulk_routes import catalog_blp
from app.catalog.fast import FastReads
from app.catalog.routes import products_blp
from app.core import database, errors, http, logs, redis_client
from app.core.config import INSTANCE_DIR, Config, config_for_environment
from app.core.extensions import openapi
from app.events import journal
from app.notifications.feed_routes import events_blp
from app.notifications.routes import notifications_blp
from app.notifications.suppression_routes import suppressions_blp
from app.notifications.webhooks.routes import webhooks_blp
from app.ops.dashboard import dashboard_blp
from app.ops.docs import docs_blp
from app.ops.health import health_blp
from app.ops.scrape import metrics_blp
from app.stats.routes import stats_blp
from app.views import recorder


def create_app(config: Config | None = None) -> Flask:
    config = config or config_for_environment()
    config.validate()
    app = Flask(__name__, instance_path=str(INSTANCE_DIR))
    app.config.from_object(config)
    logs.configure(app)
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    app.wsgi_app = http.TrailingSlashOptional(FastReads(app, app.wsgi_app))
    return app


def register_extensions(app: Flask) -> None:
    database.init_app(app)
    tokens.init_app(app)
    openapi.init_app(app)
    http.init_app(app)
    guard.init_app(app)
    redis_client.init_app(app)
    cache.init_app(app)
    journal.init_app(app)
    recorder.init_app(app)


def register_blueprints(app: Flask) -> None:
    # The API's blueprints, in the order the OpenAPI document lists them.
    for blueprint in (
        account_blp,
        products_blp,
        catalog_blp,
        users_blp,
        notifications_blp,
        suppressions_blp,
        events_blp,
        webhooks_blp,
        stats_blp,
        health_blp,
    ):
        openapi.register_blueprint(blueprint)
    # Pages and files outside the API document.
    for blueprint in (docs_blp, dashboard_blp, metrics_blp):
        app.register_blueprint(blueprint)


def register_errorhandlers(app: Flask) -> None:
    errors.register_error_handlers(app)


def register_commands(app: Flask) -> None:
    for group in cli.GROUPS:
        app.cli.add_command(group)
