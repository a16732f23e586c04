"""RFC 9449 DPoP at the token endpoint, in-process: bound tokens for every grant, the proof's
checks, the replay store, nonces, bound refresh tokens, dpop_bound_access_tokens and reuse.

tests/test_dpop_tokens_live.py does the acceptance runs against real `tokensvc serve`
processes with a third-party client library.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import orjson
import pytest
import redis

from tests.support.api import auth, introspect, new_client, new_user
from tests.support.apps import AppFactory
from tests.support.authflow import get_code, public_app, redeem
from tests.support.config import ADMIN, ISSUER
from tests.support.console import sign_in
from tests.support.dpop import DPoPKey
from tests.support.stored import data_keys, token_keys
from tokensvc.models import Client as ClientModel
from tokensvc.store import records

Client = dict[str, Any]
URL = f"{ISSUER}/oauth/token"
CC = {"grant_type": "client_credentials"}
PASSWORD = {"grant_type": "password", "username": "alice", "password": "correct horse"}


async def token(http: httpx.AsyncClient, client: Client, data: dict[str, str],
                proof: str | list[str] | None = None, path: str = "/oauth/token") -> httpx.Response:
    """A token request: the client's secret by Basic (its id in the body when it has none),
    with the DPoP header(s) given."""
    headers: list[tuple[str, str]] = []
    for value in [proof] if isinstance(proof, str) else proof or []:
        headers.append(("DPoP", value))
    if "client_secret" not in client:
        return await http.post(path, data={**data, "client_id": client["client_id"]},
                               headers=headers)
    return await http.post(path, data=data, auth=auth(client), headers=headers)


def refused(resp: httpx.Response, error: str, description: str | None = None) -> None:
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == error, resp.text
    if description is not None:
        assert resp.json()["error_description"] == description


@pytest.fixture
async def rs(http: httpx.AsyncClient) -> Client:
    """alice, and a resource server that introspects every client's tokens."""
    await new_user(http)
    return await new_client(http, name="resource server", introspection="all")


@pytest.mark.parametrize("data", [CC, PASSWORD], ids=["client_credentials", "password"])
async def test_a_proof_binds_the_access_token_to_its_key(http: httpx.AsyncClient, rs: Client,
                                                         data: dict[str, str]) -> None:
    client = await new_client(http)
    key = DPoPKey()
    resp = await token(http, client, data, key.proof("POST", URL))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "DPoP"
    assert "dpop-nonce" not in resp.headers  # nonces are off by default
    doc = await introspect(http, rs, body["access_token"])
    assert doc["active"] is True and doc["token_type"] == "DPoP"
    assert doc["cnf"] == {"jkt": key.jkt}
    if "refresh_token" in body:
        # RFC 9449 §5: a confidential client's refresh token is bound to its authentication.
        doc = await introspect(http, rs, body["refresh_token"])
        assert doc["token_type"] == "refresh_token" and "cnf" not in doc


async def test_a_bearer_request_is_unchanged(http: httpx.AsyncClient, rs: Client) -> None:
    client = await new_client(http)
    for data in (CC, PASSWORD):
        resp = await token(http, client, data)
        assert resp.status_code == 200, resp.text
        assert resp.json()["token_type"] == "Bearer"
        assert "dpop-nonce" not in resp.headers
        doc = await introspect(http, rs, resp.json()["access_token"])
        assert doc["token_type"] == "Bearer" and "cnf" not in doc


async def test_the_alias_path_takes_proofs_for_its_own_url(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    key = DPoPKey()
    alias = f"{ISSUER}/oauth/v2/token"
    ok = await token(http, client, CC, key.proof("POST", alias), path="/oauth/v2/token")
    assert ok.status_code == 200 and ok.json()["token_type"] == "DPoP", ok.text
    refused(await token(http, client, CC, key.proof("POST", URL), path="/oauth/v2/token"),
            "invalid_dpop_proof", "The DPoP proof is for another URL.")


BAD_PROOFS = [
    ("another URL", lambda k, o: k.proof("POST", f"{ISSUER}/oauth/introspect"),
     "The DPoP proof is for another URL."),
    ("another method", lambda k, o: k.proof("GET", URL), "The DPoP proof is for another HTTP method."),
    ("another key's jwk", lambda k, o: k.proof("POST", URL, headers={"jwk": o.jwk}),
     "The DPoP proof's signature does not verify with its key."),
    ("too old", lambda k, o: k.proof("POST", URL, iat=1_000_000_000),
     "The DPoP proof's iat is outside the accepted window."),
    ("not a JWS", lambda k, o: "not-a-proof", "The DPoP proof is not a JWS."),
    ("HMAC", lambda k, o: hmac_proof(k), "The DPoP proof's alg is not one this server accepts."),
]


def hmac_proof(key: DPoPKey) -> str:
    """A proof "signed" with HS256 under bytes an attacker knows, naming a public key."""
    claims = {"jti": "j1", "htm": "POST", "htu": URL, "iat": int(time.time())}
    return jwt.encode(claims, b"k" * 32, algorithm="HS256",
                      headers={"typ": "dpop+jwt", "jwk": key.jwk})


@pytest.mark.parametrize(("make", "description"), [(m, d) for _, m, d in BAD_PROOFS],
                         ids=[name for name, _, _ in BAD_PROOFS])
async def test_a_bad_proof_is_refused_and_changes_nothing(
        http: httpx.AsyncClient, redis_db: redis.Redis, rs: Client, make: Any,
        description: str) -> None:
    client = await new_client(http)
    before = set(data_keys(redis_db))
    for data in (CC, PASSWORD):
        refused(await token(http, client, data, make(DPoPKey(), DPoPKey())), "invalid_dpop_proof",
                description)
    assert set(data_keys(redis_db)) == before  # no token, no spent jti, no failed login


async def test_two_dpop_headers_are_refused(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    client = await new_client(http)
    key = DPoPKey()
    before = token_keys(redis_db)
    refused(await token(http, client, CC, [key.proof("POST", URL), key.proof("POST", URL)]),
            "invalid_dpop_proof", "Send exactly one DPoP header with the proof.")
    assert token_keys(redis_db) == before


async def test_a_proof_is_accepted_once(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    client = await new_client(http)
    proof = DPoPKey().proof("POST", URL)
    assert (await token(http, client, CC, proof)).status_code == 200
    before = token_keys(redis_db)
    refused(await token(http, client, CC, proof), "invalid_dpop_proof",
            "The DPoP proof was already used.")
    assert token_keys(redis_db) == before
    # The jti is remembered for the proof's accepted window, no longer.
    [once] = [k for k in redis_db.scan_iter(match="tsv:{o:*}:once")]
    assert 60_000 < redis_db.pttl(once) <= 70_000


async def test_dpop_bound_access_tokens_makes_the_proof_mandatory(
        http: httpx.AsyncClient, rs: Client, redis_db: redis.Redis) -> None:
    client = await new_client(http, dpop_bound_access_tokens=True)
    assert client["dpop_bound_access_tokens"] is True
    before = set(data_keys(redis_db))
    for data in (CC, PASSWORD):
        refused(await token(http, client, data), "invalid_dpop_proof",
                "The client's access tokens are DPoP-bound: send a DPoP proof (RFC 9449 §5.2).")
    assert set(data_keys(redis_db)) == before
    key = DPoPKey()
    resp = await token(http, client, CC, key.proof("POST", URL))
    assert resp.status_code == 200 and resp.json()["token_type"] == "DPoP"
    # Turned off again: bearer requests pass.
    patched = await http.patch(f"/admin/clients/{client['client_id']}", headers=ADMIN,
                               json={"dpop_bound_access_tokens": False})
    assert patched.status_code == 200 and patched.json()["dpop_bound_access_tokens"] is False
    assert (await token(http, client, CC)).json()["token_type"] == "Bearer"


async def test_a_public_clients_refresh_token_is_bound_to_the_key(
        http: httpx.AsyncClient, rs: Client, redis_db: redis.Redis) -> None:
    app = await new_client(http, token_endpoint_auth_method="none",
                           grant_types=["password", "refresh_token"])
    key = DPoPKey()
    first = (await token(http, app, PASSWORD, key.proof("POST", URL))).json()
    assert first["token_type"] == "DPoP"
    rt = first["refresh_token"]
    assert (await introspect(http, rs, rt))["cnf"] == {"jkt": key.jkt}
    again = {"grant_type": "refresh_token", "refresh_token": rt}
    before = token_keys(redis_db)
    refused(await token(http, app, again), "invalid_dpop_proof",
            "The refresh token is DPoP-bound: send a DPoP proof signed with its key.")
    refused(await token(http, app, again, DPoPKey().proof("POST", URL)), "invalid_grant",
            "The refresh token is bound to another DPoP key.")
    assert token_keys(redis_db) == before  # nothing rotated, nothing revoked
    assert (await introspect(http, rs, first["access_token"]))["active"] is True
    resp = await token(http, app, again, key.proof("POST", URL))
    assert resp.status_code == 200, resp.text
    rotated = resp.json()
    assert rotated["token_type"] == "DPoP"
    for fresh in (rotated["access_token"], rotated["refresh_token"]):
        assert (await introspect(http, rs, fresh))["cnf"] == {"jkt": key.jkt}


async def test_a_confidential_clients_refresh_binds_the_new_token_to_the_refresh_proof(
        http: httpx.AsyncClient, rs: Client) -> None:
    client = await new_client(http)
    rt = (await token(http, client, PASSWORD, DPoPKey().proof("POST", URL))).json()["refresh_token"]
    other = DPoPKey()
    resp = await token(http, client, {"grant_type": "refresh_token", "refresh_token": rt},
                       other.proof("POST", URL))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "DPoP"
    assert (await introspect(http, rs, body["access_token"]))["cnf"] == {"jkt": other.jkt}
    assert "cnf" not in await introspect(http, rs, body["refresh_token"])
    # Without a proof the refresh gives a bearer token.
    plain = await token(http, client, {"grant_type": "refresh_token",
                                       "refresh_token": body["refresh_token"]})
    assert plain.json()["token_type"] == "Bearer"
    assert "cnf" not in await introspect(http, rs, plain.json()["access_token"])


async def redeem_with(http: httpx.AsyncClient, app: Client, code: str, key: DPoPKey) -> httpx.Response:
    return await http.post("/oauth/token", headers={"DPoP": key.proof("POST", URL)}, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": "https://app.example/cb",
        "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "client_id": app["client_id"]})


async def test_authorization_code_with_pkce_and_dpop(http: httpx.AsyncClient, rs: Client) -> None:
    app = await public_app(http)
    key = DPoPKey()
    code = (await get_code(http, app))["code"]
    resp = await redeem_with(http, app, code, key)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "DPoP"
    for issued in (body["access_token"], body["refresh_token"]):
        doc = await introspect(http, rs, issued)
        assert doc["cnf"] == {"jkt": key.jkt} and doc["username"] == "alice"
    refused(await token(http, app, {"grant_type": "refresh_token",
                                    "refresh_token": body["refresh_token"]},
                        DPoPKey().proof("POST", URL)), "invalid_grant")
    # A code redeemed without a proof gives bearer tokens, bound to nothing.
    plain = (await redeem(http, app, (await get_code(http, app))["code"])).json()
    assert plain["token_type"] == "Bearer"
    assert "cnf" not in await introspect(http, rs, plain["refresh_token"])


async def test_dpop_jkt_binds_the_code_to_the_key(http: httpx.AsyncClient, rs: Client) -> None:
    app = await public_app(http)
    key = DPoPKey()
    # Carried through the sign-in and consent pages to the code.
    code = (await get_code(http, app, dpop_jkt=key.jkt))["code"]
    bound = ("The authorization request bound the code to a DPoP key (dpop_jkt); the token "
             "request's proof must be signed with that key.")
    refused(await redeem(http, app, code), "invalid_grant", bound)
    refused(await redeem_with(http, app, code, DPoPKey()), "invalid_grant", bound)
    # Neither refusal spent the code: its client, with the key, still redeems it, once.
    resp = await redeem_with(http, app, code, key)
    assert resp.status_code == 200, resp.text
    assert resp.json()["token_type"] == "DPoP"
    assert (await introspect(http, rs, resp.json()["access_token"]))["cnf"] == {"jkt": key.jkt}
    refused(await redeem_with(http, app, code, key), "invalid_grant")


async def test_reuse_meets_only_requests_bound_to_the_same_key(http: httpx.AsyncClient,
                                                               rs: Client) -> None:
    client = await new_client(http, reuse_tokens=True)
    key, other = DPoPKey(), DPoPKey()
    for data in (CC, PASSWORD):
        one = (await token(http, client, data, key.proof("POST", URL))).json()
        two = (await token(http, client, data, key.proof("POST", URL))).json()
        assert two["access_token"] == one["access_token"] and two["token_type"] == "DPoP"
        third = (await token(http, client, data, other.proof("POST", URL))).json()
        bearer = (await token(http, client, data)).json()
        assert len({one["access_token"], third["access_token"], bearer["access_token"]}) == 3
        assert bearer["token_type"] == "Bearer"
        assert (await introspect(http, rs, third["access_token"]))["cnf"] == {"jkt": other.jkt}
        assert "cnf" not in await introspect(http, rs, bearer["access_token"])


async def test_nonces_are_demanded_and_any_instance_accepts_them(app_factory: AppFactory,
                                                                 redis_db: redis.Redis) -> None:
    async with app_factory(dpop_nonce=True) as one, app_factory(dpop_nonce=True) as two:
        await new_user(one)
        client = await new_client(one)
        key = DPoPKey()
        before = token_keys(redis_db)
        first = await token(one, client, CC, key.proof("POST", URL))
        refused(first, "use_dpop_nonce")
        nonce = first.headers["dpop-nonce"]
        assert token_keys(redis_db) == before
        refused(await token(one, client, CC, key.proof("POST", URL, nonce="forged")), "use_dpop_nonce")
        # The nonce one instance handed out is good on another (same server keys).
        ok = await token(two, client, CC, key.proof("POST", URL, nonce=nonce))
        assert ok.status_code == 200, ok.text
        assert ok.json()["token_type"] == "DPoP"
        assert ok.headers["dpop-nonce"]  # the next one to use (RFC 9449 §8.2)
        # Bearer requests are not asked for anything.
        plain = await token(one, client, CC)
        assert plain.json()["token_type"] == "Bearer" and "dpop-nonce" not in plain.headers


async def test_refused_proofs_are_counted_by_reason(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    proof = DPoPKey().proof("POST", URL)
    await token(http, client, CC, proof)
    await token(http, client, CC, proof)
    await token(http, client, CC, "garbage")
    text = (await http.get("/metrics")).text
    counts = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("tokensvc_dpop_proofs_refused_total{")}
    assert counts['reason="replayed"'] >= 1 and counts['reason="invalid"'] >= 1
    assert set(counts) == {f'reason="{r}"' for r in ("invalid", "nonce", "replayed", "missing", "key")}


async def test_jwt_access_tokens_carry_cnf_jkt(http: httpx.AsyncClient, rs: Client) -> None:
    """RFC 9449 §6.1 in an RFC 9068 token, from a new grant and from a rotation alike."""
    client = await new_client(http, access_token_format="jwt")
    key = DPoPKey()
    first = (await token(http, client, PASSWORD, key.proof("POST", URL))).json()
    other = DPoPKey()
    rotated = (await token(http, client, {"grant_type": "refresh_token",
                                          "refresh_token": first["refresh_token"]},
                           other.proof("POST", URL))).json()
    jwks = (await http.get("/.well-known/jwks.json")).json()
    for body, jkt in ((first, key.jkt), (rotated, other.jkt)):
        assert body["token_type"] == "DPoP"
        kid = jwt.get_unverified_header(body["access_token"])["kid"]
        [jwk] = [k for k in jwks["keys"] if k["kid"] == kid]
        claims = jwt.decode(body["access_token"], jwt.PyJWK(jwk).key, algorithms=["ES256"],
                            audience=ISSUER, issuer=ISSUER)
        assert claims["cnf"] == {"jkt": jkt} and claims["sub"] == "alice"
        assert (await introspect(http, rs, body["access_token"]))["cnf"] == {"jkt": jkt}
    bearer = (await token(http, client, CC)).json()["access_token"]
    assert "cnf" not in jwt.decode(bearer, options={"verify_signature": False})


# -- the client field, wherever clients are made --------------------------------------------


async def test_registration_takes_dpop_bound_access_tokens(http: httpx.AsyncClient) -> None:
    """RFC 9449 §5.2 client metadata at RFC 7591 registration; false when left out."""
    base = {"client_name": "App", "redirect_uris": ["https://app.example/cb"]}
    made = await http.post("/oauth/register", headers=ADMIN, json={
        **base, "dpop_bound_access_tokens": True})
    assert made.status_code == 201, made.text
    assert made.json()["dpop_bound_access_tokens"] is True
    stored = await http.get(f"/admin/clients/{made.json()['client_id']}", headers=ADMIN)
    assert stored.json()["dpop_bound_access_tokens"] is True
    plain = await http.post("/oauth/register", headers=ADMIN, json=base)
    assert "dpop_bound_access_tokens" not in plain.json()
    wrong = await http.post("/oauth/register", headers=ADMIN, json={
        **base, "dpop_bound_access_tokens": "yes"})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_client_metadata"


async def test_the_console_sets_dpop_bound_access_tokens(http: httpx.AsyncClient) -> None:
    console = await sign_in(http)
    made = await console.act("/admin/console/clients", name="Bound", grant_types="client_credentials",
                             dpop_bound_access_tokens="yes",
                             once=await console.nonce("/admin/console/clients/new"))
    assert made.status_code == 200, made.text
    listed = (await http.get("/admin/clients", headers=ADMIN)).json()
    [doc] = [c for c in listed["clients"] if c["name"] == "Bound"]
    assert doc["dpop_bound_access_tokens"] is True
    page = f"/admin/console/clients/{doc['client_id']}"
    assert '<dd id="dpop">required' in (await console.get(page)).text
    done = await console.act(page, action="configure")  # the box left unticked
    assert done.status_code == 303, done.text
    after = (await http.get(f"/admin/clients/{doc['client_id']}", headers=ADMIN)).json()
    assert after["dpop_bound_access_tokens"] is False
    assert '<dd id="dpop">optional</dd>' in (await console.get(page)).text


def test_a_client_record_from_before_the_field_reads_as_not_bound() -> None:
    client = ClientModel(client_id="c", name="n", secret_hash=None, token_endpoint_auth_method="none",
                     grant_types=("password",), scopes=(), redirect_uris=(), website=None,
                     created_at=0, dpop_bound_access_tokens=True)
    doc = orjson.loads(records.encode_client(client))
    del doc["dpop_bound_access_tokens"]
    assert records.decode_client(orjson.dumps(doc)).dpop_bound_access_tokens is False
    assert records.decode_client(records.encode_client(client)).dpop_bound_access_tokens is True
