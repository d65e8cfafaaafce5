"""Statistics of product views: the ranges asked for and the answers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from marshmallow import Schema, ValidationError, fields, post_load, validate

MAX_RANGE_DAYS = 366
# Days the statistics can be asked about (the calendar's ends would overflow).
DAYS = validate.Range(min=date(1970, 1, 1), max=date(9998, 12, 31))


class StatsQuerySchema(Schema):
    """A range of UTC days, both ends included; the last 30 days by default."""

    start = fields.Date(data_key="from", validate=DAYS, metadata={"example": "2026-11-01"})
    end = fields.Date(data_key="to", validate=DAYS, metadata={"example": "2026-11-30"})
    format = fields.String(
        validate=validate.OneOf(["json", "csv"]),
        metadata={"description": "csv for a spreadsheet (or send 'Accept: text/csv')."},
    )
    bom = fields.Boolean(
        load_default=False,
        metadata={"description": "CSV only: start with a UTF-8 byte order mark (Excel)."},
    )

    @post_load
    def default_range(self, data, **kwargs):
        today = datetime.now(UTC).date()
        end = data.get("end") or today
        start = data.get("start") or min(end, today) - timedelta(days=29)
        if start > end:
            raise ValidationError("Must not be after 'to'.", field_name="from")
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise ValidationError(
                f"The range may span at most {MAX_RANGE_DAYS} days.", field_name="to"
            )
        return {**data, "start": start, "end": end}


class TopQuerySchema(StatsQuerySchema):
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))
    # Whose views rank the products ("viewer" on the wire).
    audience = fields.String(
        data_key="viewer",
        load_default="all",
        validate=validate.OneOf(["all", "anonymous", "registered"]),
    )


class DayStatsSchema(Schema):
    date = fields.Date()
    views = fields.Integer()
    anonymous_views = fields.Integer()
    registered_views = fields.Integer()


class CatalogStatsSchema(Schema):
    start = fields.Date(data_key="from")
    end = fields.Date(data_key="to")
    views = fields.Integer()
    anonymous_views = fields.Integer()
    registered_views = fields.Integer()
    by_day = fields.List(fields.Nested(DayStatsSchema))


class ProductStatsSchema(Schema):
    sku = fields.String(metadata={"example": "d7iy6euiue"})
    name = fields.String(metadata={"example": "zapatos"})
    start = fields.Date(data_key="from")
    end = fields.Date(data_key="to")
    views = fields.Integer()
    anonymous_views = fields.Integer()
    registered_views = fields.Integer()
    unique_registered_viewers = fields.Integer()
    by_day = fields.List(fields.Nested(DayStatsSchema))


class TopProductSchema(Schema):
    sku = fields.String(metadata={"example": "d7iy6euiue"})
    name = fields.String(metadata={"example": "zapatos"})
    views = fields.Integer()
    anonymous_views = fields.Integer()
    registered_views = fields.Integer()
