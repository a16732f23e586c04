"""The service's parts, built once per worker from Settings and shared by every endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from tokensvc.assertions import AssertionVerifier
from tokensvc.clients import ClientDirectory
from tokensvc.fleet import Fleet
from tokensvc.hashing import Hasher
from tokensvc.issuance import TokenWriter
from tokensvc.keyring import Keyring
from tokensvc.proofs import DeploymentNonces
from tokensvc.reseal import Resealer
from tokensvc.settings import Settings
from tokensvc.signing import Signer
from tokensvc.store.redis import RedisStore, open_store
from tokensvc.tokens import TokenCodec
from tokensvc.usage import Usage


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: RedisStore
    codec: TokenCodec
    hasher: Hasher
    clients: ClientDirectory
    tokens: TokenWriter
    usage: Usage
    fleet: Fleet
    signer: Signer
    resealer: Resealer
    # RFC 9449 §8 server nonces, one instance for every endpoint that checks DPoP proofs;
    # None when TOKENSVC_DPOP_NONCE is off (no nonce is demanded).
    nonces: DeploymentNonces | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Wire the parts; needs a Redis URL and server keys already resolved."""
        if settings.redis_url is None:
            raise ValueError("a Redis URL is required (the CLI starts an embedded one)")
        store = open_store(settings.redis_url, cluster=settings.redis_cluster,
                           timeout=settings.redis_timeout, pool_size=settings.redis_pool_size,
                           wait_replicas=settings.redis_wait_replicas)
        keyring = Keyring(settings.secret_keys)
        codec = TokenCodec(keyring)
        hasher = Hasher(settings.password_time_cost, settings.password_memory_cost,
                        settings.password_parallelism)
        usage = Usage(store)
        clients = ClientDirectory(store, hasher, settings.secret_cache_size, usage,
                                  failure_limit=settings.client_auth_failure_limit,
                                  failure_window=settings.client_auth_failure_window,
                                  keyring=None if settings.argon2_per_worker else keyring)
        clients.assertions = AssertionVerifier(store, keyring, settings.issuer_url,
                                               settings.secret_cache_size)
        signer = Signer(store, keyring, settings)
        tokens = TokenWriter(store, codec, clients, settings, signer)
        fleet = Fleet(store.redis, keyring, settings.fleet_heartbeat)
        nonces = DeploymentNonces(keyring) if settings.dpop_nonce else None
        resealer = Resealer(store, keyring, settings.fleet_heartbeat)
        return cls(settings, store, codec, hasher, clients, tokens, usage, fleet, signer, resealer,
                   nonces)
