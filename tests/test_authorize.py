"""RFC 6749 §4.1 authorization endpoint (API.md "Authorization-code flow"): exact redirect URIs,
errors at the redirect URI, the login and consent forms with their CSRF tokens, the shared
lockout, remembered consent, prompt, logout, and the pages' security headers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import redis

import tokensvc
from tests.support.api import new_client, new_user, password_token
from tests.support.apps import AppFactory
from tests.support.authflow import (
    CB,
    CB_LOOPBACK,
    CB_QUERY,
    CHALLENGE,
    FORM_EXPIRED,
    PASSWORD,
    VERIFIER,
    Client,
    assert_error_page,
    assert_error_redirect,
    assert_page,
    authorize,
    browser,
    code_key,
    cookie_attrs,
    csrf_of,
    decide,
    forms,
    get_code,
    is_consent_page,
    is_login_page,
    public_app as make_public_app,
    redeem,
    redirected,
    request_params,
    session_keys,
    set_cookie,
    sign_in,
    text,
    web_app,
)
from tests.support.config import ADMIN, ISSUER
from tests.support.stored import failure_keys, token_keys
from tokensvc.store import keys
from tokensvc.tokens import digest

NOT_REGISTERED = "The redirect_uri is not registered for this application."
UNKNOWN_CLIENT = "The application that sent you here is not registered."
NO_CLIENT = "The request names no client (client_id is missing or repeated)."
NO_REDIRECT = "The request names no redirect_uri, or names it more than once."
WRONG_PASSWORD = "The username or password is wrong."
LOCKED = "This account is locked after too many failed sign-ins. Contact an administrator."
NOT_VERIFIED = "This account is not verified yet, and this application requires verified accounts."
PLAIN_REFUSED = "code_challenge_method plain is not allowed; use S256."
MALFORMED_CHALLENGE = "code_challenge is malformed (RFC 7636 §4.2)."
MALFORMED_JKT = "dpop_jkt must be a JWK SHA-256 thumbprint (RFC 7638), base64url-encoded."
MALFORMED_SCOPE = "The scope parameter is malformed (RFC 6749 §3.3)."


@pytest.fixture
async def app(http: httpx.AsyncClient) -> Client:
    """alice and a public client with the authorization_code grant."""
    await new_user(http)
    return await make_public_app(http)


async def consent_page(http: httpx.AsyncClient, client: Client, **over: str | None) -> httpx.Response:
    """Log alice in from a fresh authorization request; the consent page that follows."""
    login = await authorize(http, client, **over)
    assert_page(login, 200)
    page = await sign_in(http, login)
    assert_page(page, 200)
    assert is_consent_page(page)
    return page


async def logged_in(http: httpx.AsyncClient, client: Client, scope: str = "read write") -> None:
    """alice signs in and approves `scope` once, so the session and the consent exist."""
    await get_code(http, client, scope=scope)
    assert http.cookies.get("tsv_session")


# -- requests that must never redirect ------------------------------------------------------

BAD_REDIRECT_URIS = [
    ("prefix-of-registered", "https://app.example/c"),
    ("origin-only", "https://app.example"),
    ("origin-with-slash", "https://app.example/"),
    ("different-port", "https://app.example:8443/cb"),
    ("explicit-default-port", "https://app.example:443/cb"),
    ("loopback-different-port", "http://127.0.0.1:8081/callback"),
    ("loopback-localhost-for-ip", "http://localhost:8080/callback"),
    ("added-query", "https://app.example/cb?next=/evil"),
    ("empty-query", "https://app.example/cb?"),
    ("registered-query-changed", "https://app.example/cb?tenant=8"),
    ("added-path-segment", "https://app.example/cb/more"),
    ("dot-segment", "https://app.example/cb/../cb"),
    ("fragment", "https://app.example/cb#frag"),
    ("empty-fragment", "https://app.example/cb#"),
    ("host-case", "https://APP.example/cb"),
    ("scheme-case", "HTTPS://app.example/cb"),
    ("path-case", "https://app.example/CB"),
    ("trailing-slash", "https://app.example/cb/"),
    ("http-for-https", "http://app.example/cb"),
    ("percent-encoded-path", "https://app.example/%63b"),
    ("userinfo", "https://app.example@evil.example/cb"),
    ("suffix-host", "https://app.example.evil.example/cb"),
    ("trailing-space", "https://app.example/cb "),
    ("other-clients-uri", "https://other.example/cb"),
]


@pytest.mark.parametrize("uri", [u for _, u in BAD_REDIRECT_URIS], ids=[i for i, _ in BAD_REDIRECT_URIS])
async def test_redirect_uri_must_match_exactly(http: httpx.AsyncClient, app: Client, uri: str,
                                               redis_db: redis.Redis) -> None:
    await new_client(http, name="other", grant_types=["authorization_code"],
                     redirect_uris=["https://other.example/cb"])
    resp = await authorize(http, app, redirect_uri=uri)
    assert_error_page(resp, 400, NOT_REGISTERED)
    # Even a request that is wrong in every other way too is not redirected.
    resp = await authorize(http, app, redirect_uri=uri, response_type="token", scope="admin",
                           code_challenge=None, code_challenge_method=None, prompt="none")
    assert_error_page(resp, 400, NOT_REGISTERED)
    # Nor is the form posted with it.
    resp = await http.post("/oauth/authorize", data={**request_params(app, redirect_uri=uri),
                                                     "action": "login", "username": "alice",
                                                     "password": PASSWORD})
    assert_error_page(resp, 400, NOT_REGISTERED)
    assert set_cookie(resp, "tsv_visitor") is None and set_cookie(resp, "tsv_session") is None
    assert token_keys(redis_db) == set() and session_keys(redis_db) == []


async def test_each_registered_uri_is_accepted_as_is(http: httpx.AsyncClient, app: Client) -> None:
    for uri in (CB, CB_LOOPBACK, CB_QUERY):
        resp = await authorize(http, app, redirect_uri=uri)
        assert_page(resp, 200)
        assert is_login_page(resp)
        assert forms(resp)["/oauth/authorize"]["redirect_uri"] == uri


UNTRUSTED: list[tuple[str, list[tuple[str, str]] | None, str]] = [
    # id, query (None: the app's request with the client_id of a revoked client), message
    ("unknown-client", [("client_id", "no-such-client"), ("redirect_uri", CB)], UNKNOWN_CLIENT),
    ("missing-client-id", [("redirect_uri", CB)], NO_CLIENT),
    ("empty-client-id", [("client_id", ""), ("redirect_uri", CB)], NO_CLIENT),
    ("repeated-client-id", [("client_id", "APP"), ("client_id", "APP"), ("redirect_uri", CB)], NO_CLIENT),
    ("repeated-client-id-differing", [("client_id", "APP"), ("client_id", "x"), ("redirect_uri", CB)],
     NO_CLIENT),
    ("missing-redirect-uri", [("client_id", "APP")], NO_REDIRECT),
    ("empty-redirect-uri", [("client_id", "APP"), ("redirect_uri", "")], NO_REDIRECT),
    ("repeated-redirect-uri", [("client_id", "APP"), ("redirect_uri", CB), ("redirect_uri", CB)],
     NO_REDIRECT),
    ("revoked-client", None, UNKNOWN_CLIENT),
]


@pytest.mark.parametrize(("query", "message"), [u[1:] for u in UNTRUSTED], ids=[u[0] for u in UNTRUSTED])
async def test_untrusted_request_gets_error_page(http: httpx.AsyncClient, app: Client,
                                                 query: list[tuple[str, str]] | None, message: str) -> None:
    if query is None:
        resp = await http.delete(f"/admin/clients/{app['client_id']}", headers=ADMIN)
        assert resp.status_code == 204
        query = list(request_params(app).items())
    else:
        query = [(n, app["client_id"] if v == "APP" else v) for n, v in query]
        query += [("response_type", "code"), ("state", "xyz"), ("code_challenge", CHALLENGE),
                  ("code_challenge_method", "S256")]
    for path in ("/oauth/authorize", "/authorize"):
        assert_error_page(await http.get(path, params=tuple(query)), 400, message)
        resp = await http.post(path, content=urlencode([*query, ("action", "login"), ("csrf", "x")]),
                               headers={"content-type": "application/x-www-form-urlencoded"})
        assert_error_page(resp, 400, message)


async def test_post_that_is_not_a_form_gets_error_page(http: httpx.AsyncClient, app: Client) -> None:
    resp = await http.post("/oauth/authorize", json=request_params(app))
    assert_error_page(resp, 415, "The form was not sent as a form.")
    resp = await http.post("/oauth/authorize", content=b"\xff\xfe=1",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error_page(resp, 400, "The form body is not valid UTF-8 percent-encoding.")


# -- errors told to the client at its redirect URI -----------------------------------------

REDIRECT_ERRORS: list[tuple[str, dict[str, str | None], str, str]] = [
    # id, request changes, error, error_description
    ("unsupported-response-type", {"response_type": "token"}, "unsupported_response_type",
     "Only response_type=code is supported."),
    ("hybrid-response-type", {"response_type": "code id_token"}, "unsupported_response_type",
     "Only response_type=code is supported."),
    ("response-type-case", {"response_type": "CODE"}, "unsupported_response_type",
     "Only response_type=code is supported."),
    ("missing-response-type", {"response_type": None}, "invalid_request", "response_type is required."),
    ("empty-response-type", {"response_type": ""}, "invalid_request", "response_type is required."),
    ("scope-not-allowed", {"scope": "read admin"}, "invalid_scope",
     "The client may not request scope: admin."),
    ("scope-double-space", {"scope": "read  write"}, "invalid_scope", MALFORMED_SCOPE),
    ("scope-leading-space", {"scope": " read"}, "invalid_scope", MALFORMED_SCOPE),
    ("scope-with-quote", {"scope": 'read "write"'}, "invalid_scope", MALFORMED_SCOPE),
    ("scope-with-backslash", {"scope": "read\\write"}, "invalid_scope", MALFORMED_SCOPE),
    ("scope-non-ascii", {"scope": "réad"}, "invalid_scope", MALFORMED_SCOPE),
    ("public-client-without-pkce", {"code_challenge": None, "code_challenge_method": None},
     "invalid_request", "PKCE is required: send code_challenge with method S256."),
    ("plain-refused", {"code_challenge": VERIFIER, "code_challenge_method": "plain"}, "invalid_request",
     PLAIN_REFUSED),
    ("no-method-means-plain", {"code_challenge_method": None}, "invalid_request", PLAIN_REFUSED),
    ("challenge-too-short", {"code_challenge": CHALLENGE[:42]}, "invalid_request", MALFORMED_CHALLENGE),
    ("s256-challenge-too-long", {"code_challenge": CHALLENGE + "A"}, "invalid_request",
     MALFORMED_CHALLENGE),
    ("challenge-padded", {"code_challenge": CHALLENGE + "="}, "invalid_request", MALFORMED_CHALLENGE),
    ("challenge-standard-base64", {"code_challenge": CHALLENGE[:42] + "+"}, "invalid_request",
     MALFORMED_CHALLENGE),
    ("challenge-hex-sha256", {"code_challenge": "a" * 64}, "invalid_request", MALFORMED_CHALLENGE),
    ("unknown-method", {"code_challenge_method": "S512"}, "invalid_request",
     "code_challenge_method must be S256."),
    ("method-case", {"code_challenge_method": "s256"}, "invalid_request",
     "code_challenge_method must be S256."),
    ("method-without-challenge", {"code_challenge": None}, "invalid_request",
     "code_challenge_method without code_challenge."),
    ("unknown-prompt", {"prompt": "select_account"}, "invalid_request",
     "prompt must be none, login or consent."),
    ("two-prompts", {"prompt": "login consent"}, "invalid_request", "prompt must be none, login or consent."),
    ("prompt-none-without-session", {"prompt": "none"}, "login_required", "The user is not logged in."),
    ("dpop-jkt-too-short", {"dpop_jkt": CHALLENGE[:42]}, "invalid_request", MALFORMED_JKT),
    ("dpop-jkt-padded", {"dpop_jkt": CHALLENGE + "="}, "invalid_request", MALFORMED_JKT),
    ("dpop-jkt-standard-base64", {"dpop_jkt": CHALLENGE[:42] + "/"}, "invalid_request", MALFORMED_JKT),
]


@pytest.mark.parametrize(("over", "error", "description"), [e[1:] for e in REDIRECT_ERRORS],
                         ids=[e[0] for e in REDIRECT_ERRORS])
async def test_error_redirects_to_the_client(http: httpx.AsyncClient, app: Client, redis_db: redis.Redis,
                                             over: dict[str, str | None], error: str,
                                             description: str) -> None:
    for path in ("/oauth/authorize", "/authorize"):
        resp = await authorize(http, app, path, **over)
        assert_error_redirect(resp, error, description)
        assert set_cookie(resp, "tsv_visitor") is None and set_cookie(resp, "tsv_session") is None
    # The same error through the registered URI that has a query of its own.
    resp = await authorize(http, app, redirect_uri=CB_QUERY, **over)
    assert resp.headers["location"].startswith(CB_QUERY + "&error=")
    assert_error_redirect(resp, error, description, to=CB_QUERY)
    assert token_keys(redis_db) == set()


async def test_repeated_parameters_are_invalid_request(http: httpx.AsyncClient, app: Client) -> None:
    query = list(request_params(app).items())
    for name in ("response_type", "scope", "code_challenge", "code_challenge_method"):
        resp = await http.get("/oauth/authorize", params=[*query, (name, dict(query)[name])])
        assert_error_redirect(resp, "invalid_request", f"The parameter '{name}' was sent more than once.")
    twice = [("dpop_jkt", CHALLENGE), ("dpop_jkt", CHALLENGE)]
    resp = await http.get("/oauth/authorize", params=[*query, *twice])
    assert_error_redirect(resp, "invalid_request", "The parameter 'dpop_jkt' was sent more than once.")
    # A repeated state cannot be returned: the error goes back without one.
    resp = await http.get("/oauth/authorize", params=[*query, ("state", "other")])
    assert_error_redirect(resp, "invalid_request", "The parameter 'state' was sent more than once.",
                          state=None)


async def test_client_without_the_grant_is_unauthorized_client(http: httpx.AsyncClient) -> None:
    client = await new_client(http, grant_types=["password", "refresh_token"], redirect_uris=[CB])
    resp = await authorize(http, client)
    assert_error_redirect(resp, "unauthorized_client",
                          "This application may not use the authorization code flow.")


async def test_confidential_client_may_skip_pkce(http: httpx.AsyncClient) -> None:
    client = await web_app(http)
    resp = await authorize(http, client, code_challenge=None, code_challenge_method=None)
    assert_page(resp, 200)
    assert is_login_page(resp)
    # ...but not send a plain challenge while plain is off.
    resp = await authorize(http, client, code_challenge=VERIFIER, code_challenge_method="plain")
    assert_error_redirect(resp, "invalid_request", PLAIN_REFUSED)


async def test_plain_is_accepted_when_allowed(app_factory: AppFactory) -> None:
    async with app_factory(allow_plain_pkce=True) as http:
        app = await make_public_app(http)
        for method in ("plain", None):  # RFC 7636 §4.3: plain is the default method
            resp = await authorize(http, app, code_challenge=VERIFIER, code_challenge_method=method)
            assert_page(resp, 200)
            assert is_login_page(resp)
        # S256 challenges keep their exact length.
        resp = await authorize(http, app, code_challenge=CHALLENGE + "A")
        assert_error_redirect(resp, "invalid_request", MALFORMED_CHALLENGE)
        resp = await authorize(http, app, code_challenge=VERIFIER[:42], code_challenge_method="plain")
        assert_error_redirect(resp, "invalid_request", MALFORMED_CHALLENGE)


async def test_error_from_a_posted_form_is_a_303(http: httpx.AsyncClient, app: Client) -> None:
    login = await authorize(http, app)
    resp = await sign_in(http, login, scope="read admin")
    assert_error_redirect(resp, "invalid_scope", "The client may not request scope: admin.", status=303)
    resp = await sign_in(http, login, response_type="token")
    assert_error_redirect(resp, "unsupported_response_type", "Only response_type=code is supported.",
                          status=303)


async def test_deny_is_access_denied(http: httpx.AsyncClient, app: Client, redis_db: redis.Redis) -> None:
    page = await consent_page(http, app)
    resp = await decide(http, page, "deny")
    assert_error_redirect(resp, "access_denied", "The user denied the request.", status=303)
    assert token_keys(redis_db) == set()
    assert redis_db.exists(keys.user_consents("alice")) == 0
    # Denying is not remembered as consent, and the session stays.
    again = await authorize(http, app)
    assert_page(again, 200)
    assert is_consent_page(again)


async def test_unknown_action_is_an_error_page(http: httpx.AsyncClient, app: Client,
                                               redis_db: redis.Redis) -> None:
    page = await consent_page(http, app)
    assert_error_page(await decide(http, page, "maybe"), 400, "Unknown action.")
    assert_error_page(await decide(http, page, action=None), 400, "Unknown action.")
    assert token_keys(redis_db) == set()


# -- the successful path, and state ----------------------------------------------------------

async def test_login_page(http: httpx.AsyncClient, app: Client) -> None:
    resp = await authorize(http, app)
    assert_page(resp, 200)
    page = text(resp)
    assert "Sign in" in page and "to continue to <strong>Photo app</strong>" in page
    fields = forms(resp)["/oauth/authorize"]
    assert fields == {**request_params(app), "csrf": csrf_of(resp), "action": "login"}
    visitor = set_cookie(resp, "tsv_visitor")
    assert visitor is not None
    attrs = cookie_attrs(visitor)
    assert "httponly" in attrs and attrs["samesite"].lower() == "lax" and attrs["path"] == "/"
    assert "secure" not in attrs and "max-age" not in attrs  # a browser-session cookie
    assert set_cookie(resp, "tsv_session") is None
    # The form posts here; a login whose consent is remembered redirects from it to the client.
    csp = resp.headers["content-security-policy"]
    assert "form-action 'self' https://app.example;" in csp
    # The visitor keeps the cookie, and with it the same CSRF token.
    again = await authorize(http, app, state="other")
    assert set_cookie(again, "tsv_visitor") is None
    assert csrf_of(again) == csrf_of(resp)


async def test_consent_page_names_client_website_and_scopes(http: httpx.AsyncClient, app: Client) -> None:
    resp = await consent_page(http, app)
    page = text(resp)
    assert "Allow <strong>Photo app</strong> to use your account?" in page
    assert '<a href="https://photos.example" rel="noopener noreferrer">https://photos.example</a>' in page
    assert "<li>See your data <code>read</code></li>" in page
    assert "<li>Change your data <code>write</code></li>" in page
    assert "Signed in as <strong>alice</strong>" in page
    assert "form-action 'self' https://app.example;" in resp.headers["content-security-policy"]
    decision = forms(resp)["/oauth/authorize"]
    assert decision == {**request_params(app), "csrf": csrf_of(resp)}
    # The consent form's token is bound to the session, not to the visitor cookie.
    login_csrf = forms(await authorize(http, app, prompt="login"))["/oauth/authorize"]["csrf"]
    assert decision["csrf"] != login_csrf


async def test_consent_page_wording_follows_settings(app_factory: AppFactory) -> None:
    async with app_factory(scope_descriptions=(("read", "Look at your photos"),)) as http:
        await new_user(http)
        app = await make_public_app(http, website=None)
        resp = await consent_page(http, app)
        page = text(resp)
        assert "<li>Look at your photos <code>read</code></li>" in page
        assert "<li>Use the “write” permission <code>write</code></li>" in page
        assert "website" not in page
        only_read = await authorize(http, app, scope="read")
        assert is_consent_page(only_read) and "<code>write</code>" not in text(only_read)


async def test_client_without_scopes_asks_only_for_sign_in(http: httpx.AsyncClient) -> None:
    await new_user(http)
    app = await make_public_app(http, scopes=[])
    resp = await consent_page(http, app, scope=None)
    assert "Photo app asks only to know that you signed in." in text(resp)
    assert_error_redirect(await authorize(http, app, scope="read"), "invalid_scope",
                          "The client may not request scope: read.")


async def test_approve_redirects_with_code_state_and_iss(http: httpx.AsyncClient, app: Client,
                                                         redis_db: redis.Redis) -> None:
    page = await consent_page(http, app)
    resp = await decide(http, page)
    query = redirected(resp, 303)
    assert set(query) == {"code", "state", "iss"}
    assert query["state"] == "xyz" and query["iss"] == ISSUER
    assert query["code"].startswith("tsv_ac_")
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert token_keys(redis_db) == {code_key(query["code"]).encode()}
    body = (await redeem(http, app, query["code"])).json()
    assert body["scope"] == "read write"


async def test_scope_defaults_to_the_clients_scopes(http: httpx.AsyncClient, app: Client) -> None:
    code = (await get_code(http, app, scope=None))["code"]
    assert (await redeem(http, app, code)).json()["scope"] == "read write"


async def test_alias_path_runs_the_same_flow(http: httpx.AsyncClient, app: Client) -> None:
    login = await authorize(http, app, "/authorize")
    assert_page(login, 200)
    consent = await sign_in(http, login)
    query = redirected(await decide(http, consent), 303)
    assert (await redeem(http, app, query["code"])).status_code == 200


STATES = [
    ("specials", "a&b=c?d#e"),
    ("spaces-and-plus", "x y+z%20w"),
    ("unicode", "zürich-€-😀-日本"),
    ("html", "\"><script>alert(1)</script>'"),
    ("long", "s" * 500),
]


@pytest.mark.parametrize("state", [s for _, s in STATES], ids=[i for i, _ in STATES])
async def test_state_round_trips(http: httpx.AsyncClient, app: Client, state: str) -> None:
    login = await authorize(http, app, state=state)
    assert "<script>" not in login.text
    assert forms(login)["/oauth/authorize"]["state"] == state
    consent = await sign_in(http, login)
    assert "<script>" not in consent.text
    assert redirected(await decide(http, consent), 303)["state"] == state
    # Remembered consent, deny and errors carry it too.
    assert redirected(await authorize(http, app, state=state))["state"] == state
    deny = await decide(http, await authorize(http, app, state=state, prompt="consent"), "deny")
    assert_error_redirect(deny, "access_denied", "The user denied the request.", status=303, state=state)
    assert_error_redirect(await authorize(http, app, state=state, response_type="token"),
                          "unsupported_response_type", "Only response_type=code is supported.", state=state)


async def test_no_state_sent_no_state_returned(http: httpx.AsyncClient, app: Client) -> None:
    query = await get_code(http, app, state=None)
    assert set(query) == {"code", "iss"}
    assert set(redirected(await authorize(http, app, state=None))) == {"code", "iss"}
    assert_error_redirect(await authorize(http, app, state=None, scope="admin"), "invalid_scope",
                          "The client may not request scope: admin.", state=None)
    deny = await decide(http, await authorize(http, app, state=None, prompt="consent"), "deny")
    assert_error_redirect(deny, "access_denied", "The user denied the request.", status=303, state=None)


# -- CSRF ------------------------------------------------------------------------------------

@pytest.mark.parametrize("password", [PASSWORD, "wrong horse"], ids=["right-password", "wrong-password"])
async def test_login_without_a_valid_csrf_token_is_refused(http: httpx.AsyncClient, app: Client,
                                                           redis_db: redis.Redis, password: str) -> None:
    login = await authorize(http, app)
    async with browser(http) as other:
        others_login = await authorize(other, app)
        assert csrf_of(others_login) != csrf_of(login)
        for csrf in (None, "", "0" * 43, csrf_of(login).upper(), csrf_of(login)[:-1], csrf_of(others_login)):
            resp = await sign_in(http, login, password=password, csrf=csrf)
            assert_error_page(resp, 403, FORM_EXPIRED)
            assert set_cookie(resp, "tsv_session") is None
        # A form from another visitor, posted with that visitor's token but without its cookie.
        async with browser(http) as third:
            resp = await sign_in(third, others_login, password=password)
            assert_error_page(resp, 403, FORM_EXPIRED)
    assert session_keys(redis_db) == [] and failure_keys(redis_db) == set()
    assert (await http.get("/admin/users/alice", headers=ADMIN)).json()["failed_logins"] == 0
    # The genuine form still works.
    assert is_consent_page(await sign_in(http, login))


@pytest.mark.parametrize("action", ["approve", "deny"])
async def test_consent_without_a_valid_csrf_token_is_refused(http: httpx.AsyncClient, app: Client,
                                                             redis_db: redis.Redis, action: str) -> None:
    page = await consent_page(http, app)
    login_csrf = csrf_of(await authorize(http, app, prompt="login"))
    async with browser(http) as other:
        await get_code(other, app)  # alice's other session: a consent-form token of its own
        others_csrf = csrf_of(await authorize(other, app, prompt="consent"))
    redis_db.delete(keys.user_consents("alice"))
    stored = token_keys(redis_db)
    for csrf in (None, "", "0" * 43, login_csrf, others_csrf, csrf_of(page)[:-1], csrf_of(page).upper()):
        assert_error_page(await decide(http, page, action, csrf=csrf), 403, FORM_EXPIRED)
    # The right token without the session cookie is refused as well.
    async with browser(http) as cookieless:
        assert_error_page(await decide(cookieless, page, action), 403, FORM_EXPIRED)
    assert token_keys(redis_db) == stored  # no code issued
    assert redis_db.exists(keys.user_consents("alice")) == 0
    # The genuine form still works.
    assert (await decide(http, page, action)).status_code == 303


# -- login failures, the shared lockout, verification ---------------------------------------

async def test_form_login_failures_share_the_lockout(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(max_user_login_attempts=3) as http:
        await new_user(http)
        app = await make_public_app(http)
        pw_client = await new_client(http)
        login = await authorize(http, app)
        for n in (1, 2):
            resp = await sign_in(http, login, password=f"wrong {n}")
            assert_error_page_like_login(resp, 400, WRONG_PASSWORD)
            assert 'value="alice"' in resp.text  # the username is kept, the password is not
            assert redis_db.get(keys.user_failures("alice")) == str(n).encode()
        resp = await sign_in(http, login, password="wrong 3")
        assert_error_page_like_login(resp, 423, LOCKED)
        # Locked now, whatever the password and whichever way it is checked.
        assert_error_page_like_login(await sign_in(http, login), 423, LOCKED)
        pw = await password_token(http, pw_client)
        assert pw.status_code == 423 and pw.json()["error"] == "user_locked"
        assert redis_db.get(keys.user_failures("alice")) == b"3"
        user = (await http.get("/admin/users/alice", headers=ADMIN)).json()
        assert user["failed_logins"] == 3
        assert session_keys(redis_db) == []
        # An admin unlocks; the form works again and a success clears the count.
        assert (await http.post("/admin/users/alice/unlock", headers=ADMIN)).status_code == 204
        assert_error_page_like_login(await sign_in(http, login, password="wrong 4"), 400, WRONG_PASSWORD)
        assert is_consent_page(await sign_in(http, login))
        assert (await http.get("/admin/users/alice", headers=ADMIN)).json()["failed_logins"] == 0


def assert_error_page_like_login(resp: httpx.Response, status: int, message: str) -> None:
    """The login form again, with the error above it and no session."""
    assert_page(resp, status)
    assert is_login_page(resp)
    assert f'<p class="error" role="alert" id="login-error">{message}</p>' in text(resp)
    assert set_cookie(resp, "tsv_session") is None


async def test_password_grant_failures_count_on_the_form(app_factory: AppFactory,
                                                         redis_db: redis.Redis) -> None:
    async with app_factory(max_user_login_attempts=3) as http:
        await new_user(http)
        app = await make_public_app(http)
        pw_client = await new_client(http)
        for _ in range(2):
            assert (await password_token(http, pw_client, password="wrong")).status_code == 400
        login = await authorize(http, app)
        assert_error_page_like_login(await sign_in(http, login, password="wrong"), 423, LOCKED)
        assert (await http.get("/admin/users/alice", headers=ADMIN)).json()["failed_logins"] == 3


async def test_clients_own_login_limit_applies_to_the_form(http: httpx.AsyncClient,
                                                           redis_db: redis.Redis) -> None:
    await new_user(http)
    app = await make_public_app(http, max_user_login_attempts=1)
    login = await authorize(http, app)
    assert_error_page_like_login(await sign_in(http, login, password="wrong"), 423, LOCKED)


async def test_unknown_user_and_missing_fields(http: httpx.AsyncClient, app: Client,
                                               redis_db: redis.Redis) -> None:
    login = await authorize(http, app)
    assert_error_page_like_login(await sign_in(http, login, username="mallory"), 400, WRONG_PASSWORD)
    for over in ({"password": None}, {"username": None}, {"password": ""}):
        resp = await sign_in(http, login, **over)
        assert_error_page_like_login(resp, 400, "Enter your username and password.")
    assert failure_keys(redis_db) == set() and session_keys(redis_db) == []


async def test_unverified_user_is_refused_where_verification_is_required(http: httpx.AsyncClient,
                                                                         redis_db: redis.Redis) -> None:
    await new_user(http, verified=False)
    strict = await make_public_app(http, require_verified_users=True)
    login = await authorize(http, strict)
    resp = await sign_in(http, login)
    assert_error_page_like_login(resp, 403, NOT_VERIFIED)
    assert session_keys(redis_db) == [] and failure_keys(redis_db) == set()
    # A session from a client that does not require it does not get around the rule.
    lenient = await make_public_app(http, name="Lenient app")
    await get_code(http, lenient)
    assert_error_redirect(await authorize(http, strict), "access_denied", "Your account is not verified.")
    assert_error_redirect(await authorize(http, strict, prompt="none"), "access_denied",
                          "Your account is not verified.")
    # Once verified, the same session goes through.
    resp = await http.patch("/admin/users/alice", headers=ADMIN, json={"verified": True})
    assert resp.status_code == 200
    assert is_consent_page(await authorize(http, strict))


# -- sessions, remembered consent and prompt -------------------------------------------------

async def test_session_cookie_and_record(http: httpx.AsyncClient, app: Client, redis_db: redis.Redis) -> None:
    login = await authorize(http, app)
    resp = await sign_in(http, login)
    header = set_cookie(resp, "tsv_session")
    assert header is not None
    attrs = cookie_attrs(header)
    assert "httponly" in attrs and attrs["samesite"].lower() == "lax" and attrs["path"] == "/"
    assert attrs["max-age"] == str(8 * 3600) and "secure" not in attrs
    sid = http.cookies["tsv_session"]
    assert len(sid) >= 43
    key = keys.session(digest(sid))
    assert session_keys(redis_db) == [key.encode()]
    assert 0 < redis_db.pttl(key) <= 8 * 3600 * 1000
    # A new login is a new session id (no fixation).
    again = await sign_in(http, await authorize(http, app, prompt="login"))
    assert http.cookies["tsv_session"] != sid
    assert set_cookie(again, "tsv_session") is not None


async def test_session_ttl_setting(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(session_ttl=120) as http:
        await new_user(http)
        app = await make_public_app(http)
        resp = await sign_in(http, await authorize(http, app))
        header = set_cookie(resp, "tsv_session")
        assert header is not None and cookie_attrs(header)["max-age"] == "120"
        (key,) = session_keys(redis_db)
        assert 0 < redis_db.pttl(key) <= 120_000


async def test_secure_cookies_under_https(app_factory: AppFactory) -> None:
    async with app_factory(issuer="https://auth.example") as plain, \
            browser(plain, "https://testserver") as http:
        await new_user(http)
        app = await make_public_app(http)
        login = await authorize(http, app)
        visitor = set_cookie(login, "tsv_visitor")
        assert visitor is not None and "secure" in cookie_attrs(visitor)
        consent = await sign_in(http, login)
        session = set_cookie(consent, "tsv_session")
        assert session is not None
        attrs = cookie_attrs(session)
        assert "secure" in attrs and "httponly" in attrs and attrs["samesite"].lower() == "lax"
        query = redirected(await decide(http, consent), 303)
        assert query["iss"] == "https://auth.example"
        logout = await http.post("/oauth/logout", data={"csrf": csrf_of(consent)})
        cleared = set_cookie(logout, "tsv_session")
        assert cleared is not None and "secure" in cookie_attrs(cleared)


async def test_remembered_consent_skips_the_pages(http: httpx.AsyncClient, app: Client,
                                                  redis_db: redis.Redis) -> None:
    await logged_in(http, app)
    for scope in ("read write", "write read", "read", "write", None):
        resp = await authorize(http, app, scope=scope)
        query = redirected(resp, 302)
        assert set(query) == {"code", "state", "iss"}
        expected = "read write" if scope is None else " ".join(sorted(scope.split()))
        assert (await redeem(http, app, query["code"])).json()["scope"] == expected
    key = keys.user_consents("alice")
    assert 0 < redis_db.pttl(key) <= 90 * 86400 * 1000


async def test_wider_scope_asks_again_and_approvals_add_up(http: httpx.AsyncClient, app: Client) -> None:
    await logged_in(http, app, scope="read")
    resp = await authorize(http, app, scope="read write")
    assert_page(resp, 200)
    assert is_consent_page(resp)
    assert "<code>write</code>" in resp.text
    await get_code(http, app, scope="write")
    # read (first approval) plus write (second) now cover both.
    redirected(await authorize(http, app, scope="read write"))


async def test_consent_is_remembered_per_client(http: httpx.AsyncClient, app: Client) -> None:
    await logged_in(http, app)
    other = await make_public_app(http, name="Other app")
    assert is_consent_page(await authorize(http, other))


async def test_prompt_consent_forces_the_page(http: httpx.AsyncClient, app: Client) -> None:
    await logged_in(http, app)
    resp = await authorize(http, app, prompt="consent")
    assert_page(resp, 200)
    assert is_consent_page(resp)
    assert forms(resp)["/oauth/authorize"]["prompt"] == "consent"
    redirected(await decide(http, resp), 303)
    # Also right after the login form.
    resp = await sign_in(http, await authorize(http, app, prompt="login"), prompt="consent")
    assert is_consent_page(resp)


async def test_prompt_login_forces_the_form(http: httpx.AsyncClient, app: Client) -> None:
    await logged_in(http, app)
    old_sid = http.cookies["tsv_session"]
    resp = await authorize(http, app, prompt="login")
    assert_page(resp, 200)
    assert is_login_page(resp)
    # Consent is remembered: signing in goes straight back to the client, with a new session.
    signed = await sign_in(http, resp)
    query = redirected(signed, 303)
    assert set(query) == {"code", "state", "iss"}
    assert set_cookie(signed, "tsv_session") is not None
    assert http.cookies["tsv_session"] != old_sid
    # A wrong password with prompt=login is just a failed login.
    resp = await sign_in(http, await authorize(http, app, prompt="login"), password="wrong")
    assert_error_page_like_login(resp, 400, WRONG_PASSWORD)


async def test_prompt_none(http: httpx.AsyncClient, app: Client) -> None:
    assert_error_redirect(await authorize(http, app, prompt="none"), "login_required",
                          "The user is not logged in.")
    page = await consent_page(http, app)
    # Logged in, nothing approved yet.
    assert_error_redirect(await authorize(http, app, prompt="none"), "consent_required",
                          "The user has not approved this application.")
    redirected(await decide(http, page), 303)
    query = redirected(await authorize(http, app, prompt="none"))
    assert set(query) == {"code", "state", "iss"}
    assert_error_redirect(await authorize(http, app, prompt="none", scope="read admin"), "invalid_scope",
                          "The client may not request scope: admin.")


async def test_consent_ttl_zero_never_remembers(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(consent_ttl=0) as http:
        await new_user(http)
        app = await make_public_app(http)
        await logged_in(http, app)
        for _ in range(2):
            resp = await authorize(http, app)
            assert_page(resp, 200)
            assert is_consent_page(resp)
            redirected(await decide(http, resp), 303)
        assert_error_redirect(await authorize(http, app, prompt="none"), "consent_required",
                              "The user has not approved this application.")
        assert redis_db.exists(keys.user_consents("alice")) == 0


async def test_consent_expires(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(consent_ttl=60) as http:
        await new_user(http)
        app = await make_public_app(http)
        await logged_in(http, app)
        redirected(await authorize(http, app))  # "read write" is remembered
        key = keys.user_consents("alice")
        assert 0 < redis_db.pttl(key) <= 60_000
        # Approved 61 s ago: the record's own time counts, not only the key's TTL. Only the
        # record's time can say so without waiting a minute: this reads the service's format.
        doc = redis_db.hget(key, app["client_id"])
        assert isinstance(doc, bytes)
        approved = json.loads(doc)
        assert "t" in approved
        approved["t"] = int(time.time() * 1000) - 61_000
        redis_db.hset(key, app["client_id"], json.dumps(approved))
        assert is_consent_page(await authorize(http, app))
        # Approving again starts afresh: the stale approval does not add to the new one.
        await get_code(http, app, scope="read")
        redirected(await authorize(http, app, scope="read"))
        assert is_consent_page(await authorize(http, app))


async def test_deleted_user_session_shows_the_login_form(http: httpx.AsyncClient, app: Client,
                                                         redis_db: redis.Redis) -> None:
    await logged_in(http, app)
    assert (await http.delete("/admin/users/alice", headers=ADMIN)).status_code == 204
    assert redis_db.exists(keys.user_consents("alice")) == 0
    assert is_login_page(await authorize(http, app))
    assert_error_redirect(await authorize(http, app, prompt="none"), "login_required",
                          "The user is not logged in.")


async def test_recreated_user_does_not_inherit_the_session(http: httpx.AsyncClient, app: Client,
                                                           redis_db: redis.Redis) -> None:
    await logged_in(http, app)
    assert (await http.delete("/admin/users/alice", headers=ADMIN)).status_code == 204
    await new_user(http)  # same name, same password: another person as far as sessions go
    assert is_login_page(await authorize(http, app))


async def test_a_new_password_ends_the_session(http: httpx.AsyncClient, app: Client) -> None:
    await logged_in(http, app)
    resp = await http.patch("/admin/users/alice", headers=ADMIN, json={"password": "a new horse"})
    assert resp.status_code == 200, resp.text
    assert is_login_page(await authorize(http, app))


async def test_signing_in_again_ends_the_previous_session(http: httpx.AsyncClient, app: Client,
                                                          redis_db: redis.Redis) -> None:
    await logged_in(http, app)
    before = set(session_keys(redis_db))
    assert len(before) == 1
    page = await authorize(http, app, prompt="login")
    assert is_login_page(page)
    await sign_in(http, page)
    after = set(session_keys(redis_db))
    assert len(after) == 1 and after != before


# -- logout ----------------------------------------------------------------------------------

async def test_logout_ends_the_session(http: httpx.AsyncClient, app: Client, redis_db: redis.Redis) -> None:
    await logged_in(http, app)
    sid = http.cookies["tsv_session"]
    page = await http.get("/oauth/logout")
    assert_page(page, 200)
    assert "You are signed in as <strong>alice</strong>." in text(page)
    assert forms(page) == {"/oauth/logout": {"csrf": csrf_of(page)}}
    resp = await http.post("/oauth/logout", data=forms(page)["/oauth/logout"])
    assert_page(resp, 200)
    assert "You are signed out" in text(resp)
    cleared = set_cookie(resp, "tsv_session")
    assert cleared is not None and cleared.startswith('tsv_session="";')
    assert cookie_attrs(cleared)["max-age"] == "0"
    assert redis_db.exists(keys.session(digest(sid))) == 0 and session_keys(redis_db) == []
    assert "tsv_session" not in http.cookies
    assert is_login_page(await authorize(http, app))
    assert_page(await http.get("/oauth/logout"), 200)  # signed out: nothing to confirm
    # The old cookie, presented again, is worth nothing: the session ended on the server.
    async with browser(http) as replay:
        resp = await replay.get("/oauth/authorize", params=request_params(app),
                                headers={"cookie": f"tsv_session={sid}"})
        assert is_login_page(resp)


async def test_logout_needs_the_sessions_csrf_token(http: httpx.AsyncClient, app: Client,
                                                    redis_db: redis.Redis) -> None:
    await logged_in(http, app)
    login_csrf = csrf_of(await authorize(http, app, prompt="login"))
    for data in ({"next": "/oauth/authorize?x=1"}, {"csrf": "0" * 43}, {"csrf": login_csrf}):
        resp = await http.post("/oauth/logout", data=data)
        assert_error_page(resp, 403, "The form has expired or did not come from this site.")
        assert set_cookie(resp, "tsv_session") is None
    assert len(session_keys(redis_db)) == 1
    redirected(await authorize(http, app))
    resp = await http.get("/oauth/logout")
    assert_error_page(await http.post("/oauth/logout", json={"csrf": csrf_of(resp)}), 415,
                      "The form was not sent as a form.")
    assert len(session_keys(redis_db)) == 1


async def test_logout_from_the_consent_page_returns_to_the_login_form(http: httpx.AsyncClient,
                                                                      app: Client,
                                                                      redis_db: redis.Redis) -> None:
    page = await consent_page(http, app, state="a&b")
    form = forms(page)["/oauth/logout"]
    assert form["next"].startswith("/oauth/authorize?")
    resp = await http.post("/oauth/logout", data=form)
    assert resp.status_code == 303
    assert resp.headers["location"] == form["next"]
    assert session_keys(redis_db) == []
    back = await http.get(resp.headers["location"])
    assert_page(back, 200)
    assert is_login_page(back)
    assert forms(back)["/oauth/authorize"]["state"] == "a&b"
    assert forms(back)["/oauth/authorize"]["client_id"] == app["client_id"]


@pytest.mark.parametrize("nxt", ["https://evil.example/oauth/authorize?x=1",
                                 "//evil.example/oauth/authorize?", "/oauth/authorize", "/admin",
                                 "javascript:alert(1)",
                                 " /oauth/authorize?x=1", "/oauth/authorize/../../admin?x"])
async def test_logout_ignores_other_next(http: httpx.AsyncClient, app: Client, redis_db: redis.Redis,
                                         nxt: str) -> None:
    page = await consent_page(http, app)
    resp = await http.post("/oauth/logout", data={**forms(page)["/oauth/logout"], "next": nxt})
    assert_page(resp, 200)
    assert "You are signed out" in text(resp)
    assert session_keys(redis_db) == []


# -- headers, storage, stylesheet ------------------------------------------------------------

async def test_every_page_forbids_framing_and_caching(http: httpx.AsyncClient, app: Client) -> None:
    """assert_page checks the headers; this walks every kind of page once."""
    assert_page(await authorize(http, app, redirect_uri="https://evil.example/"), 400)  # error page
    login = await authorize(http, app)
    assert_page(login, 200)
    assert_page(await sign_in(http, login, password="wrong"), 400)  # login with error
    assert_page(await sign_in(http, login, csrf="bad"), 403)  # CSRF refusal
    consent = await sign_in(http, login)
    assert_page(consent, 200)
    assert_page(await decide(http, consent, "maybe"), 400)
    assert_page(await http.get("/oauth/logout"), 200)
    assert_page(await http.post("/oauth/logout", data={"csrf": "bad"}), 403)
    assert_page(await http.post("/oauth/logout", data={"csrf": csrf_of(consent)}), 200)
    assert_page(await http.get("/oauth/logout"), 200)
    for resp in (login, consent):
        csp = resp.headers["content-security-policy"]
        assert csp.startswith("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'")
        assert csp.endswith("frame-ancestors 'none'; base-uri 'none'")
        assert resp.headers["pragma"] == "no-cache"


async def test_secrets_are_not_stored_in_plaintext(http: httpx.AsyncClient, app: Client,
                                                   redis_db: redis.Redis) -> None:
    await logged_in(http, app)
    code = (await get_code(http, app))["code"]
    unredeemed = (await get_code(http, app))["code"]
    tokens = (await redeem(http, app, code)).json()
    sid = http.cookies["tsv_session"]
    visitor = http.cookies["tsv_visitor"]
    csrf = csrf_of(await authorize(http, app, prompt="consent"))
    secrets = [sid, code, unredeemed, visitor, csrf, tokens["access_token"], tokens["refresh_token"],
               PASSWORD]
    # Neither whole nor as the base64url body after the prefix.
    needles = [s.encode() for s in secrets] + [s[7:].encode() for s in secrets if s.startswith("tsv_")]
    dump = dump_redis(redis_db)
    # One session; three codes (logging in made one), the access and the refresh token.
    assert len(session_keys(redis_db)) == 1 and len(token_keys(redis_db)) == 5
    for needle in needles:
        assert needle not in dump


def dump_redis(r: redis.Redis) -> bytes:
    """Every key and every value in the DB, concatenated."""
    parts: list[object] = []
    for key in r.scan_iter(count=1000):
        parts.append(key)
        kind = r.type(key)
        if kind == b"string":
            parts.append(r.get(key))
        elif kind == b"hash":
            parts.extend(item for pair in r.hgetall(key).items() for item in pair)
        elif kind == b"set":
            parts.extend(r.smembers(key))
        elif kind == b"zset":
            parts.extend(r.zrange(key, 0, -1))
        else:
            raise AssertionError(f"unexpected {kind!r} at {key!r}")
    return b"\n".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)


async def test_stylesheet(http: httpx.AsyncClient) -> None:
    resp = await http.get("/static/tokensvc.css")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/css")
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.content == (Path(tokensvc.__file__).parent / "web" / "static" / "tokensvc.css").read_bytes()
    assert b".card" in resp.content
    assert (await http.post("/static/tokensvc.css")).status_code == 405
