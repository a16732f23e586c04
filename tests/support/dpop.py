"""A DPoP client's side, built with PyJWT like any client library would: keys and proofs."""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tokensvc.dpop import thumbprint, token_hash

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


class DPoPKey:
    """A client's proof key: signs proofs whose header carries its public JWK."""

    def __init__(self, alg: str = "ES256", private: PrivateKey | None = None) -> None:
        self.alg = alg
        if private is None:
            if alg == "EdDSA":
                private = ed25519.Ed25519PrivateKey.generate()
            elif alg.startswith(("RS", "PS")):
                private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            else:
                private = ec.generate_private_key(ec.SECP384R1() if alg == "ES384" else ec.SECP256R1())
        self.private = private
        public = private.public_key()
        algo: Any = (OKPAlgorithm if alg == "EdDSA" else
                     RSAAlgorithm if alg.startswith(("RS", "PS")) else ECAlgorithm)
        self.jwk: dict[str, Any] = algo.to_jwk(public, as_dict=True)
        self.jkt = thumbprint(self.jwk)

    def proof(self, method: str, url: str, *, access_token: str | None = None,
              nonce: str | None = None, iat: float | None = None, jti: str | None = None,
              headers: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> str:
        """A proof for one request; `headers` and `claims` override or add members (to forge)."""
        payload: dict[str, Any] = {"jti": jti or secrets.token_urlsafe(16), "htm": method, "htu": url,
                                   "iat": int(time.time() if iat is None else iat)}
        if access_token is not None:
            payload["ath"] = token_hash(access_token)
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(claims or {})
        header = {"typ": "dpop+jwt", "jwk": self.jwk, **(headers or {})}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=header)
