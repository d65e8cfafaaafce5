"""The Marketplace catalog service."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask

from app import extensions
from app.config import INSTANCE_DIR, Config, config_for_environment

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_app(config: Config | None = None) -> Flask:
    config = config or config_for_environment()
    config.validate()
    app = Flask(__name__, instance_path=str(INSTANCE_DIR))
    app.config.from_object(config)
    configure_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    app.wsgi_app = TrailingSlashOptional(app.wsgi_app)
    return app


def configure_logging(app: Flask) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


def register_extensions(app: Flask) -> None:
    from app import (
        auth,  # noqa: F401  (registers the JWT loaders)
        security,
        streams,
    )
    from app.schemas import Price, price_properties
    from app.services import notifications

    # The name ``api`` is also the blueprint package (app.api), so go through the module.
    rest = extensions.api
    extensions.db.init_app(app)
    extensions.migrate.init_app(
        app, extensions.db, directory=str(MIGRATIONS_DIR), render_as_batch=True
    )
    extensions.jwt.init_app(app)
    streams.init_app(app)
    notifications.init_app(app)
    security.init_app(app)
    rest.init_app(app)
    rest.register_field(Price, "number", None)
    rest.ma_plugin.converter.add_attribute_function(price_properties)
    rest.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )


def register_blueprints(app: Flask) -> None:
    from app.api import auth, docs, health, notifications, products, stats, users

    for module in (auth, products, users, notifications, stats, health):
        extensions.api.register_blueprint(module.blp)
    app.register_blueprint(docs.blp)


def register_errorhandlers(app: Flask) -> None:
    from app.errors import register_error_handlers, register_rule_errors, remove_session_safely

    register_error_handlers(app)
    register_rule_errors(app)
    app.teardown_appcontext(remove_session_safely)


def register_commands(app: Flask) -> None:
    from app.cli import deploy, notifications, stats, users, views, worker_command

    for group in (users, notifications, stats, views, deploy, worker_command):
        app.cli.add_command(group)


class TrailingSlashOptional:
    """Serve ``/x/<id>/`` exactly as ``/x/<id>`` (the seed's clients use both), no redirect."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if len(path) > 1 and path.endswith("/"):
            environ["PATH_INFO"] = path.rstrip("/") or "/"
        return self.wsgi_app(environ, start_response)
