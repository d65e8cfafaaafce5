"""Products: anyone reads; admins create, change and delete."""

from functools import wraps

from flask import url_for
from flask.views import MethodView
from flask_jwt_extended import current_user
from flask_smorest import abort

from app.auth import BEARER, PUBLIC, admin_required, optional_user, token_optional
from app.errors import ErrorSchema
from app.extensions import db
from app.openapi import Blueprint
from app.schemas import (
    ProductCreateSchema,
    ProductQuerySchema,
    ProductSchema,
    ProductUpdateSchema,
)
from app.services import catalog, tracking

blp = Blueprint(
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


def get_or_404(sku: str):
    product = catalog.find_product(sku)
    if product is None:
        abort(404, message=f"No product with sku {sku!r}.")
    return product


def records_view(fn):
    """Count a successful read of a product: who (or anonymous) and when."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        product = fn(*args, **kwargs)
        user = optional_user()
        tracking.record_view(product.id, user.id if user else None)
        return product

    return wrapper


def update(sku: str, data: dict):
    product = get_or_404(sku)
    catalog.update_product(product, data, current_user)
    db.session.commit()
    return product


@blp.route("")
class Products(MethodView):
    @blp.doc(security=PUBLIC)
    @token_optional
    @blp.arguments(ProductQuerySchema, location="query", as_kwargs=True)
    @blp.response(200, ProductSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters, **filters):
        """List products, filtered, sorted and paginated."""
        items, total = catalog.list_products(
            filters, pagination_parameters.page, pagination_parameters.page_size
        )
        pagination_parameters.item_count = total
        return items

    @blp.doc(security=BEARER)
    @admin_required
    @blp.arguments(ProductCreateSchema, example=SEED_PRODUCT)
    @blp.response(201, ProductSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(409, schema=ErrorSchema, description="The sku is taken.")
    def post(self, data):
        """Create a product (admin)."""
        change = catalog.create_product(data, current_user)
        db.session.commit()
        return change.product, {
            "Location": url_for("products.ProductsBySku", sku=change.product.sku)
        }


@blp.route("/<string:sku>")
class ProductsBySku(MethodView):
    @blp.doc(security=PUBLIC)
    @token_optional
    @blp.response(200, ProductSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    @records_view
    def get(self, sku):
        """Read one product (each read is counted in the product's statistics)."""
        return get_or_404(sku)

    @blp.doc(security=BEARER)
    @admin_required
    @blp.arguments(ProductUpdateSchema, example={"price": 500})
    @blp.response(200, ProductSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    def put(self, data, sku):
        """Change some fields of a product (admin); the sku cannot change."""
        return update(sku, data)

    @blp.doc(security=BEARER)
    @admin_required
    @blp.arguments(ProductUpdateSchema, example={"quantity": 7})
    @blp.response(200, ProductSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    def patch(self, data, sku):
        """Change some fields of a product (admin); same as PUT."""
        return update(sku, data)

    @blp.doc(security=BEARER)
    @admin_required
    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema, description="No such product.")
    def delete(self, sku):
        """Delete a product (admin); its history is kept."""
        catalog.delete_product(get_or_404(sku), current_user)
        db.session.commit()
