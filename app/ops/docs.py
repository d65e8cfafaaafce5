"""Swagger UI's files, served from the swagger-ui-bundle package (no CDN, works offline).

flask-smorest renders the page at /api/docs and loads these files from /api/docs/static/.
"""

from flask import Blueprint
from swagger_ui_bundle import swagger_ui_path

docs_blp = Blueprint(
    "swagger_ui",
    __name__,
    static_folder=str(swagger_ui_path),
    static_url_path="/api/docs/static",
)
