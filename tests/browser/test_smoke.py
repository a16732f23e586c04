"""The browser test set-up itself: chromium reaches the live service, redirects to a client's
redirect URI are caught, and each test starts with an empty store."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.async_api import Page

from tests.browser.conftest import Callback, NewCallback
from tests.support.service import Service


async def test_chromium_reads_the_live_service(live_server: Service, page: Page,
                                               artifacts: Path) -> None:
    resp = await page.goto(f"{live_server.url}/healthz")
    assert resp is not None and resp.status == 200
    assert json.loads(await page.inner_text("body")) == {"status": "ok"}

    resp = await page.goto(f"{live_server.url}/.well-known/oauth-authorization-server")
    assert resp is not None and resp.status == 200
    assert resp.headers["content-type"].startswith("application/json")
    meta = json.loads(await page.inner_text("body"))
    assert meta == await resp.json()
    assert meta["issuer"] == live_server.url
    assert meta["token_endpoint"] == f"{live_server.url}/oauth/token"
    shot = artifacts / "smoke-metadata.png"
    await page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")


async def test_callback_shows_the_query(page: Page, callback: Callback) -> None:
    assert callback.uri.startswith("http://127.0.0.1:") and callback.uri.endswith("/callback")
    await page.goto(f"{callback.uri}?code=x&state=y")
    assert await callback.wait() == {"code": "x", "state": "y"}
    assert await page.inner_text("#query") == "code=x&state=y"
    assert callback.hits == [f"{callback.uri}?code=x&state=y"]
    missing = await page.goto(callback.uri.replace("/callback", "/favicon.ico"))
    assert missing is not None and missing.status == 404
    assert len(callback.hits) == 1


@pytest.fixture
def redirector() -> Iterator[str]:
    """A real HTTP server whose every GET answers 302 to the URL in its own query's `to`."""

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", self.path.split("?to=", 1)[1].replace("%26", "&"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Redirect) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}/"
        server.shutdown()
        thread.join(5)


async def test_callback_catches_a_server_redirect(page: Page, callback: Callback,
                                                  new_callback: NewCallback, redirector: str) -> None:
    """As the authorization endpoint will: a 302 from another server to the redirect URI."""
    other = new_callback("/elsewhere")
    assert other.uri.endswith("/elsewhere") and other.uri != callback.uri
    await page.goto(f"{redirector}?to={callback.uri}?error=access_denied%26state=s1")
    assert await callback.wait() == {"error": "access_denied", "state": "s1"}
    assert other.hits == []


async def test_admin_helpers_create_in_the_live_service(live_server: Service,
                                                        callback: Callback) -> None:
    client = await live_server.create_client(redirect_uris=[callback.uri],
                                             grant_types=["authorization_code", "refresh_token"])
    assert client["client_secret"] and client["redirect_uris"] == [callback.uri]
    user = await live_server.create_user("bob", "correct horse")
    assert user["username"] == "bob"
    listed = await live_server.admin("GET", "/admin/clients")
    assert listed.status_code == 200 and listed.json()["total"] == 1


async def test_each_test_starts_with_an_empty_store(live_server: Service) -> None:
    listed = await live_server.admin("GET", "/admin/clients")
    assert listed.status_code == 200 and listed.json()["total"] == 0
    assert (await live_server.admin("GET", "/admin/users/bob")).status_code == 404
