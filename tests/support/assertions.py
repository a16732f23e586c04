"""What every error and every token response of the service must look like, checked in full
wherever a test looks at one, so that no endpoint's answer is checked more loosely than
another's."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.stored import CODEC
from tokensvc.tokens import ACCESS, REFRESH, TOKEN_LEN


def error_body(error: str, description: str) -> dict[str, str]:
    """RFC 6749 §5.2's members, with `message`: the same text for clients that read that."""
    return {"error": error, "error_description": description, "message": description}


def assert_no_store(resp: httpx.Response) -> None:
    """RFC 6749 §5.1: answers that carry tokens, secrets or their errors are never cached."""
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["pragma"] == "no-cache"


def assert_json(resp: httpx.Response, status: int = 200) -> Any:
    """The status, a JSON body that no cache keeps; the body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert_no_store(resp)
    return resp.json()


def bearer_challenge(description: str) -> str:
    """RFC 6750 §3's challenge for a refused bearer token."""
    return f'Bearer realm="tokensvc", error="invalid_token", error_description="{description}"'


def assert_error(resp: httpx.Response, status: int, error: str, description: str,
                 www_authenticate: str | None = None) -> None:
    """The error body, never cached, and exactly the given challenge (None: no challenge)."""
    assert assert_json(resp, status) == error_body(error, description)
    assert resp.headers.get("www-authenticate") == www_authenticate


def assert_tokens(resp: httpx.Response, *, scope: str | None = "read write", refresh: bool = True,
                  expires_in: int | None = 3600) -> dict[str, Any]:
    """RFC 6749 §5.1: exactly these members, tokens this server minted (a refresh token of the
    access token's grant), never cached. `expires_in=None`: any lifetime left (a reused token)."""
    body: dict[str, Any] = assert_json(resp)
    assert "www-authenticate" not in resp.headers
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"} | (
        {"refresh_token"} if refresh else set())
    assert body["token_type"] == "Bearer"
    if expires_in is None:
        assert body["expires_in"] > 0
    else:
        assert body["expires_in"] == expires_in
    assert body["scope"] == scope
    at = body["access_token"]
    assert at.startswith("tsv_at_") and len(at) == TOKEN_LEN
    parsed = CODEC.parse(at, ACCESS)
    assert parsed is not None
    if refresh:
        rt = body["refresh_token"]
        assert rt.startswith("tsv_rt_") and len(rt) == TOKEN_LEN
        rt_parsed = CODEC.parse(rt, REFRESH)
        assert rt_parsed is not None and rt_parsed.grant_id == parsed.grant_id
    return body
