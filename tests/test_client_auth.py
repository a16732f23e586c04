"""RFC 6749 §2.3 client authentication at the token endpoint, and the verified-secret cache."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import basic, new_client, new_user
from tests.support.apps import AppFactory
from tests.support.assertions import assert_error
from tests.support.config import ADMIN
from tokensvc.clients import ClientDirectory

BASIC = 'Basic realm="tokensvc"'
Client = dict[str, Any]
Clients = dict[str, Client]
# (form parameters, headers) for a request by the given clients.
Build = Callable[[Clients], tuple[dict[str, str], dict[str, str]]]


def assert_issued(resp: httpx.Response, client: Client) -> str:
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store" and resp.headers["pragma"] == "no-cache"
    assert "www-authenticate" not in resp.headers
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["access_token"].startswith("tsv_at_")
    token: str = body["access_token"]
    return token


def raw_basic(payload: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(payload).decode("ascii")}


def percent_all(text: str) -> str:
    """Every character percent-encoded: what a form-encoder may legally produce for it."""
    return "".join(f"%{b:02X}" for b in text.encode())


def directory(http: httpx.AsyncClient) -> ClientDirectory:
    found = http.app.state.services.clients  # type: ignore[attr-defined]
    assert isinstance(found, ClientDirectory)
    return found


@pytest.fixture
async def clients(http: httpx.AsyncClient) -> Clients:
    return await _clients(http)


@pytest.fixture
async def per_worker_http(app_factory: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    """A deployment that keeps no secret verifiers: each worker runs argon2 once per secret and
    remembers the secret's digest (`argon2_per_worker`); tests/test_secret_verifiers.py covers
    the default."""
    async with app_factory(argon2_per_worker=True) as http:
        yield http


@pytest.fixture
async def per_worker_clients(per_worker_http: httpx.AsyncClient) -> Clients:
    return await _clients(per_worker_http)


async def _clients(http: httpx.AsyncClient) -> Clients:
    await new_user(http)
    return {
        "conf": await new_client(http),
        "other": await new_client(http, name="other", introspection="all"),
        "public": await new_client(http, name="spa", token_endpoint_auth_method="none"),
    }


CC = {"grant_type": "client_credentials"}
PW = {"grant_type": "password", "username": "alice", "password": "correct horse"}


def _id(c: Clients, name: str = "conf") -> str:
    value: str = c[name]["client_id"]
    return value


def _secret(c: Clients, name: str = "conf") -> str:
    value: str = c[name]["client_secret"]
    return value


# -- success --------------------------------------------------------------------------------

SUCCESSES: list[tuple[str, str, Build]] = [
    # id, client name, request
    ("basic", "conf", lambda c: (CC, basic(_id(c), _secret(c)))),
    ("basic-not-form-encoded", "conf", lambda c: (CC, basic(_id(c), _secret(c), form_encode=False))),
    ("basic-percent-encoded-id", "conf",
     lambda c: (CC, basic(percent_all(_id(c)), _secret(c), form_encode=False))),
    ("basic-percent-encoded-id-and-secret", "conf",
     lambda c: (CC, basic(percent_all(_id(c)), percent_all(_secret(c)), form_encode=False))),
    ("basic-lowercase-scheme", "conf",
     lambda c: (CC, {"Authorization": "basic " + basic(_id(c), _secret(c))["Authorization"][6:]})),
    ("basic-with-matching-body-client_id", "conf",
     lambda c: ({**CC, "client_id": _id(c)}, basic(_id(c), _secret(c)))),
    ("post", "conf", lambda c: ({**CC, "client_id": _id(c), "client_secret": _secret(c)}, {})),
    ("post-password-grant", "conf",
     lambda c: ({**PW, "client_id": _id(c), "client_secret": _secret(c)}, {})),
    ("none-public-password-grant", "public", lambda c: ({**PW, "client_id": _id(c, "public")}, {})),
]


@pytest.mark.parametrize(("name", "build"), [s[1:] for s in SUCCESSES], ids=[s[0] for s in SUCCESSES])
async def test_authentication_methods(http: httpx.AsyncClient, clients: Clients, name: str,
                                      build: Build) -> None:
    data, headers = build(clients)
    token = assert_issued(await http.post("/oauth/token", data=data, headers=headers), clients[name])
    info = await http.post("/oauth/introspect", data={"token": token},
                           auth=(_id(clients, "other"), _secret(clients, "other")))
    assert info.status_code == 200 and info.json()["active"] is True
    assert info.json()["client_id"] == _id(clients, name)


# -- failure --------------------------------------------------------------------------------

FAILED = "Client authentication failed."
MALFORMED = "The Basic credentials are malformed."

FAILURES: list[tuple[str, Build, int, str, str, str | None]] = [
    # id, request, status, error, description, WWW-Authenticate
    ("basic-wrong-secret", lambda c: (CC, basic(_id(c), "tsv_cs_wrong")),
     401, "invalid_client", FAILED, BASIC),
    ("basic-other-clients-secret", lambda c: (CC, basic(_id(c), _secret(c, "other"))),
     401, "invalid_client", FAILED, BASIC),
    ("basic-empty-secret", lambda c: (CC, basic(_id(c), "")), 401, "invalid_client", FAILED, BASIC),
    ("basic-unknown-client", lambda c: (CC, basic("no-such-client", _secret(c))),
     401, "invalid_client", FAILED, BASIC),
    ("basic-plus-is-space-in-id", lambda c: (CC, basic(_id(c) + "+", _secret(c), form_encode=False)),
     401, "invalid_client", FAILED, BASIC),
    ("basic-secret-with-trailing-newline", lambda c: (CC, basic(_id(c), _secret(c) + "\n")),
     401, "invalid_client", FAILED, BASIC),
    ("basic-public-client-with-secret", lambda c: (PW, basic(_id(c, "public"), "anything")),
     401, "invalid_client", "A public client has no secret to present.", BASIC),
    ("basic-not-base64", lambda c: (CC, {"Authorization": "Basic !!!not-base64!!!"}),
     401, "invalid_client", MALFORMED, BASIC),
    ("basic-empty", lambda c: (CC, {"Authorization": "Basic "}), 401, "invalid_client", MALFORMED, BASIC),
    ("basic-no-colon", lambda c: (CC, raw_basic(_id(c).encode())), 401, "invalid_client", MALFORMED, BASIC),
    ("basic-empty-id", lambda c: (CC, raw_basic(b":" + _secret(c).encode())),
     401, "invalid_client", MALFORMED, BASIC),
    ("basic-not-utf8", lambda c: (CC, raw_basic(b"\xff\xfe:secret")),
     401, "invalid_client", MALFORMED, BASIC),
    ("basic-unpadded-base64",
     lambda c: (CC, {"Authorization": "Basic " + base64.b64encode(b"ab:c").decode().rstrip("=")}),
     401, "invalid_client", MALFORMED, BASIC),
    ("post-wrong-secret", lambda c: ({**CC, "client_id": _id(c), "client_secret": "tsv_cs_wrong"}, {}),
     401, "invalid_client", FAILED, None),
    ("post-unknown-client", lambda c: ({**CC, "client_id": "no-such-client", "client_secret": "x"}, {}),
     401, "invalid_client", FAILED, None),
    ("post-public-client-with-secret",
     lambda c: ({**PW, "client_id": _id(c, "public"), "client_secret": "anything"}, {}),
     401, "invalid_client", "A public client has no secret to present.", None),
    ("confidential-client-without-secret", lambda c: ({**CC, "client_id": _id(c)}, {}),
     401, "invalid_client", "This client must authenticate with its secret.", None),
    ("confidential-client-without-secret-password", lambda c: ({**PW, "client_id": _id(c)}, {}),
     401, "invalid_client", "This client must authenticate with its secret.", None),
    ("none-unknown-client", lambda c: ({**PW, "client_id": "no-such-client"}, {}),
     401, "invalid_client", FAILED, None),
    ("public-client-on-client_credentials", lambda c: ({**CC, "client_id": _id(c, "public")}, {}),
     401, "invalid_client", "Public clients may not use this endpoint.", None),
    ("no-authentication-at-all", lambda c: (CC, {}),
     401, "invalid_client", "Client authentication is required.", BASIC),
    ("bearer-is-not-client-authentication", lambda c: (CC, {"Authorization": "Bearer tsv_at_x"}),
     401, "invalid_client", "Client authentication is required.", BASIC),
    ("secret-without-client_id", lambda c: ({**CC, "client_secret": _secret(c)}, {}),
     400, "invalid_request", "client_secret was sent without client_id.", None),
    ("basic-and-post-at-once",
     lambda c: ({**CC, "client_id": _id(c), "client_secret": _secret(c)}, basic(_id(c), _secret(c))),
     400, "invalid_request", "Use one client authentication method, not Basic and a body secret.", None),
    ("basic-and-body-secret-only", lambda c: ({**CC, "client_secret": _secret(c)}, basic(_id(c), _secret(c))),
     400, "invalid_request", "Use one client authentication method, not Basic and a body secret.", None),
    ("basic-and-other-body-client_id",
     lambda c: ({**CC, "client_id": _id(c, "other")}, basic(_id(c), _secret(c))),
     400, "invalid_request", "client_id in the body differs from the Basic credentials.", None),
]


@pytest.mark.parametrize(("build", "status", "error", "description", "challenge"),
                         [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
async def test_authentication_failures(http: httpx.AsyncClient, clients: Clients, redis_db: redis.Redis,
                                       build: Build, status: int, error: str, description: str,
                                       challenge: str | None) -> None:
    data, headers = build(clients)
    resp = await http.post("/oauth/token", data=data, headers=headers)
    assert_error(resp, status, error, description, challenge)
    assert list(redis_db.scan_iter(match="tsv:*:t:*")) == []


# -- the verified-secret cache of argon2_per_worker -------------------------------------

async def test_verified_secret_is_not_hashed_again(
        per_worker_http: httpx.AsyncClient, per_worker_clients: Clients) -> None:
    http, clients = per_worker_http, per_worker_clients
    cache = directory(http)
    client = clients["conf"]
    assert (cache.argon2_runs, cache.cache_hits) == (0, 0)
    for i in range(10):
        by_post = i % 2 == 0
        resp = await http.post(
            "/oauth/token",
            data={**CC, "client_id": _id(clients), "client_secret": _secret(clients)} if by_post else CC,
            headers={} if by_post else basic(_id(clients), _secret(clients)))
        assert_issued(resp, client)
        assert cache.argon2_runs == 1
        assert cache.cache_hits == i


async def test_concurrent_first_requests_hash_the_secret_once(
        per_worker_http: httpx.AsyncClient, per_worker_clients: Clients) -> None:
    http, clients = per_worker_http, per_worker_clients
    cache = directory(http)
    data = {**CC, "client_id": _id(clients), "client_secret": _secret(clients)}
    first = await asyncio.gather(*(http.post("/oauth/token", data=data) for _ in range(20)))
    tokens = {assert_issued(resp, clients["conf"]) for resp in first}
    assert len(tokens) == 20
    assert cache.argon2_runs == 1
    # And the secret they verified together is remembered for everyone after them.
    hits = cache.cache_hits
    later = await asyncio.gather(*(http.post("/oauth/token", data=data) for _ in range(5)))
    for resp in later:
        assert_issued(resp, clients["conf"])
    assert cache.argon2_runs == 1
    assert cache.cache_hits == hits + 5


async def test_concurrent_wrong_secrets_are_all_refused(
        per_worker_http: httpx.AsyncClient, per_worker_clients: Clients) -> None:
    http, clients = per_worker_http, per_worker_clients
    cache = directory(http)
    wrong = {**CC, "client_id": _id(clients), "client_secret": "tsv_cs_wrong"}
    right = {**CC, "client_id": _id(clients), "client_secret": _secret(clients)}
    assert_issued(await http.post("/oauth/token", data=right), clients["conf"])
    assert (cache.argon2_runs, cache.cache_hits) == (1, 0)
    mixed = await asyncio.gather(*(http.post("/oauth/token", data=wrong if i % 2 else right)
                                   for i in range(20)))
    for i, resp in enumerate(mixed):
        if i % 2:
            assert_error(resp, 401, "invalid_client", FAILED)
        else:
            assert_issued(resp, clients["conf"])
    # The ten right ones are cache hits; the ten wrong ones never are: they share argon2 runs
    # while one is in flight, and run it again once it is done.
    assert cache.cache_hits == 10
    assert 2 <= cache.argon2_runs <= 11


async def test_a_wrong_secret_is_never_cached(
        per_worker_http: httpx.AsyncClient, per_worker_clients: Clients) -> None:
    http, clients = per_worker_http, per_worker_clients
    cache = directory(http)
    right = {**CC, "client_id": _id(clients), "client_secret": _secret(clients)}
    wrong = {**CC, "client_id": _id(clients), "client_secret": "tsv_cs_wrong"}
    steps: list[tuple[dict[str, str], bool, int, int]] = [
        # request, accepted, argon2 runs after, cache hits after
        (wrong, False, 1, 0),
        (wrong, False, 2, 0),
        (right, True, 3, 0),
        (right, True, 3, 1),
        (wrong, False, 4, 1),  # a verified secret in the cache does not vouch for another one
        (wrong, False, 5, 1),
        (right, True, 5, 2),  # nor does a failure evict the verified one
    ]
    for data, accepted, runs, hits in steps:
        resp = await http.post("/oauth/token", data=data)
        if accepted:
            assert_issued(resp, clients["conf"])
        else:
            assert_error(resp, 401, "invalid_client", FAILED)
        assert (cache.argon2_runs, cache.cache_hits) == (runs, hits)


async def test_cache_is_per_client(
        per_worker_http: httpx.AsyncClient, per_worker_clients: Clients) -> None:
    http, clients = per_worker_http, per_worker_clients
    cache = directory(http)
    for name in ("conf", "other", "conf", "other"):
        resp = await http.post("/oauth/token",
                               data={**CC, "client_id": _id(clients, name),
                                     "client_secret": _secret(clients, name)})
        assert_issued(resp, clients[name])
    assert (cache.argon2_runs, cache.cache_hits) == (2, 2)
    # One client's secret never opens another client, cached or not.
    cross = await http.post("/oauth/token", data={**CC, "client_id": _id(clients, "other"),
                                                  "client_secret": _secret(clients, "conf")})
    assert_error(cross, 401, "invalid_client", FAILED)


# -- admin changes reach this instance's cache at once ---------------------------------------

ROUNDS = 10


async def test_rotated_secret_is_refused_at_once(http: httpx.AsyncClient, clients: Clients) -> None:
    """No window in which the cached, verified old secret still opens the client."""
    client_id, secret = _id(clients), _secret(clients)
    for _ in range(ROUNDS):
        warm = await http.post("/oauth/token", data={**CC, "client_id": client_id, "client_secret": secret})
        assert_issued(warm, clients["conf"])
        rotated = await http.post(f"/admin/clients/{client_id}/secret", headers=ADMIN)
        assert rotated.status_code == 200, rotated.text
        old = await http.post("/oauth/token", data={**CC, "client_id": client_id, "client_secret": secret})
        assert_error(old, 401, "invalid_client", FAILED)
        secret = rotated.json()["client_secret"]
        new = await http.post("/oauth/token", data={**CC, "client_id": client_id, "client_secret": secret})
        assert_issued(new, clients["conf"])


async def test_revoked_client_is_refused_at_once(http: httpx.AsyncClient) -> None:
    for _ in range(ROUNDS):
        client = await new_client(http)
        data = {**CC, "client_id": client["client_id"], "client_secret": client["client_secret"]}
        assert_issued(await http.post("/oauth/token", data=data), client)
        deleted = await http.delete(f"/admin/clients/{client['client_id']}", headers=ADMIN)
        assert deleted.status_code == 204, deleted.text
        assert_error(await http.post("/oauth/token", data=data), 401, "invalid_client", FAILED)


async def test_patched_grant_types_apply_at_once(http: httpx.AsyncClient, clients: Clients) -> None:
    client_id = _id(clients)
    data = {**CC, "client_id": client_id, "client_secret": _secret(clients)}
    for _ in range(ROUNDS):
        assert_issued(await http.post("/oauth/token", data=data), clients["conf"])
        patched = await http.patch(f"/admin/clients/{client_id}", headers=ADMIN,
                                   json={"grant_types": ["password"]})
        assert patched.status_code == 200, patched.text
        assert_error(await http.post("/oauth/token", data=data), 400, "unauthorized_client",
                     "The client may not use grant_type=client_credentials.")
        restored = await http.patch(f"/admin/clients/{client_id}", headers=ADMIN,
                                    json={"grant_types": ["client_credentials", "password"]})
        assert restored.status_code == 200, restored.text
