"""The resource-server kit and DPoP-bound tokens (RFC 9449 §7): `Authorization: DPoP <token>`
with a proof for this request, this token (`ath`) and the key the token is bound to (`cnf.jkt`
of a JWT, or of the introspection answer), each proof accepted once.

JWTs come from `Issuer` (tests/test_resource_kit.py: a real HTTP issuer signing as tokensvc
does); opaque bound tokens from the in-process tokensvc's own token endpoint, introspected.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.api import auth, new_client, new_user
from tests.support.config import ISSUER
from tests.support.dpop import DPoPKey

# issuer and kits: the kit's test issuer and resource servers, shared with its other tests
# (pytest fixtures, used by name).
from tests.test_resource_kit import AUDIENCE, BOUND, Counting, Issuer, issuer, kits  # noqa: F401
from tokensvc.resource import (
    BearerError,
    BearerMiddleware,
    MemoryReplayCache,
    ResourceServer,
    bearer_error_handler,
)

Kits = Callable[..., ResourceServer]
URL = "http://orders/orders"  # where the test client reaches the app
ALGS = 'algs="ES256 ES384 EdDSA RS256 PS256"'
REPLAYED = "The DPoP proof was already used (its jti is accepted once)."
OTHER_KEY = "The DPoP proof's key is not the one the access token is bound to."
NOT_BOUND = "The access token is not bound to a DPoP key: present it with Authorization: Bearer."
ATH = "The DPoP proof is for another access token (ath)."
BEARER_BOUND = f'Bearer realm="orders", error="invalid_token", error_description="{BOUND}"'


def dpop_challenge(error: str, description: str, scope: str | None = None) -> str:
    scoped = "" if scope is None else f', scope="{scope}"'
    return f'DPoP realm="orders", error="{error}", error_description="{description}"{scoped}, {ALGS}'


def api(rs: ResourceServer) -> Starlette:
    """GET /orders: who asked, and the key their token is bound to; POST needs orders:write."""
    can_write = rs.requires("orders:write")

    async def who(request: Request) -> JSONResponse:
        p = request.state.principal
        return JSONResponse({"sub": p.sub, "jkt": p.jkt, "checked_by": p.checked_by})

    async def create(request: Request) -> JSONResponse:
        return JSONResponse({"created_by": (await can_write(request)).sub}, status_code=201)

    return Starlette(routes=[Route("/orders", who), Route("/orders", create, methods=["POST"])],
                     middleware=[Middleware(BearerMiddleware, server=rs)],
                     exception_handlers={BearerError: bearer_error_handler})


async def call(rs: ResourceServer, token: str, proofs: list[str], *, method: str = "GET",
               scheme: str = "DPoP") -> httpx.Response:
    headers = [("Authorization", f"{scheme} {token}")] + [("DPoP", p) for p in proofs]
    transport = httpx.ASGITransport(app=api(rs))
    async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
        return await client.request(method, "/orders", headers=headers)


def refused(resp: httpx.Response, status: int, challenge: str) -> str:
    assert (resp.status_code, resp.headers["www-authenticate"]) == (status, challenge), resp.text
    error: str = resp.json()["error"]
    return error


async def test_a_bound_jwt_passes_with_its_proof_once(issuer: Issuer, kits: Kits) -> None:
    rs = kits()
    key = DPoPKey()
    token = issuer.token(cnf={"jkt": key.jkt})
    proof = key.proof("GET", URL, access_token=token)
    resp = await call(rs, token, [proof])
    assert (resp.status_code, resp.json()) == (200, {"sub": "alice", "jkt": key.jkt, "checked_by": "jwt"})
    # RFC 9449 §11.1: the same proof again is a replay.
    assert refused(await call(rs, token, [proof]), 401, dpop_challenge("invalid_dpop_proof", REPLAYED)) \
        == "invalid_dpop_proof"
    assert (await call(rs, token, [key.proof("GET", URL, access_token=token)])).status_code == 200


async def test_a_proof_that_does_not_fit_is_refused(issuer: Issuer, kits: Kits) -> None:
    rs = kits()
    key = DPoPKey("EdDSA")
    token = issuer.token(cnf={"jkt": key.jkt})
    cases = [
        ("another key", [DPoPKey().proof("GET", URL, access_token=token)], "invalid_token", OTHER_KEY),
        ("no ath", [key.proof("GET", URL)], "invalid_dpop_proof", ATH),
        ("another token", [key.proof("GET", URL, access_token=issuer.token(cnf={"jkt": key.jkt}))],
         "invalid_dpop_proof", ATH),
        ("another URL", [key.proof("GET", "http://orders/invoices", access_token=token)],
         "invalid_dpop_proof", "The DPoP proof is for another URL."),
        ("another method", [key.proof("POST", URL, access_token=token)],
         "invalid_dpop_proof", "The DPoP proof is for another HTTP method."),
        ("no proof", [], "invalid_dpop_proof", "Send exactly one DPoP header with the proof."),
        ("two proofs", [key.proof("GET", URL, access_token=token)] * 2,
         "invalid_dpop_proof", "Send exactly one DPoP header with the proof."),
    ]
    for name, proofs, error, description in cases:
        assert refused(await call(rs, token, proofs), 401, dpop_challenge(error, description)) == error, name
    # None of them spent anything: the right proof passes.
    assert (await call(rs, token, [key.proof("GET", URL, access_token=token)])).status_code == 200


async def test_a_bound_token_as_bearer_and_a_bearer_token_as_dpop_are_refused(
        issuer: Issuer, kits: Kits) -> None:
    rs = kits()
    key = DPoPKey()
    bound = issuer.token(cnf={"jkt": key.jkt})
    proof = key.proof("GET", URL, access_token=bound)
    resp = await call(rs, bound, [proof], scheme="Bearer")
    assert refused(resp, 401, BEARER_BOUND) == "invalid_token"
    bearer = issuer.token()
    resp = await call(rs, bearer, [key.proof("GET", URL, access_token=bearer)])
    assert refused(resp, 401, dpop_challenge("invalid_token", NOT_BOUND)) == "invalid_token"
    assert (await call(rs, bearer, [], scheme="Bearer")).json()["jkt"] is None


async def test_scopes_are_demanded_in_the_dpop_challenge(issuer: Issuer,
                                                         kits: Kits) -> None:
    rs = kits()
    key = DPoPKey()
    token = issuer.token(cnf={"jkt": key.jkt})
    resp = await call(rs, token, [key.proof("POST", URL, access_token=token)], method="POST")
    needs = "This request needs the scope orders:write."
    challenge = dpop_challenge("insufficient_scope", needs, "orders:write")
    assert refused(resp, 403, challenge) == "insufficient_scope"


async def test_the_public_url_is_what_proofs_name(issuer: Issuer, kits: Kits) -> None:
    """Behind a proxy the app sees its own URL; clients sign the one they used."""
    rs = kits(public_url="https://api.example/shop/")
    key = DPoPKey()
    token = issuer.token(cnf={"jkt": key.jkt})
    assert (await call(rs, token, [key.proof("GET", "https://api.example/shop/orders",
                                             access_token=token)])).status_code == 200
    resp = await call(rs, token, [key.proof("GET", URL, access_token=token)])
    assert refused(resp, 401, dpop_challenge("invalid_dpop_proof", "The DPoP proof is for another URL."))


async def test_the_replay_cache_is_per_process_unless_one_is_shared(
        issuer: Issuer, kits: Kits) -> None:
    """Two API processes, each with its own cache, both accept one proof (the kit's documented
    contract); handed one shared store, the second refuses it."""
    key = DPoPKey()
    token = issuer.token(cnf={"jkt": key.jkt})
    proof = key.proof("GET", URL, access_token=token)
    assert [(await call(kits(), token, [proof])).status_code for _ in range(2)] == [200, 200]
    shared = MemoryReplayCache()
    first, second = kits(replay=shared), kits(replay=shared)
    proof = key.proof("GET", URL, access_token=token)
    assert (await call(first, token, [proof])).status_code == 200
    assert refused(await call(second, token, [proof]), 401, dpop_challenge("invalid_dpop_proof", REPLAYED))
    assert len(shared) == 1


async def test_the_memory_replay_cache_is_bounded_and_forgets_after_the_ttl() -> None:
    cache = MemoryReplayCache(size=2)
    assert [await cache.first_use(k, 60) for k in ("a", "b", "a")] == [True, True, False]
    assert await cache.first_use("c", 60)  # evicts "a", the oldest
    assert len(cache) == 2 and await cache.first_use("a", 60)
    assert await cache.first_use("d", 0) and await cache.first_use("d", 60)  # expired at once


async def test_an_opaque_bound_token_from_tokensvc_is_introspected_with_its_cnf(
        http: httpx.AsyncClient) -> None:
    """The two halves together: tokensvc binds an opaque token at its token endpoint; the kit
    reads `token_type: DPoP` and `cnf.jkt` from introspection and checks the proof."""
    await new_user(http)
    owner = await new_client(http)
    rs_client = await new_client(http, name="orders API", scopes=[], introspection="all")
    key = DPoPKey("ES384")
    resp = await http.post("/oauth/token", auth=auth(owner),
                           headers={"DPoP": key.proof("POST", f"{ISSUER}/oauth/token")},
                           data={"grant_type": "client_credentials", "resource": AUDIENCE, "scope": "read"})
    assert resp.status_code == 200 and resp.json()["token_type"] == "DPoP", resp.text
    token = resp.json()["access_token"]
    transport = Counting(http.app)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport) as client:
        rs = ResourceServer(issuer=ISSUER, audience=AUDIENCE, realm="orders", http=client,
                            client_id=rs_client["client_id"], client_secret=rs_client["client_secret"])
        resp = await call(rs, token, [key.proof("GET", URL, access_token=token)])
        assert (resp.status_code, resp.json()) == (
            200, {"sub": owner["client_id"], "jkt": key.jkt, "checked_by": "introspection"})
        resp = await call(rs, token, [DPoPKey("ES384").proof("GET", URL, access_token=token)])
        assert refused(resp, 401, dpop_challenge("invalid_token", OTHER_KEY))
        resp = await call(rs, token, [], scheme="Bearer")
        assert refused(resp, 401, BEARER_BOUND)
        assert transport.introspections == 1  # one answer, cached, serves all three
