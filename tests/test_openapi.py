"""/openapi.json describes the whole HTTP surface, and nothing the service does not serve."""

from __future__ import annotations

import re
from typing import Any

import httpx
from starlette.routing import Route

from tests.support.api import cc_token, new_client, new_user, password_token
from tests.support.config import ADMIN

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


async def document(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.get("/openapi.json")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    doc: dict[str, Any] = resp.json()
    return doc


async def test_the_document_lists_exactly_the_served_routes(http: httpx.AsyncClient) -> None:
    doc = await document(http)
    assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": "http://testserver"}]
    served: dict[str, set[str]] = {}
    for route in http.app.routes:  # type: ignore[attr-defined]
        assert isinstance(route, Route)
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        # `{username:path}` is `{username}` in OpenAPI: the converter is Starlette's business.
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        served.setdefault(path, set()).update(methods)
    described = {path: {m for m in item if m in HTTP_METHODS} for path, item in doc["paths"].items()}
    assert described == served


async def test_every_operation_is_complete(http: httpx.AsyncClient) -> None:
    doc = await document(http)
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        params = {p["name"] for p in item.get("parameters", [])}
        assert params == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            assert op["summary"] and op["responses"], (path, method)
            for status, response in op["responses"].items():
                assert status.isdigit() and response["description"], (path, method, status)
                for media in response.get("content", {}).values():
                    ref = media["schema"].get("$ref")
                    if ref:
                        assert ref.rsplit("/", 1)[1] in schemas, ref
            for scheme in (s for req in op.get("security", []) for s in req):
                assert scheme in doc["components"]["securitySchemes"]


async def test_real_answers_are_documented(http: httpx.AsyncClient) -> None:
    """A sample of real requests, each answered with a documented status and body shape."""
    doc = await document(http)
    client = await new_client(http)
    await new_user(http)
    calls = [
        ("post", "/oauth/token", await cc_token(http, client)),
        ("post", "/oauth/token", await password_token(http, client, password="wrong horse")),
        ("post", "/oauth/token", await http.post("/oauth/token", data={"grant_type": "x"})),
        ("post", "/oauth/token", await http.post("/oauth/token", content=b"x",
                                                headers={"content-type": "text/plain"})),
        ("post", "/oauth/introspect", await http.post("/oauth/introspect", data={"token": "x"},
                                                     auth=(client["client_id"],
                                                           client["client_secret"]))),
        ("post", "/oauth/revoke", await http.post("/oauth/revoke", data={"token": "x"},
                                                 auth=(client["client_id"], client["client_secret"]))),
        ("get", "/oauth/userinfo", await http.get("/oauth/userinfo")),
        ("get", "/admin/clients/{client_id}", await http.get("/admin/clients/nope", headers=ADMIN)),
        ("post", "/oauth/register", await http.post("/oauth/register", json={})),
        ("get", "/oauth/authorize", await http.get("/oauth/authorize")),
        ("get", "/readyz", await http.get("/readyz")),
    ]
    for method, path, resp in calls:
        op = doc["paths"][path][method]
        documented = op["responses"].get(str(resp.status_code))
        assert documented is not None, (path, resp.status_code, resp.text[:200])
        if resp.headers.get("content-type", "").startswith("application/json") and resp.status_code >= 400:
            body = resp.json()
            assert {"error", "error_description", "message"} <= set(body), (path, body)


async def test_client_policy_fields_and_the_audience_are_documented(http: httpx.AsyncClient) -> None:
    """`introspection` (RFC 7662 §4) and `resources` (RFC 8707) as the admin API shows and takes
    them; `resource` on token requests and `aud` at introspection."""
    schemas = (await document(http))["components"]["schemas"]
    client = await new_client(http, introspection="all", resources=["https://api.example"])
    for name in ("Client", "ClientInput"):
        props = schemas[name]["properties"]
        assert props["introspection"]["enum"] == ["own", "all"]
        assert props["introspection"]["default"] == "own"
        assert props["resources"]["type"] == "array"
        assert client["introspection"] in props["introspection"]["enum"]
    assert "resource" in schemas["TokenRequest"]["properties"]
    assert "aud" in schemas["Introspection"]["properties"]
    assert "invalid_target" in (await document(http))["paths"]["/oauth/token"]["post"]["responses"][
        "400"]["description"]
