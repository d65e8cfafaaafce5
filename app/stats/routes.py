"""View statistics (admin only), as JSON or CSV."""

from __future__ import annotations

from flask import Response, request
from flask.views import MethodView
from flask_smorest import abort

from app.accounts.tokens import admin_required
from app.catalog.models import Product
from app.core.errors import ErrorSchema
from app.core.openapi import Blueprint
from app.core.spreadsheets import csv_document
from app.stats.schemas import (
    CatalogStatsSchema,
    ProductStatsSchema,
    StatsQuerySchema,
    TopProductSchema,
    TopQuerySchema,
)
from app.stats.service import catalog_stats, product_stats, top_products

stats_blp = Blueprint(
    "stats",
    __name__,
    url_prefix="/api",
    description="How often products are consulted: per product and day, and the most viewed. "
    "Add ?format=csv or 'Accept: text/csv' for CSV.",
)

CSV = {"text/csv": {"schema": {"type": "string"}}}


def json_or_csv(json_schema: dict) -> dict:
    """Document both answers of a statistics route: JSON (default) and CSV."""
    return {"responses": {"200": {"content": {"application/json": {"schema": json_schema}, **CSV}}}}


CATALOG_STATS_DOC = json_or_csv({"$ref": "#/components/schemas/CatalogStats"})
PRODUCT_STATS_DOC = json_or_csv({"$ref": "#/components/schemas/ProductStats"})
TOP_PRODUCTS_DOC = json_or_csv(
    {"type": "array", "items": {"$ref": "#/components/schemas/TopProduct"}}
)


def wants_csv(query: dict) -> bool:
    if query.get("format"):
        return query["format"] == "csv"
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv"


def csv_response(header: list[str], rows: list[list], filename: str, bom: bool) -> Response:
    return Response(
        "".join(csv_document(header, [rows], bom)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def date_range(query: dict) -> str:
    return f"{query['start'].isoformat()}-to-{query['end'].isoformat()}"


def by_day_csv(by_day: list[dict], filename: str, bom: bool) -> Response:
    rows = [
        [d["date"].isoformat(), d["views"], d["anonymous_views"], d["registered_views"]]
        for d in by_day
    ]
    return csv_response(
        ["date", "views", "anonymous_views", "registered_views"], rows, filename, bom
    )


@stats_blp.route("/stats/views")
class CatalogStats(MethodView):
    @stats_blp.doc(**CATALOG_STATS_DOC)
    @admin_required
    @stats_blp.arguments(StatsQuerySchema, location="query")
    @stats_blp.response(200, CatalogStatsSchema)
    def get(self, query):
        """Views of the whole catalog per day in a range (admin); deleted products included."""
        stats = catalog_stats(query["start"], query["end"])
        if not wants_csv(query):
            return stats
        return by_day_csv(stats["by_day"], f"views-{date_range(query)}.csv", query["bom"])


@stats_blp.route("/products/<string:sku>/stats")
class ProductStats(MethodView):
    @stats_blp.doc(**PRODUCT_STATS_DOC)
    @admin_required
    @stats_blp.arguments(StatsQuerySchema, location="query")
    @stats_blp.response(200, ProductStatsSchema)
    @stats_blp.alt_response(404, schema=ErrorSchema, description="No such product, ever.")
    def get(self, query, sku):
        """Views of one product per day in a range (admin); deleted products included."""
        product = Product.with_history(sku)
        if product is None:
            abort(404, message=f"No product with sku {sku!r}.")
        stats = product_stats(product, query["start"], query["end"])
        if not wants_csv(query):
            return stats
        return by_day_csv(
            stats["by_day"], f"{product.sku}-views-{date_range(query)}.csv", query["bom"]
        )


@stats_blp.route("/stats/products")
class TopProducts(MethodView):
    @stats_blp.doc(**TOP_PRODUCTS_DOC)
    @admin_required
    @stats_blp.arguments(TopQuerySchema, location="query")
    @stats_blp.response(200, TopProductSchema(many=True))
    def get(self, query):
        """The most viewed products in a range, most viewed first (admin)."""
        top = top_products(query["start"], query["end"], query["limit"], query["audience"])
        if not wants_csv(query):
            return top
        fields = ["sku", "name", "views", "anonymous_views", "registered_views"]
        return csv_response(
            fields,
            [[item[f] for f in fields] for item in top],
            f"top-products-{date_range(query)}.csv",
            query["bom"],
        )
