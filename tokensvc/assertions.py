"""RFC 7523 §2.2 and §3 client authentication with a JWT: `private_key_jwt` (signed with a key
of the client's registered `jwks`) and `client_secret_jwt` (an HMAC under the client's secret),
as OpenID Connect Core §9 names them; RFC 7521 §4.2 carries them (`client_assertion_type`,
`client_assertion`).

The client is found from the assertion's unverified `sub` (which must equal `iss`), and the
assertion must then verify under that client's registered method and key: the method is the
client's, never the assertion's choice, and so is the algorithm (pinned to the key's type, so an
HMAC "signed" with a public key, or `alg: none`, never verifies). Its `jti` is accepted once
across the deployment: one SET NX in Redis, kept until the assertion has expired.

The hot path does no key parsing: each client's parsed keys (or its unsealed secret) are kept
per worker, keyed by the record's own key material, so a record that changes (rotation, new
`jwks`) can never be checked against its former keys, whether or not the invalidation has
arrived yet.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping
from typing import Any

import jwt
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from tokensvc.errors import InvalidClient, InvalidRequest
from tokensvc.jwkset import KEY_ALGS, ParsedKeys, parse_jwks
from tokensvc.keyring import Keyring
from tokensvc.lru import LRU
from tokensvc.models import CLIENT_SECRET_JWT, PRIVATE_KEY_JWT, Client
from tokensvc.storage import OnceStorage

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# RFC 7518 §3.2: an HMAC key at least as long as the hash. A generated secret has 50 bytes
# (256 random bits), enough for HS256 and HS384, not for HS512.
SECRET_ALGS = ("HS256", "HS384")
# How far ahead an assertion's `exp` may be (RFC 7523 §3 lets the server limit it): a replay
# cache entry lives that long, and a stolen assertion is good for at most that long.
MAX_LIFETIME = 300
# Clock skew forgiven on `exp`, `nbf` and `iat`, seconds.
LEEWAY = 30
MAX_ASSERTION = 16 * 1024
MAX_JTI = 256
_REQUIRED = ["iss", "sub", "aud", "exp", "jti"]


def _refuse(description: str) -> InvalidClient:
    return InvalidClient(description)


def _unverified(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, read only to find the client and its key; nothing here is trusted."""
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except PyJWTError:
        raise _refuse("The client assertion is not a JWT (RFC 7523 §3).") from None
    return header, claims


class AssertionVerifier:
    """Checks client assertions for one worker; `issuer` is the deployment's issuer URL."""

    def __init__(self, store: OnceStorage, keyring: Keyring, issuer: str, size: int) -> None:
        self.store = store
        self.keyring = keyring
        self.issuer = issuer
        # client id -> (the record's key material, what was derived from it): parsed keys of a
        # private_key_jwt client, the unsealed secret of a client_secret_jwt client.
        self._keys: LRU[str, tuple[object, ParsedKeys | bytes | None]] = LRU(size)

    def audiences(self, endpoint: str) -> list[str]:
        """RFC 7523 §3: `aud` names this server: its issuer, its token endpoint, or the URL of
        the endpoint being called (what most client libraries send)."""
        return [self.issuer, f"{self.issuer}/oauth/token", f"{self.issuer}{endpoint}"]

    def _material(self, client: Client) -> ParsedKeys | bytes | None:
        source: object = client.jwks if client.token_endpoint_auth_method == PRIVATE_KEY_JWT \
            else client.secret_sealed
        cached = self._keys.get(client.client_id)
        if cached is not None and (cached[0] is source or cached[0] == source):
            return cached[1]
        derived: ParsedKeys | bytes | None = None
        if isinstance(source, dict):
            derived = parse_jwks(source)
        elif isinstance(source, str):
            derived = self.keyring.unseal_client_secret(client.client_id, source)
        self._keys.put(client.client_id, (source, derived))
        return derived

    def _key(self, client: Client, header: Mapping[str, Any]) -> tuple[Any, str]:
        """The key the assertion must verify under, and its one algorithm."""
        alg = header.get("alg")
        material = self._material(client)
        if client.token_endpoint_auth_method == PRIVATE_KEY_JWT:
            if alg not in KEY_ALGS:
                raise _refuse(f"A private_key_jwt assertion must be signed with one of "
                              f"{', '.join(KEY_ALGS)}, not {str(alg)[:16]!r}.")
            if not isinstance(material, dict) or not material:
                raise _refuse("This client has no registered keys (jwks).")
            kid = header.get("kid")
            if kid is None:
                if len(material) != 1:
                    raise _refuse("The client assertion has no kid, and the client has several "
                                  "keys: name the key in the header's kid.")
                keys = next(iter(material.values()))
            else:
                found = material.get(kid) if isinstance(kid, str) else None
                if found is None:
                    raise _refuse(f"No key registered for this client has the kid {str(kid)[:64]!r}.")
                keys = found
            key = keys.get(alg)
            if key is None:
                raise _refuse(f"The client's key does not verify {alg}; it takes "
                              f"{', '.join(keys)}.")
            return key, alg
        if alg not in SECRET_ALGS:
            raise _refuse(f"A client_secret_jwt assertion must be an HMAC ({', '.join(SECRET_ALGS)}), "
                          f"not {str(alg)[:16]!r}.")
        if not isinstance(material, bytes):
            raise _refuse("This client's secret can no longer be read (the server key it was "
                          "kept under is retired): rotate the client's secret.")
        return material, alg

    async def verify(self, params: Mapping[str, str], client: Client | None,
                     header: Mapping[str, Any], endpoint: str) -> None:
        """Raise unless `params`' assertion authenticates `client` (found by its `sub`)."""
        if client is None:
            raise _refuse("Client authentication failed.")
        method = client.token_endpoint_auth_method
        if method not in (PRIVATE_KEY_JWT, CLIENT_SECRET_JWT):
            raise _refuse(f"This client authenticates with {method}, not with a client assertion.")
        key, alg = self._key(client, header)
        try:
            claims = jwt.decode(params["client_assertion"], key, algorithms=[alg],
                                audience=self.audiences(endpoint), issuer=client.client_id,
                                leeway=LEEWAY, options={"require": _REQUIRED})
        except InvalidSignatureError:
            raise _refuse("The client assertion's signature does not verify with the client's "
                          f"registered {'key' if method == PRIVATE_KEY_JWT else 'secret'}.") from None
        except ExpiredSignatureError:
            raise _refuse("The client assertion has expired (exp).") from None
        except ImmatureSignatureError:
            raise _refuse("The client assertion is not valid yet (nbf or iat in the future).") from None
        except InvalidAudienceError:
            raise _refuse(f"The client assertion's aud must name this server: {self.issuer} or "
                          f"{self.issuer}/oauth/token.") from None
        except InvalidIssuerError:
            raise _refuse("The client assertion's iss must be the client id.") from None
        except MissingRequiredClaimError as exc:
            raise _refuse(f"The client assertion lacks the '{exc.claim}' claim.") from None
        except (InvalidAlgorithmError, DecodeError, PyJWTError) as exc:
            raise _refuse(f"The client assertion is invalid ({str(exc)[:100]}).") from None
        now = time.time()
        exp = claims["exp"]
        if exp - now > MAX_LIFETIME + LEEWAY:
            raise _refuse(f"The client assertion's exp is more than {MAX_LIFETIME} seconds ahead.")
        jti = claims["jti"]
        if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI:
            raise _refuse(f"The client assertion's jti must be a string of 1 to {MAX_JTI} characters.")
        # Named by kind and client (storage.OnceStorage): a jti is the client's to choose, so two
        # clients' (or a DPoP proof's) equal values never meet. Kept until the assertion expires.
        named = hashlib.sha256(f"assertion:{client.client_id}:{jti}".encode()).digest()
        once = base64.urlsafe_b64encode(named).rstrip(b"=").decode("ascii")
        ttl_ms = max(1000, int((exp + LEEWAY - now) * 1000))
        if not await self.store.first_use(once, ttl_ms):
            raise _refuse("This client assertion was already used: each jti is accepted once.")


def read_assertion(authorization: str | None, params: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The client id an assertion claims (its `sub`, equal to `iss`) and its header; refuses a
    request that mixes methods or sends half of RFC 7521 §4.2's pair."""
    if (authorization is not None and authorization[:6].lower() == "basic ") or "client_secret" in params:
        # RFC 6749 §2.3: the client MUST NOT use more than one authentication method.
        raise InvalidRequest("Use one client authentication method: a client assertion, or "
                             "Basic, or client_secret, not two.")
    assertion, kind = params.get("client_assertion"), params.get("client_assertion_type")
    if assertion is None or kind is None:
        raise InvalidRequest("client_assertion and client_assertion_type go together (RFC 7521 §4.2).")
    if kind != JWT_BEARER:
        raise _refuse(f"client_assertion_type must be {JWT_BEARER} (RFC 7523 §2.2).")
    if len(assertion) > MAX_ASSERTION:
        raise _refuse("The client assertion is too long.")
    header, claims = _unverified(assertion)
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(sub, str) or not sub or iss != sub:
        raise _refuse("The client assertion's iss and sub must both be the client id (RFC 7523 §3).")
    if params.get("client_id", sub) != sub:
        raise InvalidRequest("client_id differs from the client assertion's iss and sub.")
    return sub, header
