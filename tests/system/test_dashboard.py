"""The admins' dashboard as an admin meets it (`make docs-check`): headless Chromium opens
/dashboard, logs in through the page's form, waits for the charts and shows the numbers
the API answers; at a phone's width nothing overflows; no policy violation on the way.

Chromium is driven over the DevTools protocol (websocket-client); the app serves a SQLite
database on loopback, filled through the API: products, their reads (views), and the
emails their creation wrote. Set UPDATE_SCREENSHOTS=1 to refresh docs/dashboard.png.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import struct
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import websocket
from sqlalchemy import update

from tests.system import harness as h

pytestmark = pytest.mark.browser
ADMIN = ("dash.admin@example.com", "dashboard-admin-password")
READER = ("dash.reader@example.com", "dashboard-reader-password")
SCREENSHOT = h.ROOT / "docs" / "dashboard.png"
MAX_SCREENSHOT_BYTES = 180_000
PHONE = {"width": 390, "height": 844, "mobile": True}
DESKTOP = {"width": 1024, "height": 800, "mobile": False}
TODAY = datetime.now(UTC).date()
STATUSES = [
    "sent",
    "pending",
    "sending",
    "failed",
    "unknown",
    "delivered",
    "bounced",
    "complained",
    "suppressed",
]
# Collects what the page's policy refused (a script injected by the protocol runs
# whatever the page's policy says).
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
# Every figure the page shows next to its charts, as the page wrote it.
READ_PAGE = """(() => {
  const rows = (id) => [...document.querySelectorAll(`#${id} tbody tr`)]
    .map((tr) => ({...tr.dataset}));
  const figures = (id) => ({...document.getElementById(id).dataset});
  const counts = Object.fromEntries([...document.querySelectorAll("#email-counts li")]
    .map((li) => [li.dataset.status, Number(li.dataset.count)]));
  const charts = [...document.querySelectorAll("canvas")].map((c) => {
    const chart = Chart.getChart(c);
    return {id: c.id, drawn: !!chart && c.width > 0 && c.height > 0,
            points: chart ? chart.data.datasets.map((d) => d.data) : null};
  });
  return {
    catalog: {figures: figures("catalog-figures"), days: rows("catalog-table")},
    product: {sku: document.getElementById("product").dataset.sku,
              figures: figures("product-figures"), days: rows("product-table")},
    top: rows("top-table"),
    emails: {counts, days: rows("email-table"), failed: rows("failed-table"),
             unknown: rows("unknown-table"),
             failed_total: Number(document.getElementById("failed-total").dataset.total),
             unknown_total: Number(document.getElementById("unknown-total").dataset.total)},
    charts,
    states: [...document.querySelectorAll("section[data-state]")]
      .map((s) => `${s.id}:${s.dataset.state}`),
    errors: [...document.querySelectorAll(".error")].map((e) => e.textContent).filter(Boolean),
    violations: window.__violations,
  };
})()"""


class DevTools:
    """One page of a Chromium, over the DevTools protocol's websocket."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        number = next(self.ids)
        self.ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise h.HarnessError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise h.HarnessError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, what: str, expression: str, timeout: float = 60):
        h.wait_until(what, lambda: self.evaluate(expression), timeout, every=0.1)

    def size(self, width: int, height: int, mobile: bool) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )

    def type_into(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    def screenshot(self, path: Path, width: int) -> bytes:
        """The whole page at ``width`` CSS pixels, as PNG."""
        height = self.evaluate("document.documentElement.scrollHeight")
        self.size(width, height, mobile=width < 500)
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        self.ws.close()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on loopback with an admin and a reader, products read through the API and
    the emails their creation wrote: some sent by the worker, some left pending, some as
    the worker leaves them when SES refuses (failed) or does not answer (unknown)."""
    workdir = tmp_path_factory.mktemp("dashboard")
    app = h.in_process_app(
        workdir / "dashboard.db",
        "dashboard-check-secret-key-long-enough-0123456789",
        MAIL_BACKEND="console",
    )
    from app.accounts import service as accounts
    from app.accounts.models import User
    from app.catalog.models import Product
    from app.core.extensions import db
    from app.notifications.models import Notification
    from app.views import rollups
    from app.views.recorder import new_view_id
    from app.worker import Worker

    with app.app_context():
        accounts.create_user(
            fullname="Dashboard Admin",
            username="dash-admin",
            email=ADMIN[0],
            password=ADMIN[1],
            role=1,
        )
        db.session.commit()
    with h.serve_wsgi(app) as base:
        http = h.Http(int(base.rsplit(":", 1)[1]))
        token = http.login(*ADMIN)
        for email, password, role in [
            ("second.admin@example.com", "second-admin-password", 1),
            (READER[0], READER[1], 2),
        ]:
            user = {
                "fullname": email,
                "username": email.split("@")[0],
                "email": email,
                "password": password,
                "rol": role,
            }
            assert http.request("POST", "/api/users", user, token=token).status == 201
        reader = http.login(*READER)

        def create(sku: str, name: str) -> None:
            body = {"sku": sku, "name": name, "price": 120, "mark": "acme", "quantity": 3}
            assert http.request("POST", "/api/products", body, token=token).status == 201

        create("zap-01", "Zapatillas urbanas")
        create("cam-02", "Campera impermeable")
        Worker(app).drain()  # the worker sends these four emails (console mailer)
        create("gor-03", "Gorra de lana")
        create("med-04", "Medias de algodón")
        with app.app_context():
            later = list(
                db.session.scalars(
                    db.select(Notification.id).where(Notification.status == "pending")
                )
            )
            outcomes = {later[0]: "failed", later[1]: "unknown", later[2]: "failed"}
            errors = {
                "failed": "MessageRejected: Email address is not verified.",
                "unknown": "outcome unknown: SES did not answer in time",
            }
            for row_id, status in outcomes.items():
                db.session.execute(
                    update(Notification)
                    .where(Notification.id == row_id)
                    .values(status=status, attempts=3, last_error=errors[status])
                )
            db.session.commit()

        reads = {"zap-01": (5, 3), "cam-02": (2, 1), "gor-03": (1, 0)}  # (anonymous, reader)
        for sku, (anonymous, registered) in reads.items():
            for _ in range(anonymous):
                assert http.get(f"/api/products/{sku}").status == 200
            for _ in range(registered):
                assert http.get(f"/api/products/{sku}", token=reader).status == 200
        # Earlier days' views, as the worker would have written them then.
        with app.app_context():
            ids = {p.sku: p.id for p in db.session.scalars(db.select(Product))}
            reader_id = User.by_email(READER[0]).id
            history = []
            for back, (sku, anonymous, registered) in enumerate(
                [("zap-01", 4, 1), ("cam-02", 6, 2), ("zap-01", 2, 0), ("med-04", 3, 3)], start=1
            ):
                at = datetime.combine(TODAY - timedelta(days=back * 3), datetime.min.time(), UTC)
                history += [
                    rollups.View(new_view_id(), ids[sku], None, at) for _ in range(anonymous)
                ]
                history += [
                    rollups.View(new_view_id(), ids[sku], reader_id, at) for _ in range(registered)
                ]
            rollups.write_views(history)
        yield http, token, base, workdir
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def chromium(served, reaper):
    """A headless Chromium started by the reaper; yields its page's DevTools."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if browser is None:
        pytest.fail("Chromium is not installed: install the prerequisites (README, .ci/run)")
    _http, _token, _base, workdir = served
    profile = workdir / "profile"
    process = reaper.start(
        [
            browser,
            *h.CHROMIUM_FLAGS,
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        "chromium.log",
    )
    active = profile / "DevToolsActivePort"
    h.wait_until("Chromium's DevTools port", active.exists, 60)
    h.wait_until("Chromium's DevTools port", lambda: active.read_text().strip(), 10)
    port = int(active.read_text().split()[0])
    with urllib.request.urlopen(f"http://{h.HOST}:{port}/json/list", timeout=10) as answer:
        page = next(t for t in json.load(answer) if t["type"] == "page")
    devtools = DevTools(page["webSocketDebuggerUrl"])
    devtools.call("Page.enable")
    devtools.call("Page.addScriptToEvaluateOnNewDocument", source=WATCH_VIOLATIONS)
    yield devtools
    devtools.close()
    reaper.stop(process)


def api(served, path: str):
    http, token, _base, _workdir = served
    answer = http.get(path, token=token)
    assert answer.status == 200, (path, answer.status, answer.body[:300])
    return answer


def days_of(stats: dict) -> list[dict]:
    return [
        {
            "date": d["date"],
            "views": str(d["views"]),
            "anonymous": str(d["anonymous_views"]),
            "registered": str(d["registered_views"]),
        }
        for d in stats["by_day"]
    ]


def figures_of(stats: dict) -> dict:
    return {
        "views": str(stats["views"]),
        "anonymous": str(stats["anonymous_views"]),
        "registered": str(stats["registered_views"]),
    }


def assert_page_matches_the_api(served, shown: dict, start: str, end: str, sku: str) -> None:
    assert [s for s in shown["states"] if not s.endswith(":ready")] == []
    assert shown["errors"] == []
    assert shown["violations"] == []
    assert all(chart["drawn"] for chart in shown["charts"]), shown["charts"]

    catalog = api(served, f"/api/stats/views?from={start}&to={end}").json
    assert shown["catalog"]["figures"] == figures_of(catalog)
    assert shown["catalog"]["days"] == days_of(catalog)

    top = api(served, f"/api/stats/products?from={start}&to={end}&limit=10").json
    assert shown["top"] == [
        {
            "sku": p["sku"],
            "views": str(p["views"]),
            "anonymous": str(p["anonymous_views"]),
            "registered": str(p["registered_views"]),
        }
        for p in top
    ]
    chart = next(c for c in shown["charts"] if c["id"] == "top-chart")
    assert chart["points"] == [
        [p["anonymous_views"] for p in top],
        [p["registered_views"] for p in top],
    ]

    product = api(served, f"/api/products/{sku}/stats?from={start}&to={end}").json
    assert shown["product"]["sku"] == sku
    assert shown["product"]["figures"] == figures_of(product)
    assert shown["product"]["days"] == days_of(product)

    summary = api(served, "/api/notifications/summary?days=7").json
    assert shown["emails"]["counts"] == {s: summary[s] for s in STATUSES}
    assert shown["emails"]["days"] == [
        {"date": d["date"], **{s: str(d[s]) for s in STATUSES}} for d in summary["by_day"]
    ]
    for status in ("failed", "unknown"):
        listed = api(served, f"/api/notifications?status={status}&page_size=20")
        assert shown["emails"][status] == [{"id": str(n["id"])} for n in listed.json]
        assert (
            shown["emails"][f"{status}_total"]
            == json.loads(listed.headers["X-Pagination"])["total"]
        )


def log_in(page: DevTools, base: str) -> None:
    """Open the dashboard in a fresh tab state and log in through its form."""
    page.call("Page.navigate", url=f"{base}/dashboard")
    page.wait_for("the page", "document.body && document.body.dataset.state !== 'starting'")
    page.evaluate("sessionStorage.clear()")
    page.call("Page.navigate", url=f"{base}/dashboard")
    page.wait_for("the login form", "document.body?.dataset.state === 'login'")
    page.type_into("#email", ADMIN[0])
    page.type_into("#password", ADMIN[1])
    page.click("#login-form button")
    page.wait_for("the charts", "document.body?.dataset.state === 'ready'")


def test_an_admin_logs_in_and_the_dashboard_shows_the_apis_numbers(served, chromium):
    _http, _token, base, workdir = served
    page = chromium
    page.size(**DESKTOP)
    log_in(page, base)

    token = page.evaluate("sessionStorage.getItem('marketplace.dashboard.token')")
    assert token and token.count(".") == 2  # the JWT, kept for this tab only
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("localStorage.length") == 0

    start, end = (TODAY - timedelta(days=29)).isoformat(), TODAY.isoformat()
    shown = page.evaluate(READ_PAGE)
    # By default: the last 30 days, the most viewed product chosen.
    assert shown["top"][0]["sku"] == "zap-01"
    assert len(shown["catalog"]["days"]) == 30
    assert shown["catalog"]["figures"]["views"] == str(8 + 3 + 1 + 5 + 8 + 2 + 6)
    assert shown["emails"]["counts"] == {
        "sent": 4,
        "pending": 1,
        "sending": 0,
        "failed": 2,
        "unknown": 1,
        "delivered": 0,
        "bounced": 0,
        "complained": 0,
        "suppressed": 0,
    }
    assert_page_matches_the_api(served, shown, start, end, "zap-01")

    desktop = page.screenshot(workdir / "dashboard-desktop.png", DESKTOP["width"])
    assert png_size(desktop)[0] == DESKTOP["width"]
    assert len(desktop) < MAX_SCREENSHOT_BYTES
    if os.environ.get("UPDATE_SCREENSHOTS"):
        SCREENSHOT.write_bytes(desktop)

    # Another range and product, through the page's own controls.
    start, end = (TODAY - timedelta(days=10)).isoformat(), TODAY.isoformat()
    page.size(**DESKTOP)
    page.evaluate(
        f"document.getElementById('from').value = '{start}';"
        "document.getElementById('sku').value = '';"
    )
    page.type_into("#sku", "cam-02")
    page.click("#range-form button")
    page.wait_for(
        "the new range",
        f"document.body?.dataset.state === 'ready' && "
        f"document.querySelector('#catalog-table tbody tr')?.dataset.date === '{start}'",
    )
    shown = page.evaluate(READ_PAGE)
    assert len(shown["catalog"]["days"]) == 11
    assert_page_matches_the_api(served, shown, start, end, "cam-02")


def test_at_a_phones_width_the_cards_stack_and_nothing_overflows(served, chromium):
    _http, _token, base, workdir = served
    page = chromium
    page.size(**PHONE)
    log_in(page, base)
    # A reload keeps the tab's login (its sessionStorage): straight to the charts.
    page.call("Page.navigate", url=f"{base}/dashboard")
    page.wait_for("the charts again", "document.body?.dataset.state === 'ready'")
    layout = page.evaluate(
        """(() => ({
          width: window.innerWidth,
          scroll: document.documentElement.scrollWidth,
          cards: [...document.querySelectorAll('.grid > .card')].map((c) => {
            const r = c.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.width)];
          }),
          violations: window.__violations,
        }))()"""
    )
    assert layout["width"] == PHONE["width"]
    assert layout["scroll"] <= layout["width"]  # no sideways scrolling
    lefts = {left for left, _width in layout["cards"]}
    assert len(layout["cards"]) == 5 and len(lefts) == 1  # one column
    assert all(width >= PHONE["width"] - 40 for _left, width in layout["cards"])
    assert layout["violations"] == []
    phone = page.screenshot(workdir / "dashboard-phone.png", PHONE["width"])
    assert png_size(phone)[0] == PHONE["width"]

    # A range the API refuses: each section says why, naming the field.
    page.evaluate(f"document.getElementById('from').value = '{TODAY + timedelta(days=1)}'")
    page.click("#range-form button")
    page.wait_for("the refusal", "document.querySelector('#catalog')?.dataset.state === 'error'")
    assert page.evaluate("document.querySelector('#catalog .error').textContent") == (
        "from: Must not be after 'to'."
    )

    # Log out ends the token on the server, not only in the tab: a copy of it is refused.
    http = served[0]
    token = page.evaluate("sessionStorage.getItem('marketplace.dashboard.token')")
    assert http.get("/users/me", token=token).status == 200
    page.click("#logout")
    page.wait_for("the login form", "document.body?.dataset.state === 'login'")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.evaluate("document.getElementById('login-error').textContent") == "Logged out."
    refused = http.get("/users/me", token=token)
    assert refused.status == 401, refused
    assert "revoked" in refused.json["message"]


def test_a_wrong_password_is_said_on_the_form(served, chromium):
    _http, _token, base, _workdir = served
    page = chromium
    page.size(**DESKTOP)
    page.call("Page.navigate", url=f"{base}/dashboard")
    page.wait_for("the login form", "document.body?.dataset.state === 'login'")
    page.type_into("#email", ADMIN[0])
    page.type_into("#password", "not-the-password")
    page.click("#login-form button")
    page.wait_for("the error", "document.getElementById('login-error').textContent !== ''")
    assert page.evaluate("document.getElementById('login-error').textContent") == (
        "Wrong email or password."
    )
    assert page.evaluate("document.getElementById('board').hidden") is True
    assert page.evaluate("sessionStorage.length") == 0
    assert page.evaluate("location.search") == ""  # the password never went into the URL


def test_a_products_history_lists_its_changes_and_revert_sets_one_back(served, chromium):
    http, token, base, _workdir = served
    assert http.request("PUT", "/api/products/cam-02", {"price": 150}, token=token).status == 200
    page = chromium
    page.size(**DESKTOP)
    log_in(page, base)
    page.evaluate("document.getElementById('sku').value = ''")
    page.type_into("#sku", "cam-02")
    page.click("#range-form button")
    page.wait_for(
        "cam-02's history",
        "document.body?.dataset.state === 'ready' && "
        "document.getElementById('history').dataset.sku === 'cam-02'",
    )
    history = api(served, "/api/products/cam-02/history?page_size=20").json
    rows = page.evaluate(
        "[...document.querySelectorAll('#history-table tbody tr')].map((tr) => ({...tr.dataset}))"
    )
    assert rows == [{"id": str(e["id"]), "type": e["type"]} for e in history]
    assert [e["type"] for e in history] == ["product.updated", "product.created"]

    created = history[-1]["id"]
    button = f"#history-table button[data-revert='{created}']"
    page.evaluate(
        f"document.querySelector({json.dumps(button)}).scrollIntoView({{block: 'center'}})"
    )
    page.click(button)
    page.wait_for(
        "the revert",
        f"document.querySelector('#history-table tbody tr')?.dataset.revertedTo === '{created}'",
    )
    assert api(served, "/api/products/cam-02").json["price"] == 120
    assert page.evaluate("document.querySelector('#history .error').textContent") == ""
    assert "Reverted to change" in page.evaluate(
        "document.getElementById('history-figures').textContent"
    )


def test_the_webhook_card_shows_each_endpoints_health(served, chromium):
    http, token, base, _workdir = served
    # Addresses, not names: nothing to resolve. Public, so the service takes them.
    made = []
    for url in ("https://93.184.215.14/erp", "https://93.184.215.14/search"):
        answer = http.request("POST", "/api/webhooks", {"url": url}, token=token)
        assert answer.status == 201, answer.json
        made.append(answer.json)
    off = http.request("PATCH", f"/api/webhooks/{made[1]['id']}", {"active": False}, token=token)
    assert off.status == 200
    page = chromium
    page.size(**DESKTOP)
    page.call("Page.navigate", url=f"{base}/dashboard")
    page.wait_for("the board", "document.body?.dataset.state !== 'starting'")
    if page.evaluate("document.body.dataset.state") == "login":
        log_in(page, base)
    page.wait_for(
        "the webhook card", "document.getElementById('webhooks').dataset.state === 'ready'"
    )

    rows = page.evaluate(
        "[...document.querySelectorAll('#webhook-table tbody tr')].map((tr) => ({...tr.dataset,"
        " url: tr.cells[1].textContent, shown: tr.cells[2].textContent}))"
    )
    listed = api(served, "/api/webhooks").json
    assert [(r["id"], r["url"], r["state"], r["shown"]) for r in rows] == [
        (str(h["id"]), h["url"], h["health"]["state"], h["health"]["state"]) for h in listed
    ]
    assert [r["state"] for r in rows[-2:]] == ["healthy", "disabled"]
    figures = page.evaluate("({...document.getElementById('webhook-figures').dataset})")
    assert figures["endpoints"] == str(len(listed)) and figures["disabled"] == "1"
    assert page.evaluate("window.__violations") == []
