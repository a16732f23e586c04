"""Reference endpoints, so tokensvc's figures can be read as ratios measured in the same run.

A Starlette app on the same stack as tokensvc (uvicorn, uvloop, httptools, one worker):

- `GET /static`: a constant JSON body; the stack's ceiling.
- `POST /token-noredis`: parse the urlencoded form with Starlette's `request.form()`, mint a
  random token, answer with orjson; the Redis-less token route.
- `POST /token-redis`: the same plus two `SET ... EX` in one redis-py pipeline (redis-py's
  default pipeline, so one MULTI/EXEC round trip); the bare Starlette + redis-py route.

`--raw` runs something else: a bare asyncio protocol that answers every request with a
constant response, far cheaper than any Starlette route. The bench loads it for a few seconds
before a run to measure the generator's own ceiling. With `--ssl-certfile/--ssl-keyfile` it
speaks TLS, and it honours `Connection: close`, so the ceiling of a `--tls` or
`--new-connection-per-request` run is taken over the same kind of connections.

Run: `python -m bench.reference --port 8100 [--redis-url redis://127.0.0.1:6379/0] [--raw]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC_BODY = orjson.dumps({"status": "ok", "service": "reference"})
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
ACCESS_TTL = 3600


def _token_body(form: Any) -> tuple[str, bytes]:
    token = secrets.token_urlsafe(32)
    scope = form.get("scope")
    body = orjson.dumps({"access_token": token, "token_type": "Bearer", "expires_in": ACCESS_TTL,
                         "scope": scope if isinstance(scope, str) else None})
    return token, body


def create_app(redis_url: str | None = None) -> Starlette:
    state: dict[str, Any] = {}

    async def static(request: Request) -> Response:
        return Response(STATIC_BODY, media_type="application/json")

    async def token_noredis(request: Request) -> Response:
        form = await request.form()
        if form.get("grant_type") is None:
            return Response(orjson.dumps({"error": "invalid_request"}), 400,
                            media_type="application/json")
        _, body = _token_body(form)
        return Response(body, media_type="application/json", headers=NO_STORE)

    async def token_redis(request: Request) -> Response:
        form = await request.form()
        if form.get("grant_type") is None:
            return Response(orjson.dumps({"error": "invalid_request"}), 400,
                            media_type="application/json")
        token, body = _token_body(form)
        client_id = str(form.get("client_id") or "anonymous")
        now = int(time.time())
        record = orjson.dumps({"c": client_id, "iat": now, "exp": now + ACCESS_TTL})
        digest = hashlib.sha256(token.encode()).hexdigest()
        async with state["redis"].pipeline() as pipe:
            pipe.set(f"ref:t:{digest}", record, ex=ACCESS_TTL)
            pipe.set(f"ref:c:{client_id}:last", digest, ex=ACCESS_TTL)
            await pipe.execute()
        return Response(body, media_type="application/json", headers=NO_STORE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if redis_url is not None:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(redis_url, max_connections=64)
            await client.ping()
            state["redis"] = client
        try:
            yield
        finally:
            if "redis" in state:
                await state["redis"].aclose()

    routes = [Route("/static", static, methods=["GET"]),
              Route("/token-noredis", token_noredis, methods=["POST"])]
    if redis_url is not None:
        routes.append(Route("/token-redis", token_redis, methods=["POST"]))
    return Starlette(routes=routes, lifespan=lifespan)


# -- the ceiling responder -----------------------------------------------------------------

RAW_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
                b'{"status":"ok"}')
RAW_CLOSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b'content-length: 15\r\n\r\n{"status":"ok"}')


class RawResponder(asyncio.Protocol):
    """Answers each request (GET, no body) with the same bytes; keeps the connection open."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        n = data.count(b"\r\n\r\n")
        cut = data.rfind(b"\r\n\r\n")
        self.tail = data[cut + 4:] if cut >= 0 else data
        if n and self.transport is not None:
            if b"Connection: close" in data:
                self.transport.write(RAW_CLOSE)
                self.transport.close()
                return
            self.transport.write(RAW_RESPONSE * n)


async def serve_raw(host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawResponder, host, port, backlog=1024, ssl=tls)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--redis-url", help="serve /token-redis against this Redis")
    parser.add_argument("--raw", action="store_true", help="the generator-ceiling responder instead")
    parser.add_argument("--ssl-certfile", help="--raw over TLS: the PEM certificate")
    parser.add_argument("--ssl-keyfile", help="--raw over TLS: its PEM key")
    args = parser.parse_args(argv)
    if args.raw:
        import uvloop

        tls = None
        if args.ssl_certfile:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve_raw(args.host, args.port, tls))
        return
    import uvicorn

    uvicorn.run(create_app(args.redis_url), host=args.host, port=args.port, loop="uvloop",
                http="httptools", workers=1, log_level="warning", access_log=False, lifespan="on",
                timeout_keep_alive=15)


if __name__ == "__main__":
    main()
