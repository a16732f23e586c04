"""RFC 9449 DPoP acceptance against real `tokensvc serve` processes: a third-party client library
(requests-oauth2client) gets bound tokens for each grant, follows the nonce round trip on its
own, and is refused where its proof or key does not fit; a proof replayed to a second instance
on the same Redis is refused.

The library is synchronous (requests): its calls run in a worker thread, so the event loop of
the test stays free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
import requests
from requests_oauth2client import BearerToken, DPoPKey, DPoPToken, OAuth2Client
from requests_oauth2client.exceptions import EndpointError

from tests.support.authflow import CB, decide, is_consent_page, sign_in
from tests.support.config import ISSUER
from tests.support.dpop import DPoPKey as ProofKey
from tests.support.redis_servers import RedisServer
from tests.support.service import Service, serving
from tests.support.stored import token_keys

pytestmark = pytest.mark.slow
Client = dict[str, Any]
PASSWORD = "correct horse"


@pytest.fixture
def service(redis_db: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Service]:
    """One instance whose issuer is its own URL: the library's proofs name the URL it posts to."""
    with serving(redis_server.url, tmp_path, own_issuer=True) as [svc]:
        yield svc


def oauth(svc: Service, client: Client, **options: Any) -> OAuth2Client:
    """The library's client for `client` of `svc` (its secret in the body, or none); `testing`
    lets it post to the test service's plain-http loopback URL."""
    secret = client.get("client_secret")
    return OAuth2Client(token_endpoint=f"{svc.url}/oauth/token",
                        introspection_endpoint=f"{svc.url}/oauth/introspect",
                        auth=(client["client_id"], secret) if secret else client["client_id"],
                        testing=True, **options)


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_the_library_gets_bound_tokens_for_each_grant(service: Service) -> None:
    await service.create_user(password=PASSWORD)
    rs = oauth(service, await service.create_client(name="rs", introspection="all"))
    lib = oauth(service, await service.create_client(), dpop_bound_access_tokens=True)
    cc = await call(lib.client_credentials, scope="read")
    pw = await call(lib.resource_owner_password, "alice", PASSWORD)
    refreshed = await call(lib.refresh_token, pw)
    for tok in (cc, pw, refreshed):
        assert isinstance(tok, DPoPToken) and tok.token_type == "DPoP"
        doc = await call(rs.introspect_token, tok.access_token)
        assert doc["active"] is True and doc["token_type"] == "DPoP"
        assert doc["cnf"] == {"jkt": tok.dpop_key.dpop_jkt}
    # The refresh used the password grant's key (the library's rule, RFC 9449 §5).
    assert refreshed.dpop_key is pw.dpop_key
    # A confidential client's refresh token is not bound: its authentication binds it.
    assert "cnf" not in await call(rs.introspect_token, refreshed.refresh_token)


async def test_a_jwt_clients_token_carries_cnf_jkt(service: Service) -> None:
    lib = oauth(service, await service.create_client(access_token_format="jwt"),
                dpop_bound_access_tokens=True)
    tok = await call(lib.client_credentials)
    async with service.http() as http:
        jwks = (await http.get("/.well-known/jwks.json")).json()
    kid = jwt.get_unverified_header(tok.access_token)["kid"]
    [jwk] = [k for k in jwks["keys"] if k["kid"] == kid]
    claims = jwt.decode(tok.access_token, jwt.PyJWK(jwk).key, algorithms=["ES256"],
                        audience=service.url, issuer=service.url)
    assert claims["cnf"] == {"jkt": tok.dpop_key.dpop_jkt}


async def test_plain_bearer_requests_are_unchanged(service: Service) -> None:
    rs = oauth(service, await service.create_client(name="rs", introspection="all"))
    tok = await call(oauth(service, await service.create_client()).client_credentials)
    assert type(tok) is BearerToken and tok.token_type == "Bearer"
    doc = await call(rs.introspect_token, tok.access_token)
    assert doc["token_type"] == "Bearer" and "cnf" not in doc


async def test_a_public_clients_refresh_token_works_only_with_its_key(service: Service) -> None:
    await service.create_user(password=PASSWORD)
    rs = oauth(service, await service.create_client(name="rs", introspection="all"))
    app = await service.create_client(token_endpoint_auth_method="none",
                                      grant_types=["password", "refresh_token"])
    lib = oauth(service, app, dpop_bound_access_tokens=True)
    tok = await call(lib.resource_owner_password, "alice", PASSWORD)
    assert (await call(rs.introspect_token, tok.refresh_token))["cnf"] == {
        "jkt": tok.dpop_key.dpop_jkt}
    grant = {"grant_type": "refresh_token", "refresh_token": tok.refresh_token}
    with pytest.raises(EndpointError) as other_key:
        await call(lib.token_request, grant, dpop_key=DPoPKey.generate())
    assert other_key.value.error == "invalid_grant"
    with pytest.raises(EndpointError) as no_proof:
        await call(lib.token_request, grant, dpop=False)
    assert no_proof.value.error == "invalid_dpop_proof"
    refreshed = await call(lib.refresh_token, tok)  # the library proves with the same key
    assert refreshed.token_type == "DPoP" and refreshed.refresh_token != tok.refresh_token


async def test_the_library_binds_its_authorization_code_with_dpop_jkt(service: Service) -> None:
    await service.create_user(password=PASSWORD)
    rs = oauth(service, await service.create_client(name="rs", introspection="all"))
    app = await service.create_client(token_endpoint_auth_method="none", redirect_uris=[CB],
                                      grant_types=["authorization_code", "refresh_token"])
    lib = oauth(service, app, authorization_endpoint=f"{service.url}/oauth/authorize",
                redirect_uri=CB, dpop_bound_access_tokens=True)
    request = lib.authorization_request(scope="read", nonce=None)
    assert request.dpop_jkt is not None and f"dpop_jkt={request.dpop_jkt}" in str(request.uri)
    async with httpx.AsyncClient(base_url=service.url) as browser:
        page = await sign_in(browser, await browser.get(str(request.uri)))
        if is_consent_page(page):
            page = await decide(browser, page)
    answer = request.validate_callback(page.headers["location"])
    with pytest.raises(EndpointError) as other_key:
        await call(lib.authorization_code, answer.code, dpop_key=DPoPKey.generate(), redirect_uri=CB,
                   code_verifier=answer.code_verifier)
    assert other_key.value.error == "invalid_grant"
    tok = await call(lib.authorization_code, answer)  # proves with the request's key
    assert isinstance(tok, DPoPToken) and tok.dpop_key.dpop_jkt == request.dpop_jkt
    assert (await call(rs.introspect_token, tok.access_token))["cnf"] == {"jkt": request.dpop_jkt}


async def test_dpop_bound_access_tokens_is_enforced(service: Service) -> None:
    client = await service.create_client(dpop_bound_access_tokens=True)
    with pytest.raises(EndpointError) as refused:
        await call(oauth(service, client).client_credentials)
    assert refused.value.error == "invalid_dpop_proof"
    tok = await call(oauth(service, client, dpop_bound_access_tokens=True).client_credentials)
    assert tok.token_type == "DPoP"


async def test_the_nonce_round_trip(redis_db: redis.Redis, redis_server: RedisServer,
                                    tmp_path: Path) -> None:
    """TOKENSVC_DPOP_NONCE=1: the first request is sent back for a nonce, and the library's retry
    with it succeeds; both exchanges are seen on the wire."""
    seen: list[requests.Response] = []
    session = requests.Session()
    session.hooks["response"].append(lambda resp, *args, **kwargs: seen.append(resp))
    with serving(redis_server.url, tmp_path, own_issuer=True, dpop_nonce=1) as [svc]:
        lib = oauth(svc, await svc.create_client(), dpop_bound_access_tokens=True, session=session)
        tok = await call(lib.client_credentials)
    assert tok.token_type == "DPoP"
    first, retry = seen
    assert first.status_code == 400 and first.json()["error"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    assert retry.status_code == 200 and retry.headers["DPoP-Nonce"]
    assert jwt.decode(retry.request.headers["DPoP"], options={"verify_signature": False})["nonce"] == nonce
    assert "nonce" not in jwt.decode(first.request.headers["DPoP"], options={"verify_signature": False})


@pytest.fixture
def pair(redis_db: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[list[Service]]:
    """Two instances on one Redis with the same issuer, so one proof's htu fits both."""
    with serving(redis_server.url, tmp_path, 2) as running:
        yield running


async def test_a_proof_replayed_to_a_second_instance_is_refused(
        pair: list[Service], redis_db: redis.Redis) -> None:
    one, two = pair
    client = await one.create_client()
    proof = ProofKey().proof("POST", f"{ISSUER}/oauth/token")
    sent = {"grant_type": "client_credentials", "client_id": client["client_id"],
            "client_secret": client["client_secret"]}
    async with one.http() as a, two.http() as b:
        first = await a.post("/oauth/token", data=sent, headers={"DPoP": proof})
        assert first.status_code == 200 and first.json()["token_type"] == "DPoP", first.text
        before = token_keys(redis_db)
        again = await b.post("/oauth/token", data=sent, headers={"DPoP": proof})
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_dpop_proof"
    assert again.json()["error_description"] == "The DPoP proof was already used."
    assert token_keys(redis_db) == before


async def test_a_proof_for_another_url_method_or_key_is_refused_and_changes_nothing(
        pair: list[Service], redis_db: redis.Redis) -> None:
    one, _ = pair
    client = await one.create_client()
    key, other = ProofKey(), ProofKey()
    url = f"{ISSUER}/oauth/token"
    wrong = {"another URL": key.proof("POST", f"{ISSUER}/oauth/revoke"),
             "another method": key.proof("PUT", url),
             "another key": key.proof("POST", url, headers={"jwk": other.jwk})}
    before = token_keys(redis_db)
    async with one.http() as http:
        for what, proof in wrong.items():
            resp: httpx.Response = await http.post(
                "/oauth/token", headers={"DPoP": proof},
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]))
            assert resp.status_code == 400, what
            assert resp.json()["error"] == "invalid_dpop_proof", what
    assert token_keys(redis_db) == before
