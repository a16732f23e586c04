"""RedisStore: every read and write of tokens, clients and users, one method per operation.

Atomic operations are Lua scripts under `lua/`, loaded once and called by SHA (redis-py's
Script falls back to loading on NOSCRIPT, so a restarted Redis heals by itself). Redis
errors become StoreUnavailable here and nowhere else, so the HTTP layer answers 503.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, replace
from importlib import resources
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError, RedisError, ResponseError

from tokensvc import metrics
from tokensvc.errors import StoreUnavailable
from tokensvc.models import Client, TokenRecord, User
from tokensvc.outage import OUTAGE
from tokensvc.store import keys
from tokensvc.store.fastredis import FastRedis

log = logging.getLogger("tokensvc.store")

P = ParamSpec("P")
R = TypeVar("R")


def map_redis_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn any Redis failure (down, slow, read-only, OOM) into StoreUnavailable."""

    operation = fn.__name__
    metrics.STORE_OPERATIONS.add(operation)

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        start = time.perf_counter()
        try:
            result = await fn(*args, **kwargs)
        except (RedisError, OSError) as exc:
            metrics.store_operation(operation, time.perf_counter() - start, True)
            raise StoreUnavailable(type(exc).__name__) from exc
        metrics.store_operation(operation, time.perf_counter() - start, False)
        if OUTAGE.active:
            OUTAGE.recovered()
        return result

    return wrapper


def _script(name: str) -> str:
    return resources.files("tokensvc.store").joinpath("lua", f"{name}.lua").read_text()


def connect(url: str, *, timeout: float, pool_size: int) -> aioredis.Redis:
    """A client whose every call ends within about `timeout` seconds, up or down."""
    # One immediate retry re-dials a pooled connection that a Redis restart has cut. It must be
    # set on the pool: redis-py ignores the client's retry settings when given a pool. A timeout
    # is not retried: Redis is slow or hung, and a second wait would only delay the 503.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis(connection_pool=pool)


def connect_cluster(url: str, *, timeout: float, pool_size: int) -> RedisCluster:
    """A Redis Cluster client from the URL of any one node; the same time bounds as `connect`.

    A connection error is retried once (after redis-py refreshes its slot map, which is how a
    replica promoted by a failover is found). `require_full_coverage=False`: while one shard is
    failing over, the keys of the others keep being served instead of every call failing.
    """
    return RedisCluster.from_url(
        url,
        max_connections=pool_size,  # per node
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        require_full_coverage=False,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


def token_record(raw: bytes | str | None, kind: str | None = None) -> TokenRecord | None:
    """Decode a stored token record; None for absent or of another kind."""
    if raw is None:
        return None
    d = orjson.loads(raw)
    if kind is not None and d["k"] != kind:
        return None
    return TokenRecord(
        kind=d["k"], client_id=d["c"], username=d.get("u"), scope=d["s"], grant_id=d["g"],
        issued_at=int(d["iat"]), expires_at=int(d["exp"]), rotated_at=d.get("rot"),
    )


def encode_record(kind: str, client_id: str, username: str | None, scope: str, grant_id: str,
                  issued_at: int, ttl_ms: int) -> bytes:
    """The stored form of a token: short keys, since there is one per live token."""
    d: dict[str, Any] = {"k": kind, "c": client_id, "s": scope, "g": grant_id,
                         "iat": issued_at, "exp": issued_at + ttl_ms}
    if username is not None:
        d["u"] = username
    if kind == "rt":
        d["gs"] = scope
    return orjson.dumps(d)


def _client_from(raw: bytes | str) -> Client:
    """A client record. The words most clients share (grant types, scopes, the auth method) are
    interned: a worker caches up to 100,000 records, and one copy of "client_credentials" per
    record would be a third of each record's memory (deploy/SIZING.md)."""
    d = orjson.loads(raw)
    for name in ("grant_types", "scopes"):
        d[name] = tuple(sys.intern(v) for v in d[name])
    d["redirect_uris"] = tuple(d["redirect_uris"])
    d["token_endpoint_auth_method"] = sys.intern(d["token_endpoint_auth_method"])
    return Client(**d)


def reuse_name(grant_id: str) -> str:
    """The invalidation message naming a reuse grant; client ids never contain ':'."""
    return f"g:{grant_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _name_member(client: Client) -> str:
    """The name index entry: sorts case-insensitively, ties broken by id."""
    return f"{client.name.casefold()}\0{client.client_id}"


def _user_from(raw: bytes | str) -> User:
    return User(**orjson.loads(raw))


class RedisStore:
    """The single place tokensvc talks to Redis."""

    def __init__(self, redis: aioredis.Redis | RedisCluster, ack_timeout: float = 1.0,
                 fast: FastRedis | None = None, wait_replicas: int = 0,
                 url: str | None = None) -> None:
        # Typed as the single-node client: the cluster client offers the same commands (and
        # routes each by its keys' slot), which is all this class uses.
        self.redis: aioredis.Redis = redis  # type: ignore[assignment]
        self.cluster: RedisCluster | None = redis if isinstance(redis, RedisCluster) else None
        self.url = url
        # > 0: each token write is followed by WAIT on its connection (see `_write`).
        self.wait_replicas = wait_replicas
        # The hot path's commands (token writes and reads, the issue/reuse/rotate scripts) go
        # through the auto-pipelining client when there is one; everything else uses redis-py.
        self.fast = fast
        self.ack_timeout = ack_timeout
        self._issue = redis.register_script(_script("issue"))
        self._reuse = redis.register_script(_script("reuse"))
        self._rotate = redis.register_script(_script("rotate"))
        self._revoke = redis.register_script(_script("revoke"))
        self._login_attempt = redis.register_script(_script("login_attempt"))
        self._login_result = redis.register_script(_script("login_result"))
        self._redeem = redis.register_script(_script("redeem"))
        self._link_grant = redis.register_script(_script("link_grant"))
        self._end_grant = redis.register_script(_script("end_grant"))
        self._auth_attempt = redis.register_script(_script("client_auth_attempt"))
        self._auth_refund = redis.register_script(_script("client_auth_refund"))
        self._client_swap = redis.register_script(_script("client_swap"))
        self._scripts = (self._issue, self._reuse, self._rotate, self._revoke, self._login_attempt,
                         self._login_result, self._redeem, self._link_grant, self._end_grant,
                         self._auth_attempt, self._auth_refund, self._client_swap)

    @map_redis_errors
    async def load_scripts(self) -> None:
        """SCRIPT LOAD once at start-up so the hot path is EVALSHA only. On a cluster redis-py
        sends SCRIPT LOAD to every primary (a promoted replica that lacks a script gets it
        from the NOSCRIPT fallback)."""
        for script in self._scripts:
            script.sha = await self.redis.script_load(script.script)

    def node_url(self) -> str | None:
        """On a cluster, the URL (credentials and options of the configured one) of a node
        picked at random from the current topology, for connections that must sit on one
        node (subscriptions); None on a single Redis."""
        if self.cluster is None or self.url is None:
            return None
        nodes = self.cluster.get_nodes()
        if not nodes:
            return self.url
        node = random.choice(nodes)
        parts = urlsplit(self.url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@" if auth else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{node.host}:{node.port}"))

    async def _write(self, script: AsyncScript | None, keys_: list[str], args: list[Any],
                     hot: bool = True) -> Any:
        """A token write: the script (or, with `script` None, SET keys_[0] args[0] PX args[1]),
        then, when `wait_replicas` > 0, WAIT for that many replicas to hold it.

        WAIT counts the writes of its own connection, so both go in one pipeline: on a single
        Redis that is one connection; on a cluster, WAIT is aimed at the node owning the key,
        and redis-py sends each node's share of a pipeline on one connection. Best effort, like
        WAIT itself: fewer acknowledgements within the timeout are logged, and the answer still
        goes out, because the write has happened (failing it would turn a retried rotation or
        code redemption into reuse or replay)."""
        if self.wait_replicas <= 0:
            if script is None:
                if self.fast is not None:
                    return await self.fast.execute("SET", keys_[0], args[0], "PX", args[1])
                return await self.redis.set(keys_[0], args[0], px=args[1])
            return await (self._run(script, keys_, args) if hot else script(keys=keys_, args=args))
        wait_ms = max(1, int(self.ack_timeout * 500))  # well inside the socket timeout
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                if script is None:
                    pipe.set(keys_[0], args[0], px=args[1])
                else:
                    # (EVALSHA by name: redis-py blocks the evalsha method in cluster pipelines)
                    pipe.execute_command("EVALSHA", script.sha, len(keys_), *keys_, *args)
                if self.cluster is not None:
                    pipe.execute_command("WAIT", self.wait_replicas, wait_ms,
                                         target_nodes=self.cluster.get_node_from_key(keys_[0]))
                else:
                    pipe.execute_command("WAIT", self.wait_replicas, wait_ms)
                try:
                    result, acked = await pipe.execute()
                except ResponseError as exc:
                    # NOSCRIPT: the script did not run (Redis restarted or a replica was
                    # promoted); load it everywhere and send the pair again.
                    if attempt == 2 or "NOSCRIPT" not in str(exc):
                        raise
                    for s in self._scripts:
                        s.sha = await self.redis.script_load(s.script)
                    continue
            if int(acked) < self.wait_replicas:
                log.warning("a token write reached %d of %d replicas in %d ms", int(acked),
                            self.wait_replicas, wait_ms)
            return result
        raise AssertionError("unreachable")

    async def _run(self, script: AsyncScript, keys_: list[str], args: list[Any]) -> Any:
        """EVALSHA through the fast client (or redis-py's Script); a Redis that lost its script
        cache (restart, SCRIPT FLUSH) gets the script body once with EVAL."""
        if self.fast is None:
            return await script(keys=keys_, args=args)
        try:
            return await self.fast.execute("EVALSHA", script.sha, len(keys_), *keys_, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            body = script.script
            return await self.fast.execute("EVAL", body if isinstance(body, str | bytes) else bytes(body),
                                           len(keys_), *keys_, *args)

    @map_redis_errors
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        if self.fast is not None:
            self.fast.close()
        if self.cluster is not None:
            await self.cluster.aclose()
        else:
            await self.redis.aclose(close_connection_pool=True)

    # -- tokens -------------------------------------------------------------------------

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
        await self._write(self._issue, [keys.grant_index(grant_id), *(k for k, _, _ in tokens)],
                          args)

    @map_redis_errors
    async def reuse_or_issue(self, grant_id: str, reuse_record: bytes, reuse_ttl_ms: int,
                             tokens: Sequence[tuple[str, bytes, int]]) -> tuple[bytes, int] | None:
        """The live reusable record and its ms left, or None after writing the new tokens."""
        args: list[Any] = [reuse_record, reuse_ttl_ms, max(ttl for _, _, ttl in tokens)]
        for _, record, ttl in tokens:
            args += [record, ttl]
        found = await self._write(
            self._reuse, [keys.reuse(grant_id), keys.grant_index(grant_id), *(k for k, _, _ in tokens)],
            args)
        if not found:
            return None
        return found[0], int(found[1])

    @map_redis_errors
    async def redeem(self, grant_id: str, code: str, new_access: str, new_refresh: str,
                     client_id: str, redirect_uri: str, verifier: str, verifier_s256: str,
                     access_ttl_ms: int, refresh_ttl_ms: int, with_refresh: bool) -> list[str]:
        """redeem.lua; the answer's first item names the outcome."""
        out = await self._write(
            self._redeem,
            [keys.token(grant_id, code), keys.grant_index(grant_id),
             keys.token(grant_id, new_access), keys.token(grant_id, new_refresh)],
            [client_id, redirect_uri, verifier, verifier_s256, access_ttl_ms, refresh_ttl_ms,
             "1" if with_refresh else "0"],
            hot=False,
        )
        return [x.decode() if isinstance(x, bytes) else str(x) for x in out]

    @map_redis_errors
    async def get_token(self, grant_id: str, token_digest: str) -> bytes | None:
        key = keys.token(grant_id, token_digest)
        raw = await (self.fast.execute("GET", key) if self.fast is not None else self.redis.get(key))
        return raw.encode() if isinstance(raw, str) else raw

    @map_redis_errors
    async def rotate(self, grant_id: str, presented: str, new_access: str, new_refresh: str,
                     client_id: str, scope: str, access_ttl_ms: int, refresh_ttl_ms: int,
                     grace_ms: int) -> list[str]:
        """rotate.lua; the answer's first item names the outcome."""
        out = await self._write(
            self._rotate,
            [keys.token(grant_id, presented), keys.grant_index(grant_id), keys.reuse(grant_id),
             keys.token(grant_id, new_access), keys.token(grant_id, new_refresh)],
            [client_id, scope, access_ttl_ms, refresh_ttl_ms, grace_ms])
        result = [x.decode() if isinstance(x, bytes) else str(x) for x in out]
        if result[0] in ("OK", "REUSED") and result[-1] == "1":
            await self._invalidate(reuse_name(grant_id))
        return result

    @map_redis_errors
    async def revoke(self, grant_id: str, token_digest: str, client_id: str, whole_grant: bool,
                     username: str | None = None) -> str:
        """revoke.lua: 'OK', 'UNKNOWN' or 'FORBIDDEN'."""
        out = await self._write(
            self._revoke,
            [keys.token(grant_id, token_digest), keys.grant_index(grant_id), keys.reuse(grant_id)],
            [client_id, "grant" if whole_grant else "token", username or ""],
            hot=False,
        )
        outcome = out.decode() if isinstance(out, bytes) else str(out)
        if outcome == "OKR":
            # The token was the one identical requests are handed: every instance forgets it.
            await self._invalidate(reuse_name(grant_id))
            return "OK"
        return outcome

    # -- clients ------------------------------------------------------------------------

    @map_redis_errors
    async def get_client(self, client_id: str) -> Client | None:
        raw = await self._client_record(client_id)
        return None if raw is None else _client_from(raw)

    async def _client_record(self, client_id: str) -> bytes | None:
        """The stored client as it is (a cold worker's first request of each client reads it,
        so it goes through the auto-pipelining client where there is one)."""
        if self.fast is not None:
            raw: bytes | None = await self.fast.execute("GET", keys.client(client_id))
            return raw
        got = await self.redis.get(keys.client(client_id))
        return got.encode() if isinstance(got, str) else got

    @map_redis_errors
    async def add_secret_verifier(self, client: Client, verifier: str) -> Client | None:
        """Write `verifier` into the client's record if the record still holds the hash it was
        checked against (client_swap.lua); the record written, or None when the client changed
        meanwhile (then the next check simply runs argon2 again)."""
        raw = await self._client_record(client.client_id)
        if raw is None:
            return None
        current = _client_from(raw)
        if current.secret_hash != client.secret_hash:
            return None
        updated = replace(current, secret_verifier=verifier)
        swapped = await self._client_swap(keys=[keys.client(client.client_id)],
                                          args=[raw, orjson.dumps(asdict(updated))])
        return updated if swapped else None

    @map_redis_errors
    async def put_client(self, client: Client, *, new: bool, previous: Client | None = None) -> bool:
        """Create (only if absent) or replace (only if present) a client, then tell every instance.

        The listing indexes (by creation, by name, by last use) are kept beside the record;
        `previous` is the record being replaced, whose name entry goes.
        """
        written = await self.redis.set(keys.client(client.client_id), orjson.dumps(asdict(client)),
                                       nx=new, xx=not new)
        if not written:
            return False
        if new:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(keys.CLIENTS_INDEX, {client.client_id: client.created_at})
                pipe.zadd(keys.CLIENT_NAMES, {_name_member(client): 0})
                pipe.zadd(keys.CLIENTS_USED, {client.client_id: 0})
                await pipe.execute()
        else:
            if previous is not None and previous.name != client.name:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zrem(keys.CLIENT_NAMES, _name_member(previous))
                    pipe.zadd(keys.CLIENT_NAMES, {_name_member(client): 0})
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
            if current is not None:
                pipe.zrem(keys.CLIENT_NAMES, _name_member(current))
            await pipe.execute()
        await self._invalidate(client_id)
        return bool(removed)

    @map_redis_errors
    async def client_auth_attempt(self, client_id: str, limit: int, window_ms: int) -> tuple[int, int]:
        """Reserve a secret check: (count with it, ms left), or (-1, ms left) when the client's
        failures already reach the limit (client_auth_attempt.lua). Only for existing clients."""
        n, left = await self._auth_attempt(keys=[keys.client_auth_failures(client_id)],
                                           args=[limit, window_ms])
        return int(n), int(left)

    @map_redis_errors
    async def client_auth_refund(self, client_id: str) -> None:
        """A reserved secret check succeeded: it does not count (client_auth_refund.lua)."""
        await self._auth_refund(keys=[keys.client_auth_failures(client_id)])

    async def _invalidate(self, client_id: str) -> None:
        """Tell every instance to drop its cached copy of the client, and wait (at most
        `ack_timeout`) until each instance subscribed at that moment confirms it has: a
        published message is only in flight, and the very next request on another instance
        must already see the change. Unsubscribed instances do not trust their cache anyway."""
        nonce = secrets.token_urlsafe(12)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        # On a cluster, the confirmations are heard on one node (classic PUBLISH reaches every
        # node), with a plain connection to it.
        node_url = self.node_url()
        node = None if node_url is None else aioredis.Redis.from_url(
            node_url, socket_timeout=self.ack_timeout, socket_connect_timeout=self.ack_timeout)
        pubsub = (self.redis if node is None else node).pubsub()
        try:
            await pubsub.subscribe(keys.INVALIDATED_CHANNEL)
            subscribed = False  # listen before announcing, so no confirmation is missed
            while not subscribed and (left := deadline - loop.time()) > 0:
                msg = await pubsub.get_message(timeout=left)
                subscribed = msg is not None and msg["type"] == "subscribe"
            message = f"{client_id} {nonce}"
            if self.cluster is None:
                waiting = int(await self.redis.publish(keys.INVALIDATION_CHANNEL, message))
            else:
                # PUBLISH on a cluster counts only the receiving node's subscribers: count the
                # instances listening on every node first.
                counts = await self.cluster.execute_command(
                    "PUBSUB NUMSUB", keys.INVALIDATION_CHANNEL, target_nodes=RedisCluster.ALL_NODES)
                waiting = sum(int(n) for _, n in counts)
                await self.redis.publish(keys.INVALIDATION_CHANNEL, message)
            while waiting > 0 and (left := deadline - loop.time()) > 0:
                msg = await pubsub.get_message(timeout=left)
                if msg is not None and msg["type"] == "message" and msg["data"] == nonce.encode():
                    waiting -= 1
            if waiting > 0:
                log.warning("%d instance(s) did not confirm dropping client %s in time",
                            waiting, client_id)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            if node is not None:
                await node.aclose()

    @map_redis_errors
    async def confirm_invalidation(self, nonce: str) -> None:
        """An instance dropped the client named in the message carrying this nonce."""
        await self.redis.publish(keys.INVALIDATED_CHANNEL, nonce)

    @map_redis_errors
    async def list_clients(self, offset: int, limit: int) -> tuple[list[Client], int]:
        """Clients newest first, and how many there are."""
        found = await self.redis.zrevrange(keys.CLIENTS_INDEX, offset, offset + limit - 1)
        ids = [_text(m) for m in found]  # type: ignore[arg-type]
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
            ids = [_text(m).rpartition("\0")[2] for m in members]
        else:
            index = keys.CLIENTS_USED if sort == "used" else keys.CLIENTS_INDEX
            fetch = r.zrevrange if descending else r.zrange
            ids = [_text(m) for m in await fetch(index, offset, offset + limit - 1)]  # type: ignore[arg-type]
            total = await r.zcard(index)
        clients = await self._clients(ids)
        used = await r.zmscore(keys.CLIENTS_USED, [c.client_id for c in clients]) if clients else []
        return [(c, int(u or 0)) for c, u in zip(clients, used, strict=True)], int(total)

    @map_redis_errors
    async def last_used(self, client_id: str) -> int:
        return int(await self.redis.zscore(keys.CLIENTS_USED, client_id) or 0)

    async def _clients(self, ids: Sequence[bytes | str]) -> list[Client]:
        if not ids:
            return []
        # One GET per client in a pipeline, not MGET: the records live in different slots, which
        # a cluster refuses in one MGET; a (cluster) pipeline is still one round trip per node.
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.get(keys.client(_text(i)))
            raws = await pipe.execute()
        return [_client_from(raw) for raw in raws if raw is not None]

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
            kind, _, minute = _text(field).partition(":")
            if kind in totals and minute.isdigit() and int(minute) >= first:
                totals[kind] += int(value)
        return totals["i"], totals["f"]

    # -- users --------------------------------------------------------------------------

    @map_redis_errors
    async def get_user(self, username: str) -> tuple[User | None, int]:
        """The user and their consecutive failed logins, in one round trip (same slot)."""
        raw, fails = await self.redis.mget([keys.user(username), keys.user_failures(username)])
        return (None if raw is None else _user_from(raw)), int(fails or 0)

    @map_redis_errors
    async def put_user(self, user: User, *, new: bool) -> bool:
        written = await self.redis.set(keys.user(user.username), orjson.dumps(asdict(user)),
                                       nx=new, xx=not new)
        if written and new:
            await self.redis.zadd(keys.USERS_INDEX, {user.username: user.created_at})
        return bool(written)

    @map_redis_errors
    async def delete_user(self, username: str) -> bool:
        """Remove a user and end every grant issued to them (each grant is its own slot)."""
        grants = await self.redis.smembers(keys.user_grants(username))
        for raw in grants:
            grant_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            _, reused = await self._end_grant(keys=[keys.grant_index(grant_id), keys.reuse(grant_id)])
            if reused:
                await self._invalidate(reuse_name(grant_id))
        removed = await self.redis.delete(keys.user(username), keys.user_failures(username),
                                          keys.user_checks(username), keys.user_grants(username),
                                          keys.user_consents(username))
        await self.redis.zrem(keys.USERS_INDEX, username)
        return bool(removed)

    @map_redis_errors
    async def link_user_grant(self, username: str, grant_id: str, ttl_ms: int) -> None:
        """Index a user's grant for the deletion cascade (link_grant.lua)."""
        await self._link_grant(keys=[keys.user_grants(username)], args=[grant_id, ttl_ms])

    @map_redis_errors
    async def login_attempt(self, username: str, limit: int,
                            hold_ms: int) -> tuple[User | None, int]:
        """The user and a reserved password check (login_attempt.lua gives the codes)."""
        raw, n = await self._login_attempt(
            keys=[keys.user(username), keys.user_failures(username), keys.user_checks(username)],
            args=[limit, hold_ms])
        return (None if not raw else _user_from(raw)), int(n)

    @map_redis_errors
    async def login_result(self, username: str, ok: bool, lockout_ms: int) -> int:
        """Settle a reserved check; the consecutive failures after it (login_result.lua)."""
        return int(await self._login_result(
            keys=[keys.user_failures(username), keys.user_checks(username)],
            args=["1" if ok else "0", lockout_ms]))

    @map_redis_errors
    async def reset_failures(self, username: str) -> None:
        await self.redis.delete(keys.user_failures(username))

    # -- sessions and consent (authorization pages) -------------------------------------

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
        doc = orjson.loads(raw)
        return frozenset(doc["s"]), int(doc["t"])

    @map_redis_errors
    async def put_consent(self, username: str, client_id: str, scopes: frozenset[str],
                          now_ms: int, ttl_ms: int) -> None:
        """One hash per user, so deleting the user drops every consent with one key."""
        key = keys.user_consents(username)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, client_id, orjson.dumps({"s": sorted(scopes), "t": now_ms}))
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

    # -- admin console sessions and once-only forms ----------------------------------------

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
        """True the first time a form nonce is seen (SET NX), False on a resubmission."""
        return bool(await self.redis.set(keys.once(nonce_digest), b"1", nx=True, px=ttl_ms))
