"""Domain values: clients, users and token records. Frozen, slotted, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# RFC 7523 §2.2 / OpenID Connect Core §9: the client proves itself with a signed JWT.
PRIVATE_KEY_JWT = "private_key_jwt"
CLIENT_SECRET_JWT = "client_secret_jwt"  # noqa: S105 -- a method name, not a secret
ASSERTION_METHODS = frozenset((PRIVATE_KEY_JWT, CLIENT_SECRET_JWT))
AUTH_METHODS = ("client_secret_basic", "client_secret_post", CLIENT_SECRET_JWT, PRIVATE_KEY_JWT,
                "none")


@dataclass(frozen=True, slots=True)
class Client:
    """A registered OAuth client with its finAPI-style per-client configuration."""

    client_id: str
    name: str
    secret_hash: str | None
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    website: str | None
    created_at: int
    access_token_ttl: int | None = None
    refresh_token_ttl: int | None = None
    reuse_tokens: bool | None = None
    max_user_login_attempts: int | None = None
    require_verified_users: bool = False
    # `<key id>:<HMAC>` of the secret under a server subkey (keyring.py): lets any worker of the
    # deployment accept the secret without argon2. Written with the hash, removed with it.
    secret_verifier: str | None = None
    # RFC 7662 §4: "own" lets the client introspect only the tokens issued to it; "all" makes it
    # a resource server that may introspect any client's tokens. Set by the admin only.
    introspection: str = "own"
    # RFC 8707: the resource servers (absolute URIs, sorted) the client may ask tokens for; a
    # request naming none gets all of them as its audience. Empty: any resource, and no
    # audience unless one is asked for.
    resources: tuple[str, ...] = ()
    # RFC 9068: "jwt" (self-contained access tokens signed by the deployment's key) or
    # "opaque" (tsv_at_...); None follows TOKENSVC_ACCESS_TOKEN_FORMAT.
    access_token_format: str | None = None
    # RFC 7591 §2 `jwks`: the client's PUBLIC keys as a JWK Set ({"keys": [...]}), which
    # private_key_jwt assertions are verified with (assertions.py). Checked on write
    # (jwkset.py): public members only, no symmetric keys, RSA >= 2048 bits, unique kids.
    jwks: dict[str, Any] | None = None
    # client_secret_jwt only: the secret itself, AES-256-GCM under a server subkey
    # (keyring.CLIENT_SECRETS, the client id authenticated with it), since the server needs it
    # as the HMAC key of the client's assertions. Never plaintext; None for every other method.
    secret_sealed: str | None = None
    # RFC 9449 §5.2: every token request of the client must carry a DPoP proof (its access
    # tokens are always DPoP-bound).
    dpop_bound_access_tokens: bool = False

    @property
    def is_public(self) -> bool:
        """RFC 6749 §2.1: a client that cannot keep a secret authenticates with `none`."""
        return self.token_endpoint_auth_method == "none"  # noqa: S105 -- a method name, not a secret


@dataclass(frozen=True, slots=True)
class User:
    """A resource owner who logs in with a password."""

    username: str
    password_hash: str
    verified: bool
    created_at: int


@dataclass(frozen=True, slots=True)
class Lockout:
    """A user's lockout state: consecutive failed logins through any client, and whether the
    user is locked (through whichever client's limit was reached; every client refuses them)."""

    failures: int = 0
    locked: bool = False


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What Redis keeps for a token (never the token itself); times are epoch milliseconds."""

    kind: str
    client_id: str
    username: str | None
    scope: str
    grant_id: str
    issued_at: int
    expires_at: int
    rotated_at: int | None = None
    # RFC 8707: the resource URIs the token is for, sorted and space-separated; None: any.
    audience: str | None = None
    # RFC 9449: the thumbprint (RFC 7638) of the DPoP key the token is bound to; None: a bearer
    # token.
    jkt: str | None = None


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A JWT signing key as Redis keeps it (records.py); times are epoch milliseconds."""

    kid: str
    alg: str
    jwk: dict[str, str]  # the public key's members (kty, crv, x, and y for EC)
    created: int
    activates: int
    # The longest lifetime (ms) of a token it may have signed: it stays published that long
    # (and a margin) after the next key takes over.
    longest: int
    sealed: str  # the private key, AES-256-GCM under a server subkey (keyring.py)
    superseded: int | None = None  # when the next key activates
    retires: int | None = None  # when it leaves the JWKS and Redis


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """RFC 6749 §5.1 successful response."""

    access_token: str
    expires_in: int
    scope: str
    refresh_token: str | None = None
    # RFC 9449 §5.1: "DPoP" for a token bound to the proof's key, "Bearer" otherwise.
    token_type: str = "Bearer"  # noqa: S105 -- a token type's name, not a secret

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "scope": self.scope or None,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body
