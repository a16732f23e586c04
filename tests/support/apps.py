"""Apps driven in-process by an httpx client, on one redis-server or on the Redis Cluster.

`ON_SINGLE_AND_CLUSTER`, as a module's `pytestmark`, runs each of its tests twice: on the
session's redis-server and on the session's Redis Cluster (that run marked slow, so
`make test-fast` leaves it out). The `redis_db`, `app_factory` and `http` fixtures of
tests/conftest.py follow the `redis_backend` it sets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.support.config import ISSUER, make_settings
from tokensvc.app import create_app
from tokensvc.settings import Settings

AppFactory = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]

ON_SINGLE_AND_CLUSTER = pytest.mark.parametrize(
    "redis_backend", ["single", pytest.param("cluster", marks=pytest.mark.slow)], indirect=True)


@contextlib.asynccontextmanager
async def running_app(settings: Settings, *, wait_live: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (lifespan) and an HTTP client that drives it in-process; the app is at
    `client.app`. Unless told not to (an instance whose subscription cannot come up), it waits
    for the invalidation subscription, so the client cache is in play from the first request."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        svc = app.state.services
        for _ in range(300 if wait_live else 0):
            if svc.clients.live:
                break
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


def app_factory_for(redis_url: str, **fixed: Any) -> AppFactory:
    """Build an app (with settings overrides) on `redis_url`, and a client that drives it."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        return running_app(make_settings(redis_url, **{**fixed, **overrides}))

    return factory
