"""RFC 7662 §4: a client introspects its own tokens; another client's only when it is a resource
server (`"introspection": "all"`, which only the admin sets). A token the caller may not see
is `{"active": false}`, as an unknown one is."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.support.api import auth, cc_token, introspect, new_client, new_user, password_token
from tests.support.apps import AppFactory
from tests.support.assertions import assert_error, assert_json
from tests.support.config import ADMIN
from tests.support.redis_servers import RedisServer
from tests.support.service import Service, serving
from tests.support.stored import CODEC
from tokensvc.store import keys
from tokensvc.tokens import ACCESS, new_grant_id

INACTIVE = {"active": False}


def unknown_token() -> str:
    """A well-formed access token this server never issued."""
    return CODEC.mint(ACCESS, new_grant_id()).token


async def ask(http: httpx.AsyncClient, caller: dict[str, Any], token: str) -> httpx.Response:
    return await http.post("/oauth/introspect", data={"token": token}, auth=auth(caller))


async def test_a_client_introspects_its_own_tokens(http: httpx.AsyncClient) -> None:
    await new_user(http)
    client = await new_client(http)
    tokens = (await password_token(http, client, scope="read")).json()
    body = await introspect(http, client, tokens["access_token"])
    assert body == {"active": True, "scope": "read", "client_id": client["client_id"],
                    "token_type": "Bearer", "exp": body["iat"] + 3600, "iat": body["iat"],
                    "sub": "alice", "username": "alice", "iss": "http://testserver"}
    assert (await introspect(http, client, tokens["refresh_token"]))["active"] is True


@pytest.mark.parametrize("kind", ["access_token", "refresh_token", "client_credentials"])
async def test_another_clients_token_is_inactive_exactly_as_an_unknown_one(
        http: httpx.AsyncClient, kind: str) -> None:
    """The leak this closes: any confidential client read any token's user, scope and client."""
    await new_user(http)
    owner = await new_client(http)
    other = await new_client(http, name="another app")
    if kind == "client_credentials":
        token = (await cc_token(http, owner)).json()["access_token"]
    else:
        token = (await password_token(http, owner)).json()[kind]
    seen = await ask(http, other, token)
    unknown = await ask(http, other, unknown_token())
    assert assert_json(seen) == INACTIVE == assert_json(unknown)
    assert seen.content == unknown.content
    assert dict(seen.headers) == dict(unknown.headers)
    # Nothing changed for the owner: the token is live, and its own client sees it.
    assert (await introspect(http, owner, token))["active"] is True


async def test_a_resource_server_introspects_every_clients_tokens(http: httpx.AsyncClient) -> None:
    await new_user(http)
    owner = await new_client(http)
    rs = await new_client(http, name="resource server", scopes=[], introspection="all")
    assert rs["introspection"] == "all"
    token = (await password_token(http, owner, scope="write")).json()["access_token"]
    body = await introspect(http, rs, token)
    assert body == {"active": True, "scope": "write", "client_id": owner["client_id"],
                    "token_type": "Bearer", "exp": body["iat"] + 3600, "iat": body["iat"],
                    "sub": "alice", "username": "alice", "iss": "http://testserver"}
    # Seeing everyone's tokens is not owning them: revoking another client's token is refused.
    refused = await http.post("/oauth/revoke", data={"token": token}, auth=auth(rs))
    assert_error(refused, 400, "unauthorized_client", "The token was not issued to this client.")
    assert (await introspect(http, owner, token))["active"] is True


async def test_new_clients_see_only_their_own(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    assert client["introspection"] == "own"
    resp = await http.get(f"/admin/clients/{client['client_id']}", headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["introspection"] == "own"


async def test_patching_introspection_takes_effect_at_once(http: httpx.AsyncClient) -> None:
    owner = await new_client(http)
    rs = await new_client(http, name="resource server")
    token = (await cc_token(http, owner)).json()["access_token"]
    assert await introspect(http, rs, token) == INACTIVE

    resp = await http.patch(f"/admin/clients/{rs['client_id']}", json={"introspection": "all"},
                            headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["introspection"] == "all"
    assert (await introspect(http, rs, token))["client_id"] == owner["client_id"]

    resp = await http.patch(f"/admin/clients/{rs['client_id']}", json={"introspection": "own"},
                            headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["introspection"] == "own"
    assert await introspect(http, rs, token) == INACTIVE


@pytest.mark.parametrize("value", ["everyone", "ALL", "", None, True, ["all"], {"all": 1}],
                         ids=["word", "case", "empty", "null", "bool", "list", "object"])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_introspection_takes_only_own_or_all(http: httpx.AsyncClient, redis_db: redis.Redis,
                                                   method: str, value: Any) -> None:
    existing = await new_client(http)
    before = sorted(redis_db.scan_iter())
    record = redis_db.get(keys.client(existing["client_id"]))
    if method == "POST":
        resp = await http.post("/admin/clients", json={"name": "x", "introspection": value},
                               headers=ADMIN)
    else:
        resp = await http.patch(f"/admin/clients/{existing['client_id']}",
                                json={"introspection": value}, headers=ADMIN)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"] == "invalid_request" and "'introspection'" in body["error_description"]
    assert sorted(redis_db.scan_iter()) == before
    assert redis_db.get(keys.client(existing["client_id"])) == record


async def test_open_registration_cannot_make_a_resource_server(app_factory: AppFactory) -> None:
    """Anyone may register while registration is open; nobody may thereby read others' tokens."""
    async with app_factory(open_registration=True) as http:
        owner = await new_client(http)
        token = (await cc_token(http, owner)).json()["access_token"]
        rfc7591 = await http.post("/oauth/register", json={
            "redirect_uris": ["https://evil.example/cb"], "introspection": "all",
            "token_endpoint_auth_method": "client_secret_basic"})
        gancio = await http.post("/api/client", data={
            "client_name": "evil", "redirect_uris": "https://evil.example/cb",
            "introspection": "all"})
        for resp in (rfc7591, gancio):
            assert resp.status_code == 201, resp.text
            registered = resp.json()
            shown = (await http.get(f"/admin/clients/{registered['client_id']}", headers=ADMIN)).json()
            assert shown["introspection"] == "own"
            assert await introspect(http, registered, token) == INACTIVE


async def test_a_client_record_from_before_the_field_sees_only_its_own(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory() as http:
        owner = await new_client(http)
        old = await new_client(http, name="stored before introspection existed")
    raw = redis_db.get(keys.client(old["client_id"]))
    assert isinstance(raw, bytes)
    doc = orjson.loads(raw)
    del doc["introspection"], doc["resources"]
    redis_db.set(keys.client(old["client_id"]), orjson.dumps(doc))
    async with app_factory() as http:  # a fresh instance: nothing cached
        shown = (await http.get(f"/admin/clients/{old['client_id']}", headers=ADMIN)).json()
        assert shown["introspection"] == "own" and shown["resources"] == []
        theirs = (await cc_token(http, owner)).json()["access_token"]
        mine = (await cc_token(http, old)).json()["access_token"]
        assert await introspect(http, old, theirs) == INACTIVE
        assert (await introspect(http, old, mine))["client_id"] == old["client_id"]


# -- over the network, against a real `tokensvc serve` ----------------------------------------


@pytest.fixture
def service(redis_db: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Service]:
    with serving(redis_server.url, tmp_path, open_registration=True) as running:
        yield running[0]


async def test_a_self_registered_client_cannot_read_a_users_token(service: Service) -> None:
    """The attack: register a client through open registration (no admin key), then introspect
    a token the victim's app holds for its user, to learn who the user is and what the token
    may do. It learns only what an unknown token would tell it."""
    victim = await service.create_client(name="victim app")
    await service.create_user()
    async with service.http() as http:
        issued = await http.post("/oauth/token", auth=auth(victim), data={
            "grant_type": "password", "username": "alice", "password": "correct horse"})
        assert issued.status_code == 200, issued.text
        stolen = issued.json()
        registered = await http.post("/oauth/register", json={
            "client_name": "innocent", "redirect_uris": ["https://attacker.example/cb"]})
        assert registered.status_code == 201, registered.text
        attacker = registered.json()

        for token in (stolen["access_token"], stolen["refresh_token"]):
            for hint in (None, "access_token", "refresh_token"):
                data = {"token": token} | ({"token_type_hint": hint} if hint else {})
                resp = await http.post("/oauth/introspect", data=data, auth=auth(attacker))
                assert resp.status_code == 200, resp.text
                assert resp.json() == INACTIVE
            # The same by client_secret_post and by a JSON body.
            resp = await http.post("/oauth/introspect", json={
                "token": token, "client_id": attacker["client_id"],
                "client_secret": attacker["client_secret"]})
            assert resp.status_code == 200 and resp.json() == INACTIVE

        # The victim's own view is untouched: the token is live and names alice.
        own = await http.post("/oauth/introspect", data={"token": stolen["access_token"]},
                              auth=auth(victim))
        assert own.status_code == 200
        doc = own.json()
        assert doc["active"] is True and doc["username"] == "alice"
        assert doc["client_id"] == victim["client_id"] and doc["exp"] > time.time()
