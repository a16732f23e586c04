"""The kit in front of a Starlette (or any ASGI) app: a middleware, and the error handler that
gives refusals an RFC-shaped JSON body."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tokensvc.resource.errors import BearerError
from tokensvc.resource.server import ResourceServer, remember, scope_set


def error_response(exc: BearerError) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status_code, headers=exc.headers)


async def bearer_error_handler(request: Request, exc: Exception) -> Response:
    """For `exception_handlers={BearerError: bearer_error_handler}` (Starlette) or
    `app.add_exception_handler(BearerError, bearer_error_handler)` (FastAPI): the refusal's
    JSON body instead of the framework's plain one; status and headers are the same."""
    if not isinstance(exc, BearerError):  # registered for another class by mistake
        raise exc
    return error_response(exc)


class BearerMiddleware:
    """Every HTTP and WebSocket request needs a valid access token for `server` holding every
    one of `scopes`, except requests for the exact paths in `public`. A refusal is answered
    here (401/400/403/503 with its WWW-Authenticate); an accepted request goes on with its
    principal at `request.state.principal`, which `server` and its `requires(...)`
    dependencies reuse instead of checking the token again. A pure ASGI middleware, as
    Starlette's own: nothing of the response passes through it."""

    def __init__(self, app: ASGIApp, server: ResourceServer, scopes: Iterable[str] = (),
                 public: Iterable[str] = ()) -> None:
        self.app = app
        self.server = server
        self.scopes = scope_set(scopes)
        self.public = frozenset(public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.server.check_connection(HTTPConnection(scope), self.scopes)
        except BearerError as exc:
            if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
                # A server without the ASGI denial-response extension can only refuse the
                # handshake: 1008, policy violation (RFC 6455 §7.4.1).
                await send({"type": "websocket.close", "code": 1008, "reason": exc.description[:120]})
                return
            await error_response(exc)(scope, receive, send)
            return
        remember(scope, self.server, principal)
        await self.app(scope, receive, send)
