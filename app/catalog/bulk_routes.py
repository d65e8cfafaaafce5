"""The whole catalog at once (admin): import a CSV or JSON file, export one."""

from __future__ import annotations

import io
from collections.abc import Iterator

from flask import Response, current_app, request, stream_with_context
from flask.views import MethodView
from flask_jwt_extended import current_user
from flask_smorest import abort

from app.accounts.tokens import admin_required
from app.catalog import bulk
from app.catalog.schemas import (
    ExportQuerySchema,
    ImportQuerySchema,
    ImportRefusedSchema,
    ImportReportSchema,
    ProductImportSchema,
)
from app.core.columns import utcnow
from app.core.errors import ErrorSchema
from app.core.openapi import Blueprint
from app.core.unit_of_work import HEADER as IDEMPOTENCY_KEY
from app.core.unit_of_work import transaction

catalog_blp = Blueprint(
    "catalog",
    __name__,
    url_prefix="/api/catalog",
    description="The whole catalog at once (admin): import products from a CSV file or a "
    "JSON array, all or nothing; export them in the same columns.",
)

CSV_EXAMPLE = "sku,name,price,mark,quantity\nd7iy6euiue,zapatos,300,chabelo,5\n"
IMPORT_BODY = {
    "required": True,
    "description": "The products: a CSV file whose first line names the columns (sku, "
    "name, price, mark and optionally quantity), UTF-8 with or without a byte order mark, "
    "or a JSON array of product objects. A sku of a live product (any case) updates it; "
    "any other sku creates a product. Without quantity, a new product gets 0 and an "
    "existing one keeps its own.",
    "content": {
        "text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE},
        "application/json": {
            "schema": {"type": "array", "items": {"$ref": "#/components/schemas/ProductImport"}},
            "example": [{"sku": "d7iy6euiue", "name": "zapatos", "price": 300, "mark": "chabelo"}],
        },
    },
}
EXPORT_RESPONSE = {
    "200": {
        "description": "Every live product matching the filters, as a file to save "
        "(Content-Disposition), in the columns the import takes.",
        "content": {
            "text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE},
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/ProductImport"},
                }
            },
        },
        "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
    }
}


@catalog_blp.before_request
def import_body_limit():
    """The import takes larger bodies than the other routes (IMPORT_MAX_BODY_BYTES)."""
    if request.endpoint == "catalog.CatalogImport":
        request.max_content_length = current_app.config["IMPORT_MAX_BODY_BYTES"]


def body_rows() -> Iterator[bulk.Row]:
    """The rows of the request's file, by its Content-Type, read as they are checked."""
    max_rows = current_app.config["IMPORT_MAX_ROWS"]
    if request.mimetype == "text/csv":
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            abort(415, message="Send the CSV file as UTF-8 (charset=utf-8).")
        # A CSV file is read as it arrives, unless the Idempotency-Key's fingerprint has
        # read it whole already.
        if IDEMPOTENCY_KEY in request.headers:
            return bulk.read_csv(io.BytesIO(request.get_data(cache=True)), max_rows)
        return bulk.read_csv(request.stream, max_rows)
    if request.is_json:
        return bulk.read_json(request.get_data(cache=True), max_rows)
    abort(
        415,
        message="Send a CSV file ('Content-Type: text/csv') or a JSON array of products "
        "('Content-Type: application/json').",
    )


def refuse(refused: bulk.ImportRefused):
    errors = [{"row": e.row, "field": e.field, "message": e.message} for e in refused.errors]
    abort(refused.code, message=refused.message, errors={"rows": errors} if errors else None)


@catalog_blp.route("/import")
class CatalogImport(MethodView):
    @catalog_blp.doc(requestBody=IMPORT_BODY)
    @admin_required
    @transaction
    @catalog_blp.arguments(ImportQuerySchema, location="query")
    @catalog_blp.response(200, ImportReportSchema)
    @catalog_blp.alt_response(400, schema=ErrorSchema, description="The file cannot be read.")
    @catalog_blp.alt_response(413, schema=ErrorSchema, description="The file is too large.")
    @catalog_blp.alt_response(415, schema=ErrorSchema, description="Neither CSV nor JSON.")
    @catalog_blp.alt_response(
        422,
        schema=ImportRefusedSchema,
        description="Errors in the file, each with its row and field: nothing was imported.",
    )
    def post(self, query):
        """Create and update products from a CSV file or a JSON array, all or nothing (admin)."""
        try:
            valid = bulk.check(body_rows())
        except bulk.ImportRefused as refused:
            refuse(refused)
        return bulk.import_products(valid, current_user, dry_run=query["dry_run"])


@catalog_blp.route("/export")
class CatalogExport(MethodView):
    @catalog_blp.doc(responses=EXPORT_RESPONSE)
    @admin_required
    @catalog_blp.arguments(ExportQuerySchema, location="query")
    @catalog_blp.response(200, ProductImportSchema(many=True))
    def get(self, query):
        """Download every live product matching the list's filters, as CSV or JSON (admin)."""
        if query["format"] == "csv":
            body, mimetype = bulk.csv_text(query, query["bom"]), "text/csv"
        else:
            body, mimetype = bulk.json_text(query), "application/json"
        filename = f"catalog-{utcnow():%Y-%m-%d}.{query['format']}"
        return Response(
            stream_with_context(body),
            mimetype=mimetype,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
