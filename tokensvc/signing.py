"""JWT signing keys (RFC 9068 access tokens, `GET /.well-known/jwks.json`): made, published,
activated and retired through Redis, so that every instance signs with the same key, and each
key is published before it signs and until the last token it signed has expired.

**Which key signs.** On every instance, the newest key whose activation time has passed on the
instance's own clock (keys ordered by activation, then kid); the earliest key while none has.
A rule, not a choice, so instances agree without talking to each other. Signing is in memory
(PyJWT over `cryptography`), with the key set each worker re-reads from Redis every
`signing_key_refresh` seconds in the background: no Redis round trip on a request.

**When keys are made.** A key is made at least `signing_key_publish_ahead` before it
activates, and is in the JWKS from then on: to activate when the active key has signed for
`signing_key_rotation`, made by the first worker to see it due (the publish-ahead and two
readings before), or at once by `rotate_now()` (`POST /admin/signing-keys/rotate`, `tokensvc
keys rotate`) to activate the publish-ahead later. However many workers decide at once, one
key is added: the script is a compare-and-set on the newest key (signing_key_add.lua). The
very first key activates at once: there is nothing else to sign with.

**The bound.** A worker trusts the key set it read for half the publish-ahead; past that it
reads again before it signs (a Redis round trip then only, and a 503 when Redis does not
answer). A key it does not know was made after its reading, so activates at least the
publish-ahead after it, later than the trust lasts: no worker signs with a superseded key for
want of knowing its successor. Two instances therefore sign with different keys only within
the difference of their clocks around an activation. Should Redis lose a key it had accepted
(a failover before replication; `TOKENSVC_REDIS_WAIT_REPLICAS` guards against it), every
worker follows the key set Redis holds within one refresh interval.

**Retirement.** A superseded key stays published until its successor activates plus the
longest lifetime of a token it may have signed plus a margin (the publish-ahead). A worker
about to sign a token that outlives what the key's record allows raises that first (one Redis
write, once per longer lifetime). Past its retirement a key leaves Redis and the JWKS.

**At rest.** Redis holds private keys only sealed with AES-256-GCM under a subkey of the
server key (keyring.py): a copy of Redis yields no private key. When the fleet moves to a new
server key, each worker that holds both seals the keys anew under it on its next reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from tokensvc import metrics
from tokensvc.dpop import thumbprint
from tokensvc.errors import StoreUnavailable, TemporarilyUnavailable
from tokensvc.jwtaccess import TYP, grant_of_jti, looks_like_jwt
from tokensvc.keyring import SIGNING_KEYS, Keyring
from tokensvc.models import SigningKeyRecord
from tokensvc.settings import Settings
from tokensvc.storage import SigningKeyStorage
from tokensvc.store import records
from tokensvc.tokens import ACCESS, Parsed, digest

log = logging.getLogger("tokensvc.signing")

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
# RFC 9068 §2.2's required claims; a token without one is not ours.
_REQUIRED = ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"]
# Seconds of clock difference between instances tolerated on `iat` and `exp` when this service
# checks its own tokens (the record's TTL in Redis decides expiry anyway).
_LEEWAY = 30


def now_ms() -> int:
    return int(time.time() * 1000)


def generate(alg: str) -> tuple[PrivateKey, dict[str, str]]:
    """A new private key for `alg` (ES256: P-256; EdDSA: Ed25519) and its public JWK members."""
    private: PrivateKey
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return private, {m: str(jwk[m]) for m in ("kty", "crv", "x", "y") if m in jwk}


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key as a worker holds it: the record, its public key, and its private key when a
    server key this worker holds unseals it."""

    record: SigningKeyRecord
    public: Any
    private: PrivateKey | None
    jwk: dict[str, str]  # as published: the public members, kid, alg, use

    @property
    def kid(self) -> str:
        return self.record.kid

    @property
    def alg(self) -> str:
        return self.record.alg


class Signer:
    """Signs and checks this deployment's JWT access tokens; keeps its signing keys on schedule."""

    def __init__(self, store: SigningKeyStorage, keyring: Keyring, settings: Settings) -> None:
        self.store = store
        self.keyring = keyring
        self.issuer = settings.issuer_url
        self.alg = settings.signing_alg
        self.rotation_ms = settings.signing_key_rotation * 1000
        self.ahead_ms = settings.signing_key_publish_ahead * 1000
        self.margin_ms = self.ahead_ms
        self.refresh_s = settings.signing_key_refresh
        self.trust_s = settings.signing_key_publish_ahead / 2
        # A cached JWKS is still good for this long: the next key is in it before it signs.
        self.max_age = settings.signing_key_publish_ahead // 2
        self.default_longest_ms = settings.access_token_ttl * 1000
        # The next key is made this long after the active one began signing: the publish-ahead
        # before its turn, and two readings more, so a reading that comes late still makes it
        # in time to activate on schedule.
        self._due_ms = self.rotation_ms - self.ahead_ms - int(self.refresh_s * 2000)
        self.keys: tuple[SigningKey, ...] = ()  # by (activation, kid)
        self.jwks_body = b'{"keys":[]}'
        self._by_kid: dict[str, SigningKey] = {}
        self._loaded: dict[tuple[str, str], tuple[Any, PrivateKey | None]] = {}
        self._active: SigningKey | None = None
        self._since = self._until = 0  # the epoch ms in which _active holds
        self._covered = 0  # the longest lifetime every key that may sign allows, ms
        self._read_at = -math.inf  # time.monotonic() of the last reading
        self._jws = jwt.PyJWS()
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()

    # -- the request path: memory only -----------------------------------------------------

    def _current(self, now: int) -> SigningKey | None:
        if self._since <= now < self._until:
            return self._active
        active: SigningKey | None = None
        until = 2**62
        for key in self.keys:
            if key.record.activates > now:
                until = key.record.activates
                break
            active = key
        if active is None and self.keys:  # none active yet (a clock behind Redis's): the first
            active, self._since = self.keys[0], 0
        else:
            self._since = 0 if active is None else active.record.activates
        self._active, self._until = active, until
        return active

    def _signers(self, now: int) -> list[SigningKey]:
        """The keys that may sign from now on: the active one and any waiting to."""
        return [k for k in self.keys if k.record.superseded is None or k.record.superseded > now]

    def ready(self, lifetime_ms: int) -> bool:
        """Whether a token of this lifetime may be signed now without asking Redis first."""
        return time.monotonic() - self._read_at < self.trust_s and lifetime_ms <= self._covered

    async def prepare(self, lifetime_ms: int) -> None:
        """What `ready` found missing: a fresh reading of the keys (StoreUnavailable when Redis
        does not answer), the keys that may sign kept published for this lifetime, and a key
        this worker can sign with (else 503, before anything is written or spent)."""
        if time.monotonic() - self._read_at >= self.trust_s:
            await self.refresh()
        short = [k for k in self._signers(now_ms()) if k.record.longest < lifetime_ms]
        for key in short:
            await self.store.cover_signing_key(key.kid, lifetime_ms, self.margin_ms)
        if short:
            await self.refresh()
        current = self._current(now_ms())
        if current is None:
            raise StoreUnavailable("no JWT signing key has been read from Redis yet")
        if current.private is None:
            raise TemporarilyUnavailable("The token signing key is not usable on this instance.")

    def sign(self, claims: dict[str, object]) -> str:
        """A JWT (`typ: at+jwt`, `kid`) over the claims, with the key that signs now."""
        key = self._current(now_ms())
        if key is None:
            raise StoreUnavailable("no JWT signing key has been read from Redis yet")
        if key.private is None:
            raise TemporarilyUnavailable("The token signing key is not usable on this instance.")
        return self._jws.encode(orjson.dumps(claims), key.private, algorithm=key.alg,
                                headers={"kid": key.kid, "typ": TYP})

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a JWT access token this deployment signed with a published key, alg
        pinned to the key's, `typ` at+jwt, `iss` ours; None for anything else."""
        try:
            header = self._jws.get_unverified_header(token)
        except jwt.InvalidTokenError:
            return None
        kid = header.get("kid")
        key = self._by_kid.get(kid) if isinstance(kid, str) else None
        if key is None or header.get("alg") != key.alg or header.get("typ") != TYP:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.public, algorithms=[key.alg], issuer=self.issuer, leeway=_LEEWAY,
                options={"verify_aud": False, "require": _REQUIRED})
        except jwt.InvalidTokenError:
            return None
        return claims

    def parse(self, token: str) -> Parsed | None:
        """A JWT access token as the record lookups see any token: its grant and the digest of
        its jti (jwtaccess.py). Never a bare jti: only what `verify` accepts."""
        if not looks_like_jwt(token):
            return None
        claims = self.verify(token)
        jti = None if claims is None else claims.get("jti")
        if not isinstance(jti, str) or not jti.isascii():
            return None
        grant_id = grant_of_jti(jti)
        return None if grant_id is None else Parsed(ACCESS, grant_id, digest(jti))

    # -- the key set: read, kept on schedule, installed --------------------------------------

    async def _read(self) -> list[SigningKeyRecord]:
        found = [records.decode_signing_key(raw) for raw in await self.store.signing_keys()]
        return sorted(found, key=lambda r: (r.activates, r.kid))

    async def refresh(self) -> None:
        """Read the keys; make the next one when due; drop retired ones; seal anew under the
        fleet's server key; hold the result. StoreUnavailable when Redis does not answer."""
        async with self._lock:
            found = await self._read()
            now = now_ms()
            newest = found[-1] if found else None
            if newest is None:
                await self._add("", 0, 0)
                found = await self._read()
            elif newest.activates <= now and now >= newest.activates + self._due_ms:
                await self._add(newest.kid, self.ahead_ms, newest.activates + self.rotation_ms)
                found = await self._read()
            if any(r.retires is not None and r.retires < now for r in found):
                if await self.store.prune_signing_keys():
                    found = await self._read()
            await self._reseal(found)
            self._install(found)

    async def rotate_now(self) -> tuple[SigningKeyRecord, bool]:
        """The key that signs next: made now to activate after the publish-ahead (True), or the
        one already waiting to (False), so repeated calls cannot pile keys up."""
        for _ in range(3):
            found = await self._read()
            newest = found[-1] if found else None
            if newest is not None and newest.activates > now_ms():
                await self.refresh()
                return newest, False
            made = await self._add("" if newest is None else newest.kid, self.ahead_ms, 0)
            await self.refresh()
            if made is not None and made in self._by_kid:
                return self._by_kid[made].record, True
        raise TemporarilyUnavailable("Signing keys are changing; retry shortly.")

    async def _add(self, newest_kid: str, ahead_ms: int, not_before_ms: int) -> str | None:
        """Make a key and offer it (signing_key_add.lua); its kid, or None when another worker
        added one first."""
        private, jwk = generate(self.alg)
        kid = thumbprint(jwk)
        der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        sealed = self.keyring.seal(SIGNING_KEYS, der, kid.encode())
        record = records.encode_signing_key(kid, self.alg, jwk, self.default_longest_ms, sealed)
        activates = await self.store.add_signing_key(newest_kid, record, ahead_ms, not_before_ms,
                                                     self.margin_ms)
        if activates is None:
            return None
        when = datetime.fromtimestamp(activates / 1000, UTC).isoformat(timespec="seconds")
        log.info("made JWT signing key %s (%s); it signs from %s", kid, self.alg, when)
        return kid

    async def _reseal(self, found: list[SigningKeyRecord]) -> None:
        for rec in found:
            if self.keyring.sealed_under(rec.sealed) == self.keyring.signing_id:
                continue
            der = self.keyring.unseal(SIGNING_KEYS, rec.sealed, rec.kid.encode())
            if der is not None:
                await self.store.reseal_signing_key(
                    rec.kid, rec.sealed, self.keyring.seal(SIGNING_KEYS, der, rec.kid.encode()))

    def _load(self, rec: SigningKeyRecord) -> tuple[Any, PrivateKey | None]:
        public = jwt.PyJWK({**rec.jwk, "alg": rec.alg}).key
        der = self.keyring.unseal(SIGNING_KEYS, rec.sealed, rec.kid.encode())
        if der is None:
            log.error("JWT signing key %s is sealed under server key %s, which this worker does "
                      "not hold: it cannot sign with it. Give every instance the deployment's "
                      "TOKENSVC_SECRET_KEYS; after starting the deployment afresh on new keys, "
                      "run `tokensvc keys rotate` or delete the Redis key %s", rec.kid,
                      self.keyring.sealed_under(rec.sealed), "tsv:{jwks}:keys")
            return public, None
        private = serialization.load_der_private_key(der, password=None)
        return public, (private if isinstance(private, PrivateKey) else None)

    def _install(self, found: list[SigningKeyRecord]) -> None:
        now = now_ms()
        loaded = {(r.kid, r.sealed): self._loaded.get((r.kid, r.sealed)) or self._load(r)
                  for r in found}
        keys = tuple(SigningKey(r, *loaded[r.kid, r.sealed],
                                {**r.jwk, "kid": r.kid, "alg": r.alg, "use": "sig"}) for r in found)
        self._loaded = loaded
        self.keys = keys
        self._by_kid = {k.kid: k for k in keys}
        self._since = self._until = 0
        signers = self._signers(now)
        # 0 when one of them cannot sign here: then `prepare` looks before every JWT.
        self._covered = min((k.record.longest for k in signers), default=0) if all(
            k.private is not None for k in signers) else 0
        self._read_at = time.monotonic()
        published = [k.jwk for k in keys if k.record.retires is None or k.record.retires > now]
        self.jwks_body = orjson.dumps({"keys": published})
        active = self._current(now)
        age = 0.0 if active is None else max(0.0, (now - active.record.activates) / 1000)
        metrics.signing_keys(age, len(published))

    async def run(self) -> None:
        """Re-read the keys every `signing_key_refresh` seconds for the life of the worker."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.refresh_s)
            if self._stop.is_set():
                return
            try:
                await self.refresh()
            except Exception as exc:  # Redis down or slow: read again next time
                log.debug("reading the signing keys failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
