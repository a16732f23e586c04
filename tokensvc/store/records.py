"""What Redis holds, field by field: the one definition of every stored record.

Records are JSON (orjson). Token records use short field names because there is one per live
token; the Lua scripts read and write the same fields, and their headers point here, so a
field is renamed in this module and in `lua/` together, nowhere else.

Token record (`tsv:{g:<grant>}:t:<digest>`; the token itself is never stored, only its digest
in the key):
    k    kind: "at" access, "rt" refresh, "ac" authorization code
    c    client id
    u    username (absent for client_credentials)
    s    scope, space-separated
    g    grant id
    iat  issued at, epoch ms;  exp  expires at, epoch ms (Redis's TTL is the authority)
    gs   refresh only: the scope originally granted, the ceiling of a narrowed refresh
    aud  RFC 8707 audience: the resource URIs, sorted and space-separated (absent: any). On a
         code and a refresh token, the grant's: the ceiling of a narrowed redemption or refresh
    rot  refresh only, set by rotate.lua: when it was rotated (epoch ms), for the grace period
    jkt  RFC 9449: the thumbprint of the DPoP key the token is bound to (absent: bearer)
Code record: the token fields (k = "ac") and
    ru   redirect_uri the code was sent to: the request's, or the client's only registered one
    ro   1 when the authorization request omitted redirect_uri (so ru is the registered one):
         redemption may then omit it too (RFC 6749 §4.1.3); absent when the request named it
    cc, ccm  PKCE code_challenge and its method ("S256" or "plain"), when sent
    used set by redeem.lua on the first redemption; a second one revokes the grant
Reuse record (`tsv:{g:<grant>}:reuse`, finAPI token reuse):
    l    lifetime of the access token, ms
    a    key of the live access token
    sa, sr  the seeds the access (and refresh) token are derived from
    k    id of the server key they were derived under
    j    a JWT access token (in place of sa): the token itself, sealed under a server subkey
         (keyring.py), since a signature cannot be derived again
Signing key (field <kid> of the hash `tsv:{jwks}:keys`; signing_key_*.lua):
    kid, alg  the key id (RFC 7638 thumbprint) and its JWS algorithm (ES256, EdDSA)
    jwk  the public key's members (kty, crv, x, y)
    p    the private key (PKCS#8 DER), sealed under a server subkey (keyring.py)
    c    created, epoch ms (Redis TIME);  a  activates: it signs from then on
    l    the longest lifetime of a token it may sign, ms (raised before a longer one is signed)
    s    superseded: when the next key activates;  r  retires: s + l + a margin, when it leaves
Client and user records: the dataclass fields of `models.Client` and `models.User`; a field
added later reads as its default in a record written before it (`introspection` "own",
`resources` none, `jwks` and `secret_sealed` null). Of a client's credentials:
    secret_hash      argon2id hash of the secret (null: public or private_key_jwt, no secret)
    secret_verifier  `<key id>:<HMAC>` of the secret under a server subkey (clients.py)
    secret_sealed    client_secret_jwt only: `<key id>.<base64url(nonce | AES-256-GCM)>`, the
                     secret sealed under the keyring.CLIENT_SECRETS subkey with the client id
                     authenticated, since the server must hold it as the assertions' HMAC key;
                     null for every other method, and dropped when the client leaves that method
    jwks             RFC 7517 JWK Set of the client's public keys ({"keys": [...]}, checked by
                     jwkset.py: no private members, no oct keys), for private_key_jwt
Client assertion `jti`: a once-only key (keys.once) named by the digest of
    `assertion:<client id>:<jti>`, set NX with a TTL until the assertion's exp plus the leeway.
Consent (field <client id> of `tsv:{u:...}:consents`):  s  scopes approved;  t  when (epoch ms)
Lockout (login_attempt.lua, login_result.lua): `tsv:{u:...}:fails` the consecutive failed
    password checks, through any client (an integer); `tsv:{u:...}:locked` "1" while the user
    is locked, set when the failures reach the limit of the client in use and then refused by
    every client; both expire together after the lockout period (none when it is 0), and an
    admin's unlock deletes both.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

import orjson

from tokensvc.models import Client, SigningKeyRecord, TokenRecord, User


def encode_token(kind: str, client_id: str, username: str | None, scope: str, grant_id: str,
                 issued_at: int, ttl_ms: int, aud: str | None = None,
                 jkt: str | None = None) -> bytes:
    d: dict[str, Any] = {"k": kind, "c": client_id, "s": scope, "g": grant_id,
                         "iat": issued_at, "exp": issued_at + ttl_ms}
    if jkt is not None:
        d["jkt"] = jkt
    if username is not None:
        d["u"] = username
    if kind == "rt":
        d["gs"] = scope
    if aud is not None:
        d["aud"] = aud
    return orjson.dumps(d)


def decode_token(raw: bytes | str | None, kind: str | None = None) -> TokenRecord | None:
    """A stored token record; None for absent or of another kind."""
    if raw is None:
        return None
    d = orjson.loads(raw)
    if kind is not None and d["k"] != kind:
        return None
    return TokenRecord(
        kind=d["k"], client_id=d["c"], username=d.get("u"), scope=d["s"], grant_id=d["g"],
        issued_at=int(d["iat"]), expires_at=int(d["exp"]), rotated_at=d.get("rot"),
        audience=d.get("aud"), jkt=d.get("jkt"),
    )


def encode_code(client_id: str, username: str, scope: str, grant_id: str, redirect_uri: str,
                redirect_uri_sent: bool, challenge: str | None, method: str | None,
                issued_at: int, ttl_ms: int, aud: str | None = None, jkt: str | None = None) -> bytes:
    d: dict[str, Any] = {"k": "ac", "c": client_id, "u": username, "s": scope, "g": grant_id,
                         "ru": redirect_uri, "iat": issued_at, "exp": issued_at + ttl_ms}
    if not redirect_uri_sent:
        d["ro"] = 1
    if aud is not None:
        d["aud"] = aud
    if challenge is not None:
        d["cc"] = challenge
        d["ccm"] = method or "plain"
    if jkt is not None:
        d["jkt"] = jkt
    return orjson.dumps(d)


def encode_reuse(lifetime_ms: int, access_key: str, access_seed: str | None,
                 refresh_seed: str | None, key_id: str, sealed_jwt: str | None = None) -> bytes:
    d: dict[str, Any] = {"l": lifetime_ms, "a": access_key, "k": key_id}
    if access_seed is not None:
        d["sa"] = access_seed
    if refresh_seed is not None:
        d["sr"] = refresh_seed
    if sealed_jwt is not None:
        d["j"] = sealed_jwt
    return orjson.dumps(d)


def decode_reuse(raw: bytes) -> tuple[int, str | None, str | None, str, str | None]:
    """(lifetime ms, access seed, refresh seed, key id, sealed JWT); absent ones None."""
    d = orjson.loads(raw)
    return int(d["l"]), d.get("sa"), d.get("sr"), d["k"], d.get("j")


def encode_signing_key(kid: str, alg: str, jwk: dict[str, str], longest_ms: int,
                       sealed: str) -> bytes:
    """A new key's record; signing_key_add.lua sets `c` and `a`."""
    return orjson.dumps({"kid": kid, "alg": alg, "jwk": jwk, "l": longest_ms, "p": sealed})


def decode_signing_key(raw: bytes | str) -> SigningKeyRecord:
    d = orjson.loads(raw)
    return SigningKeyRecord(kid=d["kid"], alg=d["alg"], jwk=d["jwk"], created=int(d["c"]),
                            activates=int(d["a"]), longest=int(d["l"]), sealed=d["p"],
                            superseded=None if d.get("s") is None else int(d["s"]),
                            retires=None if d.get("r") is None else int(d["r"]))


def encode_client(client: Client) -> bytes:
    return orjson.dumps(asdict(client))


def decode_client(raw: bytes | str) -> Client:
    """A client record. The words most clients share (grant types, scopes, the auth method) are
    interned: a worker caches up to 100,000 records, and one copy of "client_credentials" per
    record would be a third of each record's memory (deploy/SIZING.md)."""
    d = orjson.loads(raw)
    for name in ("grant_types", "scopes"):
        d[name] = tuple(sys.intern(v) for v in d[name])
    d["redirect_uris"] = tuple(d["redirect_uris"])
    d["token_endpoint_auth_method"] = sys.intern(d["token_endpoint_auth_method"])
    if "introspection" in d:
        d["introspection"] = sys.intern(d["introspection"])
    if "resources" in d:
        d["resources"] = tuple(d["resources"])
    if d.get("access_token_format") is not None:
        d["access_token_format"] = sys.intern(d["access_token_format"])
    return Client(**d)


def client_name_member(client: Client) -> str:
    """The name index entry: sorts case-insensitively, ties broken by id."""
    return f"{client.name.casefold()}\0{client.client_id}"


def encode_user(user: User) -> bytes:
    return orjson.dumps(asdict(user))


def decode_user(raw: bytes | str) -> User:
    return User(**orjson.loads(raw))


def encode_consent(scopes: frozenset[str], now_ms: int) -> bytes:
    return orjson.dumps({"s": sorted(scopes), "t": now_ms})


def decode_consent(raw: bytes | str) -> tuple[frozenset[str], int]:
    doc = orjson.loads(raw)
    return frozenset(doc["s"]), int(doc["t"])
