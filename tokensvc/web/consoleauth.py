"""The admin console's sign-in and the guard in front of every console page and form.

Apart from the pages (console.py) because it is the console's security boundary, best read
whole. The admin key is typed once into a sign-in form and never travels again: it opens a
server-side session (Redis, idle timeout) held by an HttpOnly, SameSite=Strict cookie
scoped to /admin. The sign-in form carries a CSRF token bound to the browser's visitor cookie
(pages.py, as the authorization page's sign-in does), so a cross-site page cannot sign a
browser in (login CSRF, RFC 9700 §4.4.1.8); every later form carries one bound to the session.
Forms that reveal a secret (create, rotate) also carry a once-only nonce, so a reload or a
resubmission cannot create a second client or show a secret twice. Every change is one line
in the audit log.
"""

from __future__ import annotations

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

from tokensvc.errors import InvalidRequest
from tokensvc.http.forwarded import client_address
from tokensvc.http.params import FORM, media_type, read_document
from tokensvc.services import Services
from tokensvc.settings import admin_key_of
from tokensvc.tokens import digest
from tokensvc.web.pages import Pages

audit = logging.getLogger("tokensvc.audit")

COOKIE = "tsv_admin"
COOKIE_PATH = "/admin"
IDLE_SECONDS = 30 * 60
ONCE_TTL_MS = 24 * 3600 * 1000
# Notices shown after a redirect: a fixed vocabulary, so nothing user-typed is echoed from a URL.
NOTICES = {
    "renamed": "The client was renamed.",
    "edited": "Redirect URIs, scopes and website were saved.",
    "configured": "The configuration was saved. New tokens follow it at once.",
    "authentication": "The client authentication method and keys were saved.",
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


class ConsoleAuth:
    """Sign-in, sign-out and the per-request plumbing the console's pages share."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.pages = Pages(svc.settings, svc.codec.keyring)
        self._key = admin_key_of(svc.settings).encode("utf-8")

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
        addr = client_address(request)
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

    def sign_in_page(self, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
        csrf, fresh = self.pages.visitor_csrf(request)
        response = self.render("login.html", None, status, login_csrf=csrf, **context)
        self.pages.set_visitor(response, fresh)
        return response

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.sign_in_page(request, notice=NOTICES.get(request.query_params.get("done", "")))
        form = await self.form(request)
        # Before the key is looked at: a forged form learns nothing and opens nothing.
        if not self.pages.visitor_csrf_ok(request, form.get("csrf")):
            audit.warning("console action=sign-in-refused reason=csrf addr=%s", client_address(request))
            return self.sign_in_page(request, 403, error="The form has expired or did not come from "
                                     "this console. Sign in again.")
        key = form.get("admin_key", "").encode("utf-8")
        if not hmac.compare_digest(key, self._key):
            audit.warning("console action=sign-in-failed addr=%s", client_address(request))
            return self.sign_in_page(request, 401, error="That is not the admin key.")
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
        assert session is not None  # noqa: S101 -- type narrowing: no refusal means a session
        await self.svc.store.delete_admin_session(digest(session.session_id))
        self.audit(request, session, "sign-out")
        response = self.back("/admin/console/login", "signed-out")
        self.pages.delete_cookie(response, COOKIE, path=COOKIE_PATH, samesite="strict")
        return response
