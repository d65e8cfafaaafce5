"""A Postman collection (v2.1) generated from the OpenAPI document.

Requests are grouped by tag, use a ``{{baseUrl}}`` variable, and authenticate with the
collection's bearer ``{{token}}``, which the login request stores for the others. Run in
order, the collection logs in, creates a product and a user, reads, changes and deletes
them; every request is expected to answer 2xx.
"""

from __future__ import annotations

import json
import re

SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
# Scripts that carry values from one request to the next, so the collection runs in order:
# log in, create a product and a user, then read, change and delete them.
SAVE = {
    ("post", "/users/login"): ("token", "Token"),
    ("post", "/api/products"): ("sku", "sku"),
    ("post", "/api/users"): ("user_id", "id"),
}
# The login sends the collection's own credentials (set them once in Postman).
LOGIN_BODY = {"email": "{{admin_email}}", "password": "{{admin_password}}"}
# Path parameters filled from those variables.
PATH_VALUES = {"sku": "{{sku}}", "user_id": "{{user_id}}"}
EXPECT_SUCCESS = [
    'pm.test("answers 2xx", function () {',
    "    pm.expect(pm.response.code).to.be.within(200, 299);",
    "});",
]


def _save(variable: str, key: str) -> list[str]:
    return [
        "if (pm.response.code < 300) {",
        f'    pm.collectionVariables.set("{variable}", pm.response.json()["{key}"]);',
        "}",
    ]


def _example(operation: dict):
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    if "example" in content:
        return content["example"]
    return None


def _request(path: str, method: str, operation: dict, shared: list) -> dict:
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
    body = LOGIN_BODY if (method, path) == ("post", "/users/login") else _example(operation)
    if "requestBody" in operation:
        request["header"].append({"key": "Content-Type", "value": "application/json"})
        request["body"] = {
            "mode": "raw",
            "raw": json.dumps(body if body is not None else {}, indent=2),
            "options": {"raw": {"language": "json"}},
        }
    if operation.get("security") == []:
        request["auth"] = {"type": "noauth"}
    item = {"name": operation.get("summary") or f"{method.upper()} {path}", "request": request}
    if (method, path) in SAVE:
        script = _save(*SAVE[(method, path)])
        item["event"] = [{"listen": "test", "script": {"type": "text/javascript", "exec": script}}]
    return item


def postman_collection(spec: dict, base_url: str = "http://127.0.0.1:8000") -> dict:
    folders: dict[str, list] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            tag = (operation.get("tags") or ["other"])[0]
            shared = operations.get("parameters", [])
            folders.setdefault(tag, []).append(_request(path, method, operation, shared))
    return {
        "info": {
            "name": spec["info"]["title"],
            "description": "Generated from the service's OpenAPI document. Run "
            "'Log in' first: it stores the token that the other requests send.",
            "schema": SCHEMA,
        },
        "auth": {
            "type": "bearer",
            "bearer": [{"key": "token", "value": "{{token}}", "type": "string"}],
        },
        "variable": [
            {"key": "baseUrl", "value": base_url, "type": "string"},
            {"key": "admin_email", "value": "admin@example.com", "type": "string"},
            {"key": "admin_password", "value": "", "type": "string"},
            {"key": "token", "value": "", "type": "string"},
            {"key": "sku", "value": "d7iy6euiue", "type": "string"},
            {"key": "user_id", "value": "1", "type": "string"},
        ],
        "event": [
            {"listen": "test", "script": {"type": "text/javascript", "exec": EXPECT_SUCCESS}}
        ],
        "item": [{"name": tag, "item": items} for tag, items in folders.items()],
    }
