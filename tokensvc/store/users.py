"""Users and their lockouts: the record, the failure counter, the lock and the checks in flight,
all in the user's `{u:...}` slot, so a login attempt is one script; and each user's grants, so
deleting a user ends every token issued to them."""

from __future__ import annotations

from tokensvc.models import Lockout, User
from tokensvc.store import keys, records
from tokensvc.store.connection import map_redis_errors, text
from tokensvc.store.tokens import TokenStore


class UserStore(TokenStore):
    @map_redis_errors
    async def get_user(self, username: str) -> tuple[User | None, Lockout]:
        """The user and their lockout state, in one round trip (same slot)."""
        raw, fails, lock = await self.redis.mget([keys.user(username), keys.user_failures(username),
                                                  keys.user_lock(username)])
        return (None if raw is None else records.decode_user(raw)), Lockout(int(fails or 0),
                                                                             lock is not None)

    @map_redis_errors
    async def put_user(self, user: User, *, new: bool) -> bool:
        written = await self.redis.set(keys.user(user.username), records.encode_user(user),
                                       nx=new, xx=not new)
        if written and new:
            await self.redis.zadd(keys.USERS_INDEX, {user.username: user.created_at})
        return bool(written)

    @map_redis_errors
    async def delete_user(self, username: str) -> bool:
        """Remove a user and end every grant issued to them (each grant is its own slot)."""
        for grant_id in await self.redis.smembers(keys.user_grants(username)):
            await self._end_grant(text(grant_id))
        removed = await self.redis.delete(keys.user(username), keys.user_failures(username),
                                          keys.user_lock(username), keys.user_checks(username),
                                          keys.user_grants(username), keys.user_consents(username))
        await self.redis.zrem(keys.USERS_INDEX, username)
        return bool(removed)

    @map_redis_errors
    async def link_user_grant(self, username: str, grant_id: str, ttl_ms: int) -> None:
        """Index a user's grant for the deletion cascade (link_grant.lua)."""
        await self.scripts["link_grant"](keys=[keys.user_grants(username)], args=[grant_id, ttl_ms])

    @map_redis_errors
    async def login_attempt(self, username: str, limit: int,
                            hold_ms: int) -> tuple[User | None, int]:
        """The user and a reserved password check (login_attempt.lua gives the codes)."""
        raw, n = await self.scripts["login_attempt"](
            keys=[keys.user(username), keys.user_failures(username), keys.user_checks(username),
                  keys.user_lock(username)],
            args=[limit, hold_ms])
        return (None if not raw else records.decode_user(raw)), int(n)

    @map_redis_errors
    async def login_result(self, username: str, ok: bool, lockout_ms: int, limit: int) -> int:
        """Settle a reserved check; the consecutive failures after it, or a lock code
        (login_result.lua)."""
        return int(await self.scripts["login_result"](
            keys=[keys.user_failures(username), keys.user_checks(username), keys.user_lock(username)],
            args=["1" if ok else "0", lockout_ms, limit]))

    @map_redis_errors
    async def end_lockout(self, username: str) -> None:
        """An admin's unlock: the lock and the failure count go together (one slot, one DEL)."""
        await self.redis.delete(keys.user_failures(username), keys.user_lock(username))
