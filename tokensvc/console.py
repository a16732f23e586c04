"""The admin web console at /admin: the clients table, client configuration and users.

It is a thin HTML face on the same Registry the admin JSON API uses, so both validate and
store alike. The admin key is typed once into a sign-in form and never travels again: it
opens a server-side session (Redis, idle timeout) held by an HttpOnly, SameSite=Strict cookie
scoped to /admin. Every form carries a CSRF token bound to that session. Forms that reveal a
secret (create, rotate) also carry a once-only nonce, so a reload or a resubmission cannot
create a second client or show a secret twice.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tokensvc.admin import MAX_OFFSET
from tokensvc.errors import InvalidRequest, OAuthError
from tokensvc.grants import GRANT_TYPES
from tokensvc.models import Client
from tokensvc.pages import Pages, static_file
from tokensvc.params import FORM, media_type, read_document
from tokensvc.registry import Registry
from tokensvc.services import Services
from tokensvc.tokens import digest

audit = logging.getLogger("tokensvc.audit")

COOKIE = "tsv_admin"
COOKIE_PATH = "/admin"
IDLE_SECONDS = 30 * 60
PAGE_SIZE = 50
SORTS = ("name", "used", "created")
ONCE_TTL_MS = 24 * 3600 * 1000
SCRIPT = static_file("console.js")
# Notices shown after a redirect: a fixed vocabulary, so nothing user-typed is echoed from a URL.
NOTICES = {
    "renamed": "The client was renamed.",
    "edited": "Redirect URIs, scopes and website were saved.",
    "configured": "The configuration was saved. New tokens follow it at once.",
    "revoked": "The client was revoked. Every token it held stopped working.",
    "resubmitted": "That form was already sent. A secret is shown only once and cannot be shown again.",
    "user-created": "The user was created.",
    "verified": "The user is now verified.",
    "unverified": "The user is no longer verified.",
    "unlocked": "The user was unlocked.",
    "password": "The password was changed.",
    "user-deleted": "The user was deleted, and every token issued to them ended.",
    "signed-out": "You are signed out.",
}


@dataclass(frozen=True, slots=True)
class AdminSession:
    session_id: str
    csrf: str

    @property
    def tag(self) -> str:
        """A short, non-secret name for the session in the audit log."""
        return digest(self.session_id)[:10]


class Console:
    """Request handlers of the console; one per worker."""

    def __init__(self, svc: Services, registry: Registry) -> None:
        self.svc = svc
        self.registry = registry
        self.pages = Pages(svc.settings, svc.codec.keyring)
        assert svc.settings.admin_key
        self._key = svc.settings.admin_key.encode("utf-8")

    # -- plumbing ------------------------------------------------------------------------

    def render(self, template: str, session: AdminSession | None, status: int = 200,
               **context: Any) -> HTMLResponse:
        return self.pages.render(f"console/{template}", status, scripts=True,
                                 csrf=session.csrf if session else "", **context)

    async def session(self, request: Request) -> AdminSession | None:
        sid = request.cookies.get(COOKIE)
        if not sid or len(sid) > 100:
            return None
        raw = await self.svc.store.touch_admin_session(digest(sid), IDLE_SECONDS * 1000)
        if raw is None:
            return None
        return AdminSession(sid, self.pages.csrf_for(sid))

    async def form(self, request: Request) -> dict[str, str]:
        """The posted form (params.py's one reader): a repeated field is refused, but for the
        grant-type checkboxes, whose values are joined by spaces."""
        if media_type(request) != FORM:
            return {}
        settings = self.svc.settings
        try:
            return await read_document(request, settings.max_body_size, settings.request_timeout,
                                       form=True, lists=frozenset({"grant_types"}))
        except InvalidRequest:
            # A malformed form (a repeated field, broken encoding) carries no usable CSRF token
            # either: it is refused as a forged one is (403), and nothing changes.
            return {}

    def audit(self, request: Request, session: AdminSession, action: str, **what: str) -> None:
        """One line per change: who (the session), what, which client; never a secret."""
        addr = request.client.host if request.client else "-"
        details = " ".join(f"{k}={v}" for k, v in what.items())
        audit.info("console action=%s %s session=%s addr=%s", action, details, session.tag, addr)

    @staticmethod
    def back(path: str, notice: str | None = None, **query: str) -> Response:
        params = {**query, **({"done": notice} if notice else {})}
        return RedirectResponse(path + ("?" + urlencode(params) if params else ""), 303)

    async def guarded(self, request: Request) -> tuple[AdminSession | None, dict[str, str], Response | None]:
        """The session and form of a POST, or the response that refuses it."""
        session = await self.session(request)
        if session is None:
            return None, {}, self.back("/admin/console/login")
        form = await self.form(request)
        if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            return session, form, self.render("message.html", session, 403, title="Form expired",
                                              message="The form has expired or did not come from this "
                                              "console. Go back, reload and try again.")
        return session, form, None

    async def first_use(self, form: dict[str, str]) -> bool:
        nonce = form.get("once", "")
        return bool(nonce) and await self.svc.store.first_use(digest(nonce), ONCE_TTL_MS)

    # -- sign-in -------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            notice = NOTICES.get(request.query_params.get("done", ""))
            return self.render("login.html", None, notice=notice)
        form = await self.form(request)
        key = form.get("admin_key", "").encode("utf-8")
        if not hmac.compare_digest(key, self._key):
            audit.warning("console action=sign-in-failed addr=%s",
                          request.client.host if request.client else "-")
            return self.render("login.html", None, 401, error="That is not the admin key.")
        sid = secrets.token_urlsafe(32)
        await self.svc.store.put_admin_session(digest(sid), orjson.dumps({"iat": int(time.time())}),
                                               IDLE_SECONDS * 1000)
        response = self.back("/admin")
        self.pages.set_cookie(response, COOKIE, sid, None, path=COOKIE_PATH, samesite="strict")
        self.audit(request, AdminSession(sid, ""), "sign-in")
        return response

    async def logout(self, request: Request) -> Response:
        session, _, refused = await self.guarded(request)
        if refused is not None:
            return refused
        assert session is not None
        await self.svc.store.delete_admin_session(digest(session.session_id))
        self.audit(request, session, "sign-out")
        response = self.back("/admin/console/login", "signed-out")
        self.pages.delete_cookie(response, COOKIE, path=COOKIE_PATH, samesite="strict")
        return response

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
                           once=secrets.token_urlsafe(24), form={}, error=None)

    async def create_client(self, request: Request) -> Response:
        session, form, refused = await self.guarded(request)
        if refused is not None:
            return refused
        assert session is not None
        doc: dict[str, Any] = {
            "name": form.get("name", ""),
            "redirect_uris": form.get("redirect_uris", "").split(),
            "scopes": form.get("scopes", "").split(),
            "grant_types": form.get("grant_types", "").split(),
            "token_endpoint_auth_method": "none" if form.get("type") == "public" else "client_secret_basic",
        }
        if form.get("website"):
            doc["website"] = form["website"]
        try:
            if not await self.first_use(form):
                return self.back("/admin", "resubmitted")
            client, secret = await self.registry.create_client(doc)
        except OAuthError as exc:
            return self.render("client_new.html", session, 400, grant_types=GRANT_TYPES,
                               once=secrets.token_urlsafe(24), form=form, error=exc.description)
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
                           notice=NOTICES.get(request.query_params.get("done", "")))

    async def client_action(self, request: Request) -> Response:
        session, form, refused = await self.guarded(request)
        if refused is not None:
            return refused
        assert session is not None
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
                })
                done = "edited"
            elif action == "configure":
                await self.registry.update_client(client_id, _configuration(form))
                done = "configured"
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
        found = None
        failures = 0
        if username:
            found, failures = await self.svc.store.get_user(username)
        return self.render("users.html", session, query=username, user=found, failures=failures,
                           locked=found is not None and failures >= self.svc.settings.max_user_login_attempts,
                           notice=NOTICES.get(request.query_params.get("done", "")), error=None)

    async def user_action(self, request: Request) -> Response:
        session, form, refused = await self.guarded(request)
        if refused is not None:
            return refused
        assert session is not None
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
            found, failures = await self.svc.store.get_user(username)
            return self.render("users.html", session, 400, query=username, user=found, failures=failures,
                               locked=found is not None
                               and failures >= self.svc.settings.max_user_login_attempts,
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
    doc["require_verified_users"] = form.get("require_verified_users") == "yes"
    return doc

