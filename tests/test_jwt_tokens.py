"""RFC 9068 JWT access tokens, checked from outside.

Each token verifies with PyJWT against the served JWKS alone (no tokensvc code on that path:
what a resource server does), carries the contract's header and claims for every grant, and is
recorded by its jti like an opaque token, so introspection, every revocation rule, reuse,
rotation, code replay, the principal endpoints and a Redis outage treat it the same.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api import (
    active,
    auth,
    cc_token,
    introspect,
    new_client,
    new_user,
    password_token,
    refresh,
)
from tests.support.apps import ON_SINGLE_AND_CLUSTER, AppFactory
from tests.support.assertions import assert_error, assert_tokens, bearer_challenge
from tests.support.authflow import CB, VERIFIER, get_code, redeem, web_app
from tests.support.config import ADMIN, ISSUER
from tests.support.redis_servers import RedisServer
from tests.support.stored import expire_now
from tokensvc.store import keys

JWT = {"access_token_format": "jwt"}
RS1, RS2 = "https://api.example/orders", "https://api.example/invoices"
JTI = re.compile(r"[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{22,}")
INVALID = "The access token is invalid, expired or revoked."
Client = dict[str, Any]


async def served_jwks(http: httpx.AsyncClient) -> dict[str, Any]:
    """The JWK Set where the metadata says it is."""
    meta = (await http.get("/.well-known/oauth-authorization-server")).json()
    resp = await http.get(meta["jwks_uri"].removeprefix(ISSUER))
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    doc: dict[str, Any] = resp.json()
    return doc


def verify(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    """A resource server's check, PyJWT alone: the header's kid picks the key from the JWKS,
    the algorithm is pinned, audience and issuer are required."""
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in jwks["keys"] if k["kid"] == kid]
    claims: dict[str, Any] = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["ES256"],
                                        audience=audience, issuer=ISSUER)
    return claims


def assert_jwt(body: dict[str, Any], jwks: dict[str, Any], *, client: Client, sub: str,
               scope: str | None, resources: tuple[str, ...] = ()) -> dict[str, Any]:
    """The token response and the JWT in it, per the contract (RFC 9068 §2)."""
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == scope
    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": header["kid"]}
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    claims = verify(token, jwks, resources[0] if resources else ISSUER)
    assert set(claims) == {"iss", "sub", "aud", "exp", "iat", "jti", "client_id"} | (
        {"scope"} if scope else set())
    assert claims["iss"] == ISSUER and claims["sub"] == sub
    assert claims["client_id"] == client["client_id"]
    assert claims["aud"] == (sorted(resources) if resources else ISSUER)
    assert claims["exp"] - claims["iat"] == 3600 and abs(claims["iat"] - time.time()) < 5
    assert JTI.fullmatch(claims["jti"]), claims["jti"]
    assert claims.get("scope") == scope
    return claims


async def assert_introspected(http: httpx.AsyncClient, rs: Client, token: str,
                              claims: dict[str, Any], resources: tuple[str, ...]) -> None:
    """Introspection answers for the JWT as for an opaque token, from its record."""
    doc = await introspect(http, rs, token)
    expected: dict[str, Any] = {"active": True, "token_type": "Bearer", "iss": ISSUER,
                                "sub": claims["sub"], "client_id": claims["client_id"],
                                "iat": claims["iat"], "exp": claims["exp"]}
    if claims["sub"] != claims["client_id"]:
        expected["username"] = claims["sub"]
    if "scope" in claims:
        expected["scope"] = claims["scope"]
    if resources:
        expected["aud"] = resources[0] if len(resources) == 1 else sorted(resources)
    assert doc == expected


RESOURCES = [(), (RS1,), (RS1, RS2)]
IDS = ["no-resource", "one-resource", "two-resources"]


def with_resources(data: dict[str, Any], resources: tuple[str, ...]) -> dict[str, Any]:
    return {**data, "resource": list(resources)} if resources else data


@ON_SINGLE_AND_CLUSTER
@pytest.mark.parametrize("resources", RESOURCES, ids=IDS)
async def test_client_credentials_jwt(http: httpx.AsyncClient, resources: tuple[str, ...]) -> None:
    client = await new_client(http, **JWT)
    rs = await new_client(http, name="rs", introspection="all")
    resp = await http.post("/oauth/token", auth=auth(client), data=with_resources(
        {"grant_type": "client_credentials"}, resources))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    claims = assert_jwt(body, await served_jwks(http), client=client, sub=client["client_id"],
                        scope="read write", resources=resources)
    await assert_introspected(http, rs, body["access_token"], claims, resources)


@pytest.mark.parametrize("resources", RESOURCES, ids=IDS)
async def test_password_jwt(http: httpx.AsyncClient, resources: tuple[str, ...]) -> None:
    await new_user(http)
    client = await new_client(http, **JWT)
    rs = await new_client(http, name="rs", introspection="all")
    resp = await http.post("/oauth/token", auth=auth(client), data=with_resources(
        {"grant_type": "password", "username": "alice", "password": "correct horse",
         "scope": "read"}, resources))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["refresh_token"].startswith("tsv_rt_")  # refresh tokens stay opaque
    claims = assert_jwt(body, await served_jwks(http), client=client, sub="alice", scope="read",
                        resources=resources)
    await assert_introspected(http, rs, body["access_token"], claims, resources)


@ON_SINGLE_AND_CLUSTER
@pytest.mark.parametrize("resources", RESOURCES, ids=IDS)
async def test_authorization_code_jwt(http: httpx.AsyncClient, resources: tuple[str, ...]) -> None:
    await new_user(http)
    client = await web_app(http, **JWT)
    rs = await new_client(http, name="rs", introspection="all")
    code = (await get_code(http, client))["code"]
    resp = await http.post("/oauth/token", auth=auth(client), data=with_resources(
        {"grant_type": "authorization_code", "code": code, "redirect_uri": CB,
         "code_verifier": VERIFIER}, resources))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    claims = assert_jwt(body, await served_jwks(http), client=client, sub="alice",
                        scope="read write", resources=resources)
    await assert_introspected(http, rs, body["access_token"], claims, resources)


@ON_SINGLE_AND_CLUSTER
@pytest.mark.parametrize("resources", RESOURCES, ids=IDS)
async def test_refresh_token_jwt(http: httpx.AsyncClient, resources: tuple[str, ...]) -> None:
    """The refreshed access token is a JWT too, for the requested subset of the grant's
    audience (or all of it), and the grant's scope or the narrower one asked for."""
    await new_user(http)
    client = await new_client(http, **JWT)
    rs = await new_client(http, name="rs", introspection="all")
    first = await http.post("/oauth/token", auth=auth(client), data={
        "grant_type": "password", "username": "alice", "password": "correct horse",
        "resource": [RS1, RS2]})
    assert first.status_code == 200, first.text
    resp = await http.post("/oauth/token", auth=auth(client), data=with_resources(
        {"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"],
         "scope": "write"}, resources))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    jwks = await served_jwks(http)
    claims = assert_jwt(body, jwks, client=client, sub="alice", scope="write",
                        resources=resources or (RS1, RS2))
    await assert_introspected(http, rs, body["access_token"], claims, resources or (RS1, RS2))
    # Rotation: the previous JWT still stands (only the refresh token rotates); the new
    # refresh token refreshes again, into another JWT.
    assert await active(http, rs, first.json()["access_token"])
    again = await refresh(http, client, body["refresh_token"])
    assert again.status_code == 200, again.text
    assert again.json()["access_token"] != body["access_token"]
    assert_jwt(again.json(), jwks, client=client, sub="alice", scope="read write",
               resources=(RS1, RS2))


async def test_the_global_setting_and_the_client_field(app_factory: AppFactory) -> None:
    """TOKENSVC_ACCESS_TOKEN_FORMAT decides for clients whose field is null; the field wins."""
    async with app_factory(access_token_format="jwt") as http:
        default = await new_client(http)
        opaque = await new_client(http, access_token_format="opaque")
        assert default["access_token_format"] is None
        resp = await cc_token(http, default)
        assert jwt.get_unverified_header(resp.json()["access_token"])["typ"] == "at+jwt"
        assert_tokens(await cc_token(http, opaque), refresh=False)
        # Switched by PATCH, the next token follows.
        patch = await http.patch(f"/admin/clients/{opaque['client_id']}", headers=ADMIN, json=JWT)
        assert patch.status_code == 200 and patch.json()["access_token_format"] == "jwt"
        resp = await cc_token(http, opaque)
        assert jwt.get_unverified_header(resp.json()["access_token"])["typ"] == "at+jwt"


@pytest.mark.parametrize("value", ["JWT", "json", "", 1, True, ["jwt"]])
async def test_a_bad_format_is_refused_and_changes_nothing(http: httpx.AsyncClient, value: Any) -> None:
    resp = await http.post("/admin/clients", headers=ADMIN,
                           json={"name": "x", "access_token_format": value})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"
    assert "access_token_format" in resp.json()["error_description"]
    client = await new_client(http)
    resp = await http.patch(f"/admin/clients/{client['client_id']}", headers=ADMIN,
                            json={"access_token_format": value})
    assert resp.status_code == 400
    stored = (await http.get(f"/admin/clients/{client['client_id']}", headers=ADMIN)).json()
    assert stored == {k: v for k, v in client.items() if k != "client_secret"}


async def test_opaque_clients_never_reach_the_signer(http: httpx.AsyncClient,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The opaque path is unchanged: no signing (no extra work) for a client that is not jwt."""
    signer = http.app.state.services.signer  # type: ignore[attr-defined]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an opaque token request reached the JWT signer")

    for name in ("sign", "ready", "prepare", "parse", "verify"):
        monkeypatch.setattr(signer, name, refuse)
    await new_user(http)
    client = await new_client(http)
    rs = await new_client(http, name="rs", introspection="all")
    cc = assert_tokens(await cc_token(http, client), refresh=False)
    pw = assert_tokens(await password_token(http, client))
    assert_tokens(await refresh(http, client, pw["refresh_token"]))
    assert await active(http, rs, cc["access_token"])
    login = await http.post("/login", headers={"Authorization": f"Bearer {cc['access_token']}"})
    assert login.status_code == 200


async def test_what_is_not_a_token_of_ours_is_refused(http: httpx.AsyncClient) -> None:
    """A bare jti, a JWT with its claims changed, `alg: none`, HS256 keyed with the public key,
    another key under our kid, another issuer's or `typ`: inactive and 401, never looked up."""
    client = await new_client(http, **JWT)
    rs = await new_client(http, name="rs", introspection="all")
    token = (await cc_token(http, client)).json()["access_token"]
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    jwk = next(k for k in (await served_jwks(http))["keys"] if k["kid"] == header["kid"])
    other = ec.generate_private_key(ec.SECP256R1())
    public_pem = jwt.PyJWK(jwk).key.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    head, body, sig = token.split(".")
    tampered_body = b64(json.dumps({**claims, "scope": "admin"}).encode())
    forged = [
        claims["jti"],
        f"{head}.{tampered_body}.{sig}",
        jwt.encode(claims, "", algorithm="none", headers={"kid": header["kid"], "typ": "at+jwt"}),
        hs256_with(public_pem, claims, header["kid"]),
        jwt.encode(claims, other, algorithm="ES256", headers={"kid": header["kid"], "typ": "at+jwt"}),
        jwt.encode({**claims, "iss": "https://evil.example"}, other, algorithm="ES256",
                   headers={"kid": header["kid"], "typ": "at+jwt"}),
        jwt.encode(claims, other, algorithm="ES256", headers={"kid": "unknown", "typ": "at+jwt"}),
    ]
    for bad in forged:
        assert not await active(http, rs, bad), bad
        resp = await http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {bad}"})
        assert_error(resp, 401, "invalid_token", INVALID, bearer_challenge(INVALID))
        revoked = await http.post("/oauth/revoke", data={"token": bad}, auth=auth(client))
        assert revoked.status_code == 200
    assert await active(http, rs, token)  # none of that touched the real one


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_with(secret: bytes, claims: dict[str, Any], kid: str) -> str:
    """The classic key-confusion forgery, built by hand (PyJWT refuses to use a PEM key as an
    HMAC secret): HS256 over the token, keyed with the public key's PEM."""
    signing_input = (b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "at+jwt"}).encode()) + "."
                     + b64(json.dumps(claims).encode()))
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


async def test_principal_endpoints_take_the_jwt(http: httpx.AsyncClient) -> None:
    await new_user(http)
    client = await new_client(http, **JWT)
    body = (await password_token(http, client)).json()
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    for resp in (await http.post("/login", headers=bearer),
                 await http.get("/oauth/userinfo", headers=bearer)):
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        assert doc["type"] == "user" and doc["sub"] == "alice" and doc["username"] == "alice"
        assert doc["client_id"] == client["client_id"] and doc["scope"] == "read write"


@ON_SINGLE_AND_CLUSTER
async def test_each_revocation_rule(http: httpx.AsyncClient) -> None:
    """finAPI's rules hold for JWTs: hint access_token ends that token alone; hint
    refresh_token, or no hint, ends the grant; finAPI's Bearer style revokes with the JWT
    itself; another client's token is refused and stays. Each ends in `active: false`."""
    await new_user(http)
    client = await new_client(http, **JWT)
    other = await new_client(http, **JWT)
    rs = await new_client(http, name="rs", introspection="all")

    async def grant() -> dict[str, Any]:
        resp = await password_token(http, client)
        assert resp.status_code == 200
        body: dict[str, Any] = resp.json()
        return body

    alone = await grant()
    resp = await http.post("/oauth/revoke", auth=auth(client),
                           data={"token": alone["access_token"], "token_type_hint": "access_token"})
    assert resp.status_code == 200
    assert not await active(http, rs, alone["access_token"])
    assert await active(http, rs, alone["refresh_token"])  # the refresh token stays
    for data in ({"token_type_hint": "refresh_token", "which": "refresh_token"},
                 {"which": "access_token"}):
        tokens = await grant()
        which = data.pop("which")
        resp = await http.post("/oauth/revoke", auth=auth(client), data={"token": tokens[which], **data})
        assert resp.status_code == 200
        assert not await active(http, rs, tokens["access_token"])
        assert not await active(http, rs, tokens["refresh_token"])
    tokens = await grant()
    resp = await http.post("/oauth/revoke", params={"token": tokens["access_token"]},
                           headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.status_code == 200
    assert not await active(http, rs, tokens["access_token"])
    tokens = await grant()
    resp = await http.post("/oauth/revoke", auth=auth(other), data={"token": tokens["access_token"]})
    assert resp.status_code == 400 and resp.json()["error"] == "unauthorized_client"
    assert await active(http, rs, tokens["access_token"])


async def test_records_are_kept_by_jti(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    """The record's key is the grant's slot and the digest of the jti (what the codec stores for
    any token); expiring it ends the JWT at introspection and at the principal endpoints,
    although its signature still holds."""
    client = await new_client(http, **JWT)
    rs = await new_client(http, name="rs", introspection="all")
    token = (await cc_token(http, client)).json()["access_token"]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    grant_id = jti.partition(".")[0]
    key = keys.token(grant_id, b64(hashlib.sha256(jti.encode()).digest()))
    assert redis_db.exists(key) and 3595 * 1000 < redis_db.pttl(key) <= 3600 * 1000
    assert token.encode() not in redis_db.get(key)  # type: ignore[operator]
    expire_now(redis_db, key)
    assert not await active(http, rs, token)
    resp = await http.post("/login", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401


async def test_replay_deletion_and_refresh_reuse_end_jwts(http: httpx.AsyncClient) -> None:
    """Everything that ends a grant ends its JWTs: a replayed code, a reused rotated refresh
    token, the user's deletion, the client's revocation."""
    await new_user(http)
    await new_user(http, "bob")
    app = await web_app(http, **JWT)
    rs = await new_client(http, name="rs", introspection="all")
    code = (await get_code(http, app))["code"]
    first = assert_jwt_response(await redeem(http, app, code))
    assert (await redeem(http, app, code)).status_code == 400
    assert not await active(http, rs, first["access_token"])

    client = await new_client(http, **JWT)
    tokens = (await password_token(http, client)).json()
    rotated = (await refresh(http, client, tokens["refresh_token"])).json()
    assert (await refresh(http, client, tokens["refresh_token"])).status_code == 400  # reuse
    assert not await active(http, rs, rotated["access_token"])

    bobs = (await password_token(http, client, username="bob")).json()
    assert (await http.delete("/admin/users/bob", headers=ADMIN)).status_code == 204
    assert not await active(http, rs, bobs["access_token"])

    cc = (await cc_token(http, client)).json()["access_token"]
    assert await active(http, rs, cc)
    assert (await http.delete(f"/admin/clients/{client['client_id']}", headers=ADMIN)).status_code == 204
    assert not await active(http, rs, cc)


def assert_jwt_response(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    return body


@ON_SINGLE_AND_CLUSTER
async def test_reuse_hands_back_the_same_jwt(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    """finAPI reuse: identical requests get the very same JWT string, from this worker's memory,
    from Redis (another instance), and never a clear copy of it in Redis."""
    async with app_factory() as a, app_factory() as b:
        await new_user(a)
        client = await new_client(a, reuse_tokens=True, **JWT)
        rs = await new_client(a, name="rs", introspection="all")
        first = assert_jwt_response(await cc_token(a, client))
        assert assert_jwt_response(await cc_token(a, client))["access_token"] == first["access_token"]
        assert assert_jwt_response(await cc_token(b, client))["access_token"] == first["access_token"]
        pw = assert_jwt_response(await password_token(a, client))
        again = assert_jwt_response(await password_token(b, client))
        assert (again["access_token"], again["refresh_token"]) == (pw["access_token"], pw["refresh_token"])
        # Another scope set or audience is another token.
        narrower = assert_jwt_response(await cc_token(b, client, scope="read"))
        assert narrower["access_token"] != first["access_token"]
        for token in (first["access_token"], pw["access_token"], narrower["access_token"]):
            assert await active(a, rs, token)
            for key in redis_db.scan_iter():
                if redis_db.type(key) == b"string":
                    assert token.encode() not in (redis_db.get(key) or b""), key
        # The reuse record keeps the JWT sealed: revoking it ends reuse, and a new one comes.
        resp = await a.post("/oauth/revoke", auth=auth(client),
                            data={"token": first["access_token"], "token_type_hint": "access_token"})
        assert resp.status_code == 200
        fresh = assert_jwt_response(await cc_token(b, client))
        assert fresh["access_token"] != first["access_token"]
        assert await active(a, rs, fresh["access_token"])


async def test_redis_outage_is_503_for_jwts(app_factory: AppFactory, redis_server: RedisServer,
                                            redis_db: redis.Redis) -> None:
    """With Redis down: issuing, introspecting, revoking and presenting a JWT answer 503
    (never 500); the JWKS is still served from memory; after Redis is back, all work again."""
    async with app_factory(signing_key_publish_ahead=2, signing_key_refresh=0.2) as http:
        await new_user(http)
        client = await new_client(http, **JWT)
        rs = await new_client(http, name="rs", introspection="all")
        token = assert_jwt_response(await cc_token(http, client))["access_token"]
        assert await active(http, rs, token)
        redis_server.stop()
        try:
            for _ in range(2):  # at once, and after the key set's trust (1 s) has run out
                calls = [
                    await cc_token(http, client),
                    await password_token(http, client),
                    await http.post("/oauth/introspect", data={"token": token}, auth=auth(rs)),
                    await http.post("/oauth/revoke", data={"token": token}, auth=auth(client)),
                    await http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {token}"}),
                    await http.post("/admin/signing-keys/rotate", headers=ADMIN),
                ]
                for resp in calls:
                    assert resp.status_code == 503, resp.text
                    assert resp.json()["error"] == "temporarily_unavailable"
                    assert resp.headers["retry-after"] == "1"
                assert (await http.get("/.well-known/jwks.json")).status_code == 200
                await asyncio.sleep(1.2)
        finally:
            redis_server.start()
        await new_user(http)
        client = await new_client(http, **JWT)
        token = assert_jwt_response(await password_token(http, client))["access_token"]
        jwks = await served_jwks(http)
        verify(token, jwks, ISSUER)
