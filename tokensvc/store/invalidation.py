"""Cache invalidation across instances: one channel, its message format, who speaks and who hears.

Workers cache client records and finAPI reuse answers. Every change that must end such a copy
(a client edited, rotated or revoked; a reuse grant revoked, rotated or ended with its user) is
published here, and every instance drops the copy and confirms. A message names what changed:
a client id, or `g:<grant id>` for a reuse grant (client ids never contain ':'), followed by a
nonce when the writer waits for confirmations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING

from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tokensvc.store.connection import Connection, map_redis_errors

if TYPE_CHECKING:
    from tokensvc.storage import Subscriber

log = logging.getLogger("tokensvc.store")

CHANNEL = "tsv:invalidate"
CONFIRMED = "tsv:invalidated"  # instances confirm here that they dropped a copy
_GRANT = "g:"


def grant_name(grant_id: str) -> str:
    """The name that invalidates the reuse answer of a grant."""
    return f"{_GRANT}{grant_id}"


def grant_of(name: str) -> str | None:
    """The grant id a name speaks of, or None when it names a client."""
    return name[len(_GRANT):] if name.startswith(_GRANT) else None


class Invalidation(Connection):
    """Publishing and following the invalidation channel."""

    async def _invalidate(self, name: str) -> None:
        """Tell every instance to drop its copy of `name`, and wait (at most `ack_timeout`)
        until each instance subscribed at that moment confirms it has: a published message is
        only in flight, and the very next request on another instance must already see the
        change. Unsubscribed instances do not trust their cache anyway."""
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
            await pubsub.subscribe(CONFIRMED)
            subscribed = False  # listen before announcing, so no confirmation is missed
            while not subscribed and (left := deadline - loop.time()) > 0:
                msg = await pubsub.get_message(timeout=left)
                subscribed = msg is not None and msg["type"] == "subscribe"
            message = f"{name} {nonce}"
            if self.cluster is None:
                waiting = int(await self.redis.publish(CHANNEL, message))
            else:
                # PUBLISH on a cluster counts only the receiving node's subscribers: count the
                # instances listening on every node first.
                counts = await self.cluster.execute_command(
                    "PUBSUB NUMSUB", CHANNEL, target_nodes=RedisCluster.ALL_NODES)
                waiting = sum(int(n) for _, n in counts)
                await self.redis.publish(CHANNEL, message)
            while waiting > 0 and (left := deadline - loop.time()) > 0:
                msg = await pubsub.get_message(timeout=left)
                if msg is not None and msg["type"] == "message" and msg["data"] == nonce.encode():
                    waiting -= 1
            if waiting > 0:
                log.warning("%d instance(s) did not confirm dropping %s in time", waiting, name)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            if node is not None:
                await node.aclose()

    @map_redis_errors
    async def confirm_invalidation(self, nonce: str) -> None:
        """This instance dropped what the message carrying this nonce named."""
        await self.redis.publish(CONFIRMED, nonce)

    async def follow_invalidations(self, url: str, timeout: float, subscriber: Subscriber) -> None:
        """Follow the channel for the life of the worker, resubscribing on failure."""
        backoff = 0.05
        while True:
            # Its own client with no silent retry: a broken subscription must surface here,
            # because messages published while it was down are lost.
            # TCP keepalive only for TCP: redis-py refuses the option for unix:// (embedded Redis).
            # On a cluster, any node will do (classic PUBLISH reaches them all): a random one
            # of the current topology, so a resubscription after a failover finds a live node.
            node_url = self.node_url() or url
            keepalive = {} if node_url.startswith("unix:") else {"socket_keepalive": True}
            sub = aioredis.Redis.from_url(node_url, socket_connect_timeout=timeout, **keepalive,
                                          health_check_interval=5, retry=Retry(NoBackoff(), 0))
            pubsub = sub.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        subscriber.subscribed()
                        backoff = 0.05
                    elif msg["type"] == "message":
                        # "<name>" or "<name> <nonce>": the writer waits for the nonce.
                        name, _, nonce = msg["data"].decode().partition(" ")
                        subscriber.forget(name)
                        if nonce:
                            await self.confirm_invalidation(nonce)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: stop trusting the cache, then retry
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # a stop, seen as a Redis error
                    raise asyncio.CancelledError from exc
                if subscriber.live:
                    log.warning("invalidation channel lost (%s); client cache disabled", exc)
                subscriber.lost()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if subscriber.live:  # a stop: nothing is trusted any more either
                    subscriber.lost()
                # A close that fails finds the connection already gone: nothing to release.
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await sub.aclose()
