"""The Marketplace catalog service."""

from __future__ import annotations

from flask import Flask

from app import (
    auth,
    cache,
    cached_reads,
    cli,
    database,
    errors,
    extensions,
    logs,
    metrics,
    security,
    streams,
)
from app.api import (
    account,
    catalog,
    dashboard,
    docs,
    health,
    notifications,
    products,
    stats,
    users,
)
from app.api import auth as login
from app.api import metrics as metrics_api
from app.config import INSTANCE_DIR, Config, config_for_environment
from app.services import notifications as notification_rows


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
    app.wsgi_app = TrailingSlashOptional(cached_reads.CachedReads(app, app.wsgi_app))
    return app


def configure_logging(app: Flask) -> None:
    logs.configure(app)


def register_extensions(app: Flask) -> None:
    database.init_app(app)
    auth.init_app(app)
    extensions.openapi.init_app(app)
    security.init_app(app)
    metrics.init_app(app)
    streams.init_app(app)
    cache.init_app(app)
    notification_rows.init_app(app)


def register_blueprints(app: Flask) -> None:
    for module in (login, products, catalog, users, account, notifications, stats, health):
        extensions.openapi.register_blueprint(module.blp)
    app.register_blueprint(docs.blp)
    app.register_blueprint(dashboard.blp)
    app.register_blueprint(metrics_api.blp)


def register_errorhandlers(app: Flask) -> None:
    errors.register_error_handlers(app)


def register_commands(app: Flask) -> None:
    for group in (cli.users, cli.notifications, cli.stats, cli.views, cli.deploy, cli.worker):
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
