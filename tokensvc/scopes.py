"""RFC 6749 §3.3 scope strings: parse, check against what a client may ask, format."""

from __future__ import annotations

import re

from tokensvc.errors import InvalidScope

# scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def is_scope_token(value: str) -> bool:
    """True when the value is one RFC 6749 scope-token."""
    return _SCOPE_TOKEN.fullmatch(value) is not None


def parse(raw: str | None) -> frozenset[str] | None:
    """The requested scope set, or None when the request named none."""
    if raw is None:
        return None
    items = raw.split(" ")
    if any(not is_scope_token(item) for item in items):
        raise InvalidScope("The scope parameter is malformed (RFC 6749 §3.3).")
    return frozenset(items)


def fmt(scopes: frozenset[str] | tuple[str, ...]) -> str:
    """Canonical form: sorted and space-separated, so equal sets compare equal."""
    return " ".join(sorted(set(scopes)))


def grant(requested: frozenset[str] | None, allowed: tuple[str, ...]) -> str:
    """The scope to grant: what was asked if the client may have it all, else invalid_scope."""
    if requested is None:
        return fmt(allowed)
    extra = requested.difference(allowed)
    if extra:
        raise InvalidScope(f"The client may not request scope: {fmt(frozenset(extra))}.")
    return fmt(requested)
