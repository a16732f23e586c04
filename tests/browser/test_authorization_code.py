"""The authorization-code flow in headless chromium, against a real `tokensvc serve`: the login
and consent pages as a person uses them (by their labels, roles and the keyboard), the redirect
to a real redirect URI, and the code redeemed at the token endpoint over HTTP."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Frame, Locator, Page, Response, expect

from tests.browser.conftest import PAGE_TIMEOUT_MS, Callback
from tests.support.service import Service

NAME = "Photo app"
WEBSITE = "https://photos.example"
USERNAME = "alice"
PASSWORD = "correct horse"
CONSENT_HEADING = f"Allow {NAME} to use your account?"
WRONG_PASSWORD = "The username or password is wrong."
SESSION_COOKIE = "tsv_session"
# Adds an iframe to the page: [src, title].
EMBED = """([src, title]) => {
    const frame = document.createElement('iframe');
    frame.src = src; frame.title = title;
    document.body.appendChild(frame);
}"""


@dataclass
class App:
    """A confidential client registered for `callback`, and a PKCE pair for one request."""

    client: dict[str, Any]
    redirect_uri: str
    verifier: str
    challenge: str

    @property
    def auth(self) -> tuple[str, str]:
        return self.client["client_id"], self.client["client_secret"]

    def authorize_url(self, server: Service, state: str, **extra: str) -> str:
        params = {"response_type": "code", "client_id": self.client["client_id"],
                  "redirect_uri": self.redirect_uri, "scope": "read write", "state": state,
                  "code_challenge": self.challenge, "code_challenge_method": "S256", **extra}
        return f"{server.url}/oauth/authorize?{urlencode(params)}"

    async def redeem(self, http: httpx.AsyncClient, code: str) -> httpx.Response:
        return await http.post("/oauth/token", auth=self.auth, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
            "code_verifier": self.verifier})

    async def introspect(self, http: httpx.AsyncClient, token: str) -> dict[str, Any]:
        resp = await http.post("/oauth/introspect", auth=self.auth, data={"token": token})
        assert resp.status_code == 200, resp.text
        doc: dict[str, Any] = resp.json()
        return doc


def pkce() -> tuple[str, str]:
    """RFC 7636: a random verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


@pytest_asyncio.fixture(loop_scope="session")
async def app(live_server: Service, callback: Callback) -> App:
    client = await live_server.create_client(
        name=NAME, website=WEBSITE, redirect_uris=[callback.uri], scopes=["read", "write"],
        grant_types=["authorization_code", "refresh_token"])
    assert client["client_secret"]
    await live_server.create_user(USERNAME, PASSWORD)
    verifier, challenge = pkce()
    return App(client, callback.uri, verifier, challenge)


# -- what the pages look like to a person ---------------------------------------------------


def consent_heading(page: Page) -> Locator:
    return page.get_by_role("heading", name=CONSENT_HEADING)


async def open_login(page: Page, url: str) -> Response:
    """Go to the authorization URL; it must show the login form naming the client."""
    resp = await page.goto(url)
    assert resp is not None and resp.status == 200
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_text(f"to continue to {NAME}")).to_be_visible()
    return resp


async def fill_login(page: Page, username: str = USERNAME, password: str = PASSWORD) -> None:
    """Type into the fields found by their labels (which proves they are labelled)."""
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)


async def submit_with_enter(page: Page) -> None:
    await page.get_by_label("Password").press("Enter")


async def sign_in(page: Page, username: str = USERNAME, password: str = PASSWORD) -> None:
    await fill_login(page, username, password)
    await submit_with_enter(page)


async def approve(page: Page, callback: Callback) -> dict[str, str]:
    """Click Allow on the consent page; the redirect URI's query."""
    await expect(consent_heading(page)).to_be_visible()
    await page.get_by_role("button", name="Allow").click()
    return await callback.wait()


async def session_cookies(context: BrowserContext) -> list[str]:
    return [c["value"] for c in await context.cookies() if c["name"] == SESSION_COOKIE]


# -- the tests ------------------------------------------------------------------------------


async def test_sign_in_allow_and_redeem_the_code(live_server: Service, page: Page, callback: Callback,
                                                 app: App, artifacts: Path) -> None:
    state = secrets.token_urlsafe(16)
    await open_login(page, app.authorize_url(live_server, state))
    await fill_login(page)
    await page.screenshot(path=artifacts / "login.png", full_page=True)
    await submit_with_enter(page)

    # The consent page: the client by name, its website as a link, each scope in words.
    await expect(consent_heading(page)).to_be_visible()
    website = page.get_by_role("link", name=WEBSITE)
    await expect(website).to_be_visible()
    await expect(website).to_have_attribute("href", WEBSITE)
    await expect(page.get_by_role("listitem")).to_have_text(["See your data read",
                                                             "Change your data write"])
    await expect(page.get_by_text(f"Signed in as {USERNAME}")).to_be_visible()
    await page.screenshot(path=artifacts / "consent.png", full_page=True)

    query = await approve(page, callback)
    assert set(query) == {"code", "state", "iss"}
    assert query["state"] == state and query["iss"] == live_server.url
    assert callback.hits == [page.url]

    async with live_server.http() as http:
        resp = await app.redeem(http, query["code"])
        assert resp.status_code == 200, resp.text
        tokens = resp.json()
        assert tokens["token_type"] == "Bearer" and tokens["scope"] == "read write"
        assert tokens["access_token"] and tokens["refresh_token"]
        info = await app.introspect(http, tokens["access_token"])
        assert info["active"] is True
        assert info["username"] == USERNAME and info["scope"] == "read write"
        assert info["client_id"] == app.client["client_id"]

        # RFC 6749 §4.1.2: a code used twice is refused, and what it gave is revoked.
        replay = await app.redeem(http, query["code"])
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        assert await app.introspect(http, tokens["access_token"]) == {"active": False}
        assert await app.introspect(http, tokens["refresh_token"]) == {"active": False}


async def test_deny_sends_access_denied_and_no_code(live_server: Service, page: Page,
                                                   callback: Callback, app: App) -> None:
    state = secrets.token_urlsafe(16)
    await open_login(page, app.authorize_url(live_server, state))
    await sign_in(page)
    await expect(consent_heading(page)).to_be_visible()
    await page.get_by_role("button", name="Deny").click()
    query = await callback.wait()
    assert query["error"] == "access_denied" and query["state"] == state
    assert query["iss"] == live_server.url
    assert "code" not in query


async def test_remembered_consent_skips_the_pages_until_prompt_consent(
        live_server: Service, page: Page, callback: Callback, app: App) -> None:
    await open_login(page, app.authorize_url(live_server, "first"))
    await sign_in(page)
    first = await approve(page, callback)
    assert first["state"] == "first"

    # Same browser (its session cookie), same client and scope: straight back, no page shown.
    documents: list[tuple[str, int]] = []

    def record(resp: Response) -> None:
        if resp.request.resource_type == "document":
            documents.append((resp.url, resp.status))

    page.on("response", record)
    url = app.authorize_url(live_server, "second")
    resp = await page.goto(url)
    page.remove_listener("response", record)
    assert resp is not None and resp.status == 200
    assert callback.reached(page.url)
    second = callback.params
    assert second["state"] == "second" and second["code"] != first["code"]
    assert len(callback.hits) == 2
    # The only documents: the authorization endpoint's 302 and the redirect URI.
    assert documents == [(url, 302), (page.url, 200)]
    async with live_server.http() as http:
        redeemed = await app.redeem(http, second["code"])
        assert redeemed.status_code == 200, redeemed.text

    # prompt=consent asks again, without asking for the password.
    resp = await page.goto(app.authorize_url(live_server, "third", prompt="consent"))
    assert resp is not None and resp.status == 200
    await expect(consent_heading(page)).to_be_visible()
    assert await page.get_by_label("Password").count() == 0
    third = await approve(page, callback)
    assert third["state"] == "third" and third["code"] not in (first["code"], second["code"])


async def test_signing_in_with_remembered_consent_goes_straight_back(
        live_server: Service, page: Page, callback: Callback, app: App, browser: Browser) -> None:
    """A new browser (no session) whose user approved before: the login form's POST is answered
    with the redirect to the client, which the login page's CSP form-action must allow."""
    await open_login(page, app.authorize_url(live_server, "first"))
    await sign_in(page)
    await approve(page, callback)

    other = await browser.new_context()
    other.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        tab = await other.new_page()
        await open_login(tab, app.authorize_url(live_server, "elsewhere"))
        await sign_in(tab)
        await tab.wait_for_url(callback.reached)
        query = dict(parse_qsl(urlsplit(tab.url).query))
        assert query["state"] == "elsewhere" and query["code"]
        assert len(callback.hits) == 2
        assert await session_cookies(other)
    finally:
        await other.close()


async def test_wrong_password_shows_the_error_and_keeps_the_username(
        live_server: Service, page: Page, app: App) -> None:
    await open_login(page, app.authorize_url(live_server, "s"))
    await fill_login(page, password="not the password")
    async with page.expect_response(lambda r: r.request.method == "POST"
                                    and r.url == f"{live_server.url}/oauth/authorize") as posted:
        await submit_with_enter(page)
    resp = await posted.value
    # The service answers a failed sign-in with 400 (invalid_grant's status), as the password
    # grant does; a 401 would need a WWW-Authenticate challenge, which a form has none of.
    assert resp.status == 400
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text(WRONG_PASSWORD)
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_label("Username")).to_have_value(USERNAME)
    await expect(page.get_by_label("Username")).to_have_attribute("aria-describedby", "login-error")
    await expect(page.get_by_label("Password")).to_have_value("")
    assert await session_cookies(page.context) == []


async def test_login_page_fits_a_phone(live_server: Service, browser: Browser, app: App,
                                       artifacts: Path) -> None:
    phone = await browser.new_context(viewport={"width": 375, "height": 667}, is_mobile=True,
                                      has_touch=True, device_scale_factor=2)
    phone.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page = await phone.new_page()
        await open_login(page, app.authorize_url(live_server, "s"))
        sizes = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert sizes[1] == 375  # the viewport meta tag is honoured: no 980px desktop layout
        assert sizes[0] <= 375
        button = page.get_by_role("button", name="Sign in")
        await expect(button).to_be_visible()
        await expect(button).to_be_in_viewport()
        await expect(page.get_by_label("Username")).to_be_in_viewport()
        await page.screenshot(path=artifacts / "login-mobile.png", full_page=True)
    finally:
        await phone.close()


async def test_login_page_cannot_be_framed(live_server: Service, page: Page, callback: Callback,
                                           app: App) -> None:
    url = app.authorize_url(live_server, "s")
    resp = await open_login(page, url)
    headers = await resp.all_headers()
    assert headers["x-frame-options"] == "DENY"
    csp = [d.strip() for d in headers["content-security-policy"].split(";")]
    assert "frame-ancestors 'none'" in csp

    # Another origin (the redirect URI's server) embeds two frames: its own page, which shows,
    # and the login page, which chromium refuses to show (its error page takes its place).
    await page.goto(callback.uri)

    def shown(frame: Frame) -> bool:
        return frame.parent_frame is not None and frame.url not in ("", "about:blank")

    async with page.expect_event("framenavigated", shown) as control_nav:
        await page.evaluate(EMBED, [f"{callback.uri}?framed=1", "control"])
    control = await control_nav.value
    await expect(control.get_by_role("heading", name="callback reached")).to_be_visible()

    async with (page.expect_event("framenavigated", shown) as login_nav,
                page.expect_response(url) as login_resp):
        await page.evaluate(EMBED, [url, "login"])
    framed = await login_resp.value
    assert framed.status == 200  # the service answered; the browser would not show it
    blocked = await login_nav.value
    assert blocked.url.startswith("chrome-error://"), blocked.url
    assert await blocked.get_by_label("Password").count() == 0
    login_frame = page.frame_locator("iframe[title=login]")
    assert await login_frame.get_by_role("button", name="Sign in").count() == 0
    assert await page.frame_locator("iframe[title=control]").locator("h1").count() == 1


async def test_sign_out_from_the_consent_page(live_server: Service, page: Page, callback: Callback,
                                              app: App, context: BrowserContext) -> None:
    state = secrets.token_urlsafe(16)
    url = app.authorize_url(live_server, state)
    await open_login(page, url)
    await sign_in(page)
    await expect(consent_heading(page)).to_be_visible()
    assert len(await session_cookies(context)) == 1

    await page.get_by_role("button", name="Not you? Sign out").click()
    # Back at the login form of the same request: the same URL, an empty form.
    await page.wait_for_url(url)
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_label("Username")).to_have_value("")
    assert await session_cookies(context) == []

    # The request carries on: signing in (as anyone) and allowing reaches the client.
    await sign_in(page)
    query = await approve(page, callback)
    assert query["state"] == state and query["code"]
