"""The deployment's JWT signing keys: one hash in the `{jwks}` slot, changed only by scripts
(signing_key_*.lua), so that whichever instances act at once, the set stays one consistent
schedule of keys (records.py names the fields, tokensvc/signing.py decides what to do)."""

from __future__ import annotations

from tokensvc.store import keys
from tokensvc.store.connection import Connection, map_redis_errors


class SigningKeyStore(Connection):
    """Reads through redis-py (a few times a minute per worker, never on a request); writes go
    through `_write`, so they reach replicas when `redis_wait_replicas` asks for it."""

    @map_redis_errors
    async def signing_keys(self) -> list[bytes | str]:
        """Every key's record, in no order."""
        found: list[bytes | str] = await self.redis.hvals(keys.SIGNING_KEYS)
        return found

    @map_redis_errors
    async def add_signing_key(self, newest_kid: str, record: bytes, ahead_ms: int,
                              not_before_ms: int, margin_ms: int) -> int | None:
        """The new key's activation (epoch ms), or None when the newest key is no longer
        `newest_kid` (another instance added one first)."""
        added, value = await self._write(
            "signing_key_add", [keys.SIGNING_KEYS],
            [newest_kid, record, ahead_ms, not_before_ms, margin_ms], hot=False)
        return int(value) if int(added) else None

    @map_redis_errors
    async def cover_signing_key(self, kid: str, lifetime_ms: int, margin_ms: int) -> bool:
        return bool(await self._write("signing_key_cover", [keys.SIGNING_KEYS],
                                      [kid, lifetime_ms, margin_ms], hot=False))

    @map_redis_errors
    async def prune_signing_keys(self) -> int:
        return int(await self._write("signing_key_prune", [keys.SIGNING_KEYS], [], hot=False))

    @map_redis_errors
    async def reseal_signing_key(self, kid: str, sealed: str, resealed: str) -> bool:
        return bool(await self._write("signing_key_reseal", [keys.SIGNING_KEYS],
                                      [kid, sealed, resealed], hot=False))

