"""One page of a query, with the total flask-smorest puts in X-Pagination and Link."""

from sqlalchemy import Select, func, select

from app.core.extensions import db


def page_of(query: Select, pagination_parameters) -> list:
    """Count the matching rows, then fetch the requested page (none past the last page)."""
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    pagination_parameters.item_count = total
    if pagination_parameters.first_item >= total:
        return []
    return list(
        db.session.scalars(
            query.limit(pagination_parameters.page_size).offset(pagination_parameters.first_item)
        )
    )
