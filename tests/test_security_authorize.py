"""The authorization-code flow's security rules (API.md "Security rules"):

- redirect_uri at redemption (RFC 6749 §4.1.3): a code issued for a request without
  `redirect_uri` (allowed when the client has exactly one registered, §3.1.2.3) is redeemed
  without one; when the request named one, the same value is required.
- An authorization error that cannot go back to a redirect URI is JSON to a request whose
  `Accept` prefers `application/json` (Gofundo), the HTML error page otherwise.
"""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest
import redis

from tests.support.api import new_user
from tests.support.apps import ON_SINGLE_AND_CLUSTER
from tests.support.assertions import assert_error, assert_json, assert_tokens
from tests.support.authflow import (
    CB,
    CB_LOOPBACK,
    Client,
    assert_error_page,
    assert_error_redirect,
    authorize,
    code_key,
    get_code,
    is_login_page,
    public_app,
    redeem,
    request_params,
    web_app,
)
from tests.support.config import ADMIN

INVALID = "The authorization code is invalid, expired or already used."
WRONG_REDIRECT = "redirect_uri does not match the authorization request."
REDIRECT_REQUIRED = "redirect_uri is required: the authorization request named one."
NO_REDIRECT = "The request names no redirect_uri, or names it more than once."
NOT_REGISTERED = "The redirect_uri is not registered for this application."
UNKNOWN_CLIENT = "The application that sent you here is not registered."
NO_CLIENT = "The request names no client (client_id is missing or repeated)."
FORM_EXPIRED = "The form has expired or did not come from this site. Go back and try again."


@pytest.fixture
async def single(http: httpx.AsyncClient) -> Client:
    """alice, and a public client with exactly one registered redirect URI."""
    await new_user(http)
    return await public_app(http, redirect_uris=[CB])


@pytest.fixture
async def several(http: httpx.AsyncClient) -> Client:
    """alice, and a public client with three registered redirect URIs."""
    await new_user(http)
    return await public_app(http)


# -- redirect_uri at redemption (RFC 6749 §4.1.3) -------------------------------------------

@ON_SINGLE_AND_CLUSTER
async def test_code_for_a_request_without_redirect_uri_is_redeemed_without_one(
        http: httpx.AsyncClient, single: Client) -> None:
    # The login and consent forms carry the request as it was: without redirect_uri, and the
    # code still goes to the one registered URI.
    query = await get_code(http, single, redirect_uri=None)
    assert_tokens(await redeem(http, single, query["code"], redirect_uri=None))


async def test_code_for_a_request_without_redirect_uri_may_name_the_uri_it_went_to(
        http: httpx.AsyncClient, single: Client) -> None:
    code = (await get_code(http, single, redirect_uri=None))["code"]
    assert_tokens(await redeem(http, single, code, redirect_uri=CB))


@pytest.mark.parametrize("uri", [CB + "/", "https://evil.example/cb"], ids=["near", "foreign"])
async def test_code_for_a_request_without_redirect_uri_refuses_another_uri(
        http: httpx.AsyncClient, single: Client, redis_db: redis.Redis, uri: str) -> None:
    code = (await get_code(http, single, redirect_uri=None))["code"]
    assert_error(await redeem(http, single, code, redirect_uri=uri), 400, "invalid_grant",
                 WRONG_REDIRECT)
    # Spent, as a code presented with a wrong redirect URI always is.
    assert redis_db.exists(code_key(code)) == 0
    assert_error(await redeem(http, single, code, redirect_uri=None), 400, "invalid_grant", INVALID)


@ON_SINGLE_AND_CLUSTER
async def test_code_for_a_request_with_redirect_uri_requires_it_at_redemption(
        http: httpx.AsyncClient, single: Client, redis_db: redis.Redis) -> None:
    code = (await get_code(http, single))["code"]  # the request names CB
    stored = redis_db.get(code_key(code))
    assert_error(await redeem(http, single, code, redirect_uri=None), 400, "invalid_request",
                 REDIRECT_REQUIRED)
    # Refused for what it lacks, the code is untouched and still redeems with the parameter.
    assert redis_db.get(code_key(code)) == stored
    assert_tokens(await redeem(http, single, code))


async def test_code_for_a_request_with_redirect_uri_refuses_another_registered_uri(
        http: httpx.AsyncClient, several: Client, redis_db: redis.Redis) -> None:
    code = (await get_code(http, several))["code"]  # for CB
    assert_error(await redeem(http, several, code, redirect_uri=CB_LOOPBACK), 400,
                 "invalid_grant", WRONG_REDIRECT)
    assert redis_db.exists(code_key(code)) == 0


async def test_redirect_uri_may_be_left_out_only_with_one_registered_uri(
        http: httpx.AsyncClient, several: Client, redis_db: redis.Redis) -> None:
    for path in ("/oauth/authorize", "/authorize"):
        assert_error_page(await authorize(http, several, path, redirect_uri=None), 400, NO_REDIRECT)
        # An empty value is an omitted one (RFC 6749 §3.1).
        assert_error_page(await authorize(http, several, path, redirect_uri=""), 400, NO_REDIRECT)
    assert redis_db.keys("tsv:*:t:*") == []


async def test_left_out_redirect_uri_redirects_errors_to_the_registered_uri(
        http: httpx.AsyncClient, single: Client) -> None:
    """The one registered URI is the client's, so errors after it is known go there (§4.1.2.1)."""
    resp = await authorize(http, single, redirect_uri=None, response_type="token")
    assert_error_redirect(resp, "unsupported_response_type", "Only response_type=code is supported.")


async def test_gancio_flow_redeems_without_redirect_uri(http: httpx.AsyncClient) -> None:
    """Gancio's documents: register at /api/client with one redirect URI, send the user to
    /authorize, redeem at /oauth/token with client_id, client_secret, scope, grant_type and
    code, and no redirect_uri."""
    await new_user(http)
    resp = await http.post("/api/client", headers=ADMIN, data={
        "client_name": "Wordpress Event Manager", "redirect_uris": "https://noblogs.org/",
        "website": "https://myapp.example"})
    gancio = assert_json(resp, 201)
    login = await http.get("/authorize", params={"response_type": "code", "scope": "read",
                                                 "client_id": gancio["client_id"]})
    assert login.status_code == 200 and is_login_page(login), login.text
    code = (await get_code(http, gancio, to="https://noblogs.org/", redirect_uri=None,
                           code_challenge=None, code_challenge_method=None, scope="read"))["code"]
    resp = await http.post("/oauth/token", data={
        "client_id": gancio["client_id"], "client_secret": gancio["client_secret"],
        "scope": "read", "grant_type": "authorization_code", "code": code})
    assert_tokens(resp, scope="read")


# -- JSON errors for Accept: application/json -----------------------------------------------

UNREDIRECTABLE: list[tuple[str, dict[str, str | None], str, str]] = [
    # id, request changes (CLIENT: the app's id), error, error_description
    ("unknown-client", {"client_id": "no-such-client"}, "invalid_client", UNKNOWN_CLIENT),
    ("missing-client-id", {"client_id": None}, "invalid_request", NO_CLIENT),
    ("unregistered-redirect-uri", {"redirect_uri": "https://evil.example/cb"}, "invalid_client",
     NOT_REGISTERED),
    ("missing-redirect-uri", {"redirect_uri": None}, "invalid_request", NO_REDIRECT),
]
JSON_ACCEPTS = [
    "application/json",  # Gofundo: "All requests should contain the Accept header ..."
    "application/json, text/plain, */*",  # axios's default
    "Application/JSON",
    "application/json; charset=utf-8",
    "text/html;q=0.5, application/json",
    "application/json;q=0.9, text/html;q=0.8",
    "text/*;q=1, application/json",  # as preferred, and named more specifically
]
PAGE_ACCEPTS = [
    None,
    # Chromium's and Firefox's navigation headers
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;"
    "q=0.8,application/signed-exchange;v=b3;q=0.7",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "*/*",
    "application/json;q=0",
    "application/json;q=0.000, text/plain",
    "text/html, application/json",  # a tie keeps the page
    "application/json;q=0.5, text/html",
    "application/*",  # JSON must be named, not implied
    "application/json-seq, application/problem+json",
    "application/json;q=2",  # not a qvalue: the range says nothing
    "application/json;q=abc",
]


def assert_json_refusal(resp: httpx.Response, status: int, error: str, description: str) -> None:
    """RFC 6749 §5.2's body, never cached, never a redirect, marked as depending on Accept."""
    assert_error(resp, status, error, description)
    assert "location" not in resp.headers
    assert resp.headers["vary"] == "Accept"


@pytest.mark.parametrize(("over", "error", "description"), [u[1:] for u in UNREDIRECTABLE],
                         ids=[u[0] for u in UNREDIRECTABLE])
async def test_unredirectable_error_is_json_when_the_request_accepts_json(
        http: httpx.AsyncClient, several: Client, redis_db: redis.Redis,
        over: dict[str, str | None], error: str, description: str) -> None:
    headers = {"Accept": "application/json"}
    for path in ("/oauth/authorize", "/authorize"):
        resp = await authorize(http, several, path, **over)
        assert_error_page(resp, 400, description)  # the control: a browser gets the page
        resp = await http.get(path, params=request_params(several, **over), headers=headers)
        assert_json_refusal(resp, 400, error, description)
        form = urlencode({**request_params(several, **over), "action": "login", "csrf": "x"})
        resp = await http.post(path, content=form, headers={
            **headers, "content-type": "application/x-www-form-urlencoded"})
        assert_json_refusal(resp, 400, error, description)
    assert redis_db.keys("tsv:*:t:*") == []


@pytest.mark.parametrize("accept", JSON_ACCEPTS)
async def test_accept_that_prefers_json_gets_json(http: httpx.AsyncClient, several: Client,
                                                 accept: str) -> None:
    resp = await http.get("/oauth/authorize", headers={"Accept": accept},
                          params=request_params(several, client_id="no-such-client"))
    assert_json_refusal(resp, 400, "invalid_client", UNKNOWN_CLIENT)


@pytest.mark.parametrize("accept", PAGE_ACCEPTS)
async def test_accept_that_does_not_prefer_json_gets_the_page(
        http: httpx.AsyncClient, several: Client, accept: str | None) -> None:
    headers = {} if accept is None else {"Accept": accept}
    resp = await http.get("/oauth/authorize", headers=headers,
                          params=request_params(several, client_id="no-such-client"))
    assert_error_page(resp, 400, UNKNOWN_CLIENT)
    assert resp.headers["vary"] == "Accept"


async def test_form_refusals_are_json_when_the_request_accepts_json(
        http: httpx.AsyncClient, several: Client) -> None:
    headers = {"Accept": "application/json"}
    resp = await http.post("/oauth/authorize", json=request_params(several), headers=headers)
    assert_json_refusal(resp, 415, "invalid_request", "The form was not sent as a form.")
    resp = await http.post("/oauth/authorize", headers={
        **headers, "content-type": "application/x-www-form-urlencoded"},
        content=urlencode({**request_params(several), "action": "login", "csrf": "forged",
                           "username": "alice", "password": "correct horse"}))
    assert_json_refusal(resp, 403, "access_denied", FORM_EXPIRED)


async def test_redirectable_errors_still_redirect_whatever_accept_says(
        http: httpx.AsyncClient, several: Client) -> None:
    """Once client and redirect URI are known to be genuine, the error is the client's to read
    at its redirect URI (RFC 6749 §4.1.2.1), JSON or not."""
    resp = await http.get("/oauth/authorize", headers={"Accept": "application/json"},
                          params=request_params(several, response_type="token"))
    assert_error_redirect(resp, "unsupported_response_type", "Only response_type=code is supported.")
    # And a valid request still shows the sign-in page: it is for a person.
    resp = await http.get("/oauth/authorize", headers={"Accept": "application/json"},
                          params=request_params(several))
    assert resp.status_code == 200 and is_login_page(resp)


async def test_web_client_refusal_as_json(http: httpx.AsyncClient) -> None:
    """A confidential client (Gofundo's kind): its wrong callback URL is invalid_client, as
    Gofundo documents it, at 400 (never the 302 its document shows)."""
    web = await web_app(http)
    resp = await http.get("/oauth/authorize", headers={"Accept": "application/json"},
                          params=request_params(web, redirect_uri="https://app.example/other",
                                                code_challenge=None, code_challenge_method=None))
    assert_json_refusal(resp, 400, "invalid_client", NOT_REGISTERED)
