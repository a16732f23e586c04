"""RFC 8707 resource indicators: which resource servers a token is for (its audience, `aud`).

A `resource` is an absolute URI without a fragment (RFC 8707 §2, RFC 3986 §4.3); a request may
name several. What a client may ask for is its registered `resources` when it has any, and
anything well-formed when it has none. A client limited to registered resources that names
none gets a token for all of them (the "predefined default" of RFC 8707 §2): otherwise it could
leave the parameter out and hold a token no resource server's audience check would refuse.

An audience is kept as its URIs sorted and space-separated (no URI holds a space), as a scope
is, so equal sets compare equal, in Python and in the Lua scripts that narrow it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokensvc.errors import InvalidTarget

# How many resources one request, or one client's registration, may name, and how long each
# may be: every one is copied into the record of each token of the grant.
MAX_RESOURCES = 20
MAX_LENGTH = 1000
# RFC 3986 §3.1 scheme, ":", then only characters a URI may hold (§2: unreserved, reserved
# and percent-encodings); no "#", so no fragment (RFC 8707 §2).
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]+")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def problem(uri: str) -> str | None:
    """Why `uri` cannot be a resource indicator, or None when it can."""
    if len(uri) > MAX_LENGTH:
        return f"is longer than {MAX_LENGTH} characters"
    if "#" in uri:
        return "has a fragment"
    if _ABSOLUTE_URI.fullmatch(uri) is None or _BAD_PERCENT.search(uri) is not None:
        return "is not an absolute URI"
    scheme, _, rest = uri.partition(":")
    # An http(s) URI names a host: "https:api" is a relative reference gone wrong, not a server.
    if scheme.lower() in ("http", "https") and not (rest.startswith("//") and len(rest) > 2
                                                    and rest[2] != "/"):
        return "names no host"
    return None


def canonical(uris: Iterable[str]) -> tuple[str, ...]:
    """Sorted, each once."""
    return tuple(sorted(set(uris)))


def parse(raw: str | None) -> tuple[str, ...] | None:
    """The requested resources (the token endpoint's space-joined values), or None when the
    request named none; invalid_target for a malformed one."""
    if raw is None:
        return None
    return check(raw.split(" "))


def check(values: Iterable[str]) -> tuple[str, ...]:
    """Each value a resource indicator, else invalid_target; the canonical tuple."""
    found = canonical(values)
    if len(found) > MAX_RESOURCES:
        raise InvalidTarget(f"At most {MAX_RESOURCES} resources may be requested at once.")
    for uri in found:
        why = problem(uri)
        if why is not None:
            raise InvalidTarget(f"The resource {uri[:100]!r} {why} (RFC 8707 §2).")
    return found


def audience(requested: tuple[str, ...] | None, registered: tuple[str, ...]) -> str | None:
    """The audience of a new grant: what was asked, if the client may ask for it; else the
    client's registered resources; None (any audience) for an unlimited client that named none."""
    if requested is None:
        return " ".join(registered) or None
    allow(requested, registered)
    return " ".join(requested)


def allow(requested: tuple[str, ...], registered: tuple[str, ...]) -> None:
    """invalid_target unless every requested resource is registered (or none are registered)."""
    if registered:
        extra = [uri for uri in requested if uri not in registered]
        if extra:
            raise InvalidTarget(f"The client may not request the resource {extra[0][:100]!r}.")


def claim(aud: str) -> str | list[str]:
    """RFC 7662 §2.2 / RFC 7519 §4.1.3 `aud`: one string, or an array of them."""
    uris = aud.split(" ")
    return uris[0] if len(uris) == 1 else uris
