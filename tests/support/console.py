"""A signed-in session of the admin console, driven over HTTP with the cookie sent by hand, so
a test decides what each request carries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.config import ADMIN_KEY

LOGIN = "/admin/console/login"
COOKIE = "tsv_admin"


def hidden(html: str, name: str) -> str:
    """The value of a form's hidden input (csrf, once)."""
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found is not None, f"no {name} field"
    return found.group(1)


def table_ids(html: str) -> list[str]:
    return re.findall(r'<a href="/admin/console/clients/([^"/]+)">', html)


@dataclass
class Console:
    """A signed-in admin: the session cookie, sent by hand so each test controls it."""

    http: httpx.AsyncClient
    cookie: str
    csrf: str = ""
    seen: list[httpx.Response] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{COOKIE}={self.cookie}"}

    async def get(self, url: str) -> httpx.Response:
        resp = await self.http.get(url, headers=self.headers)
        self.seen.append(resp)
        return resp

    async def post(self, url: str, data: dict[str, str], **kwargs: Any) -> httpx.Response:
        resp = await self.http.post(url, data=data, headers=self.headers, **kwargs)
        self.seen.append(resp)
        return resp

    async def follow(self, resp: httpx.Response) -> httpx.Response:
        """GET where a 303 points."""
        assert resp.status_code == 303, resp.text
        return await self.get(resp.headers["location"])

    async def act(self, url: str, **form: str) -> httpx.Response:
        """A form sent as the console's page sends it, with this session's CSRF token."""
        return await self.post(url, {"csrf": self.csrf, **form})

    async def nonce(self, url: str) -> str:
        """A fresh once-only nonce, as the page at `url` (new client form, client page) has it."""
        return hidden((await self.get(url)).text, "once")


async def sign_in_csrf(http: httpx.AsyncClient) -> str:
    """The sign-in form's CSRF token, from the page as a browser gets it (the visitor cookie it
    is bound to stays in `http`'s jar)."""
    page = await http.get(LOGIN)
    assert page.status_code == 200, page.text
    return hidden(page.text, "csrf")


async def post_sign_in(http: httpx.AsyncClient, key: str = ADMIN_KEY) -> httpx.Response:
    """The sign-in form sent as the console's page sends it: its CSRF token, then `key`."""
    return await http.post(LOGIN, data={"csrf": await sign_in_csrf(http), "admin_key": key})


async def sign_in(http: httpx.AsyncClient) -> Console:
    resp = await post_sign_in(http)
    assert resp.status_code == 303 and resp.headers["location"] == "/admin"
    cookie = resp.cookies[COOKIE]
    http.cookies.clear()  # sent by hand from now on
    console = Console(http, cookie)
    page = await console.get("/admin")
    assert page.status_code == 200
    console.csrf = hidden(page.text, "csrf")
    return console
