"""The public keys a client registers for private_key_jwt: RFC 7591 §2 `jwks`, an RFC 7517 JWK Set.

Checked when written (admin API, registration, console, CLI), so that authentication never
meets a key it cannot use: every key parses with PyJWT, holds no private member and is no
symmetric (`oct`) key (a shared key published as "public" would let anyone who reads the client
document sign as the client), RSA keys have at least 2048 bits, and each key names the one
family of algorithms it may verify (`ALGS_BY_KEY`), so an assertion's `alg` is pinned to the
key's type and never chosen by the assertion alone.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from tokensvc.errors import InvalidRequest

# What private_key_jwt assertions may be signed with, advertised in the metadata.
KEY_ALGS = ("RS256", "PS256", "ES256", "EdDSA")
MAX_KEYS = 10
MAX_BYTES = 16 * 1024
MIN_RSA_BITS = 2048
# RFC 7518 §6.2.2, §6.3.2, RFC 8037 §2, and `k` of a symmetric key: what only the holder has.
PRIVATE_MEMBERS = frozenset(("d", "p", "q", "dp", "dq", "qi", "oth", "k"))

# Parsed keys of one client: kid (None for the lone kid-less key) -> alg -> the key bound to it.
ParsedKeys = dict[str | None, dict[str, PyJWK]]


def _algs_for(jwk: Mapping[str, Any]) -> tuple[str, ...]:
    """The algorithms a key may verify: its type's, narrowed to its `alg` member if it has one."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        algs: tuple[str, ...] = ("RS256", "PS256")
    elif kty == "EC" and crv == "P-256":
        algs = ("ES256",)
    elif kty == "OKP" and crv == "Ed25519":
        algs = ("EdDSA",)
    elif kty == "oct":
        raise InvalidRequest("'jwks' must hold public keys only: a symmetric (oct) key is a shared "
                             "secret; use client_secret_jwt for that.")
    else:
        curve = f" curve {str(crv)[:16]!r}" if crv else ""
        raise InvalidRequest(f"'jwks': key type {str(kty)[:16]!r}{curve} is not supported; use RSA "
                             "(RS256, PS256), EC P-256 (ES256) or OKP Ed25519 (EdDSA).")
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in algs:
            raise InvalidRequest(f"'jwks': alg {str(alg)[:16]!r} does not fit a {kty} key; "
                                 f"use {' or '.join(algs)}.")
        return (alg,)
    return algs


def _parse_key(jwk: Mapping[str, Any]) -> dict[str, PyJWK]:
    """alg -> PyJWK for one registered key (PyJWK binds one algorithm, so an RSA key without
    `alg` gets one object per algorithm it may verify)."""
    algs = _algs_for(jwk)
    try:
        return {alg: PyJWK(dict(jwk), alg) for alg in algs}
    except (PyJWTError, ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise InvalidRequest(f"'jwks': a key does not parse ({str(exc)[:100]}).") from None


def check_jwks(value: Any) -> dict[str, Any]:
    """A JWK Set fit to store, or InvalidRequest naming what is wrong with it."""
    if not isinstance(value, dict) or not isinstance(value.get("keys"), list):
        raise InvalidRequest("'jwks' must be a JWK Set: an object {\"keys\": [...]} (RFC 7517 §5).")
    if len(orjson.dumps(value)) > MAX_BYTES:
        raise InvalidRequest(f"'jwks' must be at most {MAX_BYTES // 1024} KB.")
    found = value["keys"]
    if not 1 <= len(found) <= MAX_KEYS:
        raise InvalidRequest(f"'jwks' must hold 1 to {MAX_KEYS} keys.")
    kids: set[str] = set()
    for jwk in found:
        if not isinstance(jwk, dict):
            raise InvalidRequest("'jwks': every key must be a JSON object (a JWK).")
        private = sorted(PRIVATE_MEMBERS & set(jwk))
        if private and jwk.get("kty") != "oct":
            raise InvalidRequest(f"'jwks' must hold public keys only: a key has the private "
                                 f"member(s) {', '.join(private)}. Register the public half.")
        if jwk.get("use", "sig") != "sig":
            raise InvalidRequest("'jwks': a key's 'use' must be \"sig\" (it verifies signatures).")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise InvalidRequest("'jwks': a key's 'key_ops' must include \"verify\".")
        kid = jwk.get("kid")
        if kid is not None:
            if not isinstance(kid, str) or not 1 <= len(kid) <= 200:
                raise InvalidRequest("'jwks': a kid must be a string of 1 to 200 characters.")
            if kid in kids:
                raise InvalidRequest(f"'jwks': the kid {kid[:64]!r} is used twice; kids must be unique.")
            kids.add(kid)
        elif len(found) > 1:
            raise InvalidRequest("'jwks': with several keys every key needs a kid, which "
                                 "assertions name to pick theirs.")
        parsed = _parse_key(jwk)
        key = next(iter(parsed.values())).key
        if jwk.get("kty") == "RSA" and getattr(key, "key_size", 0) < MIN_RSA_BITS:
            raise InvalidRequest(f"'jwks': RSA keys must have at least {MIN_RSA_BITS} bits.")
    return {"keys": [dict(jwk) for jwk in found]}


def parse_jwks(jwks: Mapping[str, Any]) -> ParsedKeys:
    """The stored (already checked) set as ready-to-verify keys."""
    return {jwk.get("kid"): _parse_key(jwk) for jwk in jwks["keys"]}
