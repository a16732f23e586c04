"""RFC 6749 §4.1.3 code redemption at the token endpoint, with RFC 7636 PKCE: binding to the
client, redirect URI and verifier, single use with replay revocation, expiry, the tokens."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest
import redis

from tests.support.api import active, introspect, new_client, new_user
from tests.support.apps import ON_SINGLE_AND_CLUSTER, AppFactory
from tests.support.assertions import assert_error, assert_tokens
from tests.support.authflow import (
    CB,
    CB_LOOPBACK,
    CB_QUERY,
    CHALLENGE,
    VERIFIER,
    Client,
    code_key,
    get_code,
    public_app,
    redeem,
    s256,
    web_app,
)
from tests.support.config import ADMIN
from tests.support.stored import expire_now, grant_of, token_key
from tokensvc.store import keys
from tokensvc.tokens import TokenCodec

OTHER_SERVER = TokenCodec(["another server key 0123456789abcdef0123"])
INVALID = "The authorization code is invalid, expired or already used."
REPLAYED = "The authorization code was already used; its tokens are revoked."
FOREIGN = "The authorization code was issued to another client."
WRONG_REDIRECT = "redirect_uri does not match the authorization request."
WRONG_VERIFIER = "The code_verifier does not match the code_challenge."
MALFORMED_VERIFIER = "code_verifier must be 43-128 unreserved characters (RFC 7636 §4.1)."

pytestmark = ON_SINGLE_AND_CLUSTER


def members(r: redis.Redis, key: str) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else m for m in r.smembers(key)}


@pytest.fixture
async def rs(http: httpx.AsyncClient) -> Client:
    """alice, and a confidential client that introspects (a resource server)."""
    await new_user(http)
    return await new_client(http, name="resource server", introspection="all")


@pytest.fixture
async def app(http: httpx.AsyncClient, rs: Client) -> Client:
    return await public_app(http)


@pytest.fixture
async def web(http: httpx.AsyncClient, rs: Client) -> Client:
    return await web_app(http)


# -- what a code gives ----------------------------------------------------------------------

async def test_code_gives_access_and_refresh_token(http: httpx.AsyncClient, app: Client, rs: Client,
                                                   redis_db: redis.Redis) -> None:
    code = (await get_code(http, app))["code"]
    body = assert_tokens(await redeem(http, app, code))
    for token, kind in ((body["access_token"], "Bearer"), (body["refresh_token"], "refresh_token")):
        doc = await introspect(http, rs, token)
        assert doc["active"] is True and doc["token_type"] == kind
        assert doc["username"] == "alice" and doc["sub"] == "alice"
        assert doc["client_id"] == app["client_id"] and doc["scope"] == "read write"
        assert doc["iss"] == "http://testserver"
    # The tokens join the code's grant, and the user's grant set (for the deletion cascade).
    grant = grant_of(code)
    assert grant_of(body["access_token"]) == grant == grant_of(body["refresh_token"])
    assert {token_key(body["access_token"]), token_key(body["refresh_token"])} <= members(
        redis_db, keys.grant_index(grant))
    assert redis_db.sismember(keys.user_grants("alice"), grant)
    # The access token works as a bearer token.
    resp = await http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert resp.status_code == 200, resp.text


async def test_refresh_rotation_works_on_the_tokens(http: httpx.AsyncClient, app: Client,
                                                    rs: Client) -> None:
    body = assert_tokens(await redeem(http, app, (await get_code(http, app))["code"]))
    rotate = {"grant_type": "refresh_token", "client_id": app["client_id"]}
    first = await http.post("/oauth/token", data={**rotate, "refresh_token": body["refresh_token"]})
    rotated = assert_tokens(first)
    assert rotated["refresh_token"] != body["refresh_token"]
    narrower = assert_tokens(await http.post("/oauth/token", data={
        **rotate, "refresh_token": rotated["refresh_token"], "scope": "read"}), scope="read")
    assert (await introspect(http, rs, narrower["access_token"]))["username"] == "alice"
    # The rotated-away token, presented again, ends the grant.
    again = await http.post("/oauth/token", data={**rotate, "refresh_token": body["refresh_token"]})
    assert_error(again, 400, "invalid_grant",
                 "The refresh token was already used; the grant has been revoked.")
    assert not await active(http, rs, narrower["access_token"])
    assert not await active(http, rs, narrower["refresh_token"])


async def test_access_token_only_without_the_refresh_grant(http: httpx.AsyncClient, rs: Client,
                                                           redis_db: redis.Redis) -> None:
    app = await public_app(http, grant_types=["authorization_code"])
    code = (await get_code(http, app))["code"]
    body = assert_tokens(await redeem(http, app, code), refresh=False)
    assert await active(http, rs, body["access_token"])
    # The grant holds the code and its access token, and no refresh token.
    assert members(redis_db, keys.grant_index(grant_of(code))) == {code_key(code),
                                                                  token_key(body["access_token"])}


async def test_scope_and_lifetimes_as_requested_and_configured(http: httpx.AsyncClient, rs: Client) -> None:
    app = await public_app(http, access_token_ttl=120, refresh_token_ttl=600)
    body = assert_tokens(await redeem(http, app, (await get_code(http, app, scope="write"))["code"]),
                         scope="write", expires_in=120)
    doc = await introspect(http, rs, body["refresh_token"])
    assert doc["scope"] == "write" and doc["exp"] - doc["iat"] == 600


async def test_client_without_scopes_gets_null_scope(http: httpx.AsyncClient, rs: Client) -> None:
    app = await public_app(http, scopes=[])
    body = assert_tokens(await redeem(http, app, (await get_code(http, app, scope=None))["code"]),
                         scope=None)
    doc = await introspect(http, rs, body["access_token"])
    assert doc["active"] is True and "scope" not in doc


async def test_each_registered_redirect_uri_redeems_with_itself(http: httpx.AsyncClient, app: Client) -> None:
    for uri in (CB, CB_LOOPBACK, CB_QUERY):
        code = (await get_code(http, app, to=uri))["code"]
        assert_tokens(await redeem(http, app, code, redirect_uri=uri))


async def test_alias_token_path(http: httpx.AsyncClient, app: Client) -> None:
    code = (await get_code(http, app))["code"]
    resp = await http.post("/oauth/v2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": CB,
        "code_verifier": VERIFIER, "client_id": app["client_id"]})
    assert_tokens(resp)


async def test_json_body_is_accepted(http: httpx.AsyncClient, app: Client) -> None:
    code = (await get_code(http, app))["code"]
    resp = await http.post("/oauth/token", json={
        "grant_type": "authorization_code", "code": code, "redirect_uri": CB,
        "code_verifier": VERIFIER, "client_id": app["client_id"]})
    assert_tokens(resp)


# -- PKCE ------------------------------------------------------------------------------------

async def test_public_client_must_send_the_verifier(http: httpx.AsyncClient, app: Client) -> None:
    code = (await get_code(http, app))["code"]
    assert_error(await redeem(http, app, code, code_verifier=None), 400, "invalid_grant",
                 "A public client must send its code_verifier (PKCE).")
    assert_error(await redeem(http, app, code, code_verifier=""), 400, "invalid_grant",
                 "A public client must send its code_verifier (PKCE).")


async def test_wrong_verifier_spends_the_code(http: httpx.AsyncClient, app: Client,
                                              redis_db: redis.Redis) -> None:
    code = (await get_code(http, app))["code"]
    wrong = VERIFIER[:-1] + ("A" if VERIFIER[-1] != "A" else "B")
    assert_error(await redeem(http, app, code, code_verifier=wrong), 400, "invalid_grant", WRONG_VERIFIER)
    assert redis_db.exists(code_key(code)) == 0
    # Whoever sent the wrong verifier does not get to try again, and neither does anyone else.
    assert_error(await redeem(http, app, code), 400, "invalid_grant", INVALID)


@pytest.mark.parametrize("verifier", [CHALLENGE, VERIFIER.upper(), VERIFIER + "x", "A" * 43],
                         ids=["the-challenge-itself", "case-changed", "extended", "other"])
async def test_s256_needs_the_exact_verifier(http: httpx.AsyncClient, app: Client, verifier: str) -> None:
    code = (await get_code(http, app))["code"]
    assert_error(await redeem(http, app, code, code_verifier=verifier), 400, "invalid_grant", WRONG_VERIFIER)
    assert_error(await redeem(http, app, code), 400, "invalid_grant", INVALID)


MALFORMED = [
    ("too-short", "a" * 42),
    ("too-long", "a" * 129),
    ("plus", "a" * 42 + "+"),
    ("slash", "a" * 42 + "/"),
    ("padding", "a" * 42 + "="),
    ("space", "a" * 21 + " " + "a" * 21),
    ("non-ascii", "é" * 43),
    ("nul", "a" * 42 + "\x00"),
]


@pytest.mark.parametrize("verifier", [m for _, m in MALFORMED], ids=[i for i, _ in MALFORMED])
async def test_malformed_verifier_is_invalid_request(http: httpx.AsyncClient, app: Client,
                                                     verifier: str) -> None:
    code = (await get_code(http, app))["code"]
    assert_error(await redeem(http, app, code, code_verifier=verifier), 400, "invalid_request",
                 MALFORMED_VERIFIER)
    # A request refused for its shape never reached the code: it still redeems.
    assert_tokens(await redeem(http, app, code))


@pytest.mark.parametrize("length", [43, 128])
async def test_verifier_length_bounds(http: httpx.AsyncClient, app: Client, length: int) -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    verifier = "".join(secrets.choice(alphabet) for _ in range(length))
    code = (await get_code(http, app, code_challenge=s256(verifier)))["code"]
    assert_tokens(await redeem(http, app, code, code_verifier=verifier))


async def test_plain_when_allowed(app_factory: AppFactory) -> None:
    async with app_factory(allow_plain_pkce=True) as http:
        await new_user(http)
        app = await public_app(http)
        verifier = "plain-verifier-" + "~._-" * 8 + "x" * 10
        for method in ("plain", None):
            code = (await get_code(http, app, code_challenge=verifier, code_challenge_method=method))["code"]
            assert_tokens(await redeem(http, app, code, code_verifier=verifier))
        # plain compares the verifier itself: its S256 form is wrong.
        code = (await get_code(http, app, code_challenge=verifier, code_challenge_method="plain"))["code"]
        assert_error(await redeem(http, app, code, code_verifier=s256(verifier) + "abc"), 400,
                     "invalid_grant", WRONG_VERIFIER)
        # S256 codes still need S256 verifiers.
        code = (await get_code(http, app))["code"]
        assert_error(await redeem(http, app, code, code_verifier=CHALLENGE), 400, "invalid_grant",
                     WRONG_VERIFIER)


async def test_verifier_for_a_code_without_challenge_is_refused(http: httpx.AsyncClient, web: Client,
                                                                redis_db: redis.Redis) -> None:
    code = (await get_code(http, web, code_challenge=None, code_challenge_method=None))["code"]
    assert_error(await redeem(http, web, code), 400, "invalid_grant", WRONG_VERIFIER)
    assert redis_db.exists(code_key(code)) == 0
    assert_error(await redeem(http, web, code, code_verifier=None), 400, "invalid_grant", INVALID)


async def test_confidential_client_with_pkce(http: httpx.AsyncClient, web: Client, rs: Client) -> None:
    code = (await get_code(http, web))["code"]
    assert_error(await redeem(http, web, code, code_verifier="x" * 43), 400, "invalid_grant",
                 WRONG_VERIFIER)
    code = (await get_code(http, web))["code"]
    # The secret does not stand in for the verifier.
    assert_error(await redeem(http, web, code, code_verifier=None), 400, "invalid_grant", WRONG_VERIFIER)
    code = (await get_code(http, web))["code"]
    body = assert_tokens(await redeem(http, web, code))
    assert (await introspect(http, rs, body["access_token"]))["client_id"] == web["client_id"]


async def test_confidential_client_without_pkce(http: httpx.AsyncClient, web: Client) -> None:
    code = (await get_code(http, web, code_challenge=None, code_challenge_method=None))["code"]
    # Without its secret the client is not authenticated, and the code is untouched.
    resp = await http.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                 "redirect_uri": CB, "client_id": web["client_id"]})
    assert_error(resp, 401, "invalid_client", "This client must authenticate with its secret.")
    resp = await http.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                 "redirect_uri": CB},
                           auth=(web["client_id"], "tsv_cs_wrong"))
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    # With it (here in the body), the code redeems.
    resp = await http.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                 "redirect_uri": CB, "client_id": web["client_id"],
                                                 "client_secret": web["client_secret"]})
    assert_tokens(resp)


# -- binding ---------------------------------------------------------------------------------

async def test_code_is_bound_to_its_client(http: httpx.AsyncClient, app: Client, web: Client) -> None:
    code = (await get_code(http, app))["code"]
    other_public = await public_app(http, name="other public")
    for thief in (web, other_public):
        assert_error(await redeem(http, thief, code), 400, "invalid_grant", FOREIGN)
    # Another client's attempt does not burn the code for its owner.
    assert_tokens(await redeem(http, app, code))


async def test_client_without_the_grant_cannot_redeem(http: httpx.AsyncClient, app: Client) -> None:
    code = (await get_code(http, app))["code"]
    other = await new_client(http, redirect_uris=[CB])
    assert_error(await redeem(http, other, code), 400, "unauthorized_client",
                 "The client may not use grant_type=authorization_code.")
    assert_tokens(await redeem(http, app, code))


@pytest.mark.parametrize("uri", [CB_LOOPBACK, CB + "/", "https://app.example/cb?", CB_QUERY,
                                 "https://evil.example/cb"],
                         ids=["other-registered", "trailing-slash", "empty-query", "with-query", "foreign"])
async def test_code_is_bound_to_its_redirect_uri(http: httpx.AsyncClient, app: Client,
                                                 redis_db: redis.Redis, uri: str) -> None:
    code = (await get_code(http, app))["code"]
    assert_error(await redeem(http, app, code, redirect_uri=uri), 400, "invalid_grant", WRONG_REDIRECT)
    assert redis_db.exists(code_key(code)) == 0
    assert_error(await redeem(http, app, code), 400, "invalid_grant", INVALID)


async def test_missing_parameters(http: httpx.AsyncClient, app: Client) -> None:
    code = (await get_code(http, app))["code"]
    # The authorization request named redirect_uri, so redeeming needs it (RFC 6749 §4.1.3).
    assert_error(await redeem(http, app, code, redirect_uri=None), 400, "invalid_request",
                 "redirect_uri is required: the authorization request named one.")
    resp = await http.post("/oauth/token", data={"grant_type": "authorization_code", "redirect_uri": CB,
                                                 "code_verifier": VERIFIER, "client_id": app["client_id"]})
    assert_error(resp, 400, "invalid_request", "code is required.")
    # Neither touched the code.
    assert_tokens(await redeem(http, app, code))


async def test_repeated_parameter_is_invalid_request(http: httpx.AsyncClient, app: Client) -> None:
    code = (await get_code(http, app))["code"]
    body = (f"grant_type=authorization_code&code={code}&code={code}&redirect_uri={CB}"
            f"&code_verifier={VERIFIER}&client_id={app['client_id']}")
    resp = await http.post("/oauth/token", content=body,
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error(resp, 400, "invalid_request", "The parameter 'code' was sent more than once.")


async def test_codes_that_are_not_codes(http: httpx.AsyncClient, app: Client, rs: Client) -> None:
    code = (await get_code(http, app))["code"]
    flipped = code[:-1] + ("A" if code[-1] != "A" else "B")
    foreign_key = OTHER_SERVER.mint("ac", "AAAAAAAAAAAA").token
    tokens = assert_tokens(await redeem(http, app, (await get_code(http, app))["code"]))
    for fake in ("nonsense", flipped, foreign_key, tokens["access_token"], tokens["refresh_token"],
                 "tsv_ac_" + code[7:].upper()):
        assert_error(await redeem(http, app, fake), 400, "invalid_grant", INVALID)
    # A code is not a token anywhere else either.
    assert (await introspect(http, rs, code))["active"] is False
    resp = await http.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": code,
                                                 "client_id": app["client_id"]})
    assert_error(resp, 400, "invalid_grant", "The refresh token is invalid, expired or revoked.")
    resp = await http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {code}"})
    assert resp.status_code == 401
    # Revoking a code is a no-op (RFC 7009 covers tokens); it still redeems once.
    assert (await http.post("/oauth/revoke", data={"token": code, "client_id": app["client_id"]})
            ).status_code == 200
    assert_tokens(await redeem(http, app, code))


# -- expiry ----------------------------------------------------------------------------------

async def test_code_lives_code_ttl(http: httpx.AsyncClient, app: Client, rs: Client,
                                   redis_db: redis.Redis) -> None:
    code = (await get_code(http, app))["code"]
    assert 55_000 < redis_db.pttl(code_key(code)) <= 60_000
    # What the code was issued for (the binding to client, redirect URI and challenge is
    # tested by the refusals below): alice's tokens for that client and scope.
    body = assert_tokens(await redeem(http, app, code))
    doc = await introspect(http, rs, body["access_token"])
    assert (doc["username"], doc["client_id"], doc["scope"]) == ("alice", app["client_id"], "read write")


async def test_expired_code_is_invalid_grant(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(code_ttl=1) as http:
        await new_user(http)
        app = await public_app(http)
        code = (await get_code(http, app))["code"]
        assert 0 < redis_db.pttl(code_key(code)) <= 1000
        expire_now(redis_db, code_key(code))
        assert_error(await redeem(http, app, code), 400, "invalid_grant", INVALID)


# -- single use ------------------------------------------------------------------------------

async def test_replay_revokes_every_token_of_the_code(http: httpx.AsyncClient, app: Client, rs: Client,
                                                      redis_db: redis.Redis) -> None:
    code = (await get_code(http, app))["code"]
    first = assert_tokens(await redeem(http, app, code))
    rotated = assert_tokens(await http.post("/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"],
        "client_id": app["client_id"]}))
    for token in (first["access_token"], rotated["access_token"], rotated["refresh_token"]):
        assert await active(http, rs, token)
    # An unrelated grant of the same user and client is not touched.
    bystander = assert_tokens(await redeem(http, app, (await get_code(http, app))["code"]))

    assert_error(await redeem(http, app, code), 400, "invalid_grant", REPLAYED)
    for token in (first["access_token"], first["refresh_token"], rotated["access_token"],
                  rotated["refresh_token"]):
        assert not await active(http, rs, token)
    resp = await http.post("/oauth/token", data={"grant_type": "refresh_token", "client_id": app["client_id"],
                                                 "refresh_token": rotated["refresh_token"]})
    assert_error(resp, 400, "invalid_grant", "The refresh token is invalid, expired or revoked.")
    resp = await http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {first['access_token']}"})
    assert resp.status_code == 401
    assert await active(http, rs, bystander["access_token"])
    assert await active(http, rs, bystander["refresh_token"])
    # Later attempts keep failing, still named as replays: the spent code outlives the cascade.
    assert_error(await redeem(http, app, code), 400, "invalid_grant", REPLAYED)


async def test_replay_by_a_confidential_client(http: httpx.AsyncClient, web: Client, rs: Client) -> None:
    code = (await get_code(http, web, code_challenge=None, code_challenge_method=None))["code"]
    first = assert_tokens(await redeem(http, web, code, code_verifier=None))
    assert_error(await redeem(http, web, code, code_verifier=None), 400, "invalid_grant", REPLAYED)
    assert not await active(http, rs, first["access_token"])
    assert not await active(http, rs, first["refresh_token"])


async def test_concurrent_redemptions_give_one_set_of_tokens(http: httpx.AsyncClient, app: Client,
                                                             rs: Client) -> None:
    code = (await get_code(http, app))["code"]
    answers = await asyncio.gather(*(redeem(http, app, code) for _ in range(8)))
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) == 1
    assert all(r.json()["error"] == "invalid_grant" for r in answers if r.status_code != 200)
    # The losers' attempts were replays: the winner's tokens are revoked.
    assert not await active(http, rs, ok[0].json()["access_token"])


async def test_replay_by_another_client_revokes_too(http: httpx.AsyncClient, app: Client, web: Client,
                                                        rs: Client) -> None:
    code = (await get_code(http, app))["code"]
    first = assert_tokens(await redeem(http, app, code))
    # Any second presentation of a used code is a replay, whoever presents it.
    assert_error(await redeem(http, web, code), 400, "invalid_grant", REPLAYED)
    assert not await active(http, rs, first["access_token"])


# -- the code outlives nothing it depends on --------------------------------------------------

async def test_code_dies_with_its_client(http: httpx.AsyncClient, web: Client) -> None:
    code = (await get_code(http, web))["code"]
    assert (await http.delete(f"/admin/clients/{web['client_id']}", headers=ADMIN)).status_code == 204
    resp = await redeem(http, web, code)
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"


async def test_code_dies_with_its_user(http: httpx.AsyncClient, app: Client, redis_db: redis.Redis) -> None:
    code = (await get_code(http, app))["code"]
    assert (await http.delete("/admin/users/alice", headers=ADMIN)).status_code == 204
    assert_error(await redeem(http, app, code), 400, "invalid_grant", INVALID)
    assert redis_db.exists(code_key(code)) == 0
    assert redis_db.exists(keys.user_grants("alice")) == 0

