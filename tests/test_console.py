"""The admin console over HTTP: sign-in and its session cookie, CSRF on every form, security
headers, the audit log, where secrets and the admin key may (not) appear, sign-out, paging, and
a table of 10,000 clients that answers as fast as one of 10."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import redis
from jwskate import Jwk

from tests.support.api import cc_token, new_client, new_user
from tests.support.apps import AppFactory
from tests.support.config import ADMIN_KEY, make_settings
from tests.support.console import (
    COOKIE,
    LOGIN,
    Console,
    hidden,
    post_sign_in,
    sign_in,
    sign_in_csrf,
    table_ids,
)
from tests.support.redis_servers import RedisServer
from tests.support.stored import data_keys
from tokensvc.app import create_app
from tokensvc.hashing import Hasher
from tokensvc.models import Client
from tokensvc.store import keys
from tokensvc.store.records import client_name_member
from tokensvc.tokens import digest

LOGOUT = "/admin/console/logout"
NEW = "/admin/console/clients/new"
CREATE = "/admin/console/clients"
USERS = "/admin/console/users"
AUDIT = "tokensvc.audit"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FORM_EXPIRED = "The form has expired or did not come from this console."


def clients_page(client_id: str) -> str:
    return f"/admin/console/clients/{client_id}"


def shown_secret(html: str) -> str:
    found = re.search(r'id="client-secret" value="([^"]+)"', html)
    assert found is not None, "no secret on the page"
    return found.group(1)


def shown_id(html: str) -> str:
    found = re.search(r'id="client-id" value="([^"]+)"', html)
    assert found is not None, "no client id on the page"
    return found.group(1)


def snapshot(r: redis.Redis) -> dict[bytes, Any]:
    """Every key and its value (not its TTL: reading the session restarts its idle timeout)."""
    out: dict[bytes, Any] = {}
    for key in data_keys(r):
        kind = r.type(key)
        if kind == b"string":
            out[key] = r.get(key)
        elif kind == b"hash":
            out[key] = r.hgetall(key)
        elif kind == b"zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[key] = r.smembers(key)
        else:
            out[key] = (kind, r.dump(key))
    return out


def everything_in(r: redis.Redis) -> bytes:
    """All of Redis, keys and values, as one byte string to search."""
    return b"\n".join(key + b"=" + repr(value).encode() for key, value in snapshot(r).items())


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [rec.getMessage() for rec in caplog.records if rec.name == AUDIT]


def assert_console_headers(resp: httpx.Response) -> None:
    assert resp.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["content-type"].startswith("text/html")


# -- sign-in -------------------------------------------------------------------------------


CONSOLE_PAGES = ["/admin", "/admin?sort=name&q=x", NEW, clients_page("someid"), USERS, f"{USERS}?q=alice"]


async def test_unauthenticated_pages_redirect_to_the_sign_in(http: httpx.AsyncClient) -> None:
    for url in CONSOLE_PAGES:
        resp = await http.get(url)
        assert resp.status_code == 303 and resp.headers["location"] == LOGIN, url
    # A cookie that is no session is no better.
    for cookie in ("nonsense", "x" * 101, secrets.token_urlsafe(32)):
        resp = await http.get("/admin", headers={"Cookie": f"{COOKIE}={cookie}"})
        assert resp.status_code == 303 and resp.headers["location"] == LOGIN
    usage = await http.get(f"{clients_page('someid')}/usage")
    assert usage.status_code == 401 and usage.content == b""
    login = await http.get(LOGIN)
    assert login.status_code == 200 and 'name="admin_key"' in login.text
    assert 'type="password"' in login.text
    assert_console_headers(login)


@pytest.mark.parametrize("key", ["", "wrong", ADMIN_KEY[:-1], ADMIN_KEY + "0", ADMIN_KEY.upper(),
                                 f" {ADMIN_KEY}"])
async def test_a_wrong_key_gets_a_401_page_and_no_cookie(http: httpx.AsyncClient, redis_db: redis.Redis,
                                                         key: str) -> None:
    before = snapshot(redis_db)
    resp = await post_sign_in(http, key)
    assert resp.status_code == 401
    assert "That is not the admin key." in resp.text
    assert "set-cookie" not in resp.headers and COOKIE not in http.cookies
    assert_console_headers(resp)
    if key:
        assert f'value="{key}"' not in resp.text  # what was typed is not sent back
    assert snapshot(redis_db) == before
    # The key in the URL instead of the form is no key at all.
    in_url = await http.post(f"{LOGIN}?{urlencode({'admin_key': ADMIN_KEY})}",
                             data={"csrf": await sign_in_csrf(http)})
    assert in_url.status_code == 401 and "set-cookie" not in in_url.headers


async def test_the_session_cookie(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    resp = await post_sign_in(http)
    assert resp.status_code == 303 and resp.headers["location"] == "/admin"
    [header] = resp.headers.get_list("set-cookie")
    name_value, *attributes = [part.strip() for part in header.split(";")]
    name, _, value = name_value.partition("=")
    assert name == COOKIE and len(value) >= 43  # 256 random bits
    flags = {attr.partition("=")[0].lower(): attr.partition("=")[2] for attr in attributes}
    assert flags == {"httponly": "", "path": "/admin", "samesite": "strict"}  # no Max-Age: a session cookie
    # Redis keeps a digest of the session id, never the id; with the idle timeout (30 min).
    stored = everything_in(redis_db)
    assert value.encode() not in stored
    session_key = keys.admin_session(digest(value))
    assert 0 < redis_db.pttl(session_key) <= 30 * 60 * 1000
    assert ADMIN_KEY.encode() not in stored


async def test_the_session_cookie_is_secure_behind_https(app_factory: AppFactory) -> None:
    async with app_factory(issuer="https://tokens.example") as http:
        page = await http.get(LOGIN)
        visitor, *flags = [part.strip() for part in page.headers["set-cookie"].split(";")]
        assert visitor.startswith("tsv_visitor=") and "Secure" in flags
        # A Secure cookie: httpx keeps it from this http:// test client, so it is sent by hand.
        resp = await http.post(LOGIN, data={"csrf": hidden(page.text, "csrf"), "admin_key": ADMIN_KEY},
                               headers={"Cookie": visitor})
        assert resp.status_code == 303
        attributes = [a.strip().lower() for a in resp.headers["set-cookie"].split(";")[1:]]
        assert sorted(attributes) == ["httponly", "path=/admin", "samesite=strict", "secure"]


SIGN_IN_FORGED = "The form has expired or did not come from this console. Sign in again."


async def test_a_cross_site_sign_in_is_refused(http: httpx.AsyncClient, redis_db: redis.Redis,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Login CSRF (RFC 9700 §4.4.1.8): a page elsewhere posts the admin key to the sign-in form
    from the victim's browser. Without the form's token, bound to this browser's visitor
    cookie, it opens no session: the form again, 403, nothing stored, no session cookie."""
    caplog.set_level(logging.INFO, logger=AUDIT)
    before = snapshot(redis_db)
    cross_site = {"Origin": "https://evil.example", "Referer": "https://evil.example/"}
    # The plainest forgery: the admin key, no token.
    plain = await http.post(LOGIN, data={"admin_key": ADMIN_KEY}, headers=cross_site)
    assert plain.status_code == 403 and COOKIE not in plain.headers.get("set-cookie", "")
    assert SIGN_IN_FORGED in plain.text
    mine = await sign_in_csrf(http)  # a token of this browser, to be misused below
    visitor = http.cookies["tsv_visitor"]
    http.cookies.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=http.app),  # type: ignore[attr-defined]
                                 base_url=str(http.base_url)) as attacker:
        theirs = await sign_in_csrf(attacker)  # the attacker's own pair: their cookie, not ours
    forged = [
        ({}, {"admin_key": ADMIN_KEY}),                                  # no token, no cookie
        ({"tsv_visitor": visitor}, {"admin_key": ADMIN_KEY}),            # the cookie, no token
        ({"tsv_visitor": visitor}, {"admin_key": ADMIN_KEY, "csrf": ""}),
        ({"tsv_visitor": visitor}, {"admin_key": ADMIN_KEY, "csrf": theirs}),
        ({}, {"admin_key": ADMIN_KEY, "csrf": mine}),                    # a token without its cookie
        ({"tsv_visitor": visitor}, {"admin_key": ADMIN_KEY, "csrf": mine + "x"}),
    ]
    for cookies, form in forged:
        jar = "; ".join(f"{k}={v}" for k, v in cookies.items())
        http.cookies.clear()  # only what this case sends
        resp = await http.post(LOGIN, data=form, headers={**cross_site, **({"Cookie": jar} if jar else {})})
        assert resp.status_code == 403, (cookies, form)
        assert SIGN_IN_FORGED in resp.text and 'name="admin_key"' in resp.text  # the form again
        assert_console_headers(resp)
        assert COOKIE not in resp.headers.get("set-cookie", "")
        # The form is shown again with a token of its own (and a visitor cookie when none came).
        assert re.search(r'name="csrf" value="[^"]{43}"', resp.text)
        assert ("tsv_visitor=" in resp.headers.get("set-cookie", "")) == (not cookies)
    assert snapshot(redis_db) == before
    assert not [k for k in redis_db.scan_iter(match="tsv:{a:*")]
    lines = audit_lines(caplog)
    assert lines == ["console action=sign-in-refused reason=csrf addr=127.0.0.1"] * (len(forged) + 1)
    # The same browser, with its cookie and its form's token, signs in.
    http.cookies.clear()
    resp = await http.post(LOGIN, data={"admin_key": ADMIN_KEY, "csrf": mine},
                           headers={"Cookie": f"tsv_visitor={visitor}"})
    assert resp.status_code == 303 and resp.headers["location"] == "/admin"
    assert resp.cookies[COOKIE]


async def test_sign_out_ends_the_session(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    console = await sign_in(http)
    session_key = keys.admin_session(digest(console.cookie))
    assert redis_db.exists(session_key)
    resp = await console.act(LOGOUT)
    assert resp.status_code == 303 and resp.headers["location"] == f"{LOGIN}?done=signed-out"
    gone = resp.headers["set-cookie"].lower()
    assert gone.startswith(f'{COOKIE}=""') and "max-age=0" in gone and "path=/admin" in gone
    assert not redis_db.exists(session_key)
    # The old cookie opens nothing any more, not even with its CSRF token.
    for url in CONSOLE_PAGES:
        old = await console.get(url)
        assert old.status_code == 303 and old.headers["location"] == LOGIN
    before = snapshot(redis_db)
    refused = await console.act(CREATE, name="after sign-out", once="x", grant_types="client_credentials")
    assert refused.status_code == 303 and refused.headers["location"] == LOGIN
    assert snapshot(redis_db) == before
    signed_out = await http.get(resp.headers["location"])
    assert "You are signed out." in signed_out.text


# -- CSRF ----------------------------------------------------------------------------------


@dataclass
class Scene:
    """A signed-in console with a client and two users to act on."""

    console: Console
    other_csrf: str  # a second session's token
    client_id: str
    redis: redis.Redis


@pytest.fixture
async def scene(http: httpx.AsyncClient, redis_db: redis.Redis) -> Scene:
    client = await new_client(http, name="Target", grant_types=["client_credentials", "password"])
    await new_user(http, "alice", verified=False)
    await new_user(http, "bob", verified=True)
    redis_db.set(keys.user_failures("alice"), 5)  # locked, for `unlock`
    other = await sign_in(http)
    console = await sign_in(http)
    assert other.csrf != console.csrf
    return Scene(console, other.csrf, client["client_id"], redis_db)


async def form_for(scene: Scene, name: str) -> tuple[str, dict[str, str]]:
    """Where the console posts `name`, and the form's fields but the CSRF token."""
    target = clients_page(scene.client_id)
    forms: dict[str, tuple[str, dict[str, str]]] = {
        "sign-out": (LOGOUT, {}),
        "create": (CREATE, {"name": "Created", "grant_types": "client_credentials", "type": "confidential"}),
        "rename": (target, {"action": "rename", "name": "Renamed"}),
        "edit": (target, {"action": "edit", "redirect_uris": "https://evil.example/cb", "scopes": "admin"}),
        "configure": (target, {"action": "configure", "access_token_ttl": "99999"}),
        "rotate": (target, {"action": "rotate"}),
        "authentication": (target, {"action": "authentication", "auth_method": "client_secret_post"}),
        "revoke": (target, {"action": "revoke", "confirm": "yes"}),
        "user-create": (USERS, {"action": "create", "username": "mallory", "password": "mallory password"}),
        "verify": (USERS, {"action": "verify", "username": "alice"}),
        "unverify": (USERS, {"action": "unverify", "username": "bob"}),
        "unlock": (USERS, {"action": "unlock", "username": "alice"}),
        "password": (USERS, {"action": "password", "username": "alice", "password": "a new password"}),
        "delete": (USERS, {"action": "delete", "username": "alice", "confirm": "yes"}),
    }
    url, fields = forms[name]
    if name == "create":
        fields["once"] = await scene.console.nonce(NEW)
    elif name == "rotate":
        fields["once"] = await scene.console.nonce(target)
    return url, fields


FORMS = ["sign-out", "create", "rename", "edit", "configure", "rotate", "authentication", "revoke",
         "user-create", "verify", "unverify", "unlock", "password", "delete"]


@pytest.mark.parametrize("name", FORMS)
async def test_every_form_needs_its_csrf_token(scene: Scene, name: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    console = scene.console
    url, fields = await form_for(scene, name)
    before = snapshot(scene.redis)
    attempts: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
        "missing": (url, fields, {}),
        "empty": (url, {**fields, "csrf": ""}, {}),
        "wrong": (url, {**fields, "csrf": secrets.token_hex(22)[:43]}, {}),
        "another session's": (url, {**fields, "csrf": scene.other_csrf}, {}),
        "truncated": (url, {**fields, "csrf": console.csrf[:-1]}, {}),
        "in the URL only": (f"{url}?{urlencode({'csrf': console.csrf})}", fields, {}),
        "repeated, last wrong": (url, {}, {"content": urlencode(
            [("csrf", console.csrf), *fields.items(), ("csrf", "x")]),
            "headers": {**console.headers, "Content-Type": "application/x-www-form-urlencoded"}}),
        "as multipart": (url, {**fields, "csrf": console.csrf},
                         {"files": {"unused": ("a.txt", b"x")}}),
    }
    for label, (target, data, extra) in attempts.items():
        if "content" in extra:
            resp = await console.http.post(target, **extra)
        else:
            resp = await console.post(target, data, **extra)
        assert resp.status_code == 403, f"{name} with a {label} CSRF token: {resp.status_code}"
        assert "Form expired" in resp.text and FORM_EXPIRED in resp.text
        assert_console_headers(resp)
        assert snapshot(scene.redis) == before, f"{name} with a {label} CSRF token changed Redis"
    assert audit_lines(caplog) == []
    # The session still works, and the same form with the right token goes through.
    assert (await console.get("/admin")).status_code == 200
    resp = await console.act(url, **fields)
    assert resp.status_code in (200, 303), resp.text
    assert "Form expired" not in resp.text
    assert snapshot(scene.redis) != before
    assert len(audit_lines(caplog)) == 1


async def test_revocation_needs_the_confirmation(scene: Scene) -> None:
    console = scene.console
    before = snapshot(scene.redis)
    for confirm in ({}, {"confirm": "no"}, {"confirm": ""}):
        resp = await console.act(clients_page(scene.client_id), action="revoke", **confirm)
        assert resp.status_code == 400 and "Tick the box to confirm the revocation." in resp.text
        resp = await console.act(USERS, action="delete", username="alice", **confirm)
        assert resp.status_code == 400 and "Tick the box to confirm the deletion." in resp.text
    assert snapshot(scene.redis) == before


async def test_the_client_page_shows_and_sets_introspection_and_resources(
        scene: Scene, http: httpx.AsyncClient) -> None:
    console, page = scene.console, clients_page(scene.client_id)
    shown = (await console.get(page)).text
    assert '<dd id="introspection">its own tokens only</dd>' in shown
    assert '<dd id="resources">any</dd>' in shown

    done = await console.act(page, action="configure", introspection="all")
    assert done.status_code == 303, done.text
    await console.act(page, action="edit", resources="https://b.example\nhttps://a.example")
    shown = (await console.get(page)).text
    assert "<dd id=\"introspection\">every client&#39;s tokens (a resource server)</dd>" in shown
    assert ('<dd id="resources"><code>https://a.example</code>, <code>https://b.example</code></dd>'
            in shown)
    doc = (await http.get(f"/admin/clients/{scene.client_id}", headers={
        "Authorization": f"Bearer {ADMIN_KEY}"})).json()
    assert doc["introspection"] == "all" and doc["resources"] == ["https://a.example", "https://b.example"]

    before = snapshot(scene.redis)
    refused = await console.act(page, action="edit", resources="not-a-uri")
    assert refused.status_code == 400
    assert "&#39;resources&#39;: &#39;not-a-uri&#39; is not an absolute URI" in refused.text
    refused = await console.act(page, action="configure", introspection="everyone")
    assert refused.status_code == 400 and "&#39;introspection&#39; must be" in refused.text
    assert snapshot(scene.redis) == before


async def test_the_client_page_shows_and_sets_the_access_token_format(
        scene: Scene, http: httpx.AsyncClient) -> None:
    """RFC 9068: the format the client's access tokens have, its own or the default."""
    console, page = scene.console, clients_page(scene.client_id)
    shown = (await console.get(page)).text
    assert '<dd id="access-token-format">opaque (the default)</dd>' in shown
    assert '<option value="default" selected>Default (opaque)</option>' in shown
    done = await console.act(page, action="configure", access_token_format="jwt")
    assert done.status_code == 303, done.text
    shown = (await console.get(page)).text
    assert '<dd id="access-token-format">JWT (RFC 9068)</dd>' in shown
    assert '<option value="jwt" selected>' in shown
    doc = (await http.get(f"/admin/clients/{scene.client_id}", headers={
        "Authorization": f"Bearer {ADMIN_KEY}"})).json()
    assert doc["access_token_format"] == "jwt"
    done = await console.act(page, action="configure", access_token_format="default")
    assert done.status_code == 303
    doc = (await http.get(f"/admin/clients/{scene.client_id}", headers={
        "Authorization": f"Bearer {ADMIN_KEY}"})).json()
    assert doc["access_token_format"] is None


# -- client authentication methods (RFC 7523) ------------------------------------------------

KEY = Jwk.generate(alg="ES256", kid="console-1")
JWKS = {"keys": [KEY.public_jwk().to_dict()]}


async def test_a_private_key_jwt_client_is_created_with_its_jwks(http: httpx.AsyncClient,
                                                                 redis_db: redis.Redis) -> None:
    console = await sign_in(http)
    base = {"name": "Batch job", "grant_types": "client_credentials", "type": "confidential",
            "auth_method": "private_key_jwt"}
    before = snapshot(redis_db)
    for jwks, error in ((orjson.dumps({"keys": [KEY.to_dict()]}).decode(),
                         "&#39;jwks&#39; must hold public keys only: a key has the private member(s) d."),
                        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}',
                         "a symmetric (oct) key is a shared secret"),
                        ("{not json", "The JWKS is not valid JSON"),
                        ("", "private_key_jwt needs &#39;jwks&#39;")):
        resp = await console.act(CREATE, once=await console.nonce(NEW), jwks=jwks, **base)
        assert resp.status_code == 400 and error in resp.text, resp.text
    after_refusals = snapshot(redis_db)
    assert {k: v for k, v in after_refusals.items() if b":once" not in k and b":admin" not in k} == {
        k: v for k, v in before.items() if b":once" not in k and b":admin" not in k}
    resp = await console.act(CREATE, once=await console.nonce(NEW), jwks=orjson.dumps(JWKS).decode(),
                             **base)
    assert resp.status_code == 200, resp.text
    assert 'id="client-secret"' not in resp.text
    assert "authenticates with private_key_jwt: it has no secret" in resp.text
    client_id = shown_id(resp.text)
    doc = (await http.get(f"/admin/clients/{client_id}",
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"})).json()
    assert doc["token_endpoint_auth_method"] == "private_key_jwt" and doc["jwks"] == JWKS
    stored = redis_db.get(keys.client(client_id))
    assert stored is not None and b'"secret_hash":null' in stored
    page = (await console.get(clients_page(client_id))).text
    assert '<dd id="auth-method">private_key_jwt</dd>' in page
    assert '<option value="private_key_jwt" selected>' in page and "Rotate secret" not in page
    assert KEY.public_jwk().to_dict()["x"] in page


async def test_the_client_page_switches_the_authentication_method(scene: Scene,
                                                                   http: httpx.AsyncClient) -> None:
    console, page = scene.console, clients_page(scene.client_id)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # To client_secret_jwt: a new secret, shown once, kept sealed.
    resp = await console.act(page, action="authentication", auth_method="client_secret_jwt",
                             once=await console.nonce(page))
    assert resp.status_code == 200 and "New secret: Target" in resp.text, resp.text
    secret = shown_secret(resp.text)
    assert "a copy encrypted under the server key" in resp.text
    stored = scene.redis.get(keys.client(scene.client_id))
    assert stored is not None and secret.encode() not in stored and b'"secret_sealed":"' in stored
    doc = (await http.get(f"/admin/clients/{scene.client_id}", headers=admin)).json()
    assert doc["token_endpoint_auth_method"] == "client_secret_jwt"
    # To private_key_jwt: the keys, and no secret any more.
    resp = await console.act(page, action="authentication", auth_method="private_key_jwt",
                             jwks=orjson.dumps(JWKS).decode(), once=await console.nonce(page))
    assert resp.status_code == 303 and resp.headers["location"].endswith("done=authentication")
    shown = (await console.follow(resp)).text
    assert "The client authentication method and keys were saved." in shown
    assert '<dd id="auth-method">private_key_jwt</dd>' in shown
    stored = scene.redis.get(keys.client(scene.client_id))
    assert stored is not None and b"$argon2id$" not in stored
    # A bad JWKS is refused on the page and changes nothing.
    resp = await console.act(page, action="authentication", auth_method="private_key_jwt",
                             jwks='{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}',
                             once=await console.nonce(page))
    assert resp.status_code == 400 and "a symmetric (oct) key is a shared secret" in resp.text
    assert scene.redis.get(keys.client(scene.client_id)) == stored


# -- headers -------------------------------------------------------------------------------


async def test_security_headers_on_every_console_page(http: httpx.AsyncClient) -> None:
    client = await new_client(http, name="Headers")
    await new_user(http, "alice")
    anonymous = [await http.get(LOGIN), await post_sign_in(http, "wrong"),
                 await http.post(LOGIN, data={"admin_key": ADMIN_KEY})]
    console = await sign_in(http)
    pages = [
        *anonymous,
        await console.get("/admin"),
        await console.get("/admin?sort=used&dir=asc&page=2&q=He"),
        await console.get(NEW),
        await console.get(clients_page(client["client_id"])),
        await console.get(clients_page("no-such-client")),
        await console.get(USERS),
        await console.get(f"{USERS}?q=alice"),
        await console.get(f"{USERS}?q=nobody"),
        await console.act(CREATE, name="Shown once", grant_types="client_credentials",
                          once=await console.nonce(NEW)),
        await console.act(clients_page(client["client_id"]), action="rotate",
                          once=await console.nonce(clients_page(client["client_id"]))),
        await console.act(clients_page(client["client_id"]), action="rename", name=""),
        await console.post(CREATE, {"csrf": "forged"}),
    ]
    assert [p.status_code for p in pages] == [200, 401, 403, 200, 200, 200, 200, 404, 200, 200, 200, 200,
                                              200, 400, 403]
    for page in pages:
        assert_console_headers(page)
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "form-action 'self'" in csp
        assert "unsafe-inline" not in csp
        assert page.headers["referrer-policy"] == "no-referrer"
    usage = await console.get(f"{clients_page(client['client_id'])}/usage")
    assert usage.status_code == 200 and usage.json() == {"issued": 0, "failed": 0}
    assert usage.headers["cache-control"] == "no-store"
    script = await http.get("/static/console.js")
    assert script.status_code == 200 and script.headers["x-content-type-options"] == "nosniff"


async def test_names_and_searches_are_escaped(http: httpx.AsyncClient) -> None:
    evil = '<script>alert("x")</script>'
    await new_client(http, name=evil)
    console = await sign_in(http)
    for url in ("/admin", f"/admin?{urlencode({'q': '<script>'})}",
                f"/admin?{urlencode({'q': '<b>nothing'})}", f"{USERS}?{urlencode({'q': evil})}"):
        page = await console.get(url)
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<b>nothing" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in (await console.get("/admin")).text
    # Notices come from a fixed list: nothing typed into a URL is shown.
    page = await console.get(f"{USERS}?{urlencode({'done': evil})}")
    assert page.status_code == 200 and 'class="notice"' not in page.text and "alert" not in page.text


# -- the audit log -------------------------------------------------------------------------


async def test_every_action_writes_one_audit_line(http: httpx.AsyncClient,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    secrets_seen: list[str] = ["correct horse", "first password", "second password"]

    def expect_line(action: str, **what: str) -> str:
        lines = audit_lines(caplog)
        assert len(lines) == 1, (action, lines)
        caplog.clear()
        [line] = lines
        assert f"action={action} " in line or line.endswith(f"action={action}")
        for name, value in what.items():
            assert f"{name}={value} " in line, (line, name, value)
        for secret in (*secrets_seen, ADMIN_KEY):
            assert secret not in line
        return line

    refused = await post_sign_in(http, "a wrong key")
    assert refused.status_code == 401
    [failed] = [r for r in caplog.records if r.name == AUDIT]
    assert failed.levelno == logging.WARNING and "a wrong key" not in failed.getMessage()
    expect_line("sign-in-failed")

    console = await sign_in(http)
    first = expect_line("sign-in")
    session = re.search(r"session=(\S+)", first)
    assert session is not None and session.group(1) not in console.cookie
    assert console.cookie not in first

    created = await console.act(CREATE, name="Audited", grant_types="client_credentials password",
                                once=await console.nonce(NEW))
    assert created.status_code == 200
    client_id = shown_id(created.text)
    secrets_seen.append(shown_secret(created.text))
    expect_line("client.create", client=client_id, session=session.group(1))

    here = clients_page(client_id)
    for action, fields in (
        ("rename", {"name": "Audited too"}),
        ("edit", {"redirect_uris": "https://app.example.com/cb", "scopes": "read"}),
        ("configure", {"access_token_ttl": "600", "reuse_tokens": "on"}),
    ):
        resp = await console.act(here, action=action, **fields)
        assert resp.status_code == 303, resp.text
        expect_line(f"client.{action}", client=client_id)
    rotated = await console.act(here, action="rotate", once=await console.nonce(here))
    secrets_seen.append(shown_secret(rotated.text))
    expect_line("client.rotate-secret", client=client_id)

    ref = hashlib.sha256(b"carol").hexdigest()[:10]
    for action, fields in (
        ("create", {"password": "first password"}),
        ("verify", {}),
        ("unverify", {}),
        ("unlock", {}),
        ("password", {"password": "second password"}),
        ("delete", {"confirm": "yes"}),
    ):
        resp = await console.act(USERS, action=action, username="carol", **fields)
        assert resp.status_code == 303, resp.text
        expect_line(f"user.{action}", user=ref)

    # A form the console refuses (invalid) changes nothing and writes no line.
    bad = await console.act(here, action="configure", access_token_ttl="soon")
    assert bad.status_code == 400
    bad = await console.act(USERS, action="verify", username="nobody")
    assert bad.status_code == 400
    assert audit_lines(caplog) == []

    resp = await console.act(here, action="revoke", confirm="yes")
    assert resp.status_code == 303
    expect_line("client.revoke", client=client_id)
    resp = await console.act(LOGOUT)
    assert resp.status_code == 303
    expect_line("sign-out", session=session.group(1))


# -- secrets and the admin key -------------------------------------------------------------


async def test_a_secret_shows_once_and_is_kept_nowhere(http: httpx.AsyncClient, redis_db: redis.Redis,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    console = await sign_in(http)
    once = await console.nonce(NEW)
    form = {"name": "Shown once", "grant_types": "client_credentials", "scopes": "read",
            "redirect_uris": "https://app.example.com/cb", "type": "confidential", "once": once}
    created = await console.act(CREATE, **form)
    assert created.status_code == 200 and "It cannot be shown again" in created.text
    secret = shown_secret(created.text)
    client_id = shown_id(created.text)
    assert (await cc_token(http, {"client_id": client_id, "client_secret": secret})).status_code == 200

    # The same form again (a reload, a double click): no second client, no secret.
    for _ in range(2):
        again = await console.act(CREATE, **form)
        assert again.status_code == 303 and again.headers["location"] == "/admin?done=resubmitted"
        table = await console.follow(again)
        assert "A secret is shown only once and cannot be shown again." in table.text
    no_nonce = await console.act(CREATE, **{k: v for k, v in form.items() if k != "once"})
    assert no_nonce.status_code == 303 and no_nonce.headers["location"] == "/admin?done=resubmitted"
    assert table_ids((await console.get("/admin")).text) == [client_id]

    here = clients_page(client_id)
    await console.get(here)
    await console.get(f"{here}/usage")
    await console.follow(await console.act(here, action="rename", name="Still shown once"))
    await console.get(f"/admin?{urlencode({'q': client_id})}")
    await console.get("/admin?sort=name")
    await console.get(USERS)

    rotate = {"action": "rotate", "once": await console.nonce(here)}
    rotated = await console.act(here, **rotate)
    assert rotated.status_code == 200 and "The old secret no longer works." in rotated.text
    new_secret = shown_secret(rotated.text)
    assert new_secret != secret
    again = await console.act(here, **rotate)
    assert again.status_code == 303 and again.headers["location"] == f"{here}?done=resubmitted"
    await console.follow(again)
    assert (await cc_token(http, {"client_id": client_id, "client_secret": secret})).status_code == 401
    assert (await cc_token(http, {"client_id": client_id, "client_secret": new_secret})).status_code == 200

    # Each secret is in exactly one response: the one that made it.
    for shown, response in ((secret, created), (new_secret, rotated)):
        holders = [r for r in console.seen if shown in r.text]
        assert holders == [response]
        assert all(shown not in str(r.request.url) and shown not in str(r.headers) for r in console.seen)
    # Not in Redis (only argon2 hashes are), not in any log line.
    stored = everything_in(redis_db)
    for shown in (secret, new_secret):
        assert shown.encode() not in stored
        assert shown.removeprefix("tsv_cs_").encode() not in stored
        assert all(shown not in rec.getMessage() for rec in caplog.records)
    assert b"$argon2id$" in stored


async def test_the_admin_key_is_in_no_url_page_or_store(http: httpx.AsyncClient, redis_db: redis.Redis,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    traffic: list[httpx.Response] = []

    async def keep(resp: httpx.Response) -> None:
        await resp.aread()
        traffic.append(resp)

    http.event_hooks["response"] = [keep]
    await http.get("/admin")
    await http.get(LOGIN)
    await post_sign_in(http, ADMIN_KEY[::-1])
    console = await sign_in(http)
    await console.get(NEW)
    created = await console.act(CREATE, name="Key check", grant_types="client_credentials",
                                once=await console.nonce(NEW))
    client_id = shown_id(created.text)
    for url in ("/admin", "/admin?sort=name", clients_page(client_id), f"{clients_page(client_id)}/usage",
                USERS, f"{USERS}?q=x"):
        await console.get(url)
    await console.follow(await console.act(clients_page(client_id), action="rename", name="Key check 2"))
    await console.follow(await console.act(LOGOUT))
    assert len(traffic) > 15
    for resp in traffic:
        assert ADMIN_KEY not in str(resp.request.url)
        assert ADMIN_KEY not in resp.headers.get("location", "")
        assert ADMIN_KEY not in resp.text and ADMIN_KEY not in str(resp.headers)
    sent_key = [r for r in traffic if ADMIN_KEY.encode() in r.request.content]
    assert [r.request.url.path for r in sent_key] == [LOGIN]  # only typed into the sign-in form
    assert ADMIN_KEY.encode() not in everything_in(redis_db)
    assert all(ADMIN_KEY not in rec.getMessage() for rec in caplog.records)


# -- the table -----------------------------------------------------------------------------


HASHER = Hasher(1, 1024, 1)
SHARED_HASH = HASHER.hash_sync("one secret for every bulk client")
WORDS = ("acme", "Blue Fin", "cobalt", "Delta", "ember", "Fjord", "granite", "Harbor", "indigo", "Juniper")


def bulk_client(i: int, now_ms: int) -> Client:
    return Client(
        client_id=secrets.token_urlsafe(16), name=f"{WORDS[i % len(WORDS)]} {i:05d}",
        secret_hash=SHARED_HASH, token_endpoint_auth_method="client_secret_basic",
        grant_types=("client_credentials",), scopes=("read",),
        redirect_uris=(f"https://app{i}.example.com/cb",), website=None,
        created_at=now_ms // 1000 - 20_000 + i)


def write_client(pipe: Any, client: Client, used_ms: int) -> None:
    """What RedisStore.put_client(new=True) writes, and the last use record_usage sets."""
    pipe.set(keys.client(client.client_id), orjson.dumps(asdict(client)), nx=True)
    pipe.zadd(keys.CLIENTS_INDEX, {client.client_id: client.created_at})
    pipe.zadd(keys.CLIENT_NAMES, {client_name_member(client): 0})
    pipe.zadd(keys.CLIENTS_USED, {client.client_id: used_ms})


def bulk_clients(r: redis.Redis, count: int, start: int = 0, now_ms: int | None = None) -> list[Client]:
    """Write clients straight into Redis, one pipeline at a time. One in three has been used,
    each at its own time (the lower the number, the more recently)."""
    now_ms = now_ms or int(time.time() * 1000)
    made: list[Client] = []
    pipe = r.pipeline(transaction=False)
    for i in range(start, start + count):
        made.append(bulk_client(i, now_ms))
        write_client(pipe, made[-1], now_ms - i * 1000 if i % 3 == 0 else 0)
        if len(pipe) >= 4000:
            pipe.execute()
    pipe.execute()
    return made


async def test_bulk_writes_are_what_the_store_writes(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    store = http.app.state.services.store  # type: ignore[attr-defined]
    client = bulk_client(7, int(time.time() * 1000))
    assert await store.put_client(client, new=True)
    by_store = snapshot(redis_db)
    redis_db.flushall()
    pipe = redis_db.pipeline(transaction=False)
    write_client(pipe, client, 0)
    pipe.execute()
    assert snapshot(redis_db) == by_store
    assert await store.get_client(client.client_id) == client


async def test_paging_and_sorting_through_the_table(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    made = bulk_clients(redis_db, 120)
    console = await sign_in(http)

    async def ids(**query: str) -> tuple[list[str], str]:
        page = await console.get(f"/admin?{urlencode(query)}")
        assert page.status_code == 200
        return table_ids(page.text), page.text

    newest_first = [c.client_id for c in sorted(made, key=lambda c: -c.created_at)]
    seen: list[str] = []
    for n in (1, 2, 3):
        found, html = await ids(page=str(n))
        assert f"Page {n} of 3" in html and ">120</span>" in html
        seen += found
        assert ('rel="next"' in html) == (n < 3) and ('rel="prev"' in html) == (n > 1)
    assert seen == newest_first

    by_name = sorted(made, key=lambda c: (c.name.casefold(), c.client_id))
    for direction, expected in (("asc", by_name), ("desc", by_name[::-1])):
        seen = []
        for n in (1, 2, 3):
            seen += (await ids(sort="name", dir=direction, page=str(n)))[0]
        assert seen == [c.client_id for c in expected]

    used = [c.client_id for i, c in enumerate(made) if i % 3 == 0]  # most recent first
    assert (await ids(sort="used", dir="desc"))[0][:40] == used
    # Oldest first: the 80 never used, then the used ones, the least recent first.
    assert (await ids(sort="used", dir="asc", page="3"))[0] == used[::-1][20:]

    # A name prefix, any case; the exact client id; nothing in the middle of a name.
    found, html = await ids(q="COBALT 000")
    assert found == [c.client_id for c in made if c.name.startswith("cobalt 000")]
    assert len(found) == 10 and ">10</span>" in html
    blue_fins = [c.client_id for c in by_name if c.name.startswith("Blue Fin")]
    for query in ({}, {"sort": "used", "dir": "desc"}, {"sort": "created", "dir": "asc"}):
        # Matches come from the name index: A to Z, and the header says so.
        found, html = await ids(q="blue fin", **query)
        assert found == blue_fins and "Name ▲" in html and "▼" not in html
    assert (await ids(q="blue fin", sort="name", dir="desc"))[0] == blue_fins[::-1]
    assert (await ids(q=made[42].client_id))[0] == [made[42].client_id]
    assert (await ids(q="00042"))[0] == []
    # Odd input falls back to something sane.
    for query in ({"page": "0"}, {"page": "-3"}, {"page": "x"}, {"sort": "secret_hash"}, {"dir": "sideways"}):
        found, _ = await ids(**query)
        assert len(found) == 50


async def _timed(console: Console, url: str) -> float:
    start = time.perf_counter()
    resp = await console.get(url)
    elapsed = time.perf_counter() - start
    assert resp.status_code == 200
    return elapsed


async def _medians(small: Console, large: Console, url: str, runs: int = 15) -> tuple[float, float]:
    """The median time of `url` on each app, the two asked in turn so that whatever else the
    machine does slows both alike."""
    for _ in range(3):  # warm up
        await _timed(small, url)
        await _timed(large, url)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        times[0].append(await _timed(small, url))
        times[1].append(await _timed(large, url))
    small.seen.clear()
    large.seen.clear()
    return statistics.median(times[0]), statistics.median(times[1])


SCALE_REQUESTS = {
    "first page": "/admin",
    "name-prefix search": "/admin?q=cobalt",
    "sort by name": "/admin?sort=name&dir=asc",
    "sort by last used": "/admin?sort=used&dir=desc",
    "page 100": "/admin?page=100",
}
LARGE_DB = 2


@contextlib.asynccontextmanager
async def app_on(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """As the app_factory fixture, on another Redis URL (another DB of the same server)."""
    app = create_app(make_settings(redis_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_the_table_is_as_fast_with_10000_clients_as_with_10(
        app_factory: AppFactory, redis_db: redis.Redis, redis_server: RedisServer) -> None:
    """The same requests against 10 and against 10,000 clients (the 10 among them): two apps in
    this process, each on its own Redis DB. With 10 clients "page 100" is an empty page, so its
    ratio also holds the cost of drawing 50 rows; page 100 against page 1, both with 10,000
    clients, shows what the offset itself costs."""
    now_ms = int(time.time() * 1000)
    few = bulk_clients(redis_db, 10, now_ms=now_ms)
    requests = {**SCALE_REQUESTS, "client-id search": f"/admin?q={few[3].client_id}"}
    with redis.Redis(port=redis_server.port, db=LARGE_DB) as big:
        big.flushdb()
        try:
            started = time.perf_counter()
            pipe = big.pipeline(transaction=False)
            for i, client in enumerate(few):
                write_client(pipe, client, now_ms - i * 1000 if i % 3 == 0 else 0)
            pipe.execute()
            bulk_clients(big, 9_990, start=10, now_ms=now_ms)
            written = time.perf_counter() - started
            assert big.zcard(keys.CLIENTS_INDEX) == 10_000 and big.zcard(keys.CLIENT_NAMES) == 10_000
            large_url = f"redis://127.0.0.1:{redis_server.port}/{LARGE_DB}"
            async with app_factory() as small_http, app_on(large_url) as large_http:
                small, large = await sign_in(small_http), await sign_in(large_http)
                timings = {name: await _medians(small, large, url) for name, url in requests.items()}
                # The pages hold what they should.
                first = await large.get("/admin")
                assert len(table_ids(first.text)) == 50 and ">10000</span>" in first.text
                assert len(table_ids((await small.get("/admin")).text)) == 10
                page_100 = await large.get("/admin?page=100")
                assert len(table_ids(page_100.text)) == 50 and "Page 100 of 200" in page_100.text
                search = await large.get("/admin?q=cobalt")
                assert len(table_ids(search.text)) == 50 and ">1000</span>" in search.text
                for console in (small, large):
                    by_id = await console.get(requests["client-id search"])
                    assert table_ids(by_id.text) == [few[3].client_id]
        finally:
            big.flushdb()

    ratios = {name: large_s / small_s for name, (small_s, large_s) in timings.items()}
    lines = [f"{'request':<20} {'10 clients':>12} {'10,000 clients':>15} {'ratio':>7}"]
    lines += [f"{name:<20} {timings[name][0] * 1000:>10.2f}ms {timings[name][1] * 1000:>13.2f}ms "
              f"{ratios[name]:>7.2f}" for name in requests]
    offset = timings["page 100"][1] / timings["first page"][1]
    lines.append(f"page 100 / page 1, both with 10,000 clients: {offset:.2f}")
    lines.append(f"(medians of 15 requests each, in process over ASGI, the two apps asked in turn; "
                 f"the 10,000 clients were written in {written:.2f} s)")
    report = "\n".join(lines)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "console-scale.txt").write_text(report + "\n")
    print(report)
    for name, ratio in ratios.items():
        assert ratio < 3, f"{name}: {ratio:.2f} times slower with 10,000 clients\n{report}"
    assert offset < 3, report
