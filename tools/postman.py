"""A Postman collection (v2.1) generated from the OpenAPI document.

Requests are grouped by tag, use a ``{{baseUrl}}`` variable, and authenticate with the
collection's bearer ``{{token}}``, which the login request stores for the others.

The collection is safe to run against any database, a production one included: it only
changes what it created itself. Each run creates a product and a user with random names
(``postman-<random>``, set by the create requests' pre-request scripts), stores their sku
and id from the answers, reads and changes them, logs in as the new user for the
self-service requests, and deletes both in a last "clean up" folder. Any other body that
names a product (the bulk import's example row) names the run's own product. A request that
needs something the run did not create (its create failed) is skipped
(``pm.execution.skipRequest()``): no variable has a default that points at real data.

The webhook requests run only when the collection variable ``webhook_url`` names a URL
that may receive webhooks: the run then registers its own endpoint there, replays to it
only the events after its own product's last change seen in the history, and deletes it
in "clean up". Left empty, they are skipped. So is the lifting of a suppressed address
unless ``suppressed_email`` names one.
"""

from __future__ import annotations

import argparse
import json
import re

from app import create_app
from app.core.extensions import openapi

SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
LOGIN = ("post", "/users/login")
CREATE_PRODUCT = ("post", "/api/products")
CREATE_USER = ("post", "/api/users")
CREATE_WEBHOOK = ("post", "/api/webhooks")
REPLAY = ("post", "/api/webhooks/{webhook_id}/replay")
HISTORY = ("get", "/api/products/{sku}/history")
REVERT = ("post", "/api/products/{sku}/revert")
NOTIFICATIONS = ("get", "/api/notifications")
DELIVERIES = ("get", "/api/webhooks/{webhook_id}/deliveries")
# The login sends the collection's own credentials (set them once in Postman).
LOGIN_BODY = {"email": "{{admin_email}}", "password": "{{admin_password}}"}
# What the create requests send instead of the examples' fixed sku, username, email and
# password: values made fresh for each run, so an existing row is never taken for ours.
BODY_VALUES = {
    CREATE_PRODUCT: {"sku": "{{new_sku}}"},
    CREATE_USER: {
        "username": "{{new_username}}",
        "email": "{{new_email}}",
        "password": "{{new_password}}",
    },
    CREATE_WEBHOOK: {"url": "{{webhook_url}}"},
    REPLAY: {"after": "{{event_id}}"},
    REVERT: {"to": "{{event_id}}"},
}
# Variables a body sends as JSON numbers, not strings.
NUMBERS = ("event_id",)
# Any other body naming a product (a bulk import, ...) names the run's own product.
OTHER_BODIES = {"sku": "{{sku}}"}
# Path parameters filled from variables that only a successful create sets.
PATH_VALUES = {
    "sku": "{{sku}}",
    "user_id": "{{user_id}}",
    "webhook_id": "{{webhook_id}}",
    "delivery_id": "{{delivery_id}}",
    "notification_id": "{{notification_id}}",
    # Never set by a run: an address to lift from the suppression list on purpose.
    "email": "{{suppressed_email}}",
}
# Variables a body cannot be sent without.
BODY_NEEDS = ("webhook_url", "event_id")
# The self-service routes run as the user the collection created, never as the admin
# whose credentials it was given (a new name there would change a real account).
SELF_SERVICE = {("get", "/users/me"), ("patch", "/users/me"), ("post", "/users/logout")}
# Deletions run last, in their own folder, once everything else has used the rows.
CLEAN_UP = [
    ("delete", "/api/products/{sku}"),
    ("delete", "/api/users/{user_id}"),
    ("delete", "/api/webhooks/{webhook_id}"),
    ("delete", "/api/suppressions/{email}"),
]
WHAT = {
    "sku": "product",
    "user_id": "user",
    "user_token": "user's login",
    "webhook_url": "webhook URL (set the collection variable webhook_url)",
    "webhook_id": "webhook endpoint",
    "delivery_id": "webhook delivery",
    "event_id": "product's last event",
    "notification_id": "email (the run's own product change)",
    "suppressed_email": "suppressed address (set the collection variable suppressed_email)",
}
WEBHOOK_VARIABLES = ("webhook_id", "delivery_id")

EXPECT_SUCCESS = [
    'pm.test("answers 2xx", function () {',
    "    pm.expect(pm.response.code).to.be.within(200, 299);",
    "});",
]
RANDOM_SUFFIX = "var suffix = Date.now().toString(36) + Math.random().toString(36).slice(2, 8);"
PREPARE = {
    CREATE_PRODUCT: [
        RANDOM_SUFFIX,
        'pm.collectionVariables.unset("sku");',
        'pm.collectionVariables.set("new_sku", "postman-" + suffix);',
    ],
    CREATE_USER: [
        RANDOM_SUFFIX,
        *(
            f'pm.collectionVariables.unset("{name}");'
            for name in ("user_id", "user_email", "user_password", "user_token")
        ),
        'pm.collectionVariables.set("new_username", "postman-" + suffix);',
        'pm.collectionVariables.set("new_email", "postman-" + suffix + "@example.com");',
        'pm.collectionVariables.set("new_password", "pm-" + suffix + '
        "Math.random().toString(36).slice(2, 10));",
    ],
    CREATE_WEBHOOK: [f'pm.collectionVariables.unset("{name}");' for name in WEBHOOK_VARIABLES],
}
# After a 2xx: the variables a later request reads (or, once deleted, must not read).
SAVE = {
    LOGIN: ['pm.collectionVariables.set("token", pm.response.json()["Token"]);'],
    CREATE_PRODUCT: ['pm.collectionVariables.set("sku", pm.response.json()["sku"]);'],
    CREATE_USER: [
        'pm.collectionVariables.set("user_id", pm.response.json()["id"]);',
        'pm.collectionVariables.set("user_email", pm.collectionVariables.get("new_email"));',
        'pm.collectionVariables.set("user_password", pm.collectionVariables.get("new_password"));',
    ],
    CREATE_WEBHOOK: ['pm.collectionVariables.set("webhook_id", pm.response.json()["id"]);'],
    HISTORY: [
        "var events = pm.response.json();",
        'if (events.length) { pm.collectionVariables.set("event_id", events[0]["id"]); }',
    ],
    NOTIFICATIONS: [
        "var emails = pm.response.json();",
        'if (emails.length) { pm.collectionVariables.set("notification_id", emails[0]["id"]); }',
    ],
    DELIVERIES: [
        "var deliveries = pm.response.json();",
        "if (deliveries.length) {",
        '    pm.collectionVariables.set("delivery_id", deliveries[0]["id"]);',
        "}",
    ],
    ("delete", "/api/products/{sku}"): [
        'pm.collectionVariables.unset("sku");',
        'pm.collectionVariables.unset("event_id");',
    ],
    ("delete", "/api/webhooks/{webhook_id}"): [
        f'pm.collectionVariables.unset("{name}");' for name in WEBHOOK_VARIABLES
    ],
    ("delete", "/api/users/{user_id}"): [
        f'pm.collectionVariables.unset("{name}");'
        for name in ("user_id", "user_email", "user_password", "user_token")
    ],
}


def _skip_unless(variable: str) -> list[str]:
    return [
        f'if (!pm.collectionVariables.get("{variable}")) {{',
        f'    console.log("skipped: the {WHAT[variable]} this request needs was not '
        'created in this run");',
        "    pm.execution.skipRequest();",
        "}",
    ]


def _on_success(lines: list[str]) -> list[str]:
    return ["if (pm.response.code < 300) {", *(f"    {line}" for line in lines), "}"]


def _script(listen: str, lines: list[str]) -> dict:
    return {"listen": listen, "script": {"type": "text/javascript", "exec": lines}}


def _example(operation: dict):
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    return content.get("example")


def _own_rows(body, key: tuple[str, str]):
    """The example body with the run's own values instead of the examples' fixed ones."""
    overrides = BODY_VALUES.get(key, OTHER_BODIES)
    if isinstance(body, dict):
        return body | {name: value for name, value in overrides.items() if name in body}
    if isinstance(body, list):
        return [_own_rows(row, key) for row in body]
    return body


def _needs(path: str, key: tuple[str, str], body) -> list[str]:
    """The variables a request cannot run without (in its path or its body)."""
    sent = path + json.dumps(body)
    needed = [value.strip("{}") for name, value in PATH_VALUES.items() if "{" + name + "}" in sent]
    needed += [name for name in BODY_NEEDS if "{" + name + "}" in sent]
    if key in SELF_SERVICE:
        needed.append("user_token")
    return needed


def _item(name: str, request: dict, key, needs: list[str]) -> dict:
    events = []
    prerequest = [line for variable in needs for line in _skip_unless(variable)]
    prerequest += PREPARE.get(key, [])
    if prerequest:
        events.append(_script("prerequest", prerequest))
    if key in SAVE:
        events.append(_script("test", _on_success(SAVE[key])))
    item = {"name": name, "request": request}
    if events:
        item["event"] = events
    return item


def _request(path: str, method: str, operation: dict, shared: list) -> dict:
    key = (method, path)
    postman_path = re.sub(r"\{(\w+)\}", r":\1", path)
    parameters = shared + operation.get("parameters", [])
    url = {
        "raw": "{{baseUrl}}" + postman_path,
        "host": ["{{baseUrl}}"],
        "path": [part for part in postman_path.split("/") if part],
        "variable": [
            {
                "key": p["name"],
                "value": PATH_VALUES.get(p["name"], ""),
                "description": p.get("description", ""),
            }
            for p in parameters
            if p.get("in") == "path"
        ],
        "query": [
            {
                "key": p["name"],
                "value": "",
                "disabled": True,
                "description": p.get("description", ""),
            }
            for p in parameters
            if p.get("in") == "query"
        ],
    }
    request: dict = {
        "method": method.upper(),
        "header": [],
        "url": url,
        "description": operation.get("description", ""),
    }
    body = LOGIN_BODY if key == LOGIN else _example(operation)
    body = _own_rows(body, key)
    if "requestBody" in operation:
        request["header"].append({"key": "Content-Type", "value": "application/json"})
        request["body"] = _json_body(body if body is not None else {})
    if operation.get("security") == []:
        request["auth"] = {"type": "noauth"}
    elif key in SELF_SERVICE:
        request["auth"] = _bearer("{{user_token}}")
    name = operation.get("summary") or f"{method.upper()} {path}"
    return _item(name, request, key, _needs(path, key, body))


def _json_body(body) -> dict:
    raw = json.dumps(body, indent=2)
    for name in NUMBERS:
        raw = raw.replace(f'"{{{{{name}}}}}"', f"{{{{{name}}}}}")
    return {
        "mode": "raw",
        "raw": raw,
        "options": {"raw": {"language": "json"}},
    }


def _bearer(token: str) -> dict:
    return {"type": "bearer", "bearer": [{"key": "token", "value": token, "type": "string"}]}


def _login_as_new_user() -> dict:
    """Log in as the user this run created: its token is the self-service requests'."""
    request = {
        "method": "POST",
        "header": [{"key": "Content-Type", "value": "application/json"}],
        "url": {
            "raw": "{{baseUrl}}/users/login",
            "host": ["{{baseUrl}}"],
            "path": ["users", "login"],
        },
        "description": "Logs in as the user created by this run, for the requests below.",
        "body": _json_body({"email": "{{user_email}}", "password": "{{user_password}}"}),
        "auth": {"type": "noauth"},
    }
    item = _item("Log in as the new user", request, None, ["user_id"])
    item["event"].append(
        _script(
            "test",
            _on_success(['pm.collectionVariables.set("user_token", pm.response.json()["Token"]);']),
        )
    )
    return item


def postman_collection(spec: dict, base_url: str = "http://127.0.0.1:8000") -> dict:
    folders: dict[str, list] = {}
    last: dict[tuple[str, str], dict] = {}
    # The self-service requests run as the user the run creates: after everything else.
    own_account: list[dict] = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            key = (method, path)
            item = _request(path, method, operation, operations.get("parameters", []))
            if key in CLEAN_UP:
                last[key] = item
            elif key in SELF_SERVICE:
                own_account.append(item)
            else:
                folders.setdefault((operation.get("tags") or ["other"])[0], []).append(item)
    items = [{"name": tag, "item": requests} for tag, requests in folders.items()]
    if own_account:
        items.append(
            {
                "name": "your own account",
                "description": "As the user this run created: read, rename, log out.",
                "item": [_login_as_new_user(), *own_account],
            }
        )
    if last:
        items.append(
            {
                "name": "clean up",
                "description": "Deletes the product, the user and the webhook endpoint this "
                "run created.",
                "item": [last[key] for key in CLEAN_UP if key in last],
            }
        )
    return {
        "info": {
            "name": spec["info"]["title"],
            "description": "Generated from the service's OpenAPI document. Run it in "
            "order: 'Log in' stores the token that the other requests send; the run "
            "creates its own product and user (random names), changes and deletes only "
            "them, and skips the requests that need them when a create failed.",
            "schema": SCHEMA,
        },
        "auth": _bearer("{{token}}"),
        "variable": [
            {"key": "baseUrl", "value": base_url, "type": "string"},
            {"key": "admin_email", "value": "admin@example.com", "type": "string"},
            {"key": "admin_password", "value": "", "type": "string"},
            # Set by the run itself; empty until the request that makes them succeeds.
            *(
                {"key": name, "value": "", "type": "string"}
                for name in ("token", "sku", "user_id", "user_email", "user_password")
            ),
            # Empty: the webhook requests are skipped. A URL: the run registers it.
            {"key": "webhook_url", "value": "", "type": "string"},
            *(
                {"key": name, "value": "", "type": "string"}
                for name in ("event_id", "notification_id", *WEBHOOK_VARIABLES)
            ),
            {"key": "user_token", "value": "", "type": "string"},
            # Empty: the suppression is never lifted. An address: the run lifts it.
            {"key": "suppressed_email", "value": "", "type": "string"},
        ],
        "event": [_script("test", EXPECT_SUCCESS)],
        "item": items,
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m tools.postman [--base-url URL] > marketplace.postman_collection.json`"""
    parser = argparse.ArgumentParser(description="Print a Postman collection of every route.")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    app = create_app()
    with app.app_context():
        spec = openapi.spec.to_dict()
    print(json.dumps(postman_collection(spec, args.base_url), indent=2))


if __name__ == "__main__":
    main()
