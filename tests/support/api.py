"""Requests through the service's own API, as its users make them: clients and users by the
admin API, tokens at the token endpoint, answers by introspection. Tests set up state this way
rather than by writing Redis, so they keep working whatever the records look like."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import httpx

from tests.support.config import ADMIN

Client = dict[str, Any]


def auth(client: Client, secret: str | None = None) -> tuple[str, str]:
    """The client's HTTP Basic credentials (httpx form-encodes neither part)."""
    return client["client_id"], secret or client["client_secret"]


def basic(client_id: str, secret: str, *, form_encode: bool = True) -> dict[str, str]:
    """RFC 6749 §2.3.1: id and secret are form-encoded, joined by ':', then base64-encoded."""
    if form_encode:
        client_id, secret = quote(client_id, safe=""), quote(secret, safe="")
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


async def new_client(http: httpx.AsyncClient, **fields: Any) -> Client:
    """Create a client through the admin API; returns its JSON (secret included)."""
    body = {"name": "test client", "scopes": ["read", "write"], **fields}
    resp = await http.post("/admin/clients", json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    doc: Client = resp.json()
    return doc


async def new_user(http: httpx.AsyncClient, username: str = "alice",
                   password: str = "correct horse", verified: bool = True) -> None:
    resp = await http.post("/admin/users", headers=ADMIN,
                           json={"username": username, "password": password, "verified": verified})
    assert resp.status_code == 201, resp.text


async def cc_token(http: httpx.AsyncClient, client: Client, **extra: str) -> httpx.Response:
    return await http.post("/oauth/token", data={
        "grant_type": "client_credentials", "client_id": client["client_id"],
        "client_secret": client["client_secret"], **extra})


async def password_token(http: httpx.AsyncClient, client: Client, username: str = "alice",
                         password: str = "correct horse", **extra: str) -> httpx.Response:
    return await http.post("/oauth/token", data={
        "grant_type": "password", "client_id": client["client_id"],
        "client_secret": client["client_secret"], "username": username, "password": password,
        **extra})


async def refresh(http: httpx.AsyncClient, client: Client, rt: str, **extra: str) -> httpx.Response:
    """The refresh grant, the client authenticating by Basic."""
    return await http.post("/oauth/token", auth=auth(client),
                           data={"grant_type": "refresh_token", "refresh_token": rt, **extra})


async def introspect(http: httpx.AsyncClient, client: Client, token: str) -> dict[str, Any]:
    resp = await http.post("/oauth/introspect", data={"token": token}, auth=auth(client))
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


async def active(http: httpx.AsyncClient, rs: Client, token: str) -> bool:
    """Whether introspection by `rs` calls the token active; an inactive one says nothing else
    (RFC 7662 §2.2)."""
    doc = await introspect(http, rs, token)
    result = doc["active"]
    assert isinstance(result, bool), doc
    if not result:
        assert doc == {"active": False}
    return result
