"""Tokens and grants: a grant's tokens, codes and reuse record live in one `{g:<grant>}` slot,
so every operation on a grant is one script on one node (keys.py, records.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokensvc.store import keys
from tokensvc.store.connection import map_redis_errors, text
from tokensvc.store.invalidation import Invalidation, grant_name


class TokenStore(Invalidation):
    """Writes that reach replicas when asked to (`_write`), reads through the fast client."""

    @map_redis_errors
    async def put_token(self, key: str, record: bytes, ttl_ms: int) -> None:
        """A lone token (client_credentials): one SET, nothing else to keep consistent."""
        await self._write(None, [key], [record, ttl_ms])

    @map_redis_errors
    async def issue(self, grant_id: str, tokens: Sequence[tuple[str, bytes, int]]) -> None:
        """Write a grant's tokens and index them (issue.lua)."""
        args: list[Any] = [max(ttl for _, _, ttl in tokens)]
        for _, record, ttl in tokens:
            args += [record, ttl]
        await self._write("issue", [keys.grant_index(grant_id), *(k for k, _, _ in tokens)], args)

    @map_redis_errors
    async def reuse_or_issue(self, grant_id: str, reuse_record: bytes, reuse_ttl_ms: int,
                             tokens: Sequence[tuple[str, bytes, int]]) -> tuple[bytes, int] | None:
        """The live reusable record and its ms left, or None after writing the new tokens."""
        args: list[Any] = [reuse_record, reuse_ttl_ms, max(ttl for _, _, ttl in tokens)]
        for _, record, ttl in tokens:
            args += [record, ttl]
        found = await self._write(
            "reuse", [keys.reuse(grant_id), keys.grant_index(grant_id), *(k for k, _, _ in tokens)],
            args)
        if not found:
            return None
        return found[0], int(found[1])

    @map_redis_errors
    async def get_token(self, grant_id: str, token_digest: str) -> bytes | None:
        key = keys.token(grant_id, token_digest)
        raw = await (self.fast.execute("GET", key) if self.fast is not None else self.redis.get(key))
        return raw.encode() if isinstance(raw, str) else raw

    @map_redis_errors
    async def redeem(self, grant_id: str, code: str, new_access: str, new_refresh: str,
                     client_id: str, redirect_uri: str, verifier: str, verifier_s256: str,
                     access_ttl_ms: int, refresh_ttl_ms: int, with_refresh: bool,
                     resources: str = "", jkt: str = "", bind_refresh: bool = False) -> list[str]:
        """redeem.lua; the answer's first item names the outcome. `jkt` binds the access
        token (and, with `bind_refresh`, the refresh token) to a DPoP key."""
        out = await self._write(
            "redeem",
            [keys.token(grant_id, code), keys.grant_index(grant_id),
             keys.token(grant_id, new_access), keys.token(grant_id, new_refresh)],
            [client_id, redirect_uri, verifier, verifier_s256, access_ttl_ms, refresh_ttl_ms,
             "1" if with_refresh else "0", resources, jkt, "1" if bind_refresh else "0"],
            hot=False,
        )
        return [text(x) for x in out]

    @map_redis_errors
    async def rotate(self, grant_id: str, presented: str, new_access: str, new_refresh: str,
                     client_id: str, scope: str, access_ttl_ms: int, refresh_ttl_ms: int,
                     grace_ms: int, resources: str = "", jkt: str = "",
                     bind_refresh: bool = False) -> list[str]:
        """rotate.lua; the answer's first item names the outcome. `jkt` (the request's DPoP
        key) binds the new access token, and the new refresh token with `bind_refresh`."""
        out = await self._write(
            "rotate",
            [keys.token(grant_id, presented), keys.grant_index(grant_id), keys.reuse(grant_id),
             keys.token(grant_id, new_access), keys.token(grant_id, new_refresh)],
            [client_id, scope, access_ttl_ms, refresh_ttl_ms, grace_ms, resources, jkt,
             "1" if bind_refresh else "0"])
        result = [text(x) for x in out]
        deleted = result[4] if result[0] == "OK" else result[1] if result[0] == "REUSED" else "0"
        if deleted == "1":
            await self._invalidate(grant_name(grant_id))
        return result

    @map_redis_errors
    async def revoke(self, grant_id: str, token_digest: str, client_id: str, whole_grant: bool,
                     username: str | None = None) -> str:
        """revoke.lua: 'OK', 'UNKNOWN' or 'FORBIDDEN'."""
        out = await self._write(
            "revoke",
            [keys.token(grant_id, token_digest), keys.grant_index(grant_id), keys.reuse(grant_id)],
            [client_id, "grant" if whole_grant else "token", username or ""],
            hot=False,
        )
        outcome = text(out)
        if outcome == "OKR":
            # The token was the one identical requests are handed: every instance forgets it.
            await self._invalidate(grant_name(grant_id))
            return "OK"
        return outcome

    async def _end_grant(self, grant_id: str) -> None:
        """Delete every token of a grant (end_grant.lua), telling instances of its reuse answer."""
        _, reused = await self.scripts["end_grant"](keys=[keys.grant_index(grant_id),
                                                          keys.reuse(grant_id)])
        if reused:
            await self._invalidate(grant_name(grant_id))
