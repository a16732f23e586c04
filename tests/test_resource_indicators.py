"""RFC 8707 resource indicators: `resource` on authorization and token requests becomes the
token's audience (`aud` at introspection); a narrower one may be asked for at redemption and
refresh, never a wider one; a client may be limited to registered resources."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis

from tests.support.api import auth, cc_token, introspect, new_client, new_user, password_token, refresh
from tests.support.assertions import assert_error, assert_tokens
from tests.support.authflow import (
    assert_error_redirect,
    decide,
    get_code,
    hidden_fields,
    is_consent_page,
    redeem,
    redirected,
    request_params,
    sign_in,
    text,
    web_app,
)
from tests.support.config import ADMIN
from tests.support.stored import token_keys
from tokensvc.store import keys

API = "https://api.example/v1"
FILES = "https://files.example"
MAIL = "urn:example:mail"
TOO_MANY = [f"https://r{i}.example" for i in range(21)]
LONG = "https://api.example/" + "a" * 1000

# RFC 8707 §2's refusals, as the client reads them.
NOT_REGISTERED = "The client may not request the resource {!r}."
WIDER_THAN_GRANT = "The requested resource exceeds the audience originally granted."
WIDER_THAN_CODE = "The requested resource exceeds the resources of the authorization request."

MALFORMED = [
    ("relative", "/v1/things", "The resource '/v1/things' is not an absolute URI (RFC 8707 §2)."),
    ("no-scheme", "api.example", "The resource 'api.example' is not an absolute URI (RFC 8707 §2)."),
    ("fragment", "https://api.example/#x",
     "The resource 'https://api.example/#x' has a fragment (RFC 8707 §2)."),
    ("empty-fragment", "https://api.example/#",
     "The resource 'https://api.example/#' has a fragment (RFC 8707 §2)."),
    ("no-host", "https:api", "The resource 'https:api' names no host (RFC 8707 §2)."),
    ("empty-host", "https:///x", "The resource 'https:///x' names no host (RFC 8707 §2)."),
    ("space", "https://api.example https://files.example",
     "The resource 'https://api.example https://files.example' is not an absolute URI (RFC 8707 §2)."),
    ("control", "https://api.example/\x01",
     "The resource 'https://api.example/\\x01' is not an absolute URI (RFC 8707 §2)."),
    ("non-ascii", "https://ä.example",
     "The resource 'https://ä.example' is not an absolute URI (RFC 8707 §2)."),
    ("bad-percent", "https://api.example/%zz",
     "The resource 'https://api.example/%zz' is not an absolute URI (RFC 8707 §2)."),
    ("long", LONG, f"The resource {LONG[:100]!r} is longer than 1000 characters (RFC 8707 §2)."),
]


async def aud_of(http: httpx.AsyncClient, client: dict[str, Any], token: str) -> Any:
    """The token's `aud` as its own client's introspection tells it (absent: None)."""
    doc = await introspect(http, client, token)
    assert doc["active"] is True, doc
    return doc.get("aud")


def form(*pairs: tuple[str, str]) -> dict[str, Any]:
    """A form body in which a name may repeat, for httpx's `content`."""
    return {"content": urlencode(pairs), "headers": {"content-type": "application/x-www-form-urlencoded"}}


async def cc_with(http: httpx.AsyncClient, client: dict[str, Any], *resources: str,
                  **extra: str) -> httpx.Response:
    pairs = [("grant_type", "client_credentials"), *extra.items(), *(("resource", r) for r in resources)]
    return await http.post("/oauth/token", auth=auth(client), **form(*pairs))


# -- client_credentials and password ----------------------------------------------------------


async def test_without_resource_a_token_has_no_audience(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    body = assert_tokens(await cc_token(http, client), refresh=False)
    doc = await introspect(http, client, body["access_token"])
    assert doc["active"] is True and "aud" not in doc


async def test_client_credentials_with_one_resource(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    body = assert_tokens(await cc_with(http, client, API), refresh=False)
    assert await aud_of(http, client, body["access_token"]) == API


async def test_the_parameter_repeats_for_several_resources(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    body = assert_tokens(await cc_with(http, client, MAIL, API, FILES, API), refresh=False)
    assert await aud_of(http, client, body["access_token"]) == sorted([API, FILES, MAIL])


async def test_a_json_body_names_several_resources_as_an_array(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    resp = await http.post("/oauth/token", json={
        "grant_type": "client_credentials", "client_id": client["client_id"],
        "client_secret": client["client_secret"], "resource": [FILES, API]})
    body = assert_tokens(resp, refresh=False)
    assert await aud_of(http, client, body["access_token"]) == [API, FILES]
    one = await http.post("/oauth/token", json={
        "grant_type": "client_credentials", "client_id": client["client_id"],
        "client_secret": client["client_secret"], "resource": API})
    assert await aud_of(http, client, assert_tokens(one, refresh=False)["access_token"]) == API


async def test_password_grant_gives_both_tokens_the_audience(http: httpx.AsyncClient) -> None:
    await new_user(http)
    client = await new_client(http)
    resp = await http.post("/oauth/token", auth=auth(client), **form(
        ("grant_type", "password"), ("username", "alice"), ("password", "correct horse"),
        ("resource", API), ("resource", FILES)))
    body = assert_tokens(resp)
    assert await aud_of(http, client, body["access_token"]) == [API, FILES]
    assert await aud_of(http, client, body["refresh_token"]) == [API, FILES]


@pytest.mark.parametrize(("value", "description"), [(v, d) for _, v, d in MALFORMED],
                         ids=[i for i, _, _ in MALFORMED])
@pytest.mark.parametrize("grant", ["client_credentials", "password"])
async def test_a_malformed_resource_is_invalid_target(http: httpx.AsyncClient, redis_db: redis.Redis,
                                                      grant: str, value: str, description: str) -> None:
    await new_user(http)
    client = await new_client(http)
    before = token_keys(redis_db)
    extra = [("username", "alice"), ("password", "correct horse")] if grant == "password" else []
    resp = await http.post("/oauth/token", auth=auth(client), **form(
        ("grant_type", grant), *extra, ("resource", API), ("resource", value)))
    assert_error(resp, 400, "invalid_target", description)
    assert token_keys(redis_db) == before


async def test_more_than_twenty_resources_is_invalid_target(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    assert_error(await cc_with(http, client, *TOO_MANY), 400, "invalid_target",
                 "At most 20 resources may be requested at once.")
    assert_tokens(await cc_with(http, client, *TOO_MANY[:20]), refresh=False)


async def test_a_repeated_parameter_other_than_resource_is_still_refused(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    assert_tokens(await cc_with(http, client, API, scope="read"), scope="read", refresh=False)
    repeated = await http.post("/oauth/token", auth=auth(client), **form(
        ("grant_type", "client_credentials"), ("scope", "read"), ("scope", "write")))
    assert_error(repeated, 400, "invalid_request", "The parameter 'scope' was sent more than once.")


async def test_finapi_reuse_never_hands_a_token_to_another_audience(http: httpx.AsyncClient) -> None:
    client = await new_client(http, reuse_tokens=True)
    first = assert_tokens(await cc_with(http, client, API), refresh=False, expires_in=None)
    again = assert_tokens(await cc_with(http, client, API), refresh=False, expires_in=None)
    other = assert_tokens(await cc_with(http, client, FILES), refresh=False, expires_in=None)
    bare = assert_tokens(await cc_token(http, client), refresh=False, expires_in=None)
    assert first["access_token"] == again["access_token"]
    assert len({first["access_token"], other["access_token"], bare["access_token"]}) == 3
    assert await aud_of(http, client, other["access_token"]) == FILES
    assert await aud_of(http, client, bare["access_token"]) is None


# -- registered resources ---------------------------------------------------------------------


async def test_a_limited_client_may_ask_only_for_its_resources(http: httpx.AsyncClient,
                                                               redis_db: redis.Redis) -> None:
    client = await new_client(http, resources=[FILES, API])
    assert client["resources"] == [API, FILES]
    one = assert_tokens(await cc_with(http, client, FILES), refresh=False)
    assert await aud_of(http, client, one["access_token"]) == FILES
    before = token_keys(redis_db)
    assert_error(await cc_with(http, client, API, MAIL), 400, "invalid_target",
                 NOT_REGISTERED.format(MAIL))
    assert_error(await cc_with(http, client, API + "/"), 400, "invalid_target",
                 NOT_REGISTERED.format(API + "/"))
    assert token_keys(redis_db) == before


async def test_a_limited_client_naming_none_gets_all_its_resources(http: httpx.AsyncClient) -> None:
    await new_user(http)
    client = await new_client(http, resources=[API, FILES])
    cc = assert_tokens(await cc_token(http, client), refresh=False)
    assert await aud_of(http, client, cc["access_token"]) == [API, FILES]
    pw = assert_tokens(await password_token(http, client))
    assert await aud_of(http, client, pw["access_token"]) == [API, FILES]


async def test_the_password_grant_checks_the_resource_before_the_password(
        http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    await new_user(http)
    client = await new_client(http, resources=[API])
    resp = await password_token(http, client, password="wrong horse", resource=MAIL)
    assert_error(resp, 400, "invalid_target", NOT_REGISTERED.format(MAIL))
    assert not redis_db.exists(keys.user_failures("alice"))


# -- refresh_token ----------------------------------------------------------------------------


async def test_refresh_narrows_to_a_subset_and_keeps_the_grants_audience(http: httpx.AsyncClient) -> None:
    await new_user(http)
    client = await new_client(http)
    first = assert_tokens(await http.post("/oauth/token", auth=auth(client), **form(
        ("grant_type", "password"), ("username", "alice"), ("password", "correct horse"),
        ("resource", API), ("resource", FILES))))

    narrowed = assert_tokens(await refresh(http, client, first["refresh_token"], resource=API))
    assert await aud_of(http, client, narrowed["access_token"]) == API
    # RFC 8707 §2.2: the refresh token still covers the whole grant.
    assert await aud_of(http, client, narrowed["refresh_token"]) == [API, FILES]

    whole = assert_tokens(await refresh(http, client, narrowed["refresh_token"]))
    assert await aud_of(http, client, whole["access_token"]) == [API, FILES]


@pytest.mark.parametrize("asked", [[MAIL], [API, MAIL]], ids=["other", "superset"])
async def test_refresh_cannot_widen_the_audience(http: httpx.AsyncClient, asked: list[str]) -> None:
    await new_user(http)
    client = await new_client(http)
    tokens = assert_tokens(await password_token(http, client, resource=API))
    resp = await http.post("/oauth/token", auth=auth(client), **form(
        ("grant_type", "refresh_token"), ("refresh_token", tokens["refresh_token"]),
        *(("resource", r) for r in asked)))
    assert_error(resp, 400, "invalid_target", WIDER_THAN_GRANT)
    # The refused request changed nothing: the refresh token was not rotated.
    assert await aud_of(http, client, tokens["refresh_token"]) == API
    again = assert_tokens(await refresh(http, client, tokens["refresh_token"]))
    assert await aud_of(http, client, again["access_token"]) == API


async def test_refresh_of_an_unrestricted_grant_may_name_a_resource(http: httpx.AsyncClient) -> None:
    await new_user(http)
    client = await new_client(http)
    tokens = assert_tokens(await password_token(http, client))
    narrowed = assert_tokens(await refresh(http, client, tokens["refresh_token"], resource=MAIL))
    assert await aud_of(http, client, narrowed["access_token"]) == MAIL
    assert await aud_of(http, client, narrowed["refresh_token"]) is None


async def test_refresh_checks_the_clients_resources_as_they_are_now(http: httpx.AsyncClient) -> None:
    await new_user(http)
    client = await new_client(http)
    tokens = assert_tokens(await password_token(http, client))
    resp = await http.patch(f"/admin/clients/{client['client_id']}", json={"resources": [API]},
                            headers=ADMIN)
    assert resp.status_code == 200
    assert_error(await refresh(http, client, tokens["refresh_token"], resource=MAIL), 400,
                 "invalid_target", NOT_REGISTERED.format(MAIL))
    ok = assert_tokens(await refresh(http, client, tokens["refresh_token"], resource=API))
    assert await aud_of(http, client, ok["access_token"]) == API


@pytest.mark.parametrize(("value", "description"), [(v, d) for _, v, d in MALFORMED[:3]],
                         ids=[i for i, _, _ in MALFORMED[:3]])
async def test_refresh_with_a_malformed_resource(http: httpx.AsyncClient, value: str,
                                                 description: str) -> None:
    await new_user(http)
    client = await new_client(http)
    tokens = assert_tokens(await password_token(http, client))
    assert_error(await refresh(http, client, tokens["refresh_token"], resource=value), 400,
                 "invalid_target", description)
    assert_tokens(await refresh(http, client, tokens["refresh_token"]))


# -- authorization_code -----------------------------------------------------------------------


async def code_for(http: httpx.AsyncClient, client: dict[str, Any], *resources: str) -> str:
    """Walk the login and consent pages with `resource` repeated; the code."""
    pairs = [*request_params(client).items(), *(("resource", r) for r in resources)]
    page = await http.get("/oauth/authorize?" + urlencode(pairs))
    assert page.status_code == 200, page.text
    consent = await sign_in(http, page)
    assert is_consent_page(consent), consent.text
    # The forms carry every resource along.
    assert [v for k, v in hidden_fields(consent) if k == "resource"] == list(dict.fromkeys(resources))
    query = redirected(await decide(http, consent), 303)
    code: str = query["code"]
    return code


async def test_the_code_carries_the_authorization_requests_resources(http: httpx.AsyncClient) -> None:
    await new_user(http)
    web = await web_app(http)
    code = await code_for(http, web, FILES, API)
    body = assert_tokens(await redeem(http, web, code))
    assert await aud_of(http, web, body["access_token"]) == [API, FILES]
    assert await aud_of(http, web, body["refresh_token"]) == [API, FILES]


async def test_the_consent_page_names_the_resources(http: httpx.AsyncClient) -> None:
    await new_user(http)
    web = await web_app(http)
    pairs = [*request_params(web).items(), ("resource", API), ("resource", MAIL)]
    consent = await sign_in(http, await http.get("/oauth/authorize?" + urlencode(pairs)))
    page = text(consent)
    assert f"<li><code>{API}</code></li>" in page and f"<li><code>{MAIL}</code></li>" in page


async def test_redemption_narrows_the_access_token_not_the_refresh_token(http: httpx.AsyncClient) -> None:
    await new_user(http)
    web = await web_app(http)
    code = await code_for(http, web, API, FILES)
    body = assert_tokens(await redeem(http, web, code, resource=FILES))
    assert await aud_of(http, web, body["access_token"]) == FILES
    assert await aud_of(http, web, body["refresh_token"]) == [API, FILES]


async def test_redemption_cannot_widen_and_does_not_spend_the_code(http: httpx.AsyncClient) -> None:
    await new_user(http)
    web = await web_app(http)
    code = await code_for(http, web, API)
    assert_error(await redeem(http, web, code, resource=MAIL), 400, "invalid_target", WIDER_THAN_CODE)
    body = assert_tokens(await redeem(http, web, code))
    assert await aud_of(http, web, body["access_token"]) == API


async def test_redemption_of_an_unrestricted_code_may_name_a_resource(http: httpx.AsyncClient) -> None:
    await new_user(http)
    web = await web_app(http)
    code = (await get_code(http, web))["code"]
    body = assert_tokens(await redeem(http, web, code, resource=MAIL))
    assert await aud_of(http, web, body["access_token"]) == MAIL
    assert await aud_of(http, web, body["refresh_token"]) is None


@pytest.mark.parametrize(("value", "description"), [(v, d) for _, v, d in MALFORMED],
                         ids=[i for i, _, _ in MALFORMED])
async def test_a_malformed_resource_at_authorize_goes_back_as_invalid_target(
        http: httpx.AsyncClient, value: str, description: str) -> None:
    web = await web_app(http)
    pairs = [*request_params(web).items(), ("resource", API), ("resource", value)]
    resp = await http.get("/oauth/authorize?" + urlencode(pairs))
    assert_error_redirect(resp, "invalid_target", description)


async def test_authorize_limits_a_client_to_its_resources(http: httpx.AsyncClient) -> None:
    await new_user(http)
    web = await web_app(http, resources=[API, FILES])
    pairs = [*request_params(web).items(), ("resource", MAIL)]
    assert_error_redirect(await http.get("/oauth/authorize?" + urlencode(pairs)), "invalid_target",
                          NOT_REGISTERED.format(MAIL))
    # Naming none: the code is for all of its resources.
    code = (await get_code(http, web))["code"]
    body = assert_tokens(await redeem(http, web, code))
    assert await aud_of(http, web, body["access_token"]) == [API, FILES]


async def test_a_resource_server_sees_the_audience(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    rs = await new_client(http, name="resource server", introspection="all")
    token = assert_tokens(await cc_with(http, client, API), refresh=False)["access_token"]
    doc = await introspect(http, rs, token)
    assert doc["aud"] == API and doc["client_id"] == client["client_id"]


# -- the admin API ----------------------------------------------------------------------------


async def test_resources_are_set_and_cleared_by_the_admin_api(http: httpx.AsyncClient) -> None:
    client = await new_client(http, resources=f"{MAIL} {API} {MAIL}")
    assert client["resources"] == [API, MAIL]
    path = f"/admin/clients/{client['client_id']}"
    resp = await http.patch(path, json={"resources": [FILES]}, headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["resources"] == [FILES]
    assert (await http.get(path, headers=ADMIN)).json()["resources"] == [FILES]
    resp = await http.patch(path, json={"resources": []}, headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["resources"] == []
    assert (await new_client(http))["resources"] == []


@pytest.mark.parametrize(("value", "description"), [
    ("x", "'resources': 'x' is not an absolute URI (RFC 8707 §2)."),
    (["https://api.example/#f"], "'resources': 'https://api.example/#f' has a fragment (RFC 8707 §2)."),
    (["https:api"], "'resources': 'https:api' names no host (RFC 8707 §2)."),
    ([""], "'resources': '' is not an absolute URI (RFC 8707 §2)."),
    ([1], "'resources' must be a list of strings."),
    ({"a": 1}, "'resources' must be a list of strings."),
    (TOO_MANY, "'resources' may name at most 20 resources."),
], ids=["relative", "fragment", "no-host", "empty", "number", "object", "too-many"])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_the_admin_api_refuses_bad_resources(http: httpx.AsyncClient, redis_db: redis.Redis,
                                                   method: str, value: Any, description: str) -> None:
    existing = await new_client(http, resources=[API])
    before = {k: redis_db.dump(k) for k in redis_db.scan_iter()}
    if method == "POST":
        resp = await http.post("/admin/clients", json={"name": "x", "resources": value}, headers=ADMIN)
    else:
        resp = await http.patch(f"/admin/clients/{existing['client_id']}", json={"resources": value},
                                headers=ADMIN)
    assert_error(resp, 400, "invalid_request", description)
    assert {k: redis_db.dump(k) for k in redis_db.scan_iter()} == before
