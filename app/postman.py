"""A Postman collection (v2.1) generated from the OpenAPI document.

Requests are grouped by tag, use a ``{{baseUrl}}`` variable, and authenticate with the
collection's bearer ``{{token}}``, which the login request stores for the others.
"""

from __future__ import annotations

import json
import re

SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
SAVE_TOKEN = [
    "if (pm.response.code === 200) {",
    '    pm.collectionVariables.set("token", pm.response.json().Token);',
    "}",
]


def _example(operation: dict):
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    if "example" in content:
        return content["example"]
    return None


def _request(path: str, method: str, operation: dict) -> dict:
    postman_path = re.sub(r"\{(\w+)\}", r":\1", path)
    parameters = operation.get("parameters", [])
    url = {
        "raw": "{{baseUrl}}" + postman_path,
        "host": ["{{baseUrl}}"],
        "path": [part for part in postman_path.split("/") if part],
        "variable": [
            {"key": p["name"], "value": "", "description": p.get("description", "")}
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
    body = _example(operation)
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
    if path.endswith("/login") and method == "post":
        item["event"] = [
            {"listen": "test", "script": {"type": "text/javascript", "exec": SAVE_TOKEN}}
        ]
    return item


def postman_collection(spec: dict, base_url: str = "http://127.0.0.1:8000") -> dict:
    folders: dict[str, list] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            tag = (operation.get("tags") or ["other"])[0]
            folders.setdefault(tag, []).append(_request(path, method, operation))
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
            {"key": "token", "value": "", "type": "string"},
        ],
        "item": [{"name": tag, "item": items} for tag, items in folders.items()],
    }
