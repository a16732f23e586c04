"""create_app: routes, exception handlers and lifespan. Wiring only; no logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokensvc import keyfiles, metrics as metrics_mod, settings as settings_mod
from tokensvc.errors import OAuthError, StoreUnavailable
from tokensvc.fleet import KeyMismatch
from tokensvc.grants import GRANT_TYPES
from tokensvc.http import openapi
from tokensvc.http.admin import AdminEndpoints
from tokensvc.http.bearer import DPoPPresentations
from tokensvc.http.discovery import DiscoveryEndpoints
from tokensvc.http.forwarded import ForwardedClients, TrustedProxies
from tokensvc.http.hotpath import HotPaths, HotRoute, response_for
from tokensvc.http.httpprotocol import HeaderDeadlineProtocol
from tokensvc.http.oauth import OAuthEndpoints
from tokensvc.http.principal import PrincipalEndpoints
from tokensvc.http.registration import RegistrationEndpoints
from tokensvc.metrics import ASGIApp, Receive, Scope, Send
from tokensvc.services import Services
from tokensvc.settings import Settings
from tokensvc.web.authorize import AuthorizeEndpoints
from tokensvc.web.console import Console

log = logging.getLogger("tokensvc")


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app; with no argument, settings come from `TOKENSVC_*` (uvicorn's factory mode)."""
    settings = keyfiles.with_generated_keys(settings or settings_mod.load())
    svc = Services.build(settings)
    presentations = DPoPPresentations(svc.store, settings.issuer_url, svc.nonces)
    oauth = OAuthEndpoints(svc, presentations)
    principal = PrincipalEndpoints(svc, presentations)
    discovery = DiscoveryEndpoints(svc)
    admin = AdminEndpoints(svc)
    registration = RegistrationEndpoints(svc, admin)
    authorize = AuthorizeEndpoints(svc)
    console = Console(svc, admin.registry)

    metrics_mod.configure(settings.metrics, settings.metrics_client_label, GRANT_TYPES)
    HeaderDeadlineProtocol.configure(settings)

    openapi_body = orjson.dumps(openapi.document(settings.issuer_url))

    async def openapi_json(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})

    async def metrics(request: Request) -> Response:
        return Response(metrics_mod.exposition(), media_type=metrics_mod.CONTENT_TYPE_LATEST)

    routes = [
        HotRoute("/oauth/token", oauth.token),
        HotRoute("/oauth/v2/token", oauth.token),
        Route("/oauth/revoke", oauth.revoke, methods=["POST"]),
        HotRoute("/oauth/introspect", oauth.introspect),
        Route("/oauth/authorize", authorize.authorize, methods=["GET", "POST"]),
        Route("/authorize", authorize.authorize, methods=["GET", "POST"]),
        Route("/oauth/logout", authorize.logout, methods=["GET", "POST"]),
        Route("/static/tokensvc.css", authorize.stylesheet, methods=["GET"]),
        Route("/login", principal.principal, methods=["POST"]),
        Route("/oauth/userinfo", principal.principal, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server", discovery.metadata, methods=["GET"]),
        Route("/.well-known/jwks.json", discovery.jwks, methods=["GET"]),
        Route("/healthz", discovery.healthz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/readyz", discovery.readyz, methods=["GET"]),
        Route("/admin", console.clients, methods=["GET"]),
        Route("/admin/console/login", console.login, methods=["GET", "POST"]),
        Route("/admin/console/logout", console.logout, methods=["POST"]),
        Route("/admin/console/clients", console.create_client, methods=["POST"]),
        Route("/admin/console/clients/new", console.new_client, methods=["GET"]),
        Route("/admin/console/clients/{client_id}", console.client, methods=["GET"]),
        Route("/admin/console/clients/{client_id}", console.client_action, methods=["POST"]),
        Route("/admin/console/clients/{client_id}/usage", console.usage, methods=["GET"]),
        Route("/admin/console/users", console.users, methods=["GET"]),
        Route("/admin/console/users", console.user_action, methods=["POST"]),
        Route("/static/console.js", console.script, methods=["GET"]),
        Route("/admin/clients", admin.clients, methods=["GET", "POST"]),
        Route("/admin/clients/{client_id}", admin.client, methods=["GET", "PATCH", "DELETE"]),
        Route("/admin/clients/{client_id}/secret", admin.client_secret, methods=["POST"]),
        Route("/admin/users", admin.users, methods=["POST"]),
        Route("/admin/signing-keys/rotate", admin.rotate_signing_key, methods=["POST"]),
        # `:path`: a username may hold '/' (sent as %2F, which the path arrives decoded from).
        Route("/admin/users/{username:path}/unlock", admin.unlock, methods=["POST"]),
        Route("/admin/users/{username:path}", admin.user, methods=["GET", "PATCH", "DELETE"]),
        Route("/api/client", registration.api_client, methods=["POST"]),
        Route("/oauth/register", registration.register, methods=["POST"]),
    ]
    if settings.metrics and not settings.metrics_port:
        # With a metrics port, the CLI serves the scrape there and the public port has none.
        routes.append(Route("/metrics", metrics, methods=["GET"]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await svc.store.load_scripts()
        except StoreUnavailable:
            log.warning("Redis is not reachable yet; serving 503 until it is")
        try:
            await svc.fleet.join()  # before any token is signed: which key signs
        except StoreUnavailable:
            pass  # fleet.run() joins once Redis answers
        except KeyMismatch as exc:
            log.critical("%s", exc)
            await svc.store.close()
            raise
        try:
            await svc.signer.refresh()  # under the server key the fleet chose, just above
        except StoreUnavailable:
            pass  # signer.run() reads the keys once Redis answers; JWTs are 503 until then
        await svc.hasher.prepare()
        # Everything built at start-up lives as long as the worker: moving it out of the
        # collector's sight makes each full collection (a pause in every request in flight)
        # shorter.
        gc.collect()
        gc.freeze()
        # Type narrowing: Services.build() above refuses settings without a Redis URL.
        assert settings.redis_url is not None  # noqa: S101
        listener = asyncio.create_task(svc.clients.listen(settings.redis_url,
                                                          settings.redis_timeout))
        tasks = [listener, asyncio.create_task(svc.usage.run()), asyncio.create_task(svc.fleet.run()),
                 asyncio.create_task(svc.signer.run()), asyncio.create_task(svc.resealer.run())]
        if settings.metrics:
            tasks.append(asyncio.create_task(metrics_mod.flush_forever()))
        try:
            yield
        finally:
            svc.fleet.stop()
            svc.signer.stop()
            svc.resealer.stop()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            metrics_mod.worker_exit()
            await svc.fleet.leave()
            await svc.store.close()

    async def on_error(request: Request, exc: Exception) -> Response:
        return response_for(exc, settings.retry_after, request.url.path)

    app = App(
        routes=routes,
        lifespan=lifespan,
        # One mapping for both ways in (hotpath.response_for); the metrics are the front door's.
        exception_handlers={OAuthError: on_error, StoreUnavailable: on_error,
                            HTTPException: on_error, Exception: on_error},
    )
    app.state.services = svc
    app.front = HotPaths(functools.partial(Starlette.__call__, app), routes, settings.retry_after)
    if settings.trusted_proxies:  # else nothing to do: the scope's client is the peer
        app.front = ForwardedClients(app.front, TrustedProxies(settings.trusted_proxies))
    return app


class App(Starlette):
    """The Starlette app, entered through the forwarded-client rule (forwarded.py, when proxies
    are trusted) and the hot paths (hotpath.py) first."""

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)
