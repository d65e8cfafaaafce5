"""Products: anyone reads; admins create, change and delete."""

from urllib.parse import quote

from flask import Response, request, url_for
from flask.views import MethodView
from flask_jwt_extended import current_user
from flask_smorest import abort

from app.accounts.models import Role
from app.accounts.tokens import admin_required, optional_user, token_optional
from app.catalog import service
from app.catalog.models import Product
from app.catalog.reads import JSON, read_product
from app.catalog.schemas import (
    AsOfQuerySchema,
    ProductCreateSchema,
    ProductListQuerySchema,
    ProductSchema,
    ProductUpdateSchema,
    RevertSchema,
    dump_product,
    products_json,
)
from app.core.errors import ErrorSchema
from app.core.extensions import db
from app.core.openapi import Blueprint
from app.core.pagination import cursor_page, page_of, within_reach
from app.core.unit_of_work import transaction
from app.events import journal
from app.events.schemas import EventSchema

products_blp = Blueprint(
    "products",
    __name__,
    url_prefix="/api/products",
    description="The catalog: anyone reads products; admins (rol 1) change them.",
)

SEED_PRODUCT = {
    "sku": "d7iy6euiue",
    "name": "zapatos",
    "price": 300,
    "mark": "chabelo",
    "quantity": 5,
}
IF_MATCH = {
    "in": "header",
    "name": "If-Match",
    "schema": {"type": "string"},
    "description": "Change only this version (the ETag of a read); 412 otherwise.",
}
ETAG_HEADER = {"ETag": {"schema": {"type": "string"}, "description": "The version read."}}


CORRECTED_HEADER = {
    "X-Corrected-Query": {
        "schema": {"type": "string"},
        "description": "Only when q found nothing and a misspelt word was corrected: the "
        "words of the search answered instead (accents and case folded), percent-encoded "
        "UTF-8 (zapatos%20rojos for q=Zapatso rojos).",
    }
}


def corrected_header(corrected: str | None) -> dict:
    return {} if corrected is None else {"X-Corrected-Query": quote(corrected)}


def lock_or_404(sku: str) -> Product:
    """The product, locked for a change, if it is the version the client names (If-Match;
    412 otherwise)."""
    product = Product.by_sku(sku, lock=True)
    if product is None and "If-Match" not in request.headers:
        abort(404, message=f"No product with sku {sku!r}.")
    if "If-Match" in request.headers and (
        product is None or not request.if_match.contains(product.etag)
    ):
        abort(
            412,
            message="The product changed since it was read (If-Match): read it again.",
            errors={"headers": {"If-Match": ["Does not match the current ETag."]}},
        )
    return product


def product_response(product: Product, status: int = 200, **headers) -> Response:
    return Response(
        products_json(dump_product(product)),
        status=status,
        mimetype=JSON,
        headers={"ETag": f'"{product.etag}"', **headers},
    )


def update(sku: str, data: dict) -> Response:
    product = lock_or_404(sku)
    service.update_product(product, data, current_user)
    return product_response(product)


@products_blp.route("")
class Products(MethodView):
    @token_optional
    @products_blp.arguments(ProductListQuerySchema, location="query", as_kwargs=True)
    @products_blp.response(200, ProductSchema(many=True), headers=CORRECTED_HEADER)
    @products_blp.paginate()
    def get(self, pagination_parameters, **filters):
        """List products, filtered, sorted and paginated (by page, or by cursor).

        Pages by number reach the first 50,000 products of a list: a page past them is a
        422 naming page (walk further by cursor)."""
        count = filters.pop("count")
        if "cursor" in filters:
            if "page" in request.args:
                abort(
                    422,
                    message="Send page or cursor, not both.",
                    messages={"query": {"page": ["Not with cursor: a walk goes by cursor."]}},
                )
            position = filters.pop("cursor")
            body, next_cursor, total, corrected = service.list_after(
                filters, position, pagination_parameters.page_size, count
            )
            cursor_page(pagination_parameters, next_cursor, total)
            return Response(body, mimetype=JSON, headers=corrected_header(corrected))
        within_reach(pagination_parameters, service.DEEPEST_PAGED)
        total, body, corrected = service.list_page(
            filters, pagination_parameters.page, pagination_parameters.page_size
        )
        pagination_parameters.item_count = total
        # Already the JSON ProductSchema(many=True) documents: answered as it is
        # (flask-smorest still adds the pagination headers to this response).
        return Response(body, mimetype=JSON, headers=corrected_header(corrected))

    @admin_required
    @transaction
    @products_blp.arguments(ProductCreateSchema, example=SEED_PRODUCT)
    @products_blp.response(
        201,
        ProductSchema,
        headers={"Location": {"schema": {"type": "string"}}, **ETAG_HEADER},
    )
    @products_blp.alt_response(409, schema=ErrorSchema, description="The sku is taken.")
    def post(self, data):
        """Create a product (admin)."""
        product = service.create_product(data, current_user)
        location = url_for("products.ProductsBySku", sku=product.sku)
        return product_response(product, 201, Location=location)


@products_blp.route("/<string:sku>")
class ProductsBySku(MethodView):
    @token_optional
    @products_blp.arguments(AsOfQuerySchema, location="query")
    @products_blp.response(200, ProductSchema, headers=ETAG_HEADER)
    @products_blp.alt_response(304, description="Not modified (If-None-Match): still a view.")
    @products_blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    def get(self, query, sku):
        """Read one product (each read, 200 or 304, is counted in its statistics)."""
        reader = optional_user()
        if "as_of" in query:
            return as_of(sku, query["as_of"], reader)
        read = read_product(
            sku,
            reader.id if reader is not None else None,
            request.remote_addr,
            request.headers.get("If-None-Match"),
            record=request.method == "GET",  # HEAD is not a consultation
        )
        if read is None:
            abort(404, message=f"No product with sku {sku!r}.")
        return Response(read.body, status=read.status, headers=read.headers)

    @products_blp.doc(parameters=[IF_MATCH])
    @admin_required
    @transaction
    @products_blp.arguments(ProductUpdateSchema, example={"price": 500})
    @products_blp.response(200, ProductSchema, headers=ETAG_HEADER)
    @products_blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    @products_blp.alt_response(
        412, schema=ErrorSchema, description="If-Match names another version."
    )
    def put(self, data, sku):
        """Change some fields of a product (admin); the sku cannot change."""
        return update(sku, data)

    @products_blp.doc(parameters=[IF_MATCH])
    @admin_required
    @transaction
    @products_blp.arguments(ProductUpdateSchema, example={"quantity": 7})
    @products_blp.response(200, ProductSchema, headers=ETAG_HEADER)
    @products_blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    @products_blp.alt_response(
        412, schema=ErrorSchema, description="If-Match names another version."
    )
    def patch(self, data, sku):
        """Change some fields of a product (admin); same as PUT."""
        return update(sku, data)

    @products_blp.doc(parameters=[IF_MATCH])
    @admin_required
    @transaction
    @products_blp.response(204)
    @products_blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    @products_blp.alt_response(
        412, schema=ErrorSchema, description="If-Match names another version."
    )
    def delete(self, sku):
        """Delete a product (admin); its history is kept."""
        service.delete_product(lock_or_404(sku), current_user)


def as_of(sku: str, moment, reader) -> Response:
    """The product as it was at ``moment`` (admin): an admin's look back, not a view."""
    if reader is None:
        abort(401, message="as_of needs an admin's token.")
    if reader.role != Role.ADMIN:
        abort(403, message="as_of needs an admin account (rol 1).")
    shown = service.as_of(sku, moment)
    if shown is None:
        abort(404, message=f"No product with sku {sku!r} at {moment.isoformat()}.")
    return Response(products_json(shown), mimetype=JSON)


@products_blp.route("/<string:sku>/history")
class ProductHistory(MethodView):
    @admin_required
    @products_blp.response(200, EventSchema(many=True))
    @products_blp.paginate()
    def get(self, pagination_parameters, sku):
        """The changes of a product, newest first, a deleted one's too (admin)."""
        found = page_of(journal.of_products(Product.ever_named(sku)), pagination_parameters)
        never = not pagination_parameters.item_count and (
            db.session.scalar(Product.ever_named(sku).limit(1)) is None
        )
        if never:
            abort(404, message=f"No product with sku {sku!r}, ever.")
        return [event.public() for event in found]


@products_blp.route("/<string:sku>/revert")
class ProductRevert(MethodView):
    @products_blp.doc(parameters=[IF_MATCH])
    @admin_required
    @transaction
    @products_blp.arguments(RevertSchema, example={"to": 42})
    @products_blp.response(200, ProductSchema, headers=ETAG_HEADER)
    @products_blp.alt_response(201, schema=ProductSchema, description="A deleted product restored.")
    @products_blp.alt_response(
        409, schema=ErrorSchema, description="The sku is another product's now."
    )
    @products_blp.alt_response(
        412, schema=ErrorSchema, description="If-Match names another version."
    )
    @products_blp.alt_response(422, schema=ErrorSchema, description="Not an event of this product.")
    def post(self, data, sku):
        """Set a product back to its values right after one of its events (admin): one
        ordinary change, emailed; a deleted product is restored."""
        if "If-Match" in request.headers:
            lock_or_404(sku)
        product, restored = service.revert_product(sku, data["to"], current_user)
        return product_response(product, 201 if restored else 200)
