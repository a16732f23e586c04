"""RFC 8414 metadata true to what is served; liveness and readiness."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.api import cc_token, new_client, new_user, password_token
from tests.support.config import ADMIN

ISSUER = "http://testserver"
# metadata member -> (method, path) where this service would serve it
KNOWN_ENDPOINTS = {
    "token_endpoint": ("POST", "/oauth/token"),
    "revocation_endpoint": ("POST", "/oauth/revoke"),
    "introspection_endpoint": ("POST", "/oauth/introspect"),
    "userinfo_endpoint": ("GET", "/oauth/userinfo"),
    "authorization_endpoint": ("GET", "/oauth/authorize"),
    "registration_endpoint": ("POST", "/oauth/register"),
}
OTHER_GRANTS = ["implicit", "urn:ietf:params:oauth:grant-type:device_code",
                "urn:ietf:params:oauth:grant-type:jwt-bearer", "client_credentials ", "PASSWORD"]


async def metadata(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.get("/.well-known/oauth-authorization-server")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["cache-control"] == "public, max-age=300"
    doc: dict[str, Any] = resp.json()
    return doc


async def test_metadata_document(http: httpx.AsyncClient) -> None:
    doc = await metadata(http)
    assert doc["issuer"] == ISSUER
    required = {"issuer", "token_endpoint", "response_types_supported", "grant_types_supported",
                "token_endpoint_auth_methods_supported"}
    assert required <= set(doc)
    # The members whose values do not depend on which grants are implemented, exactly.
    stable = {
        "issuer": ISSUER,
        "token_endpoint": f"{ISSUER}/oauth/token",
        "revocation_endpoint": f"{ISSUER}/oauth/revoke",
        "introspection_endpoint": f"{ISSUER}/oauth/introspect",
        "userinfo_endpoint": f"{ISSUER}/oauth/userinfo",
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post",
                                                       "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic",
                                                          "client_secret_post"],
    }
    assert {k: doc.get(k) for k in stable} == stable
    assert set(doc["grant_types_supported"]) == {"authorization_code", "client_credentials",
                                                 "password", "refresh_token"}
    # The authorization-code flow: only `code`, PKCE with S256 only (plain is off by default),
    # and RFC 9207's iss parameter on every redirect.
    assert doc["authorization_endpoint"] == f"{ISSUER}/oauth/authorize"
    assert doc["response_types_supported"] == ["code"]
    assert doc["response_modes_supported"] == ["query"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    # Nothing beyond what RFC 8414 defines and this service can mean.
    allowed = {*stable, "grant_types_supported", "response_types_supported",
               "authorization_endpoint", "registration_endpoint", "code_challenge_methods_supported",
               "scopes_supported", "response_modes_supported",
               "authorization_response_iss_parameter_supported"}
    assert set(doc) <= allowed, set(doc) - allowed


async def test_unknown_paths_are_404(http: httpx.AsyncClient) -> None:
    """The control for the checks below: an unserved path does answer 404."""
    for method, path in (("GET", "/oauth/nothing"), ("POST", "/oauth/nothing")):
        resp = await http.request(method, path)
        assert resp.status_code == 404
        assert resp.json() == {"error": "not_found", "error_description": "Not Found",
                               "message": "Not Found"}


async def test_every_listed_endpoint_is_served_and_every_served_one_is_listed(
        http: httpx.AsyncClient) -> None:
    doc = await metadata(http)
    listed = {name for name in doc if name.endswith("_endpoint") or name == "jwks_uri"}
    for name in listed:
        url = urlsplit(doc[name])
        assert f"{url.scheme}://{url.netloc}" == ISSUER and not url.query and not url.fragment
        assert name in KNOWN_ENDPOINTS, f"{name} is listed but this test does not know it"
        method, path = KNOWN_ENDPOINTS[name]
        assert url.path == path
    for name, (method, path) in KNOWN_ENDPOINTS.items():
        resp = await http.request(method, path)
        served = resp.status_code not in (404, 405)
        assert served == (name in listed), f"{method} {path}: {resp.status_code}, listed={name in listed}"
    # Response types: only with an authorization endpoint.
    if "authorization_endpoint" in listed:
        assert "code" in doc["response_types_supported"]
        assert doc["code_challenge_methods_supported"] == ["S256"]
    else:
        assert doc["response_types_supported"] == []


async def test_listed_grants_work_and_others_are_unsupported(http: httpx.AsyncClient) -> None:
    doc = await metadata(http)
    grants = doc["grant_types_supported"]
    assert len(grants) == len(set(grants))
    client = await new_client(http, grant_types=grants, redirect_uris=["https://app.example/cb"])
    await new_user(http)
    auth = (client["client_id"], client["client_secret"])
    rt = (await password_token(http, client)).json()["refresh_token"]
    working = {
        "client_credentials": {},
        "password": {"username": "alice", "password": "correct horse"},
        "refresh_token": {"refresh_token": rt},
    }
    for grant in grants:
        resp = await http.post("/oauth/token", data={"grant_type": grant, **working.get(grant, {})},
                               auth=auth)
        if grant in working:
            assert resp.status_code == 200, f"{grant}: {resp.text}"
        else:  # listed, but this test has no valid request for it: at least it is not unsupported
            assert resp.json()["error"] != "unsupported_grant_type", grant
    for grant in OTHER_GRANTS:
        if grant in grants:
            continue
        resp = await http.post("/oauth/token", data={"grant_type": grant}, auth=auth)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == "unsupported_grant_type"


async def test_listed_auth_methods_work(http: httpx.AsyncClient) -> None:
    doc = await metadata(http)
    confidential = await new_client(http)
    public = await new_client(http, token_endpoint_auth_method="none")
    await new_user(http)
    cid, secret = confidential["client_id"], confidential["client_secret"]
    token = (await cc_token(http, confidential)).json()["access_token"]
    user = {"grant_type": "password", "username": "alice", "password": "correct horse"}

    def request(method: str, data: dict[str, str]) -> dict[str, Any]:
        if method == "client_secret_basic":
            return {"data": data, "auth": (cid, secret)}
        if method == "client_secret_post":
            return {"data": {**data, "client_id": cid, "client_secret": secret}}
        assert method == "none"
        return {"data": {**data, "client_id": public["client_id"]}}

    for method in doc["token_endpoint_auth_methods_supported"]:
        resp = await http.post("/oauth/token", **request(method, user))
        assert resp.status_code == 200, f"{method}: {resp.text}"
    for method in doc["introspection_endpoint_auth_methods_supported"]:
        resp = await http.post("/oauth/introspect", **request(method, {"token": token}))
        assert resp.status_code == 200 and resp.json()["active"] is True, method
    if "none" not in doc["introspection_endpoint_auth_methods_supported"]:
        resp = await http.post("/oauth/introspect", **request("none", {"token": token}))
        assert resp.status_code == 401
    for method in doc["revocation_endpoint_auth_methods_supported"]:
        resp = await http.post("/oauth/revoke", **request(method, {"token": "unknown"}))
        assert resp.status_code == 200, f"{method}: {resp.text}"
    # What is not listed cannot even be registered.
    for method in ("client_secret_jwt", "private_key_jwt", "tls_client_auth"):
        assert method not in doc["token_endpoint_auth_methods_supported"]
        resp = await http.post("/admin/clients", headers=ADMIN,
                               json={"name": "n", "token_endpoint_auth_method": method})
        assert resp.status_code == 400


async def test_healthz(http: httpx.AsyncClient) -> None:
    resp = await http.get("/healthz")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"status": "ok"}


async def test_readyz(http: httpx.AsyncClient) -> None:
    resp = await http.get("/readyz")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert "retry-after" not in resp.headers
    assert resp.json() == {"status": "ok", "redis": True, "invalidation": True}


async def test_metrics(http: httpx.AsyncClient) -> None:
    resp = await http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert b"# TYPE" in resp.content


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/healthz", "/readyz"])
async def test_probes_are_get_only(http: httpx.AsyncClient, path: str) -> None:
    resp = await http.post(path)
    assert resp.status_code == 405
    assert resp.json()["error"] == "method_not_allowed"
