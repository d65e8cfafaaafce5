"""Entry point for uWSGI (`wsgi:app`) and the `flask` command."""

from app import create_app
from app.core.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # One line saying what to set (the `flask` command and uWSGI would print a traceback).
    raise SystemExit(f"configuration error: {exc}") from None
