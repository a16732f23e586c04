"""Clients: the record (hash and verifier of the secret included), the listing indexes, the
failed-authentication counter and the usage buckets. A change is announced on the invalidation
channel before the call returns, so no instance serves the old record afterwards."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from tokensvc.models import Client
from tokensvc.store import keys, records
from tokensvc.store.connection import map_redis_errors, text
from tokensvc.store.invalidation import Invalidation


class ClientStore(Invalidation):
    @map_redis_errors
    async def get_client(self, client_id: str) -> Client | None:
        raw = await self._client_record(client_id)
        return None if raw is None else records.decode_client(raw)

    async def _client_record(self, client_id: str) -> bytes | None:
        """The stored client as it is (a cold worker's first request of each client reads it,
        so it goes through the auto-pipelining client where there is one)."""
        if self.fast is not None:
            raw: bytes | None = await self.fast.execute("GET", keys.client(client_id))
            return raw
        got = await self.redis.get(keys.client(client_id))
        return got.encode() if isinstance(got, str) else got

    async def _swap(self, client_id: str, change: Callable[[Client], Client | None]) -> Client | None:
        """Write `change(record)` if the record is still the one read (client_swap.lua); the
        record written, or None when `change` declines or the record changed meanwhile, so a
        rotation, edit or revocation in between is never undone."""
        raw = await self._client_record(client_id)
        if raw is None:
            return None
        updated = change(records.decode_client(raw))
        if updated is None:
            return None
        swapped = await self.scripts["client_swap"](keys=[keys.client(client_id)],
                                                    args=[raw, records.encode_client(updated)])
        return updated if swapped else None

    @map_redis_errors
    async def add_secret_verifier(self, client: Client, verifier: str) -> Client | None:
        """Write `verifier` into the client's record if the record still holds the hash it was
        checked against; the record written, or None when the client changed meanwhile (then
        the next check simply runs argon2 again)."""
        return await self._swap(client.client_id, lambda current: replace(
            current, secret_verifier=verifier) if current.secret_hash == client.secret_hash else None)

    @map_redis_errors
    async def sealed_sweep_state(self) -> tuple[int, str | None]:
        """(writes of records with a sealed secret so far, the last complete sweep's stamp)."""
        writes, swept = await self.redis.hmget(keys.SEALED_STATE, ["writes", "swept"])
        return int(writes or 0), None if swept is None else text(swept)

    @map_redis_errors
    async def sealed_secret_clients(self) -> list[Client]:
        """Every client whose record keeps a sealed secret."""
        members = await self.redis.smembers(keys.SEALED_CLIENTS)
        return await self._clients(sorted(text(m) for m in members))

    @map_redis_errors
    async def mark_sealed_sweep(self, stamp: str) -> None:
        await self.redis.hset(keys.SEALED_STATE, "swept", stamp)

    @map_redis_errors
    async def reseal_client_secret(self, client_id: str, sealed: str, resealed: str) -> bool:
        """Put `resealed` in place of `sealed` if the record still keeps that one; whether it
        did. No instance need be told: both open to the same secret under keys every running
        instance holds (a key leaves only with a restart)."""
        return await self._swap(client_id, lambda current: replace(
            current, secret_sealed=resealed) if current.secret_sealed == sealed else None) is not None

    @map_redis_errors
    async def put_client(self, client: Client, *, new: bool, previous: Client | None = None) -> bool:
        """Create (only if absent) or replace (only if present) a client, then tell every instance.

        The listing indexes (by creation, by name, by last use) are kept beside the record;
        `previous` is the record being replaced, whose name entry goes.
        """
        written = await self.redis.set(keys.client(client.client_id), records.encode_client(client),
                                       nx=new, xx=not new)
        if not written:
            return False
        if client.secret_sealed is not None:
            # After the record: a sweep that read the count before this write sees the record,
            # and one that read it after is no longer complete (reseal.py).
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.sadd(keys.SEALED_CLIENTS, client.client_id)
                pipe.hincrby(keys.SEALED_STATE, "writes", 1)
                await pipe.execute()
        elif not new and (previous is None or previous.secret_sealed is not None):
            await self.redis.srem(keys.SEALED_CLIENTS, client.client_id)
        member = records.client_name_member(client)
        if new:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(keys.CLIENTS_INDEX, {client.client_id: client.created_at})
                pipe.zadd(keys.CLIENT_NAMES, {member: 0})
                pipe.zadd(keys.CLIENTS_USED, {client.client_id: 0})
                await pipe.execute()
        else:
            if previous is not None and previous.name != client.name:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zrem(keys.CLIENT_NAMES, records.client_name_member(previous))
                    pipe.zadd(keys.CLIENT_NAMES, {member: 0})
                    await pipe.execute()
            await self._invalidate(client.client_id)
        return True

    @map_redis_errors
    async def delete_client(self, client_id: str) -> bool:
        """Revoke a client: its record goes, so every token it holds fails its client check."""
        current = await self.get_client(client_id)
        removed = await self.redis.delete(keys.client(client_id), keys.client_usage(client_id),
                                          keys.client_auth_failures(client_id))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.CLIENTS_INDEX, client_id)
            pipe.zrem(keys.CLIENTS_USED, client_id)
            pipe.srem(keys.SEALED_CLIENTS, client_id)
            if current is not None:
                pipe.zrem(keys.CLIENT_NAMES, records.client_name_member(current))
            await pipe.execute()
        await self._invalidate(client_id)
        return bool(removed)

    @map_redis_errors
    async def client_auth_attempt(self, client_id: str, limit: int, window_ms: int) -> tuple[int, int]:
        """Reserve a secret check: (count with it, ms left), or (-1, ms left) when the client's
        failures already reach the limit (client_auth_attempt.lua). Only for existing clients."""
        n, left = await self.scripts["client_auth_attempt"](
            keys=[keys.client_auth_failures(client_id)], args=[limit, window_ms])
        return int(n), int(left)

    @map_redis_errors
    async def client_auth_refund(self, client_id: str) -> None:
        """A reserved secret check succeeded: it does not count (client_auth_refund.lua)."""
        await self.scripts["client_auth_refund"](keys=[keys.client_auth_failures(client_id)])

    @map_redis_errors
    async def list_clients(self, offset: int, limit: int) -> tuple[list[Client], int]:
        """Clients newest first, and how many there are."""
        found = await self.redis.zrevrange(keys.CLIENTS_INDEX, offset, offset + limit - 1)
        ids = [text(m) for m in found]  # type: ignore[arg-type]
        total = await self.redis.zcard(keys.CLIENTS_INDEX)
        return await self._clients(ids), int(total)

    @map_redis_errors
    async def browse_clients(self, sort: str, descending: bool, offset: int, limit: int,
                             prefix: str = "") -> tuple[list[tuple[Client, int]], int]:
        """A page of clients with their last-use time (ms, 0 = never), and the total matched.

        Every order is an index read (O(log n + page)), so a page costs the same with ten
        clients or a hundred thousand: `name` and a name prefix read the lexical index,
        `used` and `created` the scored ones.
        """
        r = self.redis
        if prefix or sort == "name":
            # Bytewise ranges: "[abc" up to "[abc" + 0xFF covers every UTF-8 name starting "abc".
            low: bytes = b"[" + prefix.casefold().encode() if prefix else b"-"
            high: bytes = low + b"\xff" if prefix else b"+"
            if descending:
                members = await r.zrevrangebylex(keys.CLIENT_NAMES, high, low, offset, limit)
            else:
                members = await r.zrangebylex(keys.CLIENT_NAMES, low, high, offset, limit)
            total = await r.zlexcount(keys.CLIENT_NAMES, low, high)
            ids = [text(m).rpartition("\0")[2] for m in members]
        else:
            index = keys.CLIENTS_USED if sort == "used" else keys.CLIENTS_INDEX
            fetch = r.zrevrange if descending else r.zrange
            ids = [text(m) for m in await fetch(index, offset, offset + limit - 1)]  # type: ignore[arg-type]
            total = await r.zcard(index)
        clients = await self._clients(ids)
        used = await r.zmscore(keys.CLIENTS_USED, [c.client_id for c in clients]) if clients else []
        return [(c, int(u or 0)) for c, u in zip(clients, used, strict=True)], int(total)

    @map_redis_errors
    async def last_used(self, client_id: str) -> int:
        return int(await self.redis.zscore(keys.CLIENTS_USED, client_id) or 0)

    async def _clients(self, ids: Sequence[str]) -> list[Client]:
        if not ids:
            return []
        # One GET per client in a pipeline, not MGET: the records live in different slots, which
        # a cluster refuses in one MGET; a (cluster) pipeline is still one round trip per node.
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.get(keys.client(i))
            raws = await pipe.execute()
        return [records.decode_client(raw) for raw in raws if raw is not None]

    @map_redis_errors
    async def record_usage(self, issued: Mapping[str, int], failed: Mapping[str, int],
                           now_ms: int) -> None:
        """Fold per-client counts into per-minute buckets (kept two hours) in one pipeline."""
        minute = now_ms // 60_000
        async with self.redis.pipeline(transaction=False) as pipe:
            for prefix, counts in (("i", issued), ("f", failed)):
                for client_id, n in counts.items():
                    key = keys.client_usage(client_id)
                    pipe.hincrby(key, f"{prefix}:{minute}", n)
                    pipe.expire(key, 7200)
            if issued:
                # XX: a revoked client is not brought back into the index.
                pipe.zadd(keys.CLIENTS_USED, dict.fromkeys(issued, now_ms), xx=True)
            await pipe.execute()

    @map_redis_errors
    async def usage(self, client_id: str, now_ms: int, minutes: int = 60) -> tuple[int, int]:
        """Tokens issued and failed authentications over the last `minutes` minutes."""
        first = now_ms // 60_000 - minutes + 1
        totals = {"i": 0, "f": 0}
        for field, value in (await self.redis.hgetall(keys.client_usage(client_id))).items():
            kind, _, minute = text(field).partition(":")
            if kind in totals and minute.isdigit() and int(minute) >= first:
                totals[kind] += int(value)
        return totals["i"], totals["f"]
