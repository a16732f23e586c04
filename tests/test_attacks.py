"""The attacker's side of RFC 9700 (SECURITY.md): each test plays one attack against a real
`tokensvc serve` over the network and shows it fail.

Stolen and replayed authorization codes, mix-up, cross-site form posts, open redirects, replay of
revoked tokens, stolen refresh tokens, framing, and guessing client secrets. The same rules are
tested closer to the code in the in-process suites (test_authorize, test_authorization_code,
test_refresh, test_revocation, test_client_auth); here the attacker has nothing but HTTP. One
service serves the whole module; each test makes its own clients, and the victim is alice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import auth, basic
from tests.support.assertions import assert_error, assert_tokens, bearer_challenge
from tests.support.authflow import (
    FORM_EXPIRED,
    PASSWORD,
    Client,
    assert_error_page,
    assert_error_redirect,
    assert_page,
    authorize,
    csrf_of,
    decide,
    forms,
    get_code,
    is_consent_page,
    is_login_page,
    public_app,
    redeem,
    redirected,
    set_cookie,
    sign_in,
    web_app,
)
from tests.support.config import ADMIN, ISSUER
from tests.support.console import LOGIN as CONSOLE_LOGIN, sign_in as console_sign_in
from tests.support.redis_servers import RedisServer
from tests.support.service import Service, serving

CODE_FOREIGN = "The authorization code was issued to another client."
CODE_WRONG_VERIFIER = "The code_verifier does not match the code_challenge."
CODE_NEEDS_VERIFIER = "A public client must send its code_verifier (PKCE)."
CODE_INVALID = "The authorization code is invalid, expired or already used."
CODE_REPLAYED = "The authorization code was already used; its tokens are revoked."
REFRESH_INVALID = "The refresh token is invalid, expired or revoked."
REFRESH_REUSED = "The refresh token was already used; the grant has been revoked."
TOKEN_DEAD = "The access token is invalid, expired or revoked."
NOT_REGISTERED = "The redirect_uri is not registered for this application."
UNKNOWN_CLIENT = "The application that sent you here is not registered."
# The attacker's own account, and a verifier of theirs (valid, RFC 7636 §4.1, but not alice's).
ATTACKER = "mallory"
ATTACKER_VERIFIER = "attacker-verifier-" + "a" * 40


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the module, on an emptied Redis, with alice (the victim) and the
    attacker's own account in it."""
    if redis_server.proc is None:
        redis_server.start()
    with redis_server.sync() as r:
        r.flushall()
    with serving(redis_server.url, tmp_path_factory.mktemp("attacks")) as (svc,):
        for username in ("alice", ATTACKER):
            resp = httpx.post(f"{svc.url}/admin/users", headers=ADMIN, timeout=10,
                              json={"username": username, "password": PASSWORD, "verified": True})
            assert resp.status_code == 201, resp.text
        yield svc


@pytest.fixture
async def victim(live: Service) -> AsyncIterator[httpx.AsyncClient]:
    """alice's browser (its own cookie jar)."""
    async with live.http() as http:
        yield http


@pytest.fixture
async def attacker(live: Service) -> AsyncIterator[httpx.AsyncClient]:
    """The attacker's own browser and HTTP client: no cookie of alice's."""
    async with live.http() as http:
        yield http


async def alive(http: httpx.AsyncClient, access_token: str) -> bool:
    """Whether a resource server would accept the access token: GET /oauth/userinfo with it
    (200), or its RFC 6750 refusal (401)."""
    resp = await http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {access_token}"})
    if resp.status_code == 401:
        assert_error(resp, 401, "invalid_token", TOKEN_DEAD, bearer_challenge(TOKEN_DEAD))
        return False
    assert resp.status_code == 200, resp.text
    return True


async def refresh_as(http: httpx.AsyncClient, client: Client, refresh_token: str) -> httpx.Response:
    """The refresh grant as anyone holding the token and what the client needs to authenticate:
    its secret by Basic, or for a public client its id alone."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if "client_secret" in client:
        return await http.post("/oauth/token", data=data, auth=auth(client))
    return await http.post("/oauth/token", data={**data, "client_id": client["client_id"]})


# -- RFC 9700 §4.5: authorization code injection and replay ----------------------------------

async def test_a_stolen_code_is_refused_to_another_client(victim: httpx.AsyncClient,
                                                          attacker: httpx.AsyncClient) -> None:
    """The attacker learnt alice's code and even its verifier, and redeems it with a client of
    their own, registered with the same redirect URI: the code is bound to its client."""
    app = await web_app(victim)
    own = await web_app(attacker, name="Attacker's app")
    code = (await get_code(victim, app))["code"]
    assert_error(await redeem(attacker, own, code), 400, "invalid_grant", CODE_FOREIGN)
    # The attempt does not burn the code: the genuine client still redeems it.
    tokens = assert_tokens(await redeem(victim, app, code))
    assert await alive(victim, tokens["access_token"])


async def test_a_stolen_code_without_its_verifier_is_spent_not_redeemed(
        victim: httpx.AsyncClient, attacker: httpx.AsyncClient) -> None:
    """A public client's code intercepted on the way back (A3): the attacker can name the client,
    but not the verifier behind the challenge (PKCE, RFC 7636). A wrong verifier spends the
    code, so nobody gets a second guess; a code injected into another session of the client
    fails the same way, since that session's verifier does not match the code's challenge."""
    app = await public_app(victim)
    code = (await get_code(victim, app))["code"]
    assert_error(await redeem(attacker, app, code, code_verifier=None), 400, "invalid_grant",
                 CODE_NEEDS_VERIFIER)
    assert_error(await redeem(attacker, app, code, code_verifier=ATTACKER_VERIFIER), 400, "invalid_grant",
                 CODE_WRONG_VERIFIER)
    # Not even the right verifier redeems it now.
    assert_error(await redeem(attacker, app, code), 400, "invalid_grant", CODE_INVALID)
    # Injection: the attacker starts a flow of their own with the client (which keeps the
    # verifier of that flow) and swaps alice's code into its response. The client redeems it
    # with the verifier of the attacker's flow, and the code is refused.
    code = (await get_code(victim, app))["code"]
    assert_error(await redeem(attacker, app, code, code_verifier=ATTACKER_VERIFIER), 400, "invalid_grant",
                 CODE_WRONG_VERIFIER)


async def test_a_replayed_code_revokes_everything_it_gave(victim: httpx.AsyncClient,
                                                          attacker: httpx.AsyncClient) -> None:
    """RFC 6749 §4.1.2: the attacker replays a code the client already redeemed (read from a
    log, a history, a Referer). The replay fails and ends the tokens the code gave, whoever
    holds them now."""
    app = await public_app(victim)
    code = (await get_code(victim, app))["code"]
    tokens = assert_tokens(await redeem(victim, app, code))
    assert await alive(victim, tokens["access_token"])
    assert_error(await redeem(attacker, app, code), 400, "invalid_grant", CODE_REPLAYED)
    assert not await alive(victim, tokens["access_token"])
    assert_error(await refresh_as(victim, app, tokens["refresh_token"]), 400, "invalid_grant",
                 REFRESH_INVALID)


# -- RFC 9700 §4.4: mix-up; §4.12: no 307; §4.2: no Referer -------------------------------

async def test_the_authorization_response_names_its_issuer(victim: httpx.AsyncClient) -> None:
    """RFC 9207: a client talking to several servers compares `iss` in the response with the
    issuer it sent the user to, so a code from another server is not sent here (or ours
    elsewhere). Every response carries it, errors too, and the metadata says so."""
    metadata = (await victim.get("/.well-known/oauth-authorization-server")).json()
    assert metadata["issuer"] == ISSUER
    assert metadata["authorization_response_iss_parameter_supported"] is True
    app = await public_app(victim)
    assert (await get_code(victim, app))["iss"] == metadata["issuer"]
    assert_error_redirect(await authorize(victim, app, scope="admin"), "invalid_scope",
                          "The client may not request scope: admin.")


async def test_posted_forms_redirect_with_303_and_no_referrer(victim: httpx.AsyncClient) -> None:
    """§4.12: a 307 after the sign-in POST would make the browser post alice's password to the
    client; 303 turns it into a GET. §4.2: no redirect or page leaks its URL in a Referer."""
    app = await public_app(victim)
    consent = await sign_in(victim, await authorize(victim, app))
    approved = await decide(victim, consent)
    assert set(redirected(approved, 303)) == {"code", "state", "iss"}
    # Consent is remembered now: the sign-in POST itself redirects to the client.
    login = await authorize(victim, app, prompt="login")
    signed_in = await sign_in(victim, login)
    assert set(redirected(signed_in, 303)) == {"code", "state", "iss"}
    assert_error_redirect(await decide(victim, await authorize(victim, app, prompt="consent"), "deny"),
                          "access_denied", "The user denied the request.", status=303)
    for resp in (approved, signed_in, login):
        assert resp.headers["referrer-policy"] == "no-referrer"


# -- RFC 9700 §4.7: cross-site request forgery on the forms --------------------------------

async def test_a_cross_site_consent_post_is_refused(live: Service, victim: httpx.AsyncClient,
                                                    attacker: httpx.AsyncClient) -> None:
    """alice is signed in. The attacker's page posts the consent form into her browser (her
    cookies go along, SameSite aside) with every field but the CSRF token, which it cannot
    read: no token, a token of the attacker's own session, a made-up one. Each is a 403 page,
    never a redirect with a code."""
    app = await public_app(victim)
    page = await sign_in(victim, await authorize(victim, app))
    assert is_consent_page(page)
    attackers_page = await sign_in(attacker, await authorize(attacker, app), ATTACKER)
    assert csrf_of(attackers_page) != csrf_of(page)
    for csrf in (None, "", csrf_of(attackers_page), "0" * 43):
        resp = await decide(victim, page, "approve", csrf=csrf)
        assert_error_page(resp, 403, FORM_EXPIRED)
    # Nothing was approved behind alice's back: she is asked again, not sent back with a code.
    assert is_consent_page(await authorize(victim, app))


async def test_a_cross_site_sign_in_is_refused(victim: httpx.AsyncClient,
                                                attacker: httpx.AsyncClient) -> None:
    """Login CSRF: the attacker's page signs alice's browser into the attacker's account (so
    that what she does next lands there). Without the token bound to her browser's cookie the
    POST is a 403 page, and no session cookie is set."""
    app = await public_app(victim)
    mine = await authorize(victim, app)  # alice's browser holds its visitor cookie
    theirs = await authorize(attacker, app)
    fields = forms(theirs)["/oauth/authorize"]
    for csrf in (None, fields["csrf"]):
        data = {**fields, "username": ATTACKER, "password": PASSWORD}
        if csrf is None:
            del data["csrf"]
        resp = await victim.post("/oauth/authorize", data=data)
        assert_error_page(resp, 403, FORM_EXPIRED)
        assert set_cookie(resp, "tsv_session") is None
    assert is_consent_page(await sign_in(victim, mine))


# -- RFC 9700 §4.1, §4.11.2: open redirection ---------------------------------------------

UNREGISTERED = [
    ("other-host", "https://evil.example/cb"),
    ("other-path", "https://app.example/cb/../evil"),
    ("added-query", "https://app.example/cb?next=https://evil.example/"),
    ("other-port", "https://app.example:444/cb"),
    ("userinfo", "https://app.example@evil.example/cb"),
    ("loopback-other-port", "http://127.0.0.1:8081/callback"),
]


@pytest.mark.parametrize("uri", [uri for _, uri in UNREGISTERED], ids=[name for name, _ in UNREGISTERED])
async def test_no_redirect_to_an_unregistered_uri(victim: httpx.AsyncClient, uri: str) -> None:
    """The attacker sends alice to the authorization endpoint with a redirect URI of theirs.
    Even when she is signed in and has approved the client (the request would otherwise come
    straight back with a code), the answer is an error page: never a Location."""
    app = await public_app(victim)
    assert_error_page(await authorize(victim, app, redirect_uri=uri), 400, NOT_REGISTERED)
    await get_code(victim, app)  # signed in, consent remembered
    for prompt in (None, "none"):
        assert_error_page(await authorize(victim, app, redirect_uri=uri, prompt=prompt), 400, NOT_REGISTERED)
    consent = forms(await authorize(victim, app, prompt="consent"))["/oauth/authorize"]
    posted = await victim.post("/oauth/authorize", data={**consent, "redirect_uri": uri, "action": "approve"})
    assert_error_page(posted, 400, NOT_REGISTERED)
    unknown = await victim.get("/oauth/authorize", params={"response_type": "code", "client_id": "nobody",
                                                           "redirect_uri": uri})
    assert_error_page(unknown, 400, UNKNOWN_CLIENT)


async def test_logout_is_no_open_redirector(victim: httpx.AsyncClient) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        resp = await victim.post("/oauth/logout", data={"next": target})
        assert_page(resp, 200)


# -- RFC 9700 §2.2, §4.10: replay of revoked tokens ----------------------------------------

async def test_a_revoked_token_is_refused_everywhere(victim: httpx.AsyncClient,
                                                     attacker: httpx.AsyncClient) -> None:
    """alice's client revokes its grant (RFC 7009) after the tokens leaked. The attacker's
    copies are refused wherever they are presented."""
    app = await web_app(victim)
    tokens = assert_tokens(await redeem(victim, app, (await get_code(victim, app))["code"]))
    access, refresh_token = tokens["access_token"], tokens["refresh_token"]
    assert await alive(attacker, access)
    revoked = await victim.post("/oauth/revoke", data={"token": access}, auth=auth(app))
    assert revoked.status_code == 200
    assert not await alive(attacker, access)
    login = await attacker.post("/login", headers={"Authorization": f"Bearer {access}"})
    assert_error(login, 401, "invalid_token", TOKEN_DEAD, bearer_challenge(TOKEN_DEAD))
    introspected = await attacker.post("/oauth/introspect", data={"token": access}, auth=auth(app))
    assert introspected.status_code == 200 and introspected.json() == {"active": False}
    assert_error(await refresh_as(attacker, app, refresh_token), 400, "invalid_grant", REFRESH_INVALID)


# -- RFC 9700 §4.14: refresh token theft -----------------------------------------------------

@pytest.mark.parametrize("first", ["holder", "thief"])
async def test_a_stolen_refresh_token_ends_the_grant_for_both(
        victim: httpx.AsyncClient, attacker: httpx.AsyncClient, first: str) -> None:
    """A public client's refresh token is copied (it needs no secret to use). Rotation gives
    whoever uses it first a new pair; when the other presents the old one, the server cannot
    tell thief from holder, so it ends the whole grant: the thief's tokens and the legitimate
    holder's new ones alike."""
    app = await public_app(victim)
    stolen = assert_tokens(await redeem(victim, app, (await get_code(victim, app))["code"]))
    one, other = (victim, attacker) if first == "holder" else (attacker, victim)
    rotated = assert_tokens(await refresh_as(one, app, stolen["refresh_token"]))
    assert await alive(one, rotated["access_token"])
    assert_error(await refresh_as(other, app, stolen["refresh_token"]), 400, "invalid_grant", REFRESH_REUSED)
    assert not await alive(one, rotated["access_token"])
    assert not await alive(one, stolen["access_token"])
    assert_error(await refresh_as(one, app, rotated["refresh_token"]), 400, "invalid_grant", REFRESH_INVALID)


# -- RFC 9700 §4.16: clickjacking -----------------------------------------------------------

def assert_unframeable(resp: httpx.Response) -> None:
    assert resp.headers["content-type"] == "text/html; charset=utf-8", resp.url
    assert resp.headers["x-frame-options"] == "DENY", resp.url
    directives = [d.strip() for d in resp.headers["content-security-policy"].split(";")]
    assert "frame-ancestors 'none'" in directives, resp.url


async def test_no_page_can_be_framed(live: Service, victim: httpx.AsyncClient) -> None:
    """The attacker frames a page of the service under a decoy, so that alice's clicks (Allow)
    or typing (her password) land in it. Every HTML page forbids framing, in both headers
    browsers read: the authorization pages, their errors, sign-out, and the admin console."""
    app = await public_app(victim)
    login = await authorize(victim, app)
    pages = [
        login,
        await authorize(victim, app, redirect_uri="https://evil.example/"),
        await sign_in(victim, login, password="wrong"),
        await sign_in(victim, login, csrf="forged"),
    ]
    consent = await sign_in(victim, login)
    pages += [consent, await victim.get("/oauth/logout"),
              await victim.post("/oauth/logout", data={"csrf": csrf_of(consent)}),
              await victim.get("/oauth/logout")]
    async with live.http() as admin:
        pages.append(await admin.get(CONSOLE_LOGIN))
        console = await console_sign_in(admin)
        pages += [await console.get("/admin"), await console.get("/admin/console/clients/new"),
                  await console.get(f"/admin/console/clients/{app['client_id']}"),
                  await console.get("/admin/console/users")]
    assert is_login_page(login) and is_consent_page(consent)
    assert [p.status_code for p in pages] == [200, 400, 400, 403, 200, 200, 200, 200, 200,
                                              200, 200, 200, 200]
    for page in pages:
        assert_unframeable(page)


# -- RFC 9700 §2.5: client secrets -----------------------------------------------------------

async def test_a_guessed_secret_teaches_nothing(attacker: httpx.AsyncClient,
                                                 victim: httpx.AsyncClient) -> None:
    """The attacker guesses a client's secret. Whatever the guess (the right length, shorter,
    longer, the right secret cut short or extended), the answer is the same refusal, with
    nothing in it to tell one wrong guess from another. The comparison itself is constant-time
    (SECURITY.md names the code); what a black box can show is that the answers agree."""
    app = await web_app(victim)
    secret: str = app["client_secret"]
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    guesses = [flipped, "x" * len(secret), secret[:-1], secret + "x", secret[:8], "x"]
    answers: list[tuple[int, Any, str | None]] = []
    for guess in guesses:
        for resp in (await attacker.post("/oauth/token", headers=basic(app["client_id"], guess),
                                         data={"grant_type": "client_credentials"}),
                     await attacker.post("/oauth/token", data={"grant_type": "client_credentials",
                                                               "client_id": app["client_id"],
                                                               "client_secret": guess})):
            answers.append((resp.status_code, resp.json(), resp.headers.get("www-authenticate")))
    by_basic, by_post = answers[0::2], answers[1::2]
    assert by_basic == [(401, by_basic[0][1], 'Basic realm="tokensvc"')] * len(guesses)
    assert by_post == [(401, by_basic[0][1], None)] * len(guesses)
    assert by_basic[0][1]["error"] == "invalid_client"
