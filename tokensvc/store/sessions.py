"""Short-lived browser state: login sessions and consents of the authorization pages, console
sessions, once-only form nonces, and the open-registration counter. Each key carries its own TTL."""

from __future__ import annotations

from tokensvc.store import keys, records
from tokensvc.store.connection import Connection, map_redis_errors


class SessionStore(Connection):
    @map_redis_errors
    async def put_session(self, session_digest: str, record: bytes, ttl_ms: int) -> None:
        await self.redis.set(keys.session(session_digest), record, px=ttl_ms)

    @map_redis_errors
    async def get_session(self, session_digest: str) -> bytes | None:
        raw = await self.redis.get(keys.session(session_digest))
        return raw.encode() if isinstance(raw, str) else raw

    @map_redis_errors
    async def delete_session(self, session_digest: str) -> None:
        await self.redis.delete(keys.session(session_digest))

    @map_redis_errors
    async def get_consent(self, username: str, client_id: str) -> tuple[frozenset[str], int]:
        """The scopes the user approved for the client and when (epoch ms; 0 when never)."""
        raw = await self.redis.hget(keys.user_consents(username), client_id)
        if not raw:
            return frozenset(), 0
        return records.decode_consent(raw)

    @map_redis_errors
    async def put_consent(self, username: str, client_id: str, scopes: frozenset[str],
                          now_ms: int, ttl_ms: int) -> None:
        """One hash per user, so deleting the user drops every consent with one key."""
        key = keys.user_consents(username)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, client_id, records.encode_consent(scopes, now_ms))
            pipe.pexpire(key, ttl_ms)
            await pipe.execute()

    @map_redis_errors
    async def count_registration(self, address: str, window: int) -> tuple[int, int]:
        """Count one open registration from `address` in a fixed window of `window` seconds:
        the attempts so far (this one included) and the seconds the window has left. One MULTI:
        the counter is born with its TTL (SET NX EX, then INCR keeps it), so no crash between
        two commands can leave a counter that never expires and locks an address out."""
        key = keys.registrations(address)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=window, nx=True)
            pipe.incr(key)
            pipe.ttl(key)
            _, count, left = await pipe.execute()
        return int(count), int(left)

    @map_redis_errors
    async def put_admin_session(self, session_digest: str, record: bytes, ttl_ms: int) -> None:
        await self.redis.set(keys.admin_session(session_digest), record, px=ttl_ms)

    @map_redis_errors
    async def touch_admin_session(self, session_digest: str, ttl_ms: int) -> bytes | None:
        """The session, its idle timeout restarted; None when it has ended."""
        raw = await self.redis.getex(keys.admin_session(session_digest), px=ttl_ms)
        return raw.encode() if isinstance(raw, str) else raw

    @map_redis_errors
    async def delete_admin_session(self, session_digest: str) -> None:
        await self.redis.delete(keys.admin_session(session_digest))

    @map_redis_errors
    async def first_use(self, nonce_digest: str, ttl_ms: int) -> bool:
        """True the first time a digest is seen (SET NX), False after. Through the fast client
        where there is one: DPoP proofs and client assertions ask this on the token endpoint."""
        key = keys.once(nonce_digest)
        if self.fast is not None:
            return await self.fast.execute("SET", key, b"1", "NX", "PX", ttl_ms) is not None
        return bool(await self.redis.set(key, b"1", nx=True, px=ttl_ms))
