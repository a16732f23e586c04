"""Whose address a request carries: the connection's peer, or the client a trusted proxy names.

`X-Forwarded-For` and `Forwarded` (RFC 7239) are anyone's to write, so they are believed only
when the connection comes from `trusted_proxies`; otherwise rate limits, throttles and audit
lines key on the peer. From a trusted peer, the chain is read from the right, each trusted hop
vouching for the one before it, and the first hop that is not a trusted proxy is the client:
everything to its left was written by the client itself. All of them trusted, the leftmost is.

uvicorn's own handling (`proxy_headers`, `forwarded_allow_ips`) is switched off by `tokensvc
serve` and this module does the work instead, because uvicorn's cannot be made to match the
rule: it trusts 127.0.0.1 when told nothing (or FORWARDED_ALLOW_IPS from the environment, behind
the settings' back), silently takes a malformed entry as a literal host name, ignores
`Forwarded`, and runs on every request even when nothing is trusted. Here, with no trusted
proxies (the default) nothing runs at all; with some, `ForwardedClients` rewrites the scope's
client once per request, at the front door, so every reader (the registration limit, the
console's audit lines, uvicorn's access log) sees the same address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

from starlette.requests import Request

from tokensvc.metrics import ASGIApp, Receive, Scope, Send
from tokensvc.settings import Network

# RFC 7239 §4: forwarded-pair = token "=" value, value = token / quoted-string. Unquoted values
# are taken up to the next delimiter, as proxies that leave `for=192.0.2.1:80` unquoted exist.
_PAIR = re.compile(r'\s*([^=,;"\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,;"\s]*)\s*')


def client_address(request: Request) -> str:
    """The address a request is counted and logged under (after `ForwardedClients`)."""
    return request.client.host if request.client is not None else "-"


class TrustedProxies:
    """The rule, built once at start-up from the parsed setting."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = tuple(networks)
        # A deployment has few proxies and they send every request: a trust check is a dict hit.
        self.trusts = functools.lru_cache(maxsize=4096)(self._trusts)

    def _trusts(self, host: str) -> bool:
        address = _address(host)
        if address is None:
            return False
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in self.networks)

    def client(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client's address for a request from `peer` with these (ASGI) headers."""
        if not self.trusts(peer):
            return peer
        xff: list[str] = []
        fwd: list[str] = []
        for name, value in headers:
            if name == b"x-forwarded-for":
                xff.append(value.decode("latin-1"))
            elif name == b"forwarded":
                fwd.append(value.decode("latin-1"))
        by_xff = self._walk(peer, ",".join(xff).split(",")) if xff else None
        hops = _forwarded_for(",".join(fwd)) if fwd else None
        by_fwd = None if hops is None else self._walk(peer, hops)
        if fwd and by_fwd is None:
            return peer  # an unreadable Forwarded: nothing in it, nor beside it, can be believed
        if by_xff is not None and by_fwd is not None and by_xff != by_fwd:
            # A proxy sets one of the two; the client may have sent the other, and which is
            # which cannot be told from here. Neither is believed.
            return peer
        return by_xff or by_fwd or peer

    def _walk(self, peer: str, hops: Sequence[str]) -> str:
        """The rightmost hop that is not a trusted proxy. A hop a trusted proxy could not name
        (`unknown`, an obfuscated name, garbage) stops the walk at the proxy that reported it."""
        last = _address(peer) or peer
        for raw in reversed(hops):
            address = _address(raw)
            if address is None:
                return last
            if not self.trusts(address):
                return address
            last = address
        return last


class ForwardedClients:
    """Pure ASGI: puts the client `TrustedProxies` finds into the scope, ahead of everything."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] == "http" and peer:
            found = self.proxies.client(peer[0], scope["headers"])
            if found != peer[0]:
                scope["client"] = (found, 0)  # the port a proxy saw is not ours to know
        await self.app(scope, receive, send)


def _address(raw: str) -> str | None:
    """The IP address in a hop (`192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`, `2001:db8::1`,
    quoted or not), canonical, an IPv4-mapped IPv6 address as IPv4; None when it is none."""
    host = raw.strip().strip('"')
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _forwarded_for(value: str) -> list[str] | None:
    """The `for` of each element of a Forwarded value, in order ('' where an element has none);
    None when the value does not parse (RFC 7239 §4)."""
    hops: list[str] = []
    current = ""
    pos = 0
    while True:
        pair = _PAIR.match(value, pos)
        if pair is not None:
            if pair.group(1).lower() == "for":
                current = pair.group(2).strip('"').replace("\\", "")
            pos = pair.end()
        else:
            while pos < len(value) and value[pos] in " \t":
                pos += 1
        if pos >= len(value):
            hops.append(current)
            return hops
        if value[pos] == ",":
            hops.append(current)
            current = ""
        elif value[pos] != ";":
            return None
        pos += 1
