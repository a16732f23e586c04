"""The admin console in headless chromium, against a real `tokensvc serve`: sign in with the
admin key, create a client and copy its secret, use it over HTTP, rotate, rename, configure and
revoke it, sort and search the table, watch the live panel, and manage users."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import redis
from jwskate import Jwk, Jwt
from playwright.async_api import BrowserContext, Error, Page, Response, expect

from tests.support.api import active
from tests.support.config import ADMIN_KEY
from tests.support.service import Service
from tokensvc.grants import GRANT_TYPES
from tokensvc.store import keys

LOGIN = "/admin/console/login"
COOKIE = "tsv_admin"
VISITOR = "tsv_visitor"
# The live server folds usage counters into Redis every 5 s, and the page polls every 5 s.
FLUSH_WAIT_S = 8.0
PANEL_WAIT_MS = 12_000


# -- helpers -------------------------------------------------------------------------------


def path_of(page: Page) -> str:
    return urlsplit(page.url).path


def query_of(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


async def sign_in(page: Page, server: Service) -> None:
    """Open /admin, get sent to the sign-in form, type the admin key and land on the table."""
    await page.goto(f"{server.url}/admin")
    assert path_of(page) == LOGIN
    await page.get_by_label("Admin key").press_sequentially(ADMIN_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{server.url}/admin")
    await expect(page.get_by_role("heading", name="API clients")).to_be_visible()


async def token(server: Service, client_id: str, secret: str) -> httpx.Response:
    async with server.http() as http:
        return await http.post("/oauth/token", auth=(client_id, secret),
                               data={"grant_type": "client_credentials"})


async def password_grant(server: Service, client: dict[str, Any], username: str,
                         password: str) -> httpx.Response:
    async with server.http() as http:
        return await http.post("/oauth/token", auth=(client["client_id"], client["client_secret"]),
                               data={"grant_type": "password", "username": username,
                                     "password": password})


async def introspect(server: Service, caller: dict[str, Any], access_token: str) -> bool:
    async with server.http() as http:
        return await active(http, caller, access_token)


async def total_clients(server: Service) -> int:
    resp = await server.admin("GET", "/admin/clients")
    assert resp.status_code == 200
    total = resp.json()["total"]
    assert isinstance(total, int)
    return total


async def table_names(page: Page) -> list[str]:
    return [name.strip() for name in await page.locator("tbody tr td:first-child a").all_inner_texts()]


async def settle(page: Page) -> str:
    """The page's HTML once a navigation (possibly to chromium's own error page) has finished."""
    for _ in range(50):
        try:
            await page.wait_for_load_state()
            return await page.content()
        except Error:  # "the page is navigating": ask again once it has
            await asyncio.sleep(0.1)
    raise AssertionError(f"{page.url} never finished loading")


async def travel(page: Page, move: Callable[[], Awaitable[Response | None]]) -> str:
    """Reload or go back/forward; the HTML shown afterwards. Chromium refuses to re-post a form
    from history without asking (net::ERR_CACHE_MISS, its own error page): that counts as a
    page too, and it must not show the secret either."""
    try:
        await move()
    except Error as exc:
        assert "ERR_CACHE_MISS" in str(exc), exc
    return await settle(page)


async def wait_flushed(server: Service, client_id: str) -> float:
    """Wait (at most FLUSH_WAIT_S) until the live server has written the client's last use."""
    deadline = time.monotonic() + FLUSH_WAIT_S
    with redis.Redis.from_url(server.redis_url) as r:
        while time.monotonic() < deadline:
            score = r.zscore(keys.CLIENTS_USED, client_id)
            if score:
                return float(score)
            await asyncio.sleep(0.1)
    raise AssertionError(f"client {client_id} was not flushed within {FLUSH_WAIT_S} s")


async def logged(server: Service, *lines: str) -> str:
    """The service's output once it holds every one of `lines` (it writes them as it goes)."""
    deadline = time.monotonic() + 5
    while not all(line in server.output for line in lines):
        assert time.monotonic() < deadline, f"not in the service's output: {lines}\n{server.output}"
        await asyncio.sleep(0.05)
    return server.output


# -- sign-in -------------------------------------------------------------------------------


async def test_sign_in_with_the_admin_key_and_sign_out(live_server: Service, page: Page,
                                                       context: BrowserContext) -> None:
    await page.goto(f"{live_server.url}/admin")
    assert path_of(page) == LOGIN
    await page.get_by_label("Admin key").press_sequentially("not-the-admin-key")
    async with page.expect_response(f"{live_server.url}{LOGIN}") as refused:
        await page.get_by_role("button", name="Sign in").click()
    assert (await refused.value).status == 401
    await expect(page.get_by_role("alert")).to_have_text("That is not the admin key.")
    # Only the visitor cookie the sign-in form's CSRF token is bound to: no session.
    [visitor] = await context.cookies()
    assert visitor["name"] == VISITOR and visitor["httpOnly"] is True and visitor["expires"] == -1
    assert await page.get_by_label("Admin key").input_value() == ""  # not echoed back

    await sign_in(page, live_server)
    assert ADMIN_KEY not in page.url and ADMIN_KEY not in await page.content()
    [cookie] = [c for c in await context.cookies() if c["name"] != VISITOR]
    assert cookie["name"] == COOKIE and cookie["path"] == "/admin"
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["expires"] == -1  # a session cookie: closing the browser ends it
    assert await page.evaluate("document.cookie") == ""  # no script can read it

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{live_server.url}{LOGIN}?done=signed-out")
    await expect(page.get_by_role("status")).to_have_text("You are signed out.")
    assert [c["name"] for c in await context.cookies()] == [VISITOR]
    await page.goto(f"{live_server.url}/admin")
    assert path_of(page) == LOGIN
    output = await logged(live_server, "console action=sign-in-failed", "console action=sign-in ",
                          "console action=sign-out ")
    assert "not-the-admin-key" not in output and ADMIN_KEY not in output
    assert cookie["value"] not in output


async def test_a_cross_site_sign_in_form_opens_no_session(live_server: Service, page: Page,
                                                          context: BrowserContext) -> None:
    """Login CSRF: this browser has seen the sign-in form (it holds the visitor cookie), then
    a page elsewhere submits the admin key to the console. Without the form's token the
    console refuses it, shows its own form again, and no session cookie is set."""
    await page.goto(f"{live_server.url}{LOGIN}")
    await page.goto("about:blank")  # another origin than the console's
    await page.set_content(
        f'<form method="post" action="{live_server.url}{LOGIN}">'
        f'<input type="hidden" name="admin_key" value="{ADMIN_KEY}"><button>Win a prize</button></form>')
    async with page.expect_response(f"{live_server.url}{LOGIN}") as answered:
        await page.get_by_role("button", name="Win a prize").click()
    assert (await answered.value).status == 403
    await expect(page.get_by_role("alert")).to_have_text(
        "The form has expired or did not come from this console. Sign in again.")
    assert COOKIE not in [c["name"] for c in await context.cookies()]
    # The form shown again is the genuine one: signing in from it works.
    await page.get_by_label("Admin key").press_sequentially(ADMIN_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{live_server.url}/admin")
    assert COOKIE in [c["name"] for c in await context.cookies()]


# -- a client's life -----------------------------------------------------------------------


async def test_client_lifecycle(live_server: Service, page: Page, context: BrowserContext,
                                artifacts: Path) -> None:
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    # Another client, to introspect this one's tokens with.
    observer = await live_server.create_client(name="Observer", grant_types=["client_credentials"],
                                               introspection="all")
    await sign_in(page, live_server)

    # Create through the "New client" form.
    await page.get_by_role("link", name="New client").click()
    await page.wait_for_url(f"{live_server.url}/admin/console/clients/new")
    await page.get_by_label("Name").fill("Payroll export")
    await page.get_by_label("Redirect URIs").fill("https://payroll.example.com/callback")
    await page.get_by_label("Scopes").fill("read write")
    for grant in GRANT_TYPES:
        await page.get_by_label(grant, exact=True).set_checked(grant == "client_credentials")
    await page.get_by_label("Confidential").check()
    await page.get_by_role("button", name="Create client").click()
    await expect(page.get_by_role("heading", name="Client created: Payroll export")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text("It cannot be shown again")
    client_id = await page.locator("#client-id").input_value()
    secret = await page.locator("#client-secret").input_value()
    assert secret.startswith("tsv_cs_") and len(secret) > 40
    await page.screenshot(path=artifacts / "console-new-secret.png", full_page=True)

    # The Copy button puts the secret on the clipboard (127.0.0.1 is a secure context).
    await page.locator("button[data-copy=client-id]").click()
    assert await page.evaluate("navigator.clipboard.readText()") == client_id
    copy = page.locator("button[data-copy=client-secret]")
    await copy.click()
    await expect(copy).to_have_text("Copied")
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied == secret

    stored = (await live_server.admin("GET", f"/admin/clients/{client_id}")).json()
    assert stored["name"] == "Payroll export"
    assert stored["token_endpoint_auth_method"] == "client_secret_basic"
    assert stored["redirect_uris"] == ["https://payroll.example.com/callback"]
    assert stored["scopes"] == ["read", "write"] and stored["grant_types"] == ["client_credentials"]

    # The copied secret gets a token over plain HTTP.
    first = await token(live_server, client_id, copied)
    assert first.status_code == 200, first.text
    first_token = first.json()["access_token"]

    # A reload re-posts the form: no second client, and no secret.
    html = await travel(page, page.reload)
    assert secret not in html
    assert path_of(page) == "/admin" and query_of(page) == {"done": ["resubmitted"]}
    await expect(page.get_by_role("status")).to_contain_text("cannot be shown again")
    assert await total_clients(live_server) == 2
    for move in (page.go_back, page.go_forward, page.go_back, page.go_forward):
        assert secret not in await travel(page, move)
    assert await total_clients(live_server) == 2

    # Rotate on the client page: the old secret is refused, the new one works.
    await page.goto(f"{live_server.url}/admin")
    await page.get_by_role("link", name="Payroll export").click()
    await page.wait_for_url(f"{live_server.url}/admin/console/clients/{client_id}")
    for move in (page.go_back, page.go_forward):  # history past the secret page
        assert secret not in await travel(page, move)
    await page.get_by_role("button", name="Rotate secret").click()
    await expect(page.get_by_role("heading", name="New secret: Payroll export")).to_be_visible()
    rotated = await page.locator("#client-secret").input_value()
    assert rotated != secret and rotated.startswith("tsv_cs_")
    old = await token(live_server, client_id, secret)
    assert old.status_code == 401 and old.json()["error"] == "invalid_client"
    second = await token(live_server, client_id, rotated)
    assert second.status_code == 200, second.text
    html = await travel(page, page.reload)  # no second rotation, no secret
    assert rotated not in html and secret not in html
    assert path_of(page) == f"/admin/console/clients/{client_id}"
    assert query_of(page) == {"done": ["resubmitted"]}
    assert (await token(live_server, client_id, rotated)).status_code == 200
    for move in (page.go_back, page.go_forward):
        html = await travel(page, move)
        assert rotated not in html and secret not in html

    # Rename: the table shows the new name.
    await page.goto(f"{live_server.url}/admin/console/clients/{client_id}")
    await page.get_by_role("textbox", name="Name", exact=True).fill("Payroll export (2025)")
    await page.get_by_role("button", name="Rename").click()
    await expect(page.get_by_role("status")).to_have_text("The client was renamed.")
    await expect(page.get_by_role("heading", name="Payroll export (2025)", exact=True)).to_be_visible()
    await page.get_by_role("link", name="Clients", exact=True).click()
    await page.wait_for_url(f"{live_server.url}/admin")
    names = await table_names(page)
    assert "Payroll export (2025)" in names and "Payroll export" not in names

    # Configuration: the next token's expires_in follows the access TTL.
    await page.get_by_role("link", name="Payroll export (2025)").click()
    await page.get_by_label("Access token lifetime, seconds").fill("1234")
    await page.get_by_role("button", name="Save configuration").click()
    await expect(page.get_by_role("status")).to_have_text(
        "The configuration was saved. New tokens follow it at once.")
    await expect(page.get_by_label("Access token lifetime, seconds")).to_have_value("1234")
    await page.locator("#config-h").scroll_into_view_if_needed()
    await page.screenshot(path=artifacts / "console-config.png", full_page=True)
    third = await token(live_server, client_id, rotated)
    assert third.status_code == 200, third.text
    assert third.json()["expires_in"] == 1234
    third_token = third.json()["access_token"]

    # The live panel: four tokens issued (first, second, the check after the reload, third) and
    # one failed authentication (the old secret) in the last hour, brought in by the page's own
    # polling: the page was rendered before the third token.
    await page.wait_for_function(
        "() => document.getElementById('usage-issued').textContent.trim() === '4'",
        timeout=PANEL_WAIT_MS)
    await expect(page.locator("#usage-failed")).to_have_text("1")
    await page.reload()
    await expect(page.locator("#usage-issued")).to_have_text("4")

    # Revoke, with the confirmation: every token of the client dies at once.
    for live_token in (first_token, third_token):
        assert await introspect(live_server, observer, live_token)
    revoke = page.get_by_role("button", name="Revoke client")
    await revoke.click()  # the box is not ticked: the browser does not send the form
    assert path_of(page) == f"/admin/console/clients/{client_id}"
    assert await total_clients(live_server) == 2
    await page.get_by_label("I understand that every token of this client stops working").check()
    await revoke.click()
    await page.wait_for_url(f"{live_server.url}/admin?done=revoked")
    await expect(page.get_by_role("status")).to_have_text(
        "The client was revoked. Every token it held stopped working.")
    assert await table_names(page) == ["Observer"]
    for dead in (first_token, second.json()["access_token"], third_token):
        assert not await introspect(live_server, observer, dead)
    assert (await token(live_server, client_id, rotated)).status_code == 401
    await page.goto(f"{live_server.url}/admin/console/clients/{client_id}")
    await expect(page.get_by_role("heading", name="No such client")).to_be_visible()

    # The running service wrote one audit line per action, naming the client; never a secret.
    output = await logged(live_server, *(f"console action={action} client={client_id} " for action in (
        "client.create", "client.rotate-secret", "client.rename", "client.configure", "client.revoke")))
    for action in ("client.create", "client.rotate-secret"):
        assert output.count(f"console action={action} client={client_id} ") == 1
    assert secret not in output and rotated not in output and ADMIN_KEY not in output


# -- the table -----------------------------------------------------------------------------


async def test_a_private_key_jwt_client_from_the_new_client_form(live_server: Service,
                                                                  page: Page) -> None:
    """RFC 7523: the form's method select and JWKS box make a client with keys and no secret,
    and an assertion signed with the key gets a token."""
    key = Jwk.generate(alg="ES256", kid="browser-1")
    jwks = {"keys": [key.public_jwk().to_dict()]}
    await sign_in(page, live_server)
    await page.get_by_role("link", name="New client").click()
    await page.wait_for_url(f"{live_server.url}/admin/console/clients/new")
    await page.get_by_label("Name").fill("Key-based batch")
    for grant in GRANT_TYPES:
        await page.get_by_label(grant, exact=True).set_checked(grant == "client_credentials")
    await page.get_by_label("Confidential").check()
    await page.get_by_label("Client authentication").select_option("private_key_jwt")
    await page.get_by_label("JWKS").fill(json.dumps(jwks))
    await page.get_by_role("button", name="Create client").click()
    await expect(page.get_by_role("heading", name="Client created: Key-based batch")).to_be_visible()
    assert await page.locator("#client-secret").count() == 0
    client_id = await page.locator("#client-id").input_value()
    stored = (await live_server.admin("GET", f"/admin/clients/{client_id}")).json()
    assert stored["token_endpoint_auth_method"] == "private_key_jwt" and stored["jwks"] == jwks
    now = int(time.time())
    assertion = Jwt.sign({"iss": client_id, "sub": client_id, "aud": live_server.url,
                          "exp": now + 60, "jti": f"browser-{now}"}, key=key, alg="ES256")
    async with live_server.http() as http:
        resp = await http.post("/oauth/token", data={
            "grant_type": "client_credentials", "client_assertion": str(assertion),
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    assert resp.status_code == 200, resp.text


async def test_sort_search_and_last_used(live_server: Service, page: Page, artifacts: Path) -> None:
    made: dict[str, dict[str, Any]] = {}
    for name, fields in (
        ("delta Mobile", {"token_endpoint_auth_method": "none", "grant_types": ["authorization_code"],
                          "redirect_uris": ["com.example.delta:/cb", "http://127.0.0.1:8765/cb"]}),
        ("Alpha Payments", {"grant_types": ["client_credentials"]}),
        ("charlie CRM", {"grant_types": ["client_credentials", "password", "refresh_token"]}),
        ("Bravo Ledger", {"grant_types": ["authorization_code", "refresh_token"],
                          "redirect_uris": ["https://ledger.example.com/oauth/callback"]}),
        ("Echo Reports", {"grant_types": ["client_credentials"]}),
    ):
        made[name] = await live_server.create_client(name=name, **fields)
    # Alpha gets a token, which the live server writes down at its next flush (within 5 s).
    alpha = made["Alpha Payments"]
    assert (await token(live_server, alpha["client_id"], alpha["client_secret"])).status_code == 200
    await wait_flushed(live_server, alpha["client_id"])

    await sign_in(page, live_server)
    await expect(page.locator("h1 .count")).to_have_text("5")
    # Newest first by default (created_at has whole seconds, so these five may tie).
    await expect(page.get_by_role("link", name="Created ▼")).to_be_visible()
    assert sorted(await table_names(page)) == sorted(made)

    by_name = ["Alpha Payments", "Bravo Ledger", "charlie CRM", "delta Mobile", "Echo Reports"]
    await page.get_by_role("link", name="Name", exact=True).click()
    await page.wait_for_url("**/admin?sort=name&dir=asc")
    assert await table_names(page) == by_name  # case does not matter
    await page.get_by_role("link", name="Name ▲").click()
    await page.wait_for_url("**/admin?sort=name&dir=desc")
    assert await table_names(page) == by_name[::-1]

    await page.get_by_role("link", name="Last used", exact=True).click()
    await page.wait_for_url("**/admin?sort=used&dir=desc")
    assert (await table_names(page))[0] == "Alpha Payments"
    rows = page.locator("tbody tr")
    used_at = time.gmtime(await wait_flushed(live_server, alpha["client_id"]) / 1000)
    await expect(rows.nth(0).locator("td").nth(6)).to_have_text(time.strftime("%Y-%m-%d %H:%M UTC", used_at))
    for n in range(1, 5):
        await expect(rows.nth(n).locator("td").nth(6)).to_have_text("never")
    await page.get_by_role("link", name="Last used ▼").click()
    await page.wait_for_url("**/admin?sort=used&dir=asc")
    assert (await table_names(page))[-1] == "Alpha Payments"

    await page.get_by_role("link", name="Name", exact=True).click()
    await page.wait_for_url("**/admin?sort=name&dir=asc")
    await page.screenshot(path=artifacts / "console-table.png", full_page=True)
    bravo = rows.nth(1)
    await expect(bravo.locator("td").nth(2)).to_have_text("confidential")
    await expect(bravo.locator("td").nth(3)).to_have_text("authorization_code, refresh_token")
    await expect(bravo.locator("td").nth(4)).to_have_text("https://ledger.example.com/oauth/callback")
    await expect(bravo.locator("td.id input")).to_have_value(made["Bravo Ledger"]["client_id"])
    await expect(rows.nth(3).locator("td").nth(2)).to_have_text("public")

    search = page.get_by_label("Search by name (beginning) or client id")
    # By the beginning of the name, whatever its case.
    await search.fill("CHAR")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url("**/admin?q=CHAR**")
    assert await table_names(page) == ["charlie CRM"]
    await expect(search).to_have_value("CHAR")
    await expect(page.get_by_role("link", name="Name ▲")).to_be_visible()  # matches come by name
    # By the exact client id.
    await search.fill(made["Bravo Ledger"]["client_id"])
    await search.press("Enter")
    await page.wait_for_url(f"**q={made['Bravo Ledger']['client_id']}**")
    assert await table_names(page) == ["Bravo Ledger"]
    # Nothing else: not the middle of a name.
    await search.fill("Payments")
    await search.press("Enter")
    await page.wait_for_url("**q=Payments**")
    assert await table_names(page) == []
    await expect(page.locator("tbody")).to_contain_text("No client matches “Payments”.")


# -- users ---------------------------------------------------------------------------------


async def test_users(live_server: Service, page: Page) -> None:
    app = await live_server.create_client(name="Mobile app", grant_types=["password"])
    await sign_in(page, live_server)
    await page.get_by_role("link", name="Users").click()
    await page.wait_for_url(f"{live_server.url}/admin/console/users")

    finder = page.get_by_label("Find a user by username")
    await finder.fill("carol")
    await page.get_by_role("button", name="Find").click()
    await expect(page.get_by_text("No user is called “carol”.")).to_be_visible()

    # Create (not verified yet).
    await page.get_by_label("Username", exact=True).fill("carol")
    await page.get_by_label("Password (8 characters or more)").fill("first password")
    await page.get_by_role("button", name="Create user").click()
    await expect(page.get_by_role("status")).to_have_text("The user was created.")
    panel = page.locator("section.panel")
    await expect(panel.get_by_role("heading", name="carol")).to_be_visible()
    await expect(panel.locator("dd").first).to_have_text("no")
    first = await password_grant(live_server, app, "carol", "first password")
    assert first.status_code == 200, first.text
    carol_token = first.json()["access_token"]

    # Verify.
    await panel.get_by_role("button", name="Verify").click()
    await expect(page.get_by_role("status")).to_have_text("The user is now verified.")
    await expect(panel.locator("dd").first).to_have_text("yes")
    assert (await live_server.admin("GET", "/admin/users/carol")).json()["verified"] is True

    # Locked by wrong passwords (five by default), then unlocked.
    statuses = [(await password_grant(live_server, app, "carol", "wrong password")).status_code
                for _ in range(5)]
    assert statuses == [400, 400, 400, 400, 423]
    assert (await password_grant(live_server, app, "carol", "first password")).status_code == 423
    await finder.fill("carol")
    await page.get_by_role("button", name="Find").click()
    await expect(panel.locator("dd").nth(1)).to_have_text("5 (locked)")
    await panel.get_by_role("button", name="Unlock").click()
    await expect(page.get_by_role("status")).to_have_text("The user was unlocked.")
    await expect(panel.locator("dd").nth(1)).to_have_text("0")
    await expect(panel.get_by_role("button", name="Unlock")).to_have_count(0)
    assert (await password_grant(live_server, app, "carol", "first password")).status_code == 200

    # Reset the password: the new one works, the old one no longer.
    await panel.get_by_label("New password").fill("second password")
    await panel.get_by_role("button", name="Set password").click()
    await expect(page.get_by_role("status")).to_have_text("The password was changed.")
    assert (await password_grant(live_server, app, "carol", "second password")).status_code == 200
    old = await password_grant(live_server, app, "carol", "first password")
    assert old.status_code == 400 and old.json()["error"] == "invalid_grant"

    # Delete, with the confirmation: the user and their tokens are gone.
    assert await introspect(live_server, app, carol_token)
    await panel.get_by_label("Delete this user and end their tokens").check()
    await panel.get_by_role("button", name="Delete user").click()
    await expect(page.get_by_role("status")).to_have_text(
        "The user was deleted, and every token issued to them ended.")
    assert not await introspect(live_server, app, carol_token)
    assert (await live_server.admin("GET", "/admin/users/carol")).status_code == 404
    await finder.fill("carol")
    await page.get_by_role("button", name="Find").click()
    await expect(page.get_by_text("No user is called “carol”.")).to_be_visible()
    assert (await password_grant(live_server, app, "carol", "second password")).status_code == 400
