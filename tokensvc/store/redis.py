"""RedisStore: the one object the service talks to Redis through, made of one part per kind of
data (tokens and grants, clients, users and lockouts, sessions, invalidation) over one
connection. The domain sees it only through the Protocols of `tokensvc.storage`."""

from __future__ import annotations

from tokensvc.store.clients import ClientStore
from tokensvc.store.connection import connect, connect_cluster
from tokensvc.store.fastredis import FastRedis
from tokensvc.store.sessions import SessionStore
from tokensvc.store.signing import SigningKeyStore
from tokensvc.store.users import UserStore


class RedisStore(UserStore, ClientStore, SessionStore, SigningKeyStore):
    """Every stored kind of data, on one connection (connection.py)."""


def open_store(url: str, *, cluster: bool, timeout: float, pool_size: int,
               wait_replicas: int = 0) -> RedisStore:
    """The store for a Redis URL, single or cluster, with every call bounded by `timeout`."""
    if cluster:
        # No auto-pipelining client on a cluster: it speaks to one node and knows no slots.
        # The hot path goes through redis-py's cluster client, which routes every command
        # (and each node's share of a pipeline) by its keys' slot and follows failovers.
        return RedisStore(connect_cluster(url, timeout=timeout, pool_size=pool_size),
                          ack_timeout=timeout, wait_replicas=wait_replicas, url=url)
    return RedisStore(connect(url, timeout=timeout, pool_size=pool_size), ack_timeout=timeout,
                      fast=FastRedis(url, timeout), wait_replicas=wait_replicas, url=url)
