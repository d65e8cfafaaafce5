"""Products: anyone reads; admins create, change and delete."""

from flask import Response, current_app, request, url_for
from flask.views import MethodView
from flask_jwt_extended import current_user
from flask_smorest import abort

from app.accounts.tokens import admin_required, optional_user, token_optional
from app.catalog import etags as conditional
from app.catalog import fast as cached_reads
from app.catalog import service as catalog
from app.catalog.cache import Miss
from app.catalog.schemas import (
    ProductCreateSchema,
    ProductQuerySchema,
    ProductSchema,
    ProductUpdateSchema,
)
from app.core.errors import ErrorSchema
from app.core.openapi import Blueprint
from app.core.unit_of_work import transaction

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


def lock_or_404(sku: str):
    """The product, locked for a change, if it is the version the client names."""
    product = catalog.lock_product(sku)
    if product is None:
        abort(404, message=f"No product with sku {sku!r}.")
    conditional.require_current(product)
    return product


def update(sku: str, data: dict):
    product = lock_or_404(sku)
    catalog.update_product(product, data, current_user)
    return product, conditional.headers(product)


CONDITIONAL = {
    "parameters": [
        {
            "in": "header",
            "name": "If-Match",
            "schema": {"type": "string"},
            "description": "Change only this version (the ETag of a read); 412 otherwise.",
        },
        {
            "in": "header",
            "name": "Idempotency-Key",
            "schema": {"type": "string", "maxLength": 255},
            "description": "Retry safely: the same key and body within 24 h answer the "
            "first successful answer again; a different body gets 422, a request still "
            "running 409.",
        },
    ]
}
ETAG_HEADER = {"ETag": {"schema": {"type": "string"}, "description": "The version read."}}


@products_blp.route("")
class Products(MethodView):
    @token_optional
    @products_blp.arguments(ProductQuerySchema, location="query", as_kwargs=True)
    @products_blp.response(200, ProductSchema(many=True))
    @products_blp.paginate()
    def get(self, pagination_parameters, **filters):
        """List products, filtered, sorted and paginated."""
        total, body = catalog.list_page(
            request.query_string.decode("latin-1"),
            filters,
            pagination_parameters.page,
            pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        # Already the JSON ProductSchema(many=True) gives: answered as it is (flask-smorest
        # still adds the pagination headers to this response).
        return Response(body, mimetype=current_app.json.mimetype)

    @products_blp.doc(parameters=CONDITIONAL["parameters"][1:])
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
        product = catalog.create_product(data, current_user).product
        location = url_for("products.ProductsBySku", sku=product.sku)
        return product, {"Location": location, **conditional.headers(product)}


@products_blp.route("/<string:sku>")
class ProductsBySku(MethodView):
    @token_optional
    @products_blp.response(200, ProductSchema, headers=ETAG_HEADER)
    @products_blp.alt_response(304, description="Not modified (If-None-Match): still a view.")
    @products_blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    def get(self, sku):
        """Read one product (each read, 200 or 304, is counted in its statistics)."""
        reader = optional_user()
        # A read the cache layer in front did not answer: what it found (app/cached_reads.py).
        handed = request.environ.get(cached_reads.HANDOFF)
        answer = catalog.read_product(
            sku,
            reader.id if reader is not None else None,
            request.remote_addr,
            # HEAD is not a consultation; nor is a read whose view the stream has taken
            view=request.method == "GET" and handed != cached_reads.VIEW_TAKEN,
            miss=handed if isinstance(handed, Miss) else None,
        )
        if answer is None:
            abort(404, message=f"No product with sku {sku!r}.")
        headers = {"ETag": f'"{answer.etag}"'}
        if request.if_none_match.contains_weak(answer.etag):
            return Response(status=304, headers=headers)
        # The JSON ProductSchema gives (app/schemas.py dump_product), cached or just read.
        return Response(answer.body, mimetype=current_app.json.mimetype, headers=headers)

    @products_blp.doc(parameters=CONDITIONAL["parameters"])
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

    @products_blp.doc(parameters=CONDITIONAL["parameters"])
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

    @products_blp.doc(parameters=CONDITIONAL["parameters"])
    @admin_required
    @transaction
    @products_blp.response(204)
    @products_blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    @products_blp.alt_response(
        412, schema=ErrorSchema, description="If-Match names another version."
    )
    def delete(self, sku):
        """Delete a product (admin); its history is kept."""
        catalog.delete_product(lock_or_404(sku), current_user)
