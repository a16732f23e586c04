"""The admin web console at /admin: the clients table, client configuration and users.

It is a thin HTML face on the same Registry the admin JSON API uses, so both validate and
store alike. What stands in front of every page here (sign-in, the session, CSRF tokens,
once-only forms, the audit line) is in consoleauth.py, which Console builds on.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tokensvc.authmethods import needs_new_secret
from tokensvc.errors import OAuthError
from tokensvc.grants import GRANT_TYPES
from tokensvc.http.admin import MAX_OFFSET
from tokensvc.jwkset import check_jwks
from tokensvc.models import AUTH_METHODS, Client, Lockout
from tokensvc.registry import Registry
from tokensvc.services import Services
from tokensvc.web.consoleauth import NOTICES, AdminSession, ConsoleAuth
from tokensvc.web.pages import static_file

PAGE_SIZE = 50
SORTS = ("name", "used", "created")
SCRIPT = static_file("console.js")
# The confidential methods offered by the forms (a public client is the form's "Public" type).
CONFIDENTIAL_METHODS = tuple(m for m in AUTH_METHODS if m != "none")


class Console(ConsoleAuth):
    """Request handlers of the console; one per worker."""

    def __init__(self, svc: Services, registry: Registry) -> None:
        super().__init__(svc)
        self.registry = registry

    # -- clients -------------------------------------------------------------------------

    async def clients(self, request: Request) -> Response:
        """The clients table: one index read per page, whatever the number of clients."""
        session = await self.session(request)
        if session is None:
            return self.back("/admin/console/login")
        q = request.query_params
        sort = q.get("sort", "created")
        sort = sort if sort in SORTS else "created"
        descending = q.get("dir", "asc" if sort == "name" else "desc") == "desc"
        search = q.get("q", "").strip()[:200]
        if search and sort != "name":
            # A search reads the name index, so its matches come in name order (A to Z) whatever
            # column was asked for; say so rather than label them "created" and show Z to A.
            sort, descending = "name", False
        try:
            # A page past any real listing is the last page (below), not a Redis range error.
            page = min(max(1, int(q.get("page", "1"))), MAX_OFFSET // PAGE_SIZE)
        except ValueError:
            page = 1
        rows: list[tuple[Client, int]] = []
        total = 0
        if search:
            exact = await self.svc.store.get_client(search)
            if exact is not None:
                rows, total = [(exact, await self.svc.store.last_used(search))], 1
        if not rows:
            rows, total = await self.svc.store.browse_clients(sort, descending, (page - 1) * PAGE_SIZE,
                                                              PAGE_SIZE, prefix=search)
        pages = max(1, -(-total // PAGE_SIZE))
        if page > pages:
            # Past the end (a stale link after deletions): the last page rather than an empty one.
            page = pages
            rows, total = await self.svc.store.browse_clients(sort, descending, (page - 1) * PAGE_SIZE,
                                                              PAGE_SIZE, prefix=search)
        return self.render("clients.html", session, rows=rows, total=total, page=page, pages=pages,
                           sort=sort, descending=descending, search=search,
                           notice=NOTICES.get(q.get("done", "")), link=_table_link(sort, descending, search))

    async def new_client(self, request: Request) -> Response:
        session = await self.session(request)
        if session is None:
            return self.back("/admin/console/login")
        return self.render("client_new.html", session, grant_types=GRANT_TYPES,
                           methods=CONFIDENTIAL_METHODS, once=secrets.token_urlsafe(24), form={},
                           error=None)

    async def create_client(self, request: Request) -> Response:
        session, form, refused = await self.guarded(request)
        if refused is not None:
            return refused
        assert session is not None  # noqa: S101 -- type narrowing: no refusal means a session
        doc: dict[str, Any] = {
            "name": form.get("name", ""),
            "redirect_uris": form.get("redirect_uris", "").split(),
            "scopes": form.get("scopes", "").split(),
            "grant_types": form.get("grant_types", "").split(),
            "token_endpoint_auth_method": "none" if form.get("type") == "public"
            else form.get("auth_method", "client_secret_basic"),
        }
        if form.get("website"):
            doc["website"] = form["website"]
        if form.get("dpop_bound_access_tokens") == "yes":
            doc["dpop_bound_access_tokens"] = True
        try:
            if form.get("jwks", "").strip():
                doc["jwks"] = _jwks(form["jwks"])
            if not await self.first_use(form):
                return self.back("/admin", "resubmitted")
            client, secret = await self.registry.create_client(doc)
        except (OAuthError, _Refused) as exc:
            return self.render("client_new.html", session, 400, grant_types=GRANT_TYPES,
                               methods=CONFIDENTIAL_METHODS, once=secrets.token_urlsafe(24), form=form,
                               error=exc.description if isinstance(exc, OAuthError) else str(exc))
        self.audit(request, session, "client.create", client=client.client_id)
        return self.render("secret.html", session, client=client, secret=secret, created=True)

    async def client(self, request: Request) -> Response:
        session = await self.session(request)
        if session is None:
            return self.back("/admin/console/login")
        client = await self.svc.store.get_client(request.path_params["client_id"])
        if client is None:
            return self.render("message.html", session, 404, title="No such client",
                               message="This client does not exist or was revoked.")
        return await self._client_page(request, session, client)

    async def _client_page(self, request: Request, session: AdminSession, client: Client,
                           status: int = 200, error: str | None = None) -> Response:
        now = int(time.time() * 1000)
        issued, failed = await self.svc.store.usage(client.client_id, now)
        settings = self.svc.settings
        return self.render("client.html", session, status, client=client, issued=issued, failed=failed,
                           last_used=await self.svc.store.last_used(client.client_id),
                           defaults=settings, once=secrets.token_urlsafe(24), error=error,
                           methods=CONFIDENTIAL_METHODS,
                           jwks_text=orjson.dumps(client.jwks, option=orjson.OPT_INDENT_2).decode()
                           if client.jwks else "",
                           notice=NOTICES.get(request.query_params.get("done", "")))

    async def client_action(self, request: Request) -> Response:
        session, form, refused = await self.guarded(request)
        if refused is not None:
            return refused
        assert session is not None  # noqa: S101 -- type narrowing: no refusal means a session
        client_id = request.path_params["client_id"]
        client = await self.svc.store.get_client(client_id)
        if client is None:
            return self.render("message.html", session, 404, title="No such client",
                               message="This client does not exist or was revoked.")
        action = form.get("action", "")
        here = f"/admin/console/clients/{client_id}"
        try:
            if action == "rename":
                await self.registry.update_client(client_id, {"name": form.get("name", "")})
                done = "renamed"
            elif action == "edit":
                await self.registry.update_client(client_id, {
                    "redirect_uris": form.get("redirect_uris", "").split(),
                    "scopes": form.get("scopes", "").split(),
                    "website": form.get("website") or None,
                    "resources": form.get("resources", "").split(),
                })
                done = "edited"
            elif action == "configure":
                await self.registry.update_client(client_id, _configuration(form))
                done = "configured"
            elif action == "authentication":
                method = form.get("auth_method", "")
                jwks = _jwks(form["jwks"]) if form.get("jwks", "").strip() else None
                if not needs_new_secret(client, method):
                    await self.registry.update_client(
                        client_id, {"token_endpoint_auth_method": method, "jwks": jwks})
                    done = "authentication"
                else:
                    # A switch that needs a secret the server does not hold: the new one, shown
                    # once. The keys are checked first, so a refusal changes nothing.
                    jwks = None if jwks is None else check_jwks(jwks)
                    if not await self.first_use(form):
                        return self.back(here, "resubmitted")
                    client, secret = await self.registry.rotate_secret(
                        client_id, {"token_endpoint_auth_method": method})
                    if jwks != client.jwks:
                        client = await self.registry.update_client(client_id, {"jwks": jwks})
                    self.audit(request, session, "client.rotate-secret", client=client_id)
                    return self.render("secret.html", session, client=client, secret=secret,
                                       created=False)
            elif action == "rotate":
                if not await self.first_use(form):
                    return self.back(here, "resubmitted")
                client, secret = await self.registry.rotate_secret(client_id)
                self.audit(request, session, "client.rotate-secret", client=client_id)
                return self.render("secret.html", session, client=client, secret=secret, created=False)
            elif action == "revoke":
                if form.get("confirm") != "yes":
                    return await self._client_page(request, session, client, 400,
                                                   "Tick the box to confirm the revocation.")
                await self.registry.revoke_client(client_id)
                self.audit(request, session, "client.revoke", client=client_id)
                return self.back("/admin", "revoked")
            else:
                return await self._client_page(request, session, client, 400, "Unknown action.")
        except (OAuthError, _Refused) as exc:
            message = exc.description if isinstance(exc, OAuthError) else str(exc)
            return await self._client_page(request, session, client, 400, message)
        self.audit(request, session, f"client.{action}", client=client_id)
        return self.back(here, done)

    async def usage(self, request: Request) -> Response:
        """The live panel's numbers, polled by the page's script."""
        session = await self.session(request)
        if session is None:
            return Response(status_code=401)
        issued, failed = await self.svc.store.usage(request.path_params["client_id"],
                                                    int(time.time() * 1000))
        return Response(orjson.dumps({"issued": issued, "failed": failed}), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    # -- users ---------------------------------------------------------------------------

    async def users(self, request: Request) -> Response:
        session = await self.session(request)
        if session is None:
            return self.back("/admin/console/login")
        username = request.query_params.get("q", "").strip()[:200]
        found, lockout = (await self.svc.store.get_user(username)) if username else (None, Lockout())
        return self.render("users.html", session, query=username, user=found, lockout=lockout,
                           notice=NOTICES.get(request.query_params.get("done", "")), error=None)

    async def user_action(self, request: Request) -> Response:
        session, form, refused = await self.guarded(request)
        if refused is not None:
            return refused
        assert session is not None  # noqa: S101 -- type narrowing: no refusal means a session
        action = form.get("action", "")
        username = form.get("username", "")
        ref = hashlib.sha256(username.encode()).hexdigest()[:10]
        try:
            if action == "create":
                await self.registry.create_user({"username": username, "password": form.get("password", ""),
                                                 "verified": form.get("verified") == "yes"})
                done = "user-created"
            elif action in ("verify", "unverify"):
                await self.registry.update_user(username, {"verified": action == "verify"})
                done = "verified" if action == "verify" else "unverified"
            elif action == "unlock":
                await self.registry.unlock_user(username)
                done = "unlocked"
            elif action == "password":
                await self.registry.update_user(username, {"password": form.get("password", "")})
                done = "password"
            elif action == "delete":
                if form.get("confirm") != "yes":
                    raise _Refused("Tick the box to confirm the deletion.")
                await self.registry.delete_user(username)
                self.audit(request, session, "user.delete", user=ref)
                return self.back("/admin/console/users", "user-deleted")
            else:
                raise _Refused("Unknown action.")
        except (OAuthError, _Refused) as exc:
            message = exc.description if isinstance(exc, OAuthError) else str(exc)
            found, lockout = await self.svc.store.get_user(username)
            return self.render("users.html", session, 400, query=username, user=found, lockout=lockout,
                               notice=None, error=message)
        self.audit(request, session, f"user.{action}", user=ref)
        return self.back("/admin/console/users", done, q=username)

    async def script(self, request: Request) -> Response:
        return Response(SCRIPT, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})


class _Refused(Exception):
    """A console form the admin has to correct (not an API error)."""


def _table_link(sort: str, descending: bool, search: str) -> dict[str, str]:
    """Header links: clicking the current column flips its direction."""
    links = {}
    for column in SORTS:
        flip = "asc" if column == sort and descending else "desc"
        if column != sort:
            flip = "asc" if column == "name" else "desc"
        params = {"sort": column, "dir": flip, **({"q": search} if search else {})}
        links[column] = "/admin?" + urlencode(params)
    return links


def _jwks(text: str) -> Any:
    """The JWKS textarea as a document (the Registry checks what it holds)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise _Refused("The JWKS is not valid JSON: paste a JWK Set, {\"keys\": [...]}.") from None


def _configuration(form: dict[str, str]) -> dict[str, Any]:
    """The configuration form as the admin API's PATCH document; blank means the global default."""
    doc: dict[str, Any] = {}
    for name in ("access_token_ttl", "refresh_token_ttl", "max_user_login_attempts"):
        raw = form.get(name, "").strip()
        if not raw:
            doc[name] = None
        elif raw.isdigit():
            doc[name] = int(raw)
        else:
            raise _Refused(f"{name.replace('_', ' ')} must be a whole number of seconds or attempts.")
    reuse = form.get("reuse_tokens", "default")
    doc["reuse_tokens"] = {"on": True, "off": False}.get(reuse)
    token_format = form.get("access_token_format", "default")
    doc["access_token_format"] = token_format if token_format in ("opaque", "jwt") else None
    doc["require_verified_users"] = form.get("require_verified_users") == "yes"
    doc["dpop_bound_access_tokens"] = form.get("dpop_bound_access_tokens") == "yes"
    # The least a form that lost the field can mean: the client's own tokens.
    doc["introspection"] = form.get("introspection", "own")
    return doc
