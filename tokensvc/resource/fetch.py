"""The kit's HTTP to the issuer: RFC 8414 metadata, the JWKS, RFC 7662 introspection.

httpx, because the kit runs inside async apps: a blocking client would stall the event loop,
and introspection needs kept-alive connections to stay cheap. It is the `resource` extra
(`pip install 'tokensvc[resource]'`), not a dependency of the service. Every answer is read
up to a bound, so a misbehaving endpoint cannot make the API buffer without limit.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from tokensvc.resource.errors import IssuerUnavailable

try:
    import httpx
except ModuleNotFoundError as exc:  # pragma: no cover - only without the extra
    raise ModuleNotFoundError(
        "tokensvc.resource needs httpx: pip install 'tokensvc[resource]'") from exc

log = logging.getLogger("tokensvc.resource")

# Metadata, a key set and an introspection answer are a few kilobytes.
MAX_BODY = 256 * 1024


def metadata_url(issuer: str) -> str:
    """RFC 8414 §3.1: the well-known segment goes between the host and the issuer's path."""
    parts = urlsplit(issuer)
    path = "/.well-known/oauth-authorization-server" + parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def basic_auth(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret form-encoded, joined by ':', base64-encoded."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class Fetcher:
    """JSON documents from the issuer; every failure is IssuerUnavailable, logged once per
    outage (the first failure after a success, and the recovery)."""

    def __init__(self, client: httpx.AsyncClient | None, timeout: float) -> None:
        self._owned = client is None
        self.client = client if client is not None else httpx.AsyncClient(timeout=timeout)
        self._failing = False

    async def get(self, url: str, what: str) -> tuple[dict[str, Any], httpx.Headers]:
        request = self.client.build_request("GET", url, headers={"Accept": "application/json"})
        return await self._send(request, what)

    async def post_form(self, url: str, form: dict[str, str], authorization: str,
                        what: str) -> dict[str, Any]:
        request = self.client.build_request(
            "POST", url, data=form,
            headers={"Accept": "application/json", "Authorization": authorization})
        doc, _ = await self._send(request, what)
        return doc

    async def _send(self, request: httpx.Request, what: str) -> tuple[dict[str, Any], httpx.Headers]:
        try:
            doc, headers = await self._read(request, what)
        except IssuerUnavailable as why:
            if not self._failing:
                log.warning("tokensvc.resource: %s", why)
            self._failing = True
            raise
        if self._failing:
            log.warning("tokensvc.resource: %s answers again", what)
            self._failing = False
        return doc, headers

    async def _read(self, request: httpx.Request, what: str) -> tuple[dict[str, Any], httpx.Headers]:
        body = bytearray()
        try:
            response = await self.client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise IssuerUnavailable(f"{what} at {request.url} answered {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise IssuerUnavailable(f"{what} at {request.url} is over {MAX_BODY} bytes")
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise IssuerUnavailable(f"{what} at {request.url} failed: {exc!r}") from exc
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise IssuerUnavailable(f"{what} at {request.url} is not a JSON object")
        return doc, response.headers

    async def aclose(self) -> None:
        """Close the client, unless the caller gave it (then it is theirs to close)."""
        if self._owned:
            await self.client.aclose()
