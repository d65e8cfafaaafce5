"""Whatever bytes arrive as a body, every route that reads one answers a 4xx in the one
error shape (or succeeds), never a 5xx: hypothesis writes the bodies as raw text, so they
hold what no JSON library would write (numbers like 1e9999999999999999999, NaN, 5,000
digits, cut-off documents, invalid UTF-8), in the fields each operation declares."""

from __future__ import annotations

import json
from collections import Counter
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.accounts.models import Role, User
from app.accounts.tokens import issue_token
from app.core.extensions import db

# Number tokens as a client may type them: valid JSON that no float or decimal can hold,
# and what JSON does not allow at all.
HOSTILE_NUMBERS = [
    "1e9999999999999999999",
    "-1e9999999999999999999",
    "1e-9999999999999999999",
    "1E+999999999",
    "123456789e999999",
    "0." + "0" * 5000 + "1",
    "9" * 4301,
    "1" * 5000 + ".5",
    "1e400",
    "-0",
    "NaN",
    "Infinity",
    "-Infinity",
    "0x10",
    "1_000",
    "+1",
    ".5",
    "01",
]
NUMBERS = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS),
    st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,25})?", fullmatch=True),
)
SCALARS = st.one_of(
    NUMBERS,
    st.sampled_from(["true", "false", "null", '""', '"\\ud800"', '"\\u0000"']),
    st.text(max_size=40).map(json.dumps),
)


def containers(children):
    return st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.text(max_size=8), children, max_size=4).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    )


VALUES = st.recursive(SCALARS, containers, max_leaves=8)


def objects(fields: list[str]):
    """A JSON object of the operation's own fields (and others), with hostile values."""
    keys = st.one_of(st.sampled_from(fields), st.text(max_size=10)) if fields else st.text()
    return st.dictionaries(keys, VALUES, max_size=len(fields) + 2).map(
        lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
    )


def mangled(documents):
    """A document, or a cut-off, padded or non-UTF-8 version of it."""
    return st.one_of(
        documents.map(str.encode),
        st.tuples(documents, st.integers(0, 200)).map(lambda t: t[0][: t[1]].encode()),
        documents.map(lambda d: b"\xef\xbb\xbf" + d.encode()),  # a byte order mark
        documents.map(lambda d: d.encode().replace(b'"', b'"\xff', 1)),
        documents.map(lambda d: "[" * 100_000 + d),
        st.binary(max_size=64),
    )


def json_operations(spec: dict) -> list[tuple[str, str, list[str], bool]]:
    """(method, path, its fields, whether it takes an array) of every operation with a
    JSON body."""
    found = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            schema = content["application/json"]["schema"]
            array = schema.get("type") == "array"
            schema = schema["items"] if array else schema
            name = schema["$ref"].rsplit("/", 1)[-1]
            fields = list(spec["components"]["schemas"][name].get("properties", {}))
            found.append((method.upper(), path, fields, array))
    return found


def assert_answer_keeps_the_contract(response, label: str) -> None:
    assert response.status_code < 500, (label, response.status_code, response.get_data()[:300])
    if response.status_code < 400:
        return
    body = response.get_json(silent=True)
    assert isinstance(body, dict), (label, response.get_data()[:300])
    assert body["code"] == response.status_code, (label, body)
    assert body["status"] == HTTPStatus(response.status_code).phrase, (label, body)
    assert isinstance(body["message"], str) and body["message"], (label, body)
    assert set(body) <= {"code", "status", "message", "errors", "request_id"}, (label, body)


def fuzz(client, method: str, path: str, bodies, headers, sent: Counter):
    """A hypothesis test of one operation: generated bodies, each answer checked."""

    @FUZZ
    @given(body=bodies)
    def check(body):
        response = client.open(
            path, method=method, data=body, content_type="application/json", headers=headers()
        )
        sent[(method, path)] += 1
        assert_answer_keeps_the_contract(response, f"{method} {path} {body[:200]!r}")

    return check


FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_no_body_makes_a_json_route_fail(app, client, admin, reader, make):
    """Every operation that reads a JSON body (and the import's CSV), as an admin."""
    make.product("fuzz-1")
    spec = client.get("/api/openapi.json").json
    operations = json_operations(spec)
    assert {(m, p) for m, p, _f, _a in operations} >= {
        ("POST", "/users/login"),
        ("PATCH", "/users/me"),
        ("POST", "/api/products"),
        ("PUT", "/api/products/{sku}"),
        ("POST", "/api/catalog/import"),
        ("PATCH", "/api/users/{user_id}"),
    }

    def admin_headers() -> dict:
        # A body may change this admin (a new password, rol 2): an active admin again,
        # with a fresh token, so that every body reaches the route.
        with app.app_context():
            user = db.session.get(User, admin["id"])
            user.role, user.deleted_at = Role.ADMIN, None
            db.session.commit()
            return {"Authorization": f"Bearer {issue_token(user)}"}

    sent = Counter()
    for method, template, fields, array in operations:
        path = template.replace("{sku}", "fuzz-1").replace("{user_id}", str(reader["id"]))
        documents = objects(fields)
        if array:
            documents = st.lists(documents, max_size=3).map(lambda o: "[" + ",".join(o) + "]")
        fuzz(client, method, path, mangled(documents), admin_headers, sent)()

    @FUZZ
    @given(body=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
    def csv_import(body):
        headers = admin_headers()
        for content in (b"sku,name,price,mark,quantity\n" + body, body):
            response = client.post(
                "/api/catalog/import", data=content, content_type="text/csv", headers=headers
            )
            assert_answer_keeps_the_contract(response, f"CSV {content[:200]!r}")

    csv_import()
    assert len(sent) == len(operations), sent


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/users/login", '{"email":"a@b.cd","password":"x","x":1e9999999999999999999}'),
        ("/api/products", '{"sku":"n","name":"n","mark":"m","price":1e9999999999999999999}'),
        (
            "/api/catalog/import",
            '[{"sku":"n","name":"n","mark":"m","price":-1e9999999999999999999}]',
        ),
    ],
)
def test_a_number_no_decimal_can_hold_is_a_400_naming_the_problem(client, admin, path, body):
    response = client.post(
        path, data=body, content_type="application/json", headers=admin["headers"]
    )
    assert response.status_code == 400, response.json
    assert response.json["message"] == "The body holds a number too large to read."
    assert response.json["code"] == 400
