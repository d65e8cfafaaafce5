"""The admins' dashboard page, and the two routes only it needed: the catalog's views per
day and the email delivery summary. (tests/system/test_dashboard.py drives the page in
Chromium.)"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.core.extensions import db
from app.events.models import Event
from app.notifications.models import Notification
from app.ops.dashboard import POLICY
from app.views import rollups
from app.views.recorder import new_view_id
from app.views.rollups import View
from tests.test_views_stats import product_id, seed_views

STATIC = Path(__file__).resolve().parents[1] / "app" / "static"
TODAY = datetime.now(UTC).date()


# ---------------------------------------------------------------- the page


def test_the_page_is_html_with_a_strict_policy_and_no_inline_script(client):
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"] == POLICY
    directives = dict(d.strip().split(" ", 1) for d in POLICY.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert "unsafe" not in POLICY
    html = page.get_data(as_text=True)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert [src for src, _ in scripts] == [
        ' src="/static/vendor/chart.umd.min.js" defer',
        ' src="/static/dashboard/dashboard.js" defer',
        ' src="/static/dashboard/webhooks.js" defer',
    ]
    assert all(body.strip() == "" for _, body in scripts)
    assert " style=" not in html and "<style" not in html
    assert "http://" not in html and "https://" not in html  # no CDN
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "Set-Cookie" not in page.headers


def test_the_trailing_slash_serves_the_same_page(client):
    assert client.get("/dashboard/").headers["Content-Security-Policy"] == POLICY


@pytest.mark.parametrize(
    ("path", "mimetype"),
    [
        ("/static/vendor/chart.umd.min.js", "text/javascript"),
        ("/static/dashboard/dashboard.js", "text/javascript"),
        ("/static/dashboard/webhooks.js", "text/javascript"),
        ("/static/dashboard/dashboard.css", "text/css"),
    ],
)
def test_its_files_are_served_with_their_content_types(client, path, mimetype):
    with client.get(path) as response:
        assert response.status_code == 200
        assert response.mimetype == mimetype
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert len(response.data) > 1000


def test_the_vendored_chart_library_keeps_its_licence_and_version():
    library = (STATIC / "vendor" / "chart.umd.min.js").read_text()
    licence = (STATIC / "vendor" / "chart.js.LICENSE.md").read_text()
    assert library.startswith("/*!\n * Chart.js v4.")
    assert "The MIT License" in licence and "Chart.js Contributors" in licence
    version = re.search(r"Chart\.js v(4\.\d+\.\d+)", library).group(1)
    docs = (STATIC.parents[1] / "docs" / "dashboard.md").read_text()
    assert f"Chart.js {version}" in docs


@pytest.mark.parametrize("name", ["dashboard.js", "webhooks.js"])
def test_the_script_keeps_the_token_in_session_storage_never_a_cookie(name):
    script = (STATIC / "dashboard" / name).read_text()
    assert "sessionStorage" in script
    assert "localStorage" not in script and "document.cookie" not in script
    assert 'credentials: "omit"' in script
    assert ".innerHTML" not in script  # names and errors from the API are text


# ---------------------------------------------------------------- GET /api/stats/views


def test_catalog_views_per_day_add_every_product_and_fill_empty_days(
    app, client, make, admin, reader
):
    make.product("abc")
    make.product("xyz")
    d1, d3 = date(2026, 3, 1), date(2026, 3, 3)
    seed_views(app, "abc", {d1: (2, [reader["id"]]), d3: (1, [])})
    seed_views(app, "xyz", {d1: (1, []), d3: (0, [reader["id"], reader["id"]])})
    seed_views(app, "xyz", {date(2026, 3, 5): (9, [])})  # outside the range

    response = client.get(
        "/api/stats/views?from=2026-03-01&to=2026-03-04", headers=admin["headers"]
    )
    assert response.status_code == 200
    assert response.json == {
        "from": "2026-03-01",
        "to": "2026-03-04",
        "views": 7,
        "anonymous_views": 4,
        "registered_views": 3,
        "by_day": [
            {"date": "2026-03-01", "views": 4, "anonymous_views": 3, "registered_views": 1},
            {"date": "2026-03-02", "views": 0, "anonymous_views": 0, "registered_views": 0},
            {"date": "2026-03-03", "views": 3, "anonymous_views": 1, "registered_views": 2},
            {"date": "2026-03-04", "views": 0, "anonymous_views": 0, "registered_views": 0},
        ],
    }


def test_catalog_views_count_reads_through_the_api_and_deleted_products(
    app, client, make, admin, reader
):
    make.product("abc")
    make.product("gone")
    client.get("/api/products/abc")
    client.get("/api/products/abc", headers=reader["headers"])
    client.get("/api/products/gone")
    assert client.delete("/api/products/gone", headers=admin["headers"]).status_code == 204

    stats = client.get("/api/stats/views", headers=admin["headers"]).json
    assert stats["from"] == (TODAY - timedelta(days=29)).isoformat()
    assert stats["to"] == TODAY.isoformat()
    assert len(stats["by_day"]) == 30
    assert stats["by_day"][-1] == {
        "date": TODAY.isoformat(),
        "views": 3,
        "anonymous_views": 2,
        "registered_views": 1,
    }
    assert (stats["views"], stats["anonymous_views"], stats["registered_views"]) == (3, 2, 1)


def test_catalog_views_as_csv(app, client, make, admin):
    make.product("abc")
    with app.app_context():
        at = datetime(2026, 3, 2, 8, tzinfo=UTC)
        rollups.write_views([View(new_view_id(), product_id(app, "abc"), None, at) for _ in "12"])
    response = client.get(
        "/api/stats/views?from=2026-03-01&to=2026-03-02&format=csv", headers=admin["headers"]
    )
    assert response.mimetype == "text/csv"
    assert (
        'filename="views-2026-03-01-to-2026-03-02.csv"' in response.headers["Content-Disposition"]
    )
    assert response.get_data(as_text=True).splitlines() == [
        "date,views,anonymous_views,registered_views",
        "2026-03-01,0,0,0",
        "2026-03-02,2,2,0",
    ]


# ---------------------------------------------------------------- GET /api/notifications/summary


def emails_on(app, client, admin, sku: str, day: date, statuses: list[str]) -> None:
    """A product created through the API (one email per admin), its emails then dated
    ``day`` and given ``statuses`` (as the worker would have left them)."""
    body = {"sku": sku, "name": sku, "price": 10, "mark": "m", "quantity": 1}
    assert client.post("/api/products", json=body, headers=admin["headers"]).status_code == 201
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=23, minutes=59)
    with app.app_context():
        ids = db.session.scalars(
            db.select(Notification.id)
            .join(Notification.event)
            .where(Event.sku == sku)
            .order_by(Notification.id)
        ).all()
        assert len(ids) == len(statuses)
        for row_id, status in zip(ids, statuses, strict=True):
            db.session.execute(
                update(Notification)
                .where(Notification.id == row_id)
                .values(status=status, created_at=at)
            )
        db.session.commit()


@pytest.fixture
def three_admins(make, admin):
    return [admin, make.admin(email="two@example.com"), make.admin(email="three@example.com")]


def test_the_summary_counts_each_status_per_day_of_creation(app, client, three_admins):
    admin = three_admins[0]
    emails_on(app, client, admin, "today", TODAY, ["sent", "failed", "pending"])
    emails_on(
        app, client, admin, "yday", TODAY - timedelta(days=1), ["delivered", "bounced", "unknown"]
    )
    emails_on(app, client, admin, "old", TODAY - timedelta(days=7), ["failed"] * 3)  # too old

    response = client.get("/api/notifications/summary", headers=admin["headers"])
    assert response.status_code == 200
    summary = response.json
    assert summary["days"] == 7
    assert summary["from"] == (TODAY - timedelta(days=6)).isoformat()
    assert summary["to"] == TODAY.isoformat()
    totals = {s: summary[s] for s in ("sent", "pending", "sending", "failed", "unknown")}
    assert totals == {"sent": 1, "pending": 1, "sending": 0, "failed": 1, "unknown": 1}
    assert (summary["delivered"], summary["bounced"]) == (1, 1)
    assert (summary["complained"], summary["suppressed"]) == (0, 0)
    assert [d["date"] for d in summary["by_day"]] == [
        (TODAY - timedelta(days=n)).isoformat() for n in range(6, -1, -1)
    ]
    zero = {
        "pending": 0,
        "sending": 0,
        "sent": 0,
        "failed": 0,
        "unknown": 0,
        "delivered": 0,
        "bounced": 0,
        "complained": 0,
        "suppressed": 0,
    }
    assert summary["by_day"][-1] == {
        **zero,
        "date": TODAY.isoformat(),
        "sent": 1,
        "failed": 1,
        "pending": 1,
    }
    assert summary["by_day"][-2] == {
        **zero,
        "date": (TODAY - timedelta(days=1)).isoformat(),
        "delivered": 1,
        "bounced": 1,
        "unknown": 1,
    }
    assert all(day == {**zero, "date": day["date"]} for day in summary["by_day"][:-2])

    wider = client.get("/api/notifications/summary?days=8", headers=admin["headers"]).json
    assert wider["failed"] == 4 and len(wider["by_day"]) == 8


def test_the_summary_matches_the_listing_by_status(app, client, three_admins):
    admin = three_admins[0]
    emails_on(app, client, admin, "a", TODAY, ["failed", "unknown", "unknown"])
    summary = client.get("/api/notifications/summary?days=1", headers=admin["headers"]).json
    for status in ("failed", "unknown", "sent"):
        listed = client.get(f"/api/notifications?status={status}", headers=admin["headers"])
        assert summary[status] == len(listed.json)


@pytest.mark.parametrize("days", ["0", "367", "-1", "week", "1.5"])
def test_a_bad_number_of_days_is_422_naming_it(client, admin, days):
    response = client.get(f"/api/notifications/summary?days={days}", headers=admin["headers"])
    assert response.status_code == 422
    assert "days" in response.json["errors"]["query"]


def test_the_summary_is_for_admins_only(client, reader):
    assert client.get("/api/notifications/summary").status_code == 401
    response = client.get("/api/notifications/summary", headers=reader["headers"])
    assert response.status_code == 403
