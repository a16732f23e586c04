"""RFC 9449 DPoP proofs: read and checked one way for the token endpoint, the bearer endpoints
and the resource-server kit.

Pure: no Redis and no HTTP here. What a proof may be used for once (its `jti`) is decided by the
caller's replay store, since the service's must hold across the deployment (Redis) and the kit's
only in its own process; this module says which key and for how long (`replay_key`,
`REPLAY_TTL_S`). Server nonces (`Nonces`) are stateless: an HMAC of the current time window under
a key every instance holds, so any instance accepts the nonce another one handed out.

The proof's JWS is verified by PyJWT against the public key in its own header, with the
algorithm pinned to the one that header names and that key's type allows; `none` and every
HMAC algorithm are refused before any key is built (a symmetric key cannot be in a proof).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import struct
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from tokensvc.lru import LRU

TYP = "dpop+jwt"
SCHEME = "DPoP"
# What a proof may be signed with (`dpop_signing_alg_values_supported`), each with the JWK key
# type and, for the curves, the one curve that goes with it.
ALGS: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
}
# RFC 9449 §11.1: how far `iat` may lie in the past, and (clock skew) in the future. A proof's
# jti is remembered for the whole window, so a replay inside it is caught and one outside it is
# refused by its `iat`.
IAT_PAST_S = 60
IAT_FUTURE_S = 10
REPLAY_TTL_S = IAT_PAST_S + IAT_FUTURE_S
# Far beyond a proof with an RSA-4096 key (about 1.5 KB); a larger header is not worth parsing.
MAX_PROOF_LENGTH = 8 * 1024
_MAX_JTI = 256
_PRIVATE_MEMBERS = frozenset(("d", "p", "q", "dp", "dq", "qi", "oth", "k"))
# RFC 7638 §3.2: the members a key's thumbprint is taken over, by key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
_JWS = jwt.PyJWS(options={"verify_signature": True})
# A client signs every proof with the same key, so every proof of it starts with the same
# header segment: the key built from it (and its thumbprint) is kept, by that segment, for the
# next proof. Only keys that were built are kept, and only from headers short enough (an RSA-4096
# key's is about 1 KB) that the cache stays a few MB at most.
_KEYS_KEPT = 10_000
_MAX_KEPT_HEADER = 1536


class ProofError(Exception):
    """The proof is missing, malformed, not for this request, or replayed (`invalid_dpop_proof`)."""


class NonceRequired(ProofError):
    """The server wants its nonce in the proof (`use_dpop_nonce`); the answer carries a fresh one."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: base64url SHA-256 of the key's required members, sorted, without spaces. The
    `jkt` a bound token carries in `cnf`, and the signing keys' `kid`."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty", ""))
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise ProofError("The proof's key is not an EC, OKP or RSA public key.")
    canonical = orjson.dumps({m: jwk[m] for m in members}, option=orjson.OPT_SORT_KEYS)
    return b64url(hashlib.sha256(canonical).digest())


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def is_thumbprint(value: str) -> bool:
    """Whether `value` can be a SHA-256 thumbprint: 43 base64url characters, unpadded (a
    `dpop_jkt` of any other shape could never match a proof, so it is refused when asked)."""
    return len(value) == 43 and _B64URL.issuperset(value)


def token_hash(token: str) -> str:
    """RFC 9449 §4.2 `ath`: base64url SHA-256 of the access token's ASCII bytes."""
    return b64url(hashlib.sha256(token.encode("ascii", "replace")).digest())


@functools.lru_cache(maxsize=4096)
def normalize_htu(url: str) -> str:
    """RFC 9449 §4.3: the target URI without query and fragment, compared after RFC 3986 §6.2.2
    and §6.2.3 normalization (case of scheme and host, default port, empty path)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = host if port is None or port == default else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


@dataclass(frozen=True, slots=True)
class _ProofKey:
    alg: str
    jkt: str
    key: Any


_keys: LRU[str, _ProofKey] = LRU(_KEYS_KEPT)


@dataclass(frozen=True, slots=True)
class Proof:
    """A checked proof: the thumbprint of the key it was signed with (what a token is bound to)
    and its `jti`, for the caller's replay store."""

    jkt: str
    jti: str

    def replay_key(self) -> str:
        """One string per (key, jti): two clients that happen to pick the same jti do not
        collide, and the jti itself (client-chosen, unbounded alphabet) never becomes a key."""
        return b64url(hashlib.sha256(f"{self.jkt}.{self.jti}".encode()).digest())


class Nonces:
    """RFC 9449 §8: server nonces without server state. A nonce names a time window and carries
    an HMAC of it; the current and the previous window are accepted, so a nonce lives between
    one and two windows, on every instance that holds the key."""

    def __init__(self, key: bytes, window_s: int = 60) -> None:
        self._key = key
        self.window_s = window_s

    def _for(self, window: int) -> str:
        packed = struct.pack(">Q", window)
        return b64url(packed + hmac.new(self._key, packed, hashlib.sha256).digest()[:16])

    def current(self, now: float | None = None) -> str:
        return self._for(int((time.time() if now is None else now) // self.window_s))

    def valid(self, nonce: object, now: float | None = None) -> bool:
        if not isinstance(nonce, str) or len(nonce) > 64:
            return False
        window = int((time.time() if now is None else now) // self.window_s)
        return any(hmac.compare_digest(nonce, self._for(w)) for w in (window, window - 1))


def _header(proof: str) -> tuple[str, dict[str, Any]]:
    try:
        header = _JWS.get_unverified_header(proof)
    except jwt.InvalidTokenError:
        raise ProofError("The DPoP proof is not a JWS.") from None
    if header.get("typ") != TYP:
        raise ProofError("The DPoP proof's typ must be dpop+jwt.")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGS:
        raise ProofError("The DPoP proof's alg is not one this server accepts.")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise ProofError("The DPoP proof carries no public key (jwk).")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise ProofError("The DPoP proof's jwk must be a public key.")
    kty, crv = ALGS[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise ProofError(f"The DPoP proof's key does not fit its alg {alg}.")
    return alg, jwk


def _key_of(proof: str) -> _ProofKey:
    """The proof's public key, from its header: built once per header (see `_keys`)."""
    segment = proof.partition(".")[0]
    known = _keys.get(segment)
    if known is not None:
        return known
    alg, jwk = _header(proof)
    try:
        jkt = thumbprint(jwk)
        key = jwt.PyJWK(jwk, algorithm=alg).key
    except (jwt.PyJWKError, ValueError):
        raise ProofError("The DPoP proof's jwk is not a usable public key.") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ProofError("The DPoP proof's RSA key is shorter than 2048 bits.")
    known = _ProofKey(alg, jkt, key)
    if len(segment) <= _MAX_KEPT_HEADER:
        _keys.put(segment, known)
    return known


def check(proof: str | None, method: str, url: str, *, access_token: str | None = None,
          nonces: Nonces | None = None, now: float | None = None) -> Proof:
    """The proof of one request, checked per RFC 9449 §4.3 (all but the replay: see the module
    docstring). `access_token` is the token presented with it (its `ath` must match); `nonces`,
    when given, demands a valid server nonce (NonceRequired otherwise)."""
    if not proof:
        raise ProofError("A DPoP proof is required.")
    if len(proof) > MAX_PROOF_LENGTH:
        raise ProofError("The DPoP proof is too large.")
    known = _key_of(proof)
    try:
        payload = _JWS.decode(proof, known.key, algorithms=[known.alg])
        claims = orjson.loads(payload)
    except (jwt.InvalidTokenError, orjson.JSONDecodeError, ValueError):
        raise ProofError("The DPoP proof's signature does not verify with its key.") from None
    if not isinstance(claims, dict):
        raise ProofError("The DPoP proof's payload is not a JSON object.")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI:
        raise ProofError("The DPoP proof needs a jti.")
    if claims.get("htm") != method:
        raise ProofError("The DPoP proof is for another HTTP method.")
    htu = claims.get("htu")
    if not isinstance(htu, str) or normalize_htu(htu) != normalize_htu(url):
        raise ProofError("The DPoP proof is for another URL.")
    iat = claims.get("iat")
    moment = time.time() if now is None else now
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise ProofError("The DPoP proof needs a numeric iat.")
    if not moment - IAT_PAST_S <= iat <= moment + IAT_FUTURE_S:
        raise ProofError("The DPoP proof's iat is outside the accepted window.")
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(ath, token_hash(access_token)):
            raise ProofError("The DPoP proof is for another access token (ath).")
    if nonces is not None and not nonces.valid(claims.get("nonce"), moment):
        raise NonceRequired("The authorization server requires a DPoP nonce in the proof.")
    return Proof(known.jkt, jti)
