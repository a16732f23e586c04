"""What the service keeps in Redis, seen from outside: which key holds a token, whether a key
is there, and a key's expiry. The records' contents are the service's own business; tests that
read them say why in place."""

from __future__ import annotations

import time

import redis

from tests.support.config import SECRET_KEY
from tokensvc.store import keys
from tokensvc.tokens import TokenCodec

CODEC = TokenCodec([SECRET_KEY])


def grant_of(token: str) -> str:
    parsed = CODEC.parse(token)
    assert parsed is not None
    return parsed.grant_id


def token_key(token: str) -> str:
    """The key of the token's record (any kind: access, refresh, code)."""
    parsed = CODEC.parse(token)
    assert parsed is not None
    return keys.token(parsed.grant_id, parsed.digest)


def expire_now(r: redis.Redis, key: str) -> None:
    """Let Redis expire the key as its TTL would, without waiting for the TTL: PEXPIRE 1 ms,
    then until Redis says it is gone."""
    assert r.pexpire(key, 1)
    deadline = time.monotonic() + 2
    while r.pttl(key) != -2:
        assert time.monotonic() < deadline
        time.sleep(0.002)


def data_keys(r: redis.Redis) -> list[bytes]:
    """Every key but the fleet registry's and the JWT signing keys, which the running workers
    keep on their own (tokensvc/fleet.py, tokensvc/signing.py): what a request stored, or did
    not."""
    return [k for k in r.scan_iter() if not k.startswith((b"tsv:{fleet}:", b"tsv:{jwks}:"))]


def token_keys(r: redis.Redis) -> set[bytes]:
    """Every token record's key (access, refresh and code)."""
    return set(r.scan_iter(match="tsv:*:t:*", count=1000))


def failure_keys(r: redis.Redis) -> set[bytes]:
    """Every user's failed-login counter."""
    return set(r.scan_iter(match="tsv:{u:*}:fails", count=1000))


def snapshot(r: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key and its serialized value (not its TTL, which ticks)."""
    return {key: r.dump(key) for key in r.scan_iter(count=1000)}
