"""The Redis connection every store module shares: clients, scripts and the write path.

Redis errors become StoreUnavailable here (`map_redis_errors`) and nowhere else, so the HTTP
layer answers 503. Atomic operations are the Lua scripts under `lua/`, loaded once at start-up
and called by SHA; a Redis that lost its script cache (restart, failover, SCRIPT FLUSH) gets
the body again on NOSCRIPT, so it heals by itself.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Coroutine
from importlib import resources
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError, RedisError, ResponseError

from tokensvc import metrics
from tokensvc.errors import StoreUnavailable
from tokensvc.outage import OUTAGE
from tokensvc.store.fastredis import FastRedis

log = logging.getLogger("tokensvc.store")

P = ParamSpec("P")
R = TypeVar("R")


def map_redis_errors(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
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


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Connection:
    """What every kind of stored data shares: the clients, the scripts, the write path."""

    def __init__(self, redis: aioredis.Redis | RedisCluster, ack_timeout: float = 1.0,
                 fast: FastRedis | None = None, wait_replicas: int = 0,
                 url: str | None = None) -> None:
        # Typed as the single-node client: the cluster client offers the same commands (and
        # routes each by its keys' slot), which is all the store uses.
        self.redis: aioredis.Redis = redis  # type: ignore[assignment]
        self.cluster: RedisCluster | None = redis if isinstance(redis, RedisCluster) else None
        self.url = url
        # > 0: each token write is followed by WAIT on its connection (see `_write`).
        self.wait_replicas = wait_replicas
        # The hot path's commands (token writes and reads, the issue/reuse/rotate scripts) go
        # through the auto-pipelining client when there is one; everything else uses redis-py.
        self.fast = fast
        self.ack_timeout = ack_timeout
        lua = resources.files("tokensvc.store").joinpath("lua")
        self.scripts: dict[str, AsyncScript] = {
            f.name.removesuffix(".lua"): redis.register_script(f.read_text())
            for f in sorted(lua.iterdir(), key=lambda f: f.name) if f.name.endswith(".lua")
        }

    @map_redis_errors
    async def load_scripts(self) -> None:
        """SCRIPT LOAD once at start-up so the hot path is EVALSHA only. On a cluster redis-py
        sends SCRIPT LOAD to every primary (a promoted replica that lacks a script gets it
        from the NOSCRIPT fallback)."""
        for script in self.scripts.values():
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
        # Spreads subscriptions over the nodes; nothing secret depends on the pick.
        node = random.choice(nodes)  # noqa: S311
        parts = urlsplit(self.url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@" if auth else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{node.host}:{node.port}"))

    async def _write(self, script: str | None, keys_: list[str], args: list[Any],
                     hot: bool = True) -> Any:
        """A token write: the named script (or, with `script` None, SET keys_[0] args[0] PX
        args[1]), then, when `wait_replicas` > 0, WAIT for that many replicas to hold it.

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
            if hot:
                return await self._run(script, keys_, args)
            return await self.scripts[script](keys=keys_, args=args)
        wait_ms = max(1, int(self.ack_timeout * 500))  # well inside the socket timeout
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                if script is None:
                    pipe.set(keys_[0], args[0], px=args[1])
                else:
                    # (EVALSHA by name: redis-py blocks the evalsha method in cluster pipelines)
                    pipe.execute_command("EVALSHA", self.scripts[script].sha, len(keys_), *keys_,
                                         *args)
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
                    for s in self.scripts.values():
                        s.sha = await self.redis.script_load(s.script)
                    continue
            if int(acked) < self.wait_replicas:
                log.warning("a token write reached %d of %d replicas in %d ms", int(acked),
                            self.wait_replicas, wait_ms)
            return result
        raise AssertionError("unreachable")

    async def _run(self, name: str, keys_: list[str], args: list[Any]) -> Any:
        """EVALSHA through the fast client (or redis-py's Script); a Redis that lost its script
        cache (restart, SCRIPT FLUSH) gets the script body once with EVAL."""
        script = self.scripts[name]
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
