"""The front door: every request enters here; the hot routes are served ahead of Starlette.

`POST /oauth/token` (and `/oauth/v2/token`) and `POST /oauth/introspect` are what users buy
the service for. Through the full stack a request passes several ASGI layers (error
middleware, exception middleware, router, request/response wrapper) before the endpoint runs;
here it goes straight to the endpoint from a dict lookup on the exact path. The hot routes are
declared once, as `HotRoute`s in the app's route list (any other method on their paths gets
Starlette's 405 from the same entries); every other request goes to the Starlette app.

Both ways share what must not differ: `response_for` turns an exception into the contract's
answer (the app's exception handlers call it too), and the request metrics are recorded here,
for every request, in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tokensvc import metrics
from tokensvc.errors import OAuthError, StoreUnavailable
from tokensvc.http.responses import (
    crash_response,
    error_body,
    error_response,
    json_response,
    unavailable_response,
)
from tokensvc.metrics import ASGIApp, Message, Receive, Scope, Send
from tokensvc.outage import OUTAGE

log = logging.getLogger("tokensvc")
Endpoint = Callable[[Request], Awaitable[Response]]
_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed"}


class HotRoute(Route):
    """A POST route the front door serves without Starlette's middleware and router."""

    def __init__(self, path: str, endpoint: Endpoint) -> None:
        super().__init__(path, endpoint, methods=["POST"])
        self.hot_endpoint = endpoint


def response_for(exc: Exception, retry_after: int, path: str) -> Response:
    """The contract's answer to an exception, on either way in: RFC 6749 §5.2 errors as they
    are, a storage outage as 503 with Retry-After (logged once per outage), Starlette's HTTP
    errors as JSON, anything else as a logged 500."""
    if isinstance(exc, OAuthError):
        return error_response(exc)
    if isinstance(exc, StoreUnavailable):
        OUTAGE.refused(exc)
        return unavailable_response(retry_after)
    if isinstance(exc, HTTPException):
        code = _HTTP_ERRORS.get(exc.status_code, "invalid_request")
        return json_response(error_body(code, str(exc.detail)), exc.status_code, exc.headers)
    log.error("unhandled error on %s", path, exc_info=exc)
    return crash_response()


class HotPaths:
    """An ASGI app: the hot routes by exact path, everything else to `app`; metrics for all."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], retry_after: int) -> None:
        self.app = app
        self.routes: dict[str, Endpoint] = {r.path: r.hot_endpoint for r in routes
                                            if isinstance(r, HotRoute)}
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
        start = time.perf_counter()
        metrics.request_started()
        if endpoint is not None:
            # Inline rather than a helper method: this is every token and introspection request.
            path = scope["path"]
            try:
                response = await endpoint(Request(scope, receive))
            except Exception as exc:
                response = response_for(exc, self.retry_after, path)
            try:
                await response(scope, receive, send)
            finally:
                metrics.request_finished(path, "POST", response.status_code,
                                         time.perf_counter() - start)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The route template Starlette matched, never the raw path (ids stay out of labels).
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.request_finished(route, scope["method"], status, time.perf_counter() - start)
