"""A small protected API for the resource-server kit's scenarios (`resource_jwt`,
`resource_introspection`): a Starlette app whose every route but two needs a bearer token,
checked by `tokensvc.resource` (`ResourceServer` + `BearerMiddleware`), as the README's
example API is.

- `GET /me`: the principal's `sub` and how the token was checked (`jwt` or `introspection`),
  a tiny JSON body, so what is measured is the token check and the stack around it;
- `GET /healthz` (public): readiness, for the bench's start-up wait;
- `GET /stats` (public): requests served by `/me` and the kit's own counters (introspection
  requests made, JWKS fetches), so a run can show that every request was introspected, or
  that the key set was fetched once.

Configured by environment variables, so the bench starts it like any deployed API:

- `BENCH_API_ISSUER`: the issuer (tokensvc's URL); its metadata gives the JWKS and
  introspection endpoints;
- `BENCH_API_AUDIENCE`: the API's audience (tokens must be asked for it with `resource=`);
- `BENCH_API_CLIENT_ID`, `BENCH_API_CLIENT_SECRET`: the API's own client (`"introspection":
  "all"`), for opaque tokens; without them only JWTs are accepted;
- `BENCH_API_CACHE_TTL`: the kit's `cache_ttl` (default 10; `0`: no cache, every opaque token
  is introspected).

Run: `BENCH_API_ISSUER=... BENCH_API_AUDIENCE=... python -m bench.resource_api --port 8200`
(uvicorn, uvloop, httptools, one worker, no access log: the stack tokensvc and the reference
app run on).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator, Mapping

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokensvc.resource import BearerError, BearerMiddleware, ResourceServer, bearer_error_handler

PUBLIC = ("/healthz", "/stats")


def server_from(env: Mapping[str, str]) -> ResourceServer:
    """The kit's ResourceServer as the environment describes it."""
    client_id = env.get("BENCH_API_CLIENT_ID") or None
    client_secret = env.get("BENCH_API_CLIENT_SECRET") or None
    return ResourceServer(issuer=env["BENCH_API_ISSUER"], audience=env["BENCH_API_AUDIENCE"],
                          realm="bench", client_id=client_id, client_secret=client_secret,
                          cache_ttl=float(env.get("BENCH_API_CACHE_TTL", "10")))


def create_app(env: Mapping[str, str] | None = None) -> Starlette:
    server = server_from(os.environ if env is None else env)
    served = [0]

    async def me(request: Request) -> Response:
        who = request.state.principal
        served[0] += 1
        return Response(orjson.dumps({"sub": who.sub, "checked_by": who.checked_by}),
                        media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def stats(request: Request) -> Response:
        intro = server.introspector
        keys = server.keys
        return Response(orjson.dumps({
            "served": served[0],
            "introspections": intro.requests if intro is not None else 0,
            "jwks_fetches": keys.fetches if keys is not None else 0,
            "cached_answers": intro.cached[0] if intro is not None else 0,
        }), media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with server:  # metadata and keys fetched at start
            yield

    return Starlette(routes=[Route("/me", me), Route("/healthz", healthz), Route("/stats", stats)],
                     middleware=[Middleware(BearerMiddleware, server=server, public=PUBLIC)],
                     exception_handlers={BearerError: bearer_error_handler}, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.resource_api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(), host=args.host, port=args.port, loop="uvloop", http="httptools",
                workers=1, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=15)


if __name__ == "__main__":
    main()
