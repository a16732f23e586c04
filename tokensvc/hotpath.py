"""The hot routes, served before Starlette's middleware stack and router.

`POST /oauth/token` (and `/oauth/v2/token`) and `POST /oauth/introspect` are what users buy
the service for. Through the full stack a request passes five ASGI layers (error middleware,
metrics middleware, exception middleware, router, request/response wrapper) before the
endpoint runs; here it goes straight to the same endpoint function, with the same error
handling and the same metrics, from a dict lookup on the exact path. Every other request, and
every other method on these paths, goes to the Starlette app unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from tokensvc import metrics
from tokensvc.errors import OAuthError, StoreUnavailable
from tokensvc.metrics import ASGIApp, Receive, Scope, Send
from tokensvc.outage import OUTAGE
from tokensvc.responses import crash_response, error_response, unavailable_response

log = logging.getLogger("tokensvc")
Endpoint = Callable[[Request], Awaitable[Response]]


class HotPaths:
    """An ASGI app: the hot routes by exact path, everything else to `app`."""

    def __init__(self, app: ASGIApp, routes: dict[str, Endpoint], retry_after: int) -> None:
        self.app = app
        self.routes = routes
        self.retry_after = str(retry_after)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = self.routes.get(path)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        metrics.request_started()
        try:
            response = await endpoint(Request(scope, receive))
        except OAuthError as exc:
            response = error_response(exc)
        except StoreUnavailable as exc:
            OUTAGE.refused(exc)
            response = unavailable_response(self.retry_after)
        except Exception:
            log.exception("unhandled error on %s", path)
            response = crash_response()
        try:
            await response(scope, receive, send)
        finally:
            metrics.request_finished(path, "POST", response.status_code, time.perf_counter() - start)
