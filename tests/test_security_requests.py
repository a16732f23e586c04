"""Parameters in the URL (API.md "Security rules"; RFC 6749 §2.3.1, §3.2, RFC 7662 §2.1).

Client credentials "MUST NOT be included in the request URI" (RFC 6749 §2.3.1): a URL ends up in
access logs, proxy logs and histories. The token and introspection endpoints define no query
parameter, so any query string there is refused with 400 invalid_request before anything is
read, authenticated or stored; revocation takes finAPI's `token` and `token_type_hint` from the
URL and refuses every other name there, client credentials first of all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import active, auth, basic, cc_token, password_token
from tests.support.assertions import assert_error, assert_tokens
from tests.support.redis_servers import RedisServer
from tests.support.service import Service
from tests.support.stored import failure_keys, snapshot

TOKEN_QUERY = ("The token endpoint takes no parameters in its URL: send grant_type, the client "
               "credentials and every other parameter in the request body (RFC 6749 §2.3.1, §3.2).")
INTROSPECT_QUERY = ("The introspection endpoint takes no parameters in its URL: send token, "
                    "token_type_hint and the client credentials in the request body "
                    "(RFC 7662 §2.1, RFC 6749 §2.3.1).")


def revoke_query(name: str) -> str:
    return (f"The parameter '{name}' does not belong in the URL: only token and token_type_hint "
            "may be sent there; send client credentials in the Authorization header or the "
            "request body (RFC 6749 §2.3.1).")


Client = dict[str, Any]


def credentials(client: Client) -> dict[str, str]:
    return {"client_id": client["client_id"], "client_secret": client["client_secret"]}


# id -> (query, body, whether the client authenticates by Basic): each is refused whole.
TOKEN_REQUESTS: dict[str, tuple[str, str, bool]] = {
    # The whole request in the URL (what a generated finAPI client may send): once answered
    # "grant_type is required", as if the URL had said nothing.
    "everything-in-the-query": ("grant_type=client_credentials&{creds}", "", False),
    # The secret alone in the URL, the rest in the body.
    "secret-in-the-query": ("client_secret={secret}", "grant_type=client_credentials&client_id={id}",
                            False),
    # A user's password in the URL, the client by Basic.
    "password-in-the-query": ("username=alice&password=correct+horse", "grant_type=password", True),
    # A complete, valid body: the URL still may not carry anything.
    "valid-body-and-a-credential": ("client_secret={secret}",
                                    "grant_type=client_credentials&{creds}", False),
    "valid-body-and-an-unrelated-name": ("foo=bar", "grant_type=client_credentials", True),
    "a-name-without-a-value": ("client_secret", "grant_type=client_credentials", True),
}


def fill(template: str, client: Client) -> str:
    return template.format(id=client["client_id"], secret=client["client_secret"],
                           creds=f"client_id={client['client_id']}&client_secret="
                                 f"{client['client_secret']}")


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/v2/token"])
@pytest.mark.parametrize("case", list(TOKEN_REQUESTS))
async def test_token_endpoint_refuses_any_query_string(
        http: httpx.AsyncClient, client: Client, redis_db: redis.Redis, path: str, case: str) -> None:
    query, body, by_basic = TOKEN_REQUESTS[case]
    headers = {"content-type": "application/x-www-form-urlencoded",
               **(basic(*auth(client)) if by_basic else {})}
    before = snapshot(redis_db)
    resp = await http.post(f"{path}?{fill(query, client)}", content=fill(body, client),
                           headers=headers)
    assert_error(resp, 400, "invalid_request", TOKEN_QUERY)
    # Nothing issued, nothing counted against the user or the client.
    assert snapshot(redis_db) == before
    assert failure_keys(redis_db) == set()


async def test_token_endpoint_refuses_a_query_string_with_a_json_body(
        http: httpx.AsyncClient, client: Client, redis_db: redis.Redis) -> None:
    before = snapshot(redis_db)
    resp = await http.post("/oauth/token", params={"client_secret": client["client_secret"]},
                           json={"grant_type": "client_credentials", **credentials(client)})
    assert_error(resp, 400, "invalid_request", TOKEN_QUERY)
    assert snapshot(redis_db) == before


async def test_token_endpoint_without_a_query_string_still_issues(
        http: httpx.AsyncClient, client: Client) -> None:
    """The control for the refusals above: the same requests with everything in the body."""
    for path in ("/oauth/token", "/oauth/v2/token"):
        assert_tokens(await http.post(path, data={"grant_type": "client_credentials",
                                                  **credentials(client)}),
                      scope="read write", refresh=False)
    assert_tokens(await password_token(http, client))


async def test_introspection_refuses_any_query_string(
        http: httpx.AsyncClient, parties: tuple[Client, Client], redis_db: redis.Redis) -> None:
    client, rs = parties
    token = (await cc_token(http, client)).json()["access_token"]
    before = snapshot(redis_db)
    # The token in the URL, the caller by Basic: once "token is required".
    resp = await http.post("/oauth/introspect", params={"token": token}, auth=auth(rs))
    assert_error(resp, 400, "invalid_request", INTROSPECT_QUERY)
    # The caller's credentials in the URL, the token in the body: once 401 invalid_client.
    resp = await http.post("/oauth/introspect", params=credentials(rs), data={"token": token})
    assert_error(resp, 400, "invalid_request", INTROSPECT_QUERY)
    # Everything right in the body, and something in the URL all the same.
    resp = await http.post("/oauth/introspect", params={"token_type_hint": "access_token"},
                           data={"token": token}, auth=auth(rs))
    assert_error(resp, 400, "invalid_request", INTROSPECT_QUERY)
    assert snapshot(redis_db) == before
    assert await active(http, rs, token)  # the control: the body alone works


@pytest.mark.parametrize("names", [("client_id", "client_secret"), ("client_secret",),
                                   ("client_id",), ("access_token",), ("client_assertion",),
                                   ("password",)],
                         ids=["id-and-secret", "secret", "id", "access-token", "assertion",
                              "anything-else"])
async def test_revocation_refuses_credentials_in_the_query(
        http: httpx.AsyncClient, parties: tuple[Client, Client], redis_db: redis.Redis,
        names: tuple[str, ...]) -> None:
    client, rs = parties
    own = (await cc_token(http, client)).json()["access_token"]
    victim = (await password_token(http, client)).json()
    values = {"client_id": client["client_id"], "client_secret": client["client_secret"],
              "access_token": own}
    query = {"token": victim["refresh_token"], "token_type_hint": "refresh_token",
             **{name: values.get(name, "x") for name in names}}
    before = snapshot(redis_db)
    # finAPI's style (the client's own access token as Bearer, the token in the URL) with
    # credentials beside it: once revoked the grant, the credentials silently ignored.
    resp = await http.post("/oauth/revoke", params=query, headers={"Authorization": f"Bearer {own}"})
    assert_error(resp, 400, "invalid_request", revoke_query(names[0]))
    # RFC 7009 style, the credentials in the URL only: once 401 invalid_client.
    resp = await http.post("/oauth/revoke", params=query)
    assert_error(resp, 400, "invalid_request", revoke_query(names[0]))
    assert snapshot(redis_db) == before
    assert await active(http, rs, victim["refresh_token"])
    # The control: finAPI's two names alone in the URL still revoke.
    resp = await http.post("/oauth/revoke", params={"token": victim["refresh_token"],
                                                    "token_type_hint": "refresh_token"},
                           headers={"Authorization": f"Bearer {own}"})
    assert resp.status_code == 200, resp.text
    assert not await active(http, rs, victim["refresh_token"])


async def test_revocation_query_names_are_read_decoded(
        http: httpx.AsyncClient, parties: tuple[Client, Client]) -> None:
    """A percent-encoded name is the name it encodes: `client%5Fsecret` is client_secret."""
    client, rs = parties
    token = (await cc_token(http, client)).json()["access_token"]
    resp = await http.post(f"/oauth/revoke?token={token}&client%5Fsecret={client['client_secret']}",
                           auth=auth(client))
    assert_error(resp, 400, "invalid_request", revoke_query("client_secret"))
    assert await active(http, rs, token)


# -- the same over the network ----------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A real `tokensvc serve`: the query string as uvicorn hands it to the app."""
    work: Path = tmp_path_factory.mktemp("query-credentials")
    server = RedisServer(work / "redis")
    server.start()
    svc = Service.deployed(server.url, work / "var", log_level="warning")
    try:
        svc.start().wait_ready()
        yield svc
    finally:
        svc.stop()
        server.stop()


@pytest.mark.slow
async def test_a_running_service_refuses_credentials_in_urls(served: Service) -> None:
    client = await served.create_client(grant_types=["client_credentials"])
    creds = f"client_id={client['client_id']}&client_secret={client['client_secret']}"
    async with served.http() as http:
        for path in ("/oauth/token", "/oauth/v2/token"):
            resp = await http.post(f"{path}?grant_type=client_credentials&{creds}")
            assert_error(resp, 400, "invalid_request", TOKEN_QUERY)
        resp = await http.post(f"/oauth/introspect?token=x&{creds}")
        assert_error(resp, 400, "invalid_request", INTROSPECT_QUERY)
        resp = await http.post(f"/oauth/revoke?token=x&{creds}")
        assert_error(resp, 400, "invalid_request", revoke_query("client_id"))
        # An empty query (a bare `?`) is no parameter at all.
        resp = await http.post("/oauth/token?", data={"grant_type": "client_credentials",
                                                      **credentials(client)})
        assert_tokens(resp, scope="read write", refresh=False)
