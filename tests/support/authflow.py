"""Helpers for the authorization-code tests: a browser's walk through the login and consent
forms, PKCE values, and the checks every page and redirect must pass."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import redis

from tests.support.api import new_client
from tests.support.config import ISSUER
from tests.support.stored import CODEC
from tokensvc.store import keys
from tokensvc.tokens import CODE

PASSWORD = "correct horse"
# Registered for the test applications; CB is the one used unless a test says otherwise.
CB = "https://app.example/cb"
CB_LOOPBACK = "http://127.0.0.1:8080/callback"
CB_QUERY = "https://app.example/cb?tenant=7"
# RFC 7636 appendix B.
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
FORM_EXPIRED = "The form has expired or did not come from this site. Go back and try again."

Client = dict[str, Any]
Query = dict[str, str]

_FORM = re.compile(r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', re.S)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def public_app(http: httpx.AsyncClient, **fields: Any) -> Client:
    """A public client (PKCE required) with the authorization_code and refresh_token grants."""
    return await new_client(http, **{
        "name": "Photo app", "website": "https://photos.example", "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "redirect_uris": [CB, CB_LOOPBACK, CB_QUERY], **fields})


async def web_app(http: httpx.AsyncClient, **fields: Any) -> Client:
    """A confidential client with the authorization_code and refresh_token grants."""
    return await new_client(http, **{
        "name": "Web app", "grant_types": ["authorization_code", "refresh_token"],
        "redirect_uris": [CB, CB_LOOPBACK, CB_QUERY], **fields})


def request_params(client: Client, **over: str | None) -> Query:
    """An authorization request with S256 PKCE and state; None drops a parameter."""
    params: dict[str, str | None] = {
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": CB,
        "scope": "read write", "state": "xyz", "code_challenge": CHALLENGE,
        "code_challenge_method": "S256", **over}
    return {name: value for name, value in params.items() if value is not None}


async def authorize(http: httpx.AsyncClient, client: Client, path: str | None = None,
                    **over: str | None) -> httpx.Response:
    return await http.get(path or "/oauth/authorize", params=request_params(client, **over))


@contextlib.asynccontextmanager
async def browser(http: httpx.AsyncClient, base_url: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """Another browser (its own cookie jar) on the same app."""
    app = http.app  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=base_url or str(http.base_url)) as other:
        yield other


def text(resp: httpx.Response) -> str:
    return html.unescape(resp.text)


def assert_page(resp: httpx.Response, status: int) -> None:
    """An HTML page of the service: never a redirect, never framed, never cached."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert "location" not in resp.headers
    assert resp.headers["x-frame-options"] == "DENY"
    csp = resp.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"


def assert_error_page(resp: httpx.Response, status: int, message: str) -> None:
    assert_page(resp, status)
    assert f'<p class="error" role="alert">{message}</p>' in text(resp)
    assert "<form" not in resp.text


def is_login_page(resp: httpx.Response) -> bool:
    return 'name="password"' in resp.text and 'value="login"' in resp.text


def is_consent_page(resp: httpx.Response) -> bool:
    return 'value="approve"' in resp.text and 'value="deny"' in resp.text


def forms(resp: httpx.Response) -> dict[str, Query]:
    """Each form of the page by its action, with its hidden fields (unescaped)."""
    return {action: {name: html.unescape(value) for name, value in _HIDDEN.findall(body)}
            for action, body in _FORM.findall(resp.text)}


def hidden_fields(resp: httpx.Response, action: str = "/oauth/authorize") -> list[tuple[str, str]]:
    """The hidden fields of the page's form for `action`, in order, a repeated name (RFC 8707's
    `resource`) as often as it is there."""
    for target, body in _FORM.findall(resp.text):
        if target == action:
            return [(name, html.unescape(value)) for name, value in _HIDDEN.findall(body)]
    raise AssertionError(f"no form for {action}: {resp.text}")


def _submitted(hidden: list[tuple[str, str]], over: dict[str, str | None]) -> list[tuple[str, str]]:
    """What a browser posts: the hidden fields, `over` replacing (None: dropping) a name's."""
    return [(k, v) for k, v in hidden if k not in over] + [(k, v) for k, v in over.items()
                                                             if v is not None]


def csrf_of(resp: httpx.Response) -> str:
    found = _CSRF.search(resp.text)
    assert found is not None, resp.text
    return found.group(1)


def redirected(resp: httpx.Response, status: int = 302, to: str = CB) -> Query:
    """The query added to the registered redirect URI (each name once)."""
    assert resp.status_code == status, resp.text
    location = resp.headers["location"]
    assert location.startswith(to + ("&" if "?" in to else "?")), location
    assert resp.headers["cache-control"] == "no-store"
    pairs = parse_qsl(urlsplit(location).query, keep_blank_values=True, strict_parsing=True)
    query = dict(pairs)
    assert len(query) == len(pairs), location
    for name, value in parse_qsl(urlsplit(to).query):
        assert query.pop(name) == value
    return query


def assert_error_redirect(resp: httpx.Response, error: str, description: str, *, status: int = 302,
                          state: str | None = "xyz", to: str = CB) -> None:
    """RFC 6749 §4.1.2.1 at the redirect URI, with RFC 9207's iss."""
    expected = {"error": error, "error_description": description, "iss": ISSUER}
    if state is not None:
        expected["state"] = state
    assert redirected(resp, status, to) == expected


async def sign_in(http: httpx.AsyncClient, login_page: httpx.Response, username: str = "alice",
                  password: str = PASSWORD, **over: str | None) -> httpx.Response:
    """Submit the login form of `login_page` as a browser would; None drops a field."""
    assert is_login_page(login_page), login_page.text
    fields = _submitted(hidden_fields(login_page), {"username": username, "password": password, **over})
    return await http.post("/oauth/authorize", content=urlencode(fields),
                           headers={"content-type": "application/x-www-form-urlencoded"})


async def decide(http: httpx.AsyncClient, consent_page: httpx.Response, action: str | None = "approve",
                 **over: str | None) -> httpx.Response:
    """Press Allow (or Deny) on the consent page; None drops a field."""
    assert is_consent_page(consent_page), consent_page.text
    fields = _submitted(hidden_fields(consent_page), {"action": action, **over})
    return await http.post("/oauth/authorize", content=urlencode(fields),
                           headers={"content-type": "application/x-www-form-urlencoded"})


async def get_code(http: httpx.AsyncClient, client: Client, *, username: str = "alice",
                   to: str = CB, **over: str | None) -> Query:
    """Walk the pages (login and consent when shown) to the redirect; its query."""
    over.setdefault("redirect_uri", to)
    resp = await authorize(http, client, **over)
    status = 302
    if resp.status_code == 200 and is_login_page(resp):
        resp = await sign_in(http, resp, username)
        status = 303
    if resp.status_code == 200 and is_consent_page(resp):
        resp = await decide(http, resp)
        status = 303
    query = redirected(resp, status, to)
    assert set(query) == {"code", "iss"} | ({"state"} if "state" in request_params(client, **over) else set())
    assert query["iss"] == ISSUER
    assert CODEC.parse(query["code"], CODE) is not None
    return query


async def redeem(http: httpx.AsyncClient, client: Client, code: str, **over: str | None) -> httpx.Response:
    """POST the code to the token endpoint: the secret by Basic when the client has one."""
    data: dict[str, str | None] = {"grant_type": "authorization_code", "code": code, "redirect_uri": CB,
                                   "code_verifier": VERIFIER, **over}
    body = {k: v for k, v in data.items() if v is not None}
    secret = client.get("client_secret")
    if secret is None:
        body.setdefault("client_id", client["client_id"])
        return await http.post("/oauth/token", data=body)
    return await http.post("/oauth/token", data=body, auth=(client["client_id"], secret))


def code_key(code: str) -> str:
    parsed = CODEC.parse(code, CODE)
    assert parsed is not None
    return keys.token(parsed.grant_id, parsed.digest)


def session_keys(r: redis.Redis) -> list[bytes]:
    return list(r.scan_iter(match="tsv:{s:*}:session", count=1000))


def set_cookie(resp: httpx.Response, name: str) -> str | None:
    """The Set-Cookie header for `name`, if the response sets it."""
    for header in resp.headers.get_list("set-cookie"):
        if header.startswith(name + "="):
            return header
    return None


def cookie_attrs(header: str) -> dict[str, str]:
    """The attributes of a Set-Cookie header, names lower-cased."""
    out: dict[str, str] = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        out[name.lower()] = value
    return out
