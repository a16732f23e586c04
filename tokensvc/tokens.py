"""Opaque token minting and checking.

A token reads `tsv_at_` (access), `tsv_rt_` (refresh) or `tsv_ac_` (authorization code)
followed by base64url of 47 bytes:

    grant id (9) | body (32 random bytes: 256 bits) | tag (6)

- The prefix lets secret scanners find a leaked token and tells its kind without a lookup.
- The grant id is not secret: it names the Redis hash slot `{g:<grant id>}` that holds every
  key of the grant, so rotation, reuse detection and revocation cascades stay one Lua script,
  on one Redis or on a Redis Cluster.
- The tag is a truncated HMAC-SHA256 under the server key: a forged or mistyped token is
  refused without a Redis round trip. Keys are a list so they can be rotated (every listed key
  verifies; the one the fleet agreed on signs, keyring.py).
- Redis stores only SHA-256 of the token. With 256 random bits a plain digest is already
  irreversible, and it does not change when server keys rotate.

For finAPI token reuse the service must hand back a token it issued earlier without ever
storing it: such tokens take their body from HMAC(server key, seed), and only the seed is kept.
A dump of Redis alone therefore reveals no usable token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass

from tokensvc.keyring import Keyring

ACCESS = "at"
REFRESH = "rt"
CODE = "ac"
PREFIXES = {ACCESS: "tsv_at_", REFRESH: "tsv_rt_", CODE: "tsv_ac_"}
_PREFIX_LEN = 7
_KIND_BY_PREFIX = {prefix: kind for kind, prefix in PREFIXES.items()}
GRANT_ID_BYTES = 9
_BODY = 32
_TAG = 6
_RAW_LEN = GRANT_ID_BYTES + _BODY + _TAG
_ENCODED_LEN = 63  # ceil(47 * 4 / 3) without padding
TOKEN_LEN = _PREFIX_LEN + _ENCODED_LEN


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_grant_id() -> str:
    """A random grant id (72 bits: it scopes keys, it is not a secret)."""
    return _b64(os.urandom(GRANT_ID_BYTES))


def derived_grant_id(*parts: str) -> str:
    """A grant id fixed by its parts, so identical reuse requests meet in one hash slot."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return _b64(digest[:GRANT_ID_BYTES])


def digest(token: str) -> str:
    """What Redis stores in place of a token."""
    return _b64(hashlib.sha256(token.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class Minted:
    """A fresh token, the digest stored for it, and the grant slot it belongs to."""

    token: str
    digest: str
    grant_id: str


@dataclass(frozen=True, slots=True)
class Parsed:
    """A token whose tag checked out."""

    kind: str
    grant_id: str
    digest: str


class TokenCodec:
    """Mints and checks tokens under the server keys (the keyring's signing key signs)."""

    def __init__(self, keys: Sequence[str] | Keyring) -> None:
        self.keyring = keys if isinstance(keys, Keyring) else Keyring(keys)
        self._macs = [hmac.new(k.encode("utf-8"), digestmod=hashlib.sha256) for k in self.keyring.keys]
        self._by_id = dict(zip(self.keyring.ids, self._macs, strict=True))

    @property
    def key_id(self) -> str:
        """The signing key's id, stored with the seeds of derived (reusable) tokens."""
        return self.keyring.signing_id

    def _tag(self, mac: hmac.HMAC, prefix: str, head: bytes) -> bytes:
        m = mac.copy()
        m.update(prefix.encode("ascii"))
        m.update(head)
        return m.digest()[:_TAG]

    def _assemble(self, kind: str, grant_id: str, body: bytes) -> Minted:
        prefix = PREFIXES[kind]
        head = base64.urlsafe_b64decode(grant_id + "=" * (-len(grant_id) % 4)) + body
        token = prefix + _b64(head + self._tag(self._macs[self.keyring.signing], prefix, head))
        return Minted(token, digest(token), grant_id)

    def mint(self, kind: str, grant_id: str) -> Minted:
        """A new random token of the given kind in the given grant."""
        return self._assemble(kind, grant_id, os.urandom(_BODY))

    def derive(self, kind: str, grant_id: str, seed: str, key_id: str | None = None) -> Minted | None:
        """The token whose body is HMAC(key, kind|seed); None when that key is gone."""
        mac = self._macs[self.keyring.signing] if key_id is None else self._by_id.get(key_id)
        if mac is None:
            return None
        m = mac.copy()
        m.update(b"derive\x00" + kind.encode("ascii") + b"\x00" + seed.encode("ascii"))
        return self._assemble(kind, grant_id, m.digest())

    def parse(self, token: str, kind: str | None = None) -> Parsed | None:
        """Check prefix, length and tag; None for anything this service did not mint."""
        if len(token) != TOKEN_LEN:
            return None
        prefix = token[:_PREFIX_LEN]
        found = _KIND_BY_PREFIX.get(prefix)
        if found is None or (kind is not None and found != kind):
            return None
        try:
            raw = base64.urlsafe_b64decode(token[_PREFIX_LEN:] + "=")
        except (binascii.Error, ValueError):
            return None
        # Refuse non-canonical spellings (other padding bits) so each token has one form.
        if len(raw) != _RAW_LEN or _b64(raw) != token[_PREFIX_LEN:]:
            return None
        head, tag = raw[:-_TAG], raw[-_TAG:]
        for mac in self._macs:
            if hmac.compare_digest(self._tag(mac, prefix, head), tag):
                return Parsed(found, _b64(head[:GRANT_ID_BYTES]), digest(token))
        return None


def new_seed() -> str:
    """A 256-bit seed for a derived (reusable) token."""
    return _b64(os.urandom(32))
