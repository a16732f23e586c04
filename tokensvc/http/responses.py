"""JSON responses: orjson bodies, RFC 6749 §5.1 no-store headers, §5.2 error bodies."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response

from tokensvc.errors import OAuthError

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None,
                  *, no_store: bool = False) -> Response:
    merged = {**NO_STORE, **(headers or {})} if no_store else dict(headers or {})
    return Response(orjson.dumps(body), status, merged, media_type="application/json")


def error_body(error: str, description: str) -> dict[str, str]:
    """`message` repeats the description because Gofundo clients read it."""
    return {"error": error, "error_description": description, "message": description}


def error_response(exc: OAuthError) -> Response:
    return json_response(error_body(exc.error, exc.description), exc.status_code, exc.headers,
                         no_store=True)


def unavailable_response(retry_after: int | str) -> Response:
    """Storage is down or slow: 503 temporarily_unavailable, never a 500 or a hang."""
    return json_response(error_body("temporarily_unavailable", "Storage is unavailable; retry shortly."),
                         503, {"Retry-After": str(retry_after)}, no_store=True)


def crash_response() -> Response:
    return json_response(error_body("server_error", "Internal error."), 500, no_store=True)
