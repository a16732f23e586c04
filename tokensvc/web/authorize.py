"""RFC 6749 §4.1 authorization endpoint: login form, consent form, redirect with a code.

Every page is server-rendered and works without JavaScript. The request's parameters travel
as hidden form fields, so the service keeps no state for a visitor who has not logged in;
CSRF tokens are an HMAC of the visitor's cookie under the server key, so they need no storage
either. Only a logged-in session (and a remembered consent) is written to Redis.

Reading and validating the request itself, and the two ways an error about it is shown, are
in authrequest.py; this module holds the pages, the session and what the visitor's answers do.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tokensvc.errors import InvalidGrant, OAuthError, Throttled, UserLocked, UserNotVerified
from tokensvc.grants.authorization_code import issue_code
from tokensvc.http.responses import error_body, json_response
from tokensvc.models import User
from tokensvc.services import Services
from tokensvc.tokens import digest
from tokensvc.userauth import authenticate
from tokensvc.web import authrequest
from tokensvc.web.authrequest import AuthRequest, ErrorPage, RedirectError
from tokensvc.web.pages import Pages, prefers_json, static_file

SESSION_COOKIE = "tsv_session"
STYLESHEET = static_file("tokensvc.css")
_FORM_EXPIRED = "The form has expired or did not come from this site. Go back and try again."


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    username: str
    # Which incarnation of the user, and which password, the session was opened for: a user
    # deleted and created again, or given a new password, does not inherit old sessions.
    user_mark: str


def user_mark(user: User) -> str:
    return digest(f"{user.created_at}:{user.password_hash}")[:16]


class AuthorizeEndpoints:
    """GET/POST /oauth/authorize, POST /oauth/logout and the stylesheet."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.settings = svc.settings
        self.pages = Pages(svc.settings, svc.codec.keyring)
        self.csrf_for = self.pages.csrf_for
        self.csrf_ok = self.pages.csrf_ok
        self.set_cookie = self.pages.set_cookie
        self.descriptions = dict(svc.settings.scope_descriptions)
        self.issuer = svc.settings.issuer_url

    # -- plumbing ------------------------------------------------------------------------

    def page(self, template: str, status: int = 200, form_target: str | None = None,
             **context: Any) -> HTMLResponse:
        return self.pages.render(template, status, form_target=form_target, **context)

    def error_page(self, message: str, status: int = 400) -> HTMLResponse:
        return self.page("error.html", status, title="This request cannot be completed",
                         message=message)

    def refusal(self, request: Request, exc: ErrorPage) -> Response:
        """An error that cannot go back to the client: RFC 6749 §5.2 JSON to a caller whose
        Accept prefers application/json (Gofundo's API clients), the error page otherwise."""
        if prefers_json(request.headers.get("accept")):
            response = json_response(error_body(exc.error, exc.message), exc.status, no_store=True)
        else:
            response = self.error_page(exc.message, exc.status)
        response.headers["Vary"] = "Accept"
        return response

    def redirect(self, req: AuthRequest, params: dict[str, str], status: int) -> Response:
        """Back to the client (RFC 6749 §4.1.2), with RFC 9207's `iss` so mix-ups are caught."""
        if req.state is not None:
            params["state"] = req.state
        params["iss"] = self.issuer
        sep = "&" if "?" in req.redirect_uri else "?"
        return RedirectResponse(req.redirect_uri + sep + urlencode(params), status,
                                headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    def redirect_error(self, req: AuthRequest, exc: RedirectError, status: int) -> Response:
        return self.redirect(req, {"error": exc.error, "error_description": exc.description}, status)

    @staticmethod
    def form_target(redirect_uri: str) -> str:
        """The CSP source that admits a redirect to this URI."""
        parts = urlsplit(redirect_uri)
        if parts.scheme in ("http", "https"):
            return f"{parts.scheme}://{parts.netloc}"
        return f"{parts.scheme}:"

    # -- sessions ------------------------------------------------------------------------

    async def session(self, request: Request) -> Session | None:
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid or len(sid) > 100:
            return None
        raw = await self.svc.store.get_session(digest(sid))
        if raw is None:
            return None
        doc = orjson.loads(raw)
        return Session(sid, doc["u"], doc.get("m", ""))

    async def start_session(self, response: Response, user: User) -> str:
        sid = secrets.token_urlsafe(32)
        record = orjson.dumps({"u": user.username, "m": user_mark(user), "iat": int(time.time())})
        await self.svc.store.put_session(digest(sid), record, self.settings.session_ttl * 1000)
        self.set_cookie(response, SESSION_COOKIE, sid, self.settings.session_ttl)
        return sid

    # -- pages ---------------------------------------------------------------------------

    def login_page(self, request: Request, req: AuthRequest, status: int = 200, error: str | None = None,
                   username: str = "") -> HTMLResponse:
        csrf, fresh = self.pages.visitor_csrf(request)
        # The login POST redirects to the client when consent is remembered: form-action must admit it.
        response = self.page("login.html", status, form_target=self.form_target(req.redirect_uri),
                             client=req.client, hidden=req.hidden, error=error, username=username,
                             csrf=csrf)
        self.pages.set_visitor(response, fresh)
        return response

    def consent_page(self, req: AuthRequest, sid: str, username: str) -> HTMLResponse:
        described = [(s, self.descriptions.get(s, f"Use the “{s}” permission"))
                     for s in sorted(req.scope_set)]
        return self.page("consent.html", form_target=self.form_target(req.redirect_uri),
                         client=req.client, hidden=req.hidden, scopes=described, username=username,
                         csrf=self.csrf_for(sid), website=req.client.website,
                         resources=req.aud.split(" ") if req.aud else [],
                         next="/oauth/authorize?" + urlencode(req.hidden))

    async def consented(self, username: str, req: AuthRequest) -> bool:
        if req.prompt == "consent" or self.settings.consent_ttl == 0:
            return False
        approved, at = await self.svc.store.get_consent(username, req.client.client_id)
        fresh = at and time.time() * 1000 - at < self.settings.consent_ttl * 1000
        return bool(fresh) and req.scope_set <= approved

    async def approve(self, req: AuthRequest, username: str, status: int) -> Response:
        code = await issue_code(self.svc.tokens, req.client, username, req.scope,
                                req.redirect_uri, req.redirect_uri_sent, req.challenge, req.method,
                                req.aud, req.jkt)
        return self.redirect(req, {"code": code}, status)

    async def _user(self, session: Session, req: AuthRequest) -> User | None:
        """The session's user if it is still the same user with the same password; an
        unverified one is refused where the client requires verified users."""
        user, _ = await self.svc.store.get_user(session.username)
        if user is None or not hmac.compare_digest(user_mark(user), session.user_mark):
            return None
        if req.client.require_verified_users and not user.verified:
            raise RedirectError("access_denied", "Your account is not verified.")
        return user

    # -- endpoints -----------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        try:
            # HEAD is GET without the body (RFC 9110 §9.3.2); Starlette sends none for it.
            if request.method in ("GET", "HEAD"):
                return await self._get(request)
            return await self._post(request)
        except ErrorPage as exc:
            return self.refusal(request, exc)

    async def _get(self, request: Request) -> Response:
        parsed = await authrequest.parse(self.svc, authrequest.multi(request.query_params.multi_items()))
        if isinstance(parsed, tuple):
            return self.redirect_error(parsed[0], parsed[1], 302)
        req = parsed
        try:
            session = await self.session(request)
            user = None if session is None else await self._user(session, req)
            if session is None or user is None or req.prompt == "login":
                if req.prompt == "none":
                    raise RedirectError("login_required", "The user is not logged in.")
                return self.login_page(request, req)
            if await self.consented(user.username, req):
                return await self.approve(req, user.username, 302)
            if req.prompt == "none":
                raise RedirectError("consent_required", "The user has not approved this application.")
            return self.consent_page(req, session.session_id, user.username)
        except RedirectError as exc:
            return self.redirect_error(req, exc, 302)

    async def _post(self, request: Request) -> Response:
        params = await authrequest.read_form(request, self.settings)
        parsed = await authrequest.parse(self.svc, params)
        if isinstance(parsed, tuple):
            return self.redirect_error(parsed[0], parsed[1], 303)
        req = parsed
        form = {name: values[0] for name, values in params.items() if len(values) == 1}
        action = form.get("action")
        csrf = form.get("csrf")
        try:
            if action == "login":
                if not self.pages.visitor_csrf_ok(request, csrf):
                    raise ErrorPage(_FORM_EXPIRED, 403, "access_denied")
                return await self._login(request, req, form.get("username"), form.get("password"))
            session = await self.session(request)
            if session is None or not self.csrf_ok(session.session_id, csrf):
                raise ErrorPage(_FORM_EXPIRED, 403, "access_denied")
            user = await self._user(session, req)
            if user is None:
                return self.login_page(request, req)
            if action == "deny":
                raise RedirectError("access_denied", "The user denied the request.")
            if action != "approve":
                raise ErrorPage("Unknown action.")
            ttl = self.settings.consent_ttl * 1000
            if ttl:
                approved, at = await self.svc.store.get_consent(user.username, req.client.client_id)
                fresh = at and time.time() * 1000 - at < ttl
                await self.svc.store.put_consent(user.username, req.client.client_id,
                                                 req.scope_set | (approved if fresh else frozenset()),
                                                 int(time.time() * 1000), ttl)
            return await self.approve(req, user.username, 303)
        except RedirectError as exc:
            return self.redirect_error(req, exc, 303)

    async def _login(self, request: Request, req: AuthRequest, username: str | None,
                     password: str | None) -> Response:
        if username is None or password is None:
            return self.login_page(request, req, 400, "Enter your username and password.")
        try:
            user = await authenticate(self.svc.store, self.svc.hasher, self.settings, req.client,
                                      username, password)
        except (InvalidGrant, UserLocked, UserNotVerified, Throttled) as exc:
            return self.login_page(request, req, exc.status_code, self._login_error(exc), username)
        # A new session id at login: a session fixed by someone else before it is worth nothing,
        # and the one this browser held before (another user, or an older sign-in) ends here.
        previous = request.cookies.get(SESSION_COOKIE)
        if previous and len(previous) <= 100:
            await self.svc.store.delete_session(digest(previous))
        if await self.consented(user.username, req):
            response = await self.approve(req, user.username, 303)
            await self.start_session(response, user)
            return response
        placeholder = HTMLResponse("")
        sid = await self.start_session(placeholder, user)
        response = self.consent_page(req, sid, user.username)
        response.headers.append("set-cookie", placeholder.headers["set-cookie"])
        return response

    @staticmethod
    def _login_error(exc: OAuthError) -> str:
        if isinstance(exc, UserLocked):
            return "This account is locked after too many failed sign-ins. Contact an administrator."
        if isinstance(exc, UserNotVerified):
            return "This account is not verified yet, and this application requires verified accounts."
        if isinstance(exc, Throttled):
            return "Too many sign-ins at once for this account. Wait a moment and try again."
        return "The username or password is wrong."

    async def logout(self, request: Request) -> Response:
        """End the session. POST with the CSRF token; GET shows the button that does it."""
        session = await self.session(request)
        if request.method in ("GET", "HEAD"):
            if session is None:
                return self.page("logged_out.html")
            return self.page("logout.html", csrf=self.csrf_for(session.session_id),
                             username=session.username, next="")
        try:
            params = await authrequest.read_form(request, self.settings)
        except ErrorPage as exc:
            return self.error_page(exc.message, exc.status)
        form = {name: values[0] for name, values in params.items() if len(values) == 1}
        if session is not None:
            if not self.csrf_ok(session.session_id, form.get("csrf")):
                return self.error_page("The form has expired or did not come from this site.", 403)
            await self.svc.store.delete_session(digest(session.session_id))
        nxt = form.get("next")
        if nxt is not None and nxt.startswith("/oauth/authorize?"):
            response: Response = RedirectResponse(nxt, 303)  # back to the login form, same request
        else:
            response = self.page("logged_out.html")
        self.pages.delete_cookie(response, SESSION_COOKIE)
        return response

    async def stylesheet(self, request: Request) -> Response:
        return Response(STYLESHEET, media_type="text/css",
                        headers={"Cache-Control": "public, max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})

