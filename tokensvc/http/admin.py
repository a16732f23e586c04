"""The admin JSON API under /admin, guarded by the admin bearer key."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tokensvc.errors import InvalidRequest
from tokensvc.http.bearer import AdminKey
from tokensvc.http.params import read_document
from tokensvc.http.responses import json_response
from tokensvc.registry import Registry, client_view, user_view
from tokensvc.services import Services
from tokensvc.settings import admin_key_of

audit = logging.getLogger("tokensvc.audit")


# Far past any real listing, and far inside Redis' 64-bit ranges: a larger offset is a mistake
# (or a probe), answered 400 rather than passed on to a Redis that would refuse it.
MAX_OFFSET = 10**9


def _paging(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or not low <= int(raw) <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}.")
    return int(raw)


class AdminEndpoints:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        keyring = svc.codec.keyring
        self.registry = Registry(svc.store, svc.hasher, None if svc.settings.argon2_per_worker
                                 else keyring.secret_verifier, keyring.seal_client_secret)
        self.key = AdminKey(admin_key_of(svc.settings))
        self._guard = self.key.check

    async def _doc(self, request: Request) -> dict[str, Any]:
        settings = self.svc.settings
        return await read_document(request, settings.max_body_size, settings.request_timeout,
                                   form=False)

    async def clients(self, request: Request) -> Response:
        self._guard(request)
        if request.method == "POST":
            client, secret = await self.registry.create_client(await self._doc(request))
            audit.info("admin created client %s", client.client_id)
            return json_response(client_view(client, secret), 201, no_store=True)
        offset = _paging(request, "offset", 0, 0, MAX_OFFSET)
        limit = _paging(request, "limit", 100, 1, 1000)
        found, total = await self.svc.store.list_clients(offset, limit)
        return json_response({"clients": [client_view(c) for c in found], "total": total,
                              "offset": offset, "limit": limit})

    async def client(self, request: Request) -> Response:
        self._guard(request)
        client_id = request.path_params["client_id"]
        if request.method == "PATCH":
            client = await self.registry.update_client(client_id, await self._doc(request))
            audit.info("admin updated client %s", client_id)
            return json_response(client_view(client))
        if request.method == "DELETE":
            await self.registry.revoke_client(client_id)
            audit.info("admin revoked client %s", client_id)
            return Response(status_code=204)
        return json_response(client_view(await self.registry.client(client_id)))

    async def client_secret(self, request: Request) -> Response:
        self._guard(request)
        client_id = request.path_params["client_id"]
        # Optional {"token_endpoint_auth_method": ...}: switch to that secret method with the
        # new secret (registry.py says which switches need one).
        client, secret = await self.registry.rotate_secret(client_id, await self._doc(request))
        audit.info("admin rotated the secret of client %s", client_id)
        return json_response(client_view(client, secret), no_store=True)

    async def users(self, request: Request) -> Response:
        self._guard(request)
        user = await self.registry.create_user(await self._doc(request))
        audit.info("admin created a user")
        return json_response(user_view(user), 201)

    async def user(self, request: Request) -> Response:
        self._guard(request)
        username = request.path_params["username"]
        if request.method == "PATCH":
            user = await self.registry.update_user(username, await self._doc(request))
            audit.info("admin updated a user")
            return json_response(user_view(user))
        if request.method == "DELETE":
            await self.registry.delete_user(username)
            audit.info("admin deleted a user")
            return Response(status_code=204)
        user, lockout = await self.registry.user(username)
        return json_response(user_view(user, lockout))

    async def rotate_signing_key(self, request: Request) -> Response:
        """Start a JWT signing key rotation now: 201 with the new key, which signs after the
        publish-ahead; 200 with the key already waiting to sign, if there is one."""
        self._guard(request)
        key, made = await self.svc.signer.rotate_now()
        if made:
            audit.info("admin rotated the JWT signing key: %s signs from %d", key.kid, key.activates)
        return json_response({"kid": key.kid, "alg": key.alg, "created": key.created,
                              "activates": key.activates}, 201 if made else 200)

    async def unlock(self, request: Request) -> Response:
        self._guard(request)
        await self.registry.unlock_user(request.path_params["username"])
        audit.info("admin unlocked a user")
        return Response(status_code=204)
