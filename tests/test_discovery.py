"""RFC 8414 metadata true to what is served; liveness and readiness."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from jwskate import Jwk, Jwt, SymmetricJwk

from tests.support.api import cc_token, new_client, new_user, password_token
from tests.support.apps import AppFactory
from tests.support.authflow import (
    CB,
    CHALLENGE,
    VERIFIER,
    assert_error_redirect,
    authorize,
    get_code,
    public_app,
    redeem,
)
from tests.support.config import ADMIN
from tests.support.dpop import DPoPKey

ISSUER = "http://testserver"
SECRET_AND_KEY_METHODS = ["client_secret_basic", "client_secret_post", "client_secret_jwt",
                          "private_key_jwt"]
ASSERTION_ALGS = ["RS256", "PS256", "ES256", "EdDSA", "HS256", "HS384"]
# A key for each asymmetric algorithm listed, for a private_key_jwt client.
SIGNING_KEYS = {"RS256": Jwk.generate(alg="RS256", kid="rs", key_size=2048),
                "PS256": Jwk.generate(alg="PS256", kid="ps", key_size=2048),
                "ES256": Jwk.generate(alg="ES256", kid="es"),
                "EdDSA": Jwk.generate(alg="EdDSA", kid="ed")}
# metadata member -> (method, path) where this service would serve it
KNOWN_ENDPOINTS = {
    "token_endpoint": ("POST", "/oauth/token"),
    "revocation_endpoint": ("POST", "/oauth/revoke"),
    "introspection_endpoint": ("POST", "/oauth/introspect"),
    "userinfo_endpoint": ("GET", "/oauth/userinfo"),
    "authorization_endpoint": ("GET", "/oauth/authorize"),
    "registration_endpoint": ("POST", "/oauth/register"),
    "jwks_uri": ("GET", "/.well-known/jwks.json"),
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
        "jwks_uri": f"{ISSUER}/.well-known/jwks.json",
        "token_endpoint_auth_methods_supported": [*SECRET_AND_KEY_METHODS, "none"],
        # `Bearer`: finAPI's `Authorization: Bearer <the client's own access token>`, by its
        # name in the "OAuth Access Token Types" registry, as RFC 8414 §2 allows here.
        "revocation_endpoint_auth_methods_supported": [*SECRET_AND_KEY_METHODS, "none", "Bearer"],
        "introspection_endpoint_auth_methods_supported": SECRET_AND_KEY_METHODS,
        **{f"{endpoint}_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS
           for endpoint in ("token", "revocation", "introspection")},
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
    # RFC 9449 §5.1: the algorithms a DPoP proof may use (asymmetric only).
    assert doc["dpop_signing_alg_values_supported"] == ["ES256", "ES384", "EdDSA", "RS256", "PS256"]
    # Nothing beyond what RFC 8414 (and RFC 9449 §5.1) defines and this service can mean.
    allowed = {*stable, "grant_types_supported", "response_types_supported",
               "authorization_endpoint", "registration_endpoint", "code_challenge_methods_supported",
               "scopes_supported", "response_modes_supported",
               "authorization_response_iss_parameter_supported", "dpop_signing_alg_values_supported"}
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
    client = await new_client(http, grant_types=grants, redirect_uris=[CB])
    await new_user(http)
    auth = (client["client_id"], client["client_secret"])
    rt = (await password_token(http, client)).json()["refresh_token"]
    code = (await get_code(http, client))["code"]
    working = {
        "client_credentials": {},
        "password": {"username": "alice", "password": "correct horse"},
        "refresh_token": {"refresh_token": rt},
        "authorization_code": {"code": code, "redirect_uri": CB, "code_verifier": VERIFIER},
    }
    for grant in grants:
        # A grant listed without a request here that shows it working is not known to work.
        assert grant in working, f"{grant} is listed but this test has no valid request for it"
        resp = await http.post("/oauth/token", data={"grant_type": grant, **working[grant]},
                               auth=auth)
        assert resp.status_code == 200, f"{grant}: {resp.text}"
        assert resp.json()["access_token"].startswith("tsv_at_")
    for grant in OTHER_GRANTS:
        if grant in grants:
            continue
        resp = await http.post("/oauth/token", data={"grant_type": grant}, auth=auth)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == "unsupported_grant_type"


# Every name RFC 8414 §2 admits in an `*_auth_methods_supported` member: the "OAuth Token
# Endpoint Authentication Methods" registry and the "OAuth Access Token Types" registry.
IANA_AUTH_METHODS = {"none", "client_secret_post", "client_secret_basic", "client_secret_jwt",
                     "private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth"}
IANA_TOKEN_TYPES = {"Bearer", "N_A", "PoP", "DPoP"}
# The ones this test can make a request with; any other must not be listed.
TRIED = ("client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt", "none",
         "Bearer")


def assertion(client_id: str, path: str, key: Jwk, alg: str) -> dict[str, str]:
    """RFC 7523 client authentication parameters for a request to `path`."""
    now = int(time.time())
    jwt = Jwt.sign({"iss": client_id, "sub": client_id, "aud": f"{ISSUER}{path}", "iat": now,
                    "exp": now + 60, "jti": str(uuid.uuid4())}, key=key, alg=alg)
    return {"client_id": client_id, "client_assertion": str(jwt),
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}


async def key_clients(http: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """A private_key_jwt client with a key of each listed algorithm, a client_secret_jwt one."""
    keyed = await new_client(http, token_endpoint_auth_method="private_key_jwt", jwks={
        "keys": [k.public_jwk().to_dict() for k in SIGNING_KEYS.values()]})
    return keyed, await new_client(http, token_endpoint_auth_method="client_secret_jwt")


class Caller:
    """A confidential client and a public one, and requests that authenticate each way."""

    def __init__(self, http: httpx.AsyncClient, confidential: dict[str, Any],
                 public: dict[str, Any], keyed: dict[str, Any], hmac: dict[str, Any]) -> None:
        self.http = http
        self.confidential = confidential
        self.public = public
        self.keyed = keyed
        self.hmac = hmac

    def assertion(self, method: str, path: str) -> dict[str, str]:
        if method == "private_key_jwt":
            return assertion(self.keyed["client_id"], path, SIGNING_KEYS["ES256"], "ES256")
        secret = SymmetricJwk.from_bytes(self.hmac["client_secret"].encode())
        return assertion(self.hmac["client_id"], path, secret, "HS256")

    async def own_token(self, method: str) -> str:
        """A fresh access token of the client that `method` authenticates."""
        if method == "none":
            resp = await self.http.post("/oauth/token", data={
                "grant_type": "password", "client_id": self.public["client_id"],
                "username": "alice", "password": "correct horse"})
        elif method.endswith("_jwt"):
            resp = await self.http.post("/oauth/token", data={
                "grant_type": "client_credentials", **self.assertion(method, "/oauth/token")})
        else:
            resp = await cc_token(self.http, self.confidential)
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["access_token"]
        return token

    async def post(self, path: str, method: str, data: dict[str, str]) -> httpx.Response:
        cid, secret = self.confidential["client_id"], self.confidential["client_secret"]
        if method == "client_secret_basic":
            return await self.http.post(path, data=data, auth=(cid, secret))
        if method == "client_secret_post":
            return await self.http.post(path, data={**data, "client_id": cid, "client_secret": secret})
        if method == "none":
            return await self.http.post(path, data={**data, "client_id": self.public["client_id"]})
        if method.endswith("_jwt"):
            return await self.http.post(path, data={**data, **self.assertion(method, path)})
        assert method == "Bearer"  # the confidential client's own access token
        return await self.http.post(path, data=data, headers={
            "Authorization": f"Bearer {await self.own_token(method)}"})


async def _token_endpoint_works(caller: Caller, method: str) -> bool:
    resp = await caller.post("/oauth/token", method, {
        "grant_type": "password", "username": "alice", "password": "correct horse"})
    return resp.status_code == 200 and resp.json()["access_token"].startswith("tsv_at_")


async def _introspection_works(caller: Caller, method: str) -> bool:
    token = await caller.own_token(method)
    resp = await caller.post("/oauth/introspect", method, {"token": token})
    return resp.status_code == 200 and resp.json().get("active") is True


async def _live(http: httpx.AsyncClient, token: str) -> bool:
    resp = await http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code in (200, 401), resp.text
    return resp.status_code == 200


async def _revocation_works(caller: Caller, method: str) -> bool:
    """Works: a live token of the authenticated client is dead afterwards."""
    token = await caller.own_token(method)
    assert await _live(caller.http, token)
    resp = await caller.post("/oauth/revoke", method, {"token": token})
    return resp.status_code == 200 and not await _live(caller.http, token)


ENDPOINT_CHECKS = {
    "token_endpoint_auth_methods_supported": _token_endpoint_works,
    "introspection_endpoint_auth_methods_supported": _introspection_works,
    "revocation_endpoint_auth_methods_supported": _revocation_works,
}


@pytest.mark.parametrize("member", list(ENDPOINT_CHECKS))
async def test_listed_auth_methods_are_exactly_those_that_work(http: httpx.AsyncClient,
                                                              member: str) -> None:
    """Each method listed for an endpoint authenticates a request there, and each method that
    does is listed: at revocation that includes finAPI's Bearer access token (RFC 8414 §2 admits
    the "OAuth Access Token Types" registry's names for it)."""
    doc = await metadata(http)
    listed = doc[member]
    assert len(listed) == len(set(listed))
    assert set(listed) <= IANA_AUTH_METHODS | IANA_TOKEN_TYPES, listed
    assert set(listed) <= set(TRIED), f"{member} lists a method this test cannot try: {listed}"
    await new_user(http)
    caller = Caller(http, await new_client(http),
                    await new_client(http, token_endpoint_auth_method="none"), *await key_clients(http))
    works = {method for method in TRIED if await ENDPOINT_CHECKS[member](caller, method)}
    assert set(listed) == works


async def test_unlisted_auth_methods_cannot_be_registered(http: httpx.AsyncClient) -> None:
    doc = await metadata(http)
    for method in IANA_AUTH_METHODS - set(doc["token_endpoint_auth_methods_supported"]):
        resp = await http.post("/admin/clients", headers=ADMIN,
                               json={"name": "n", "token_endpoint_auth_method": method})
        assert resp.status_code == 400, method


async def test_listed_pkce_methods_work_and_others_are_refused(app_factory: AppFactory) -> None:
    """code_challenge_methods_supported follows TOKENSVC_ALLOW_PLAIN_PKCE: every listed method
    carries a code from the authorization request to its redemption; `plain`, unlisted, is
    refused at the authorization endpoint."""
    for allow_plain, methods in ((False, ["S256"]), (True, ["S256", "plain"])):
        async with app_factory(allow_plain_pkce=allow_plain) as http:
            await http.delete("/admin/users/alice", headers=ADMIN)
            await new_user(http)
            doc = await metadata(http)
            assert doc["code_challenge_methods_supported"] == methods
            app = await public_app(http)
            challenges = {"S256": CHALLENGE, "plain": VERIFIER}
            for method in methods:
                code = (await get_code(http, app, code_challenge=challenges[method],
                                       code_challenge_method=method))["code"]
                resp = await redeem(http, app, code)
                assert resp.status_code == 200, f"{method}: {resp.text}"
            for method in {"S256", "plain"} - set(methods):
                resp = await authorize(http, app, code_challenge=challenges[method],
                                       code_challenge_method=method)
                assert_error_redirect(resp, "invalid_request",
                                      "code_challenge_method plain is not allowed; use S256.")


async def test_listed_response_types_and_modes_work(http: httpx.AsyncClient) -> None:
    """response_types_supported ["code"], response_modes_supported ["query"] and
    authorization_response_iss_parameter_supported: the code comes back in the redirect URI's
    query with `iss` equal to the issuer (RFC 9207); other response types are unsupported."""
    doc = await metadata(http)
    assert doc["response_types_supported"] == ["code"]
    assert doc["response_modes_supported"] == ["query"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    await new_user(http)
    app = await public_app(http)
    query = await get_code(http, app)  # parses the Location's query; checks code and iss
    assert query["iss"] == doc["issuer"]
    for response_type in ("token", "id_token", "code token", "code id_token"):
        resp = await authorize(http, app, response_type=response_type)
        assert_error_redirect(resp, "unsupported_response_type",
                              "Only response_type=code is supported.")


@pytest.mark.parametrize("endpoint", ["token", "introspection", "revocation"])
async def test_listed_assertion_algs_work_and_others_are_refused(http: httpx.AsyncClient,
                                                                 endpoint: str) -> None:
    """Each `*_endpoint_auth_signing_alg_values_supported` algorithm authenticates a client
    there (private_key_jwt with a key of that type, client_secret_jwt with an HMAC), and
    algorithms not listed are refused."""
    doc = await metadata(http)
    listed = doc[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
    keyed, hmac = await key_clients(http)
    path = {"token": "/oauth/token", "introspection": "/oauth/introspect",
            "revocation": "/oauth/revoke"}[endpoint]
    data = {"grant_type": "client_credentials"} if endpoint == "token" else {"token": "x"}
    secret = SymmetricJwk.from_bytes(hmac["client_secret"].encode())
    others = {"ES384": Jwk.generate(alg="ES384", kid="es"),
              "RS512": Jwk.generate(alg="RS512", kid="rs", key_size=2048),
              "HS512": secret}

    async def works(alg: str) -> bool:
        key = secret if alg.startswith("HS") else SIGNING_KEYS.get(alg) or others[alg]
        client = hmac if alg.startswith("HS") else keyed
        resp = await http.post(path, data={**data, **assertion(client["client_id"], path, key, alg)})
        assert resp.status_code in (200, 401), resp.text
        return resp.status_code == 200

    assert [alg for alg in listed if await works(alg)] == listed
    assert not any([await works(alg) for alg in others])
async def test_listed_dpop_algs_get_bound_tokens_and_others_are_refused(
        http: httpx.AsyncClient) -> None:
    """dpop_signing_alg_values_supported (RFC 9449 §5.1): a proof signed with each listed
    algorithm gets a DPoP-bound token; one with an unlisted algorithm is refused."""
    doc = await metadata(http)
    client = await new_client(http)
    url = f"{doc['issuer']}/oauth/token"
    for alg in [*doc["dpop_signing_alg_values_supported"], "RS384"]:
        key = DPoPKey(alg)
        resp = await http.post("/oauth/token", auth=(client["client_id"], client["client_secret"]),
                               data={"grant_type": "client_credentials"},
                               headers={"DPoP": key.proof("POST", url)})
        if alg in doc["dpop_signing_alg_values_supported"]:
            assert resp.status_code == 200, f"{alg}: {resp.text}"
            assert resp.json()["token_type"] == "DPoP"
        else:
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"] == "invalid_dpop_proof"


# Each member the metadata may carry, and the test above that holds it to what is served.
CHECKED_MEMBERS = {
    "issuer": test_metadata_document,
    "authorization_endpoint": test_every_listed_endpoint_is_served_and_every_served_one_is_listed,
    "token_endpoint": test_every_listed_endpoint_is_served_and_every_served_one_is_listed,
    "revocation_endpoint": test_every_listed_endpoint_is_served_and_every_served_one_is_listed,
    "introspection_endpoint": test_every_listed_endpoint_is_served_and_every_served_one_is_listed,
    "userinfo_endpoint": test_every_listed_endpoint_is_served_and_every_served_one_is_listed,
    "registration_endpoint": test_every_listed_endpoint_is_served_and_every_served_one_is_listed,
    # Served (above); that its keys verify the JWT access tokens: tests/test_jwt_tokens.py.
    "jwks_uri": test_every_listed_endpoint_is_served_and_every_served_one_is_listed,
    "grant_types_supported": test_listed_grants_work_and_others_are_unsupported,
    "response_types_supported": test_listed_response_types_and_modes_work,
    "response_modes_supported": test_listed_response_types_and_modes_work,
    "authorization_response_iss_parameter_supported": test_listed_response_types_and_modes_work,
    "code_challenge_methods_supported": test_listed_pkce_methods_work_and_others_are_refused,
    "token_endpoint_auth_methods_supported": test_listed_auth_methods_are_exactly_those_that_work,
    "introspection_endpoint_auth_methods_supported":
        test_listed_auth_methods_are_exactly_those_that_work,
    "revocation_endpoint_auth_methods_supported":
        test_listed_auth_methods_are_exactly_those_that_work,
    "token_endpoint_auth_signing_alg_values_supported":
        test_listed_assertion_algs_work_and_others_are_refused,
    "introspection_endpoint_auth_signing_alg_values_supported":
        test_listed_assertion_algs_work_and_others_are_refused,
    "revocation_endpoint_auth_signing_alg_values_supported":
        test_listed_assertion_algs_work_and_others_are_refused,
    "dpop_signing_alg_values_supported": test_listed_dpop_algs_get_bound_tokens_and_others_are_refused,
}


async def test_every_metadata_member_is_held_to_behaviour(http: httpx.AsyncClient) -> None:
    """A member added to the metadata without a test of what it claims fails here."""
    doc = await metadata(http)
    assert set(doc) <= set(CHECKED_MEMBERS), set(doc) - set(CHECKED_MEMBERS)


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
