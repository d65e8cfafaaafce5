"""The admins' dashboard: one page whose script reads the JSON API (views per day, the
most viewed products, email delivery) and draws it with the vendored Chart.js.

The page logs in through ``POST /users/login`` and keeps the token in its
sessionStorage, sent as the bearer header: the API trusts no cookie. Its script and
styles are files under app/static (no inline script, no CDN), so its policy allows only
this origin.
"""

from flask import Blueprint, make_response, render_template

dashboard_blp = Blueprint("dashboard", __name__)

POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dashboard_blp.get("/dashboard")
def page():
    """The dashboard page (its data needs an admin's login)."""
    response = make_response(render_template("dashboard.html"))
    # Set here, so the default API policy (default-src 'none') does not replace it.
    response.headers["Content-Security-Policy"] = POLICY
    return response
