"""The service's parts, built once per worker from Settings and shared by every endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from tokensvc.clients import ClientDirectory
from tokensvc.fleet import Fleet
from tokensvc.hashing import Hasher
from tokensvc.issuance import TokenIssuer
from tokensvc.keyring import Keyring
from tokensvc.settings import Settings
from tokensvc.store.fastredis import FastRedis
from tokensvc.store.redis import RedisStore, connect, connect_cluster
from tokensvc.tokens import TokenCodec
from tokensvc.usage import Usage


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: RedisStore
    codec: TokenCodec
    hasher: Hasher
    clients: ClientDirectory
    issuer: TokenIssuer
    usage: Usage
    fleet: Fleet

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Wire the parts; needs a Redis URL and server keys already resolved."""
        if settings.redis_url is None:
            raise ValueError("a Redis URL is required (the CLI starts an embedded one)")
        if settings.redis_cluster:
            # No auto-pipelining client on a cluster: it speaks to one node and knows no slots.
            # The hot path goes through redis-py's cluster client, which routes every command
            # (and each node's share of a pipeline) by its keys' slot and follows failovers.
            store = RedisStore(connect_cluster(settings.redis_url, timeout=settings.redis_timeout,
                                               pool_size=settings.redis_pool_size),
                               ack_timeout=settings.redis_timeout,
                               wait_replicas=settings.redis_wait_replicas, url=settings.redis_url)
        else:
            store = RedisStore(connect(settings.redis_url, timeout=settings.redis_timeout,
                                       pool_size=settings.redis_pool_size),
                               ack_timeout=settings.redis_timeout,
                               fast=FastRedis(settings.redis_url, settings.redis_timeout),
                               wait_replicas=settings.redis_wait_replicas, url=settings.redis_url)
        keyring = Keyring(settings.secret_keys)
        codec = TokenCodec(keyring)
        hasher = Hasher(settings.password_time_cost, settings.password_memory_cost,
                        settings.password_parallelism)
        usage = Usage(store)
        clients = ClientDirectory(store, hasher, settings.secret_cache_size, usage,
                                  failure_limit=settings.client_auth_failure_limit,
                                  failure_window=settings.client_auth_failure_window,
                                  keyring=None if settings.argon2_per_worker else keyring)
        issuer = TokenIssuer(store, codec, clients, settings)
        fleet = Fleet(store, keyring, settings.fleet_heartbeat)
        return cls(settings, store, codec, hasher, clients, issuer, usage, fleet)
