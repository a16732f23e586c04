"""The deployment's server keys: which one signs, which ones are accepted, and what derives from them.

`TOKENSVC_SECRET_KEYS` lists keys newest first. Every listed key is accepted; the one that
signs is chosen with the rest of the fleet (fleet.py): the first of this instance's keys that
every live instance accepts. So a new key put first on some instances during a rolling restart
starts signing only once no instance would refuse what it signs, and the fleet is never split
into instances that reject each other's tokens.

Everything the deployment derives from its keys goes through here: token tags (tokens.py),
the keyed verifiers of client secrets, the CSRF tokens of the HTML forms, DPoP server nonces
(proofs.py), and what it keeps in Redis encrypted (JWT signing keys, reused JWTs,
client_secret_jwt secrets: `seal`). Each use has its own subkey, HMAC(server key, purpose), so
one value can never be replayed as another.

Fingerprints name keys in Redis without revealing them: HMAC(key, "fingerprint"), 64 bits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# What `seal` encrypts, each under its own subkey.
SIGNING_KEYS = b"signing key encryption"
REUSED_TOKENS = b"reused token encryption"
# A client_secret_jwt client's secret: the server needs it to check the HMAC of its assertions.
CLIENT_SECRETS = b"client secret encryption"
# What `subkeys` derives for other modules.
DPOP_NONCES = b"dpop nonce"


def key_id(key: str) -> str:
    """The short id stored with derived tokens' seeds and verifiers (which key made them)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def fingerprint(key: str) -> str:
    """How a key is named in the fleet registry: says nothing of the key itself."""
    return hmac.new(key.encode("utf-8"), b"tokensvc key fingerprint", hashlib.sha256).hexdigest()[:16]


def _subkey(key: str, purpose: bytes) -> bytes:
    return hmac.new(key.encode("utf-8"), b"tokensvc " + purpose, hashlib.sha256).digest()


class Keyring:
    """The server keys of this instance, and the index of the one that signs now."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one server key is required")
        self.keys = tuple(keys)
        self.ids = tuple(key_id(k) for k in self.keys)
        self.fingerprints = tuple(fingerprint(k) for k in self.keys)
        # Until the fleet says otherwise (fleet.py sets it at start-up, before any request),
        # the newest key signs.
        self.signing = 0
        self._verifier_keys = {kid: _subkey(k, b"client secret verifier")
                               for kid, k in zip(self.ids, self.keys, strict=True)}
        self._csrf_keys = tuple(_subkey(k, b"csrf") for k in self.keys)
        self._aeads = {(kid, purpose): AESGCM(_subkey(k, purpose))
                       for kid, k in zip(self.ids, self.keys, strict=True)
                       for purpose in (SIGNING_KEYS, REUSED_TOKENS, CLIENT_SECRETS)}

    @property
    def signing_id(self) -> str:
        return self.ids[self.signing]

    @property
    def signing_fingerprint(self) -> str:
        return self.fingerprints[self.signing]

    def subkeys(self, purpose: bytes) -> tuple[bytes, ...]:
        """The subkey for `purpose` of every listed key, in the keys' order (`signing` picks
        the one that makes new values; all of them check)."""
        return tuple(_subkey(k, purpose) for k in self.keys)

    # -- client secret verifiers ------------------------------------------------------------

    def secret_verifier(self, client_id: str, secret: str) -> str:
        """`<key id>:<HMAC>` of a client secret, kept beside its argon2 hash.

        Useless without the server key: the secret has 256 random bits, so it cannot be found
        from the HMAC even with the key; without the key not even a guess can be checked."""
        kid = self.signing_id
        return f"{kid}:{self._verifier_mac(self._verifier_keys[kid], client_id, secret)}"

    def verifier_matches(self, verifier: str, client_id: str, secret: str) -> bool | None:
        """True/False in constant time; None when the verifier's key is no longer listed (the
        secret must then go through argon2, and a new verifier is written)."""
        kid, _, mac = verifier.partition(":")
        key = self._verifier_keys.get(kid)
        if key is None:
            return None
        return hmac.compare_digest(self._verifier_mac(key, client_id, secret), mac)

    @staticmethod
    def _verifier_mac(key: bytes, client_id: str, secret: str) -> str:
        msg = client_id.encode("utf-8") + b"\x00" + secret.encode("utf-8")
        return base64.urlsafe_b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode("ascii")

    # -- CSRF tokens of the HTML forms ------------------------------------------------------

    def csrf_for(self, cookie: str) -> str:
        return hmac.new(self._csrf_keys[self.signing], cookie.encode(), hashlib.sha256).hexdigest()[:43]

    def csrf_ok(self, cookie: str, presented: str) -> bool:
        """Under any listed key: a form rendered by an instance that signed with another key of
        the deployment (during a key roll) still posts."""
        ok = False
        for key in self._csrf_keys:
            expected = hmac.new(key, cookie.encode(), hashlib.sha256).hexdigest()[:43]
            ok |= hmac.compare_digest(expected, presented)
        return ok

    # -- what Redis keeps encrypted ---------------------------------------------------------

    def seal(self, purpose: bytes, data: bytes, context: bytes) -> str:
        """`<key id>.<base64url(nonce | AES-256-GCM ciphertext)>` under the signing key's subkey
        for `purpose`; `context` (what the value belongs to) is authenticated, so a sealed value
        moved to another record does not open there."""
        kid = self.signing_id
        nonce = os.urandom(12)
        sealed = self._aeads[kid, purpose].encrypt(nonce, data, context)
        return f"{kid}.{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"

    def unseal(self, purpose: bytes, sealed: str, context: bytes) -> bytes | None:
        """The sealed value; None when its server key is no longer listed or it was altered."""
        kid, _, body = sealed.partition(".")
        aead = self._aeads.get((kid, purpose))
        if aead is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(body)
            return aead.decrypt(raw[:12], raw[12:], context)
        except (InvalidTag, binascii.Error, ValueError):
            return None

    def seal_client_secret(self, client_id: str, secret: str) -> str:
        """A client_secret_jwt client's secret as its record keeps it: sealed, bound to the id."""
        return self.seal(CLIENT_SECRETS, secret.encode("utf-8"), client_id.encode("utf-8"))

    def unseal_client_secret(self, client_id: str, sealed: str) -> bytes | None:
        """The secret (the HMAC key of its assertions); None when its server key is gone."""
        return self.unseal(CLIENT_SECRETS, sealed, client_id.encode("utf-8"))

    @staticmethod
    def sealed_under(sealed: str) -> str:
        """The id of the server key a sealed value is under."""
        return sealed.partition(".")[0]
