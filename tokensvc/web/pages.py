"""Server-rendered HTML: the Jinja2 environment, security headers, CSRF tokens and cookies.

Shared by the authorization pages and the admin console, so both send the same strict
headers: no framing, no inline script or style, nothing cached, no referrer, and both guard
their sign-in forms the same way: before there is a session, a form's CSRF token is bound to
the browser's visitor cookie (login CSRF, RFC 9700 §4.4.1.8: a cross-site page must not be
able to sign a browser in).
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from tokensvc.keyring import Keyring
from tokensvc.settings import Settings

VISITOR_COOKIE = "tsv_visitor"
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


class Pages:
    """Renders templates with the service's headers; one per worker, built at start-up."""

    def __init__(self, settings: Settings, keyring: Keyring) -> None:
        self.env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(),
                               auto_reload=False)
        self.env.filters["datetime"] = _datetime
        self.secure_cookies = settings.issuer_url.startswith("https://")
        self._keyring = keyring

    def csrf_for(self, cookie: str) -> str:
        """A form token bound to the visitor's cookie; a cross-site form cannot know it."""
        return self._keyring.csrf_for(cookie)

    def csrf_ok(self, cookie: str | None, presented: str | None) -> bool:
        if not cookie or not presented:
            return False
        return self._keyring.csrf_ok(cookie, presented)

    def visitor_csrf(self, request: Request) -> tuple[str, str | None]:
        """The CSRF token of a sign-in form, bound to the browser's visitor cookie (random, kept
        nowhere: the token is its HMAC); and a new visitor id to set when the browser has none."""
        visitor = request.cookies.get(VISITOR_COOKIE)
        if visitor and len(visitor) <= 100:
            return self.csrf_for(visitor), None
        fresh = secrets.token_urlsafe(24)
        return self.csrf_for(fresh), fresh

    def set_visitor(self, response: Response, fresh: str | None) -> None:
        """Set the visitor cookie `visitor_csrf` made up (a browser session cookie, site-wide)."""
        if fresh is not None:
            self.set_cookie(response, VISITOR_COOKIE, fresh, None)

    def visitor_csrf_ok(self, request: Request, presented: str | None) -> bool:
        """Whether a sign-in form came from a page this browser was shown."""
        return self.csrf_ok(request.cookies.get(VISITOR_COOKIE), presented)

    def render(self, template: str, status: int = 200, *, form_target: str | None = None,
               scripts: bool = False, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        # form-action must also allow a redirect that follows a form submission (Chromium
        # checks it against the redirect's target).
        actions = "'self'" + (f" {form_target}" if form_target else "")
        script = "script-src 'self'; connect-src 'self'; " if scripts else ""
        headers = {
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": (f"default-src 'none'; style-src 'self'; img-src 'self'; "
                                        f"{script}form-action {actions}; frame-ancestors 'none'; "
                                        f"base-uri 'none'"),
        }
        return HTMLResponse(html, status, headers)

    def set_cookie(self, response: Response, name: str, value: str, max_age: int | None,
                   path: str = "/", samesite: str = "lax") -> None:
        response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                            samesite=samesite,  # type: ignore[arg-type]
                            secure=self.secure_cookies)

    def delete_cookie(self, response: Response, name: str, path: str = "/",
                      samesite: str = "lax") -> None:
        response.delete_cookie(name, path=path, httponly=True, samesite=samesite,  # type: ignore[arg-type]
                               secure=self.secure_cookies)


def _datetime(epoch_seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch_seconds))


def static_file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


# RFC 9110 §12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"0(\.\d{0,3})?|1(\.0{0,3})?")
# How specifically a media range names each type (RFC 9110 §12.5.1: the most specific wins).
_RANGES = {"application/json": {"application/json": 2, "application/*": 1, "*/*": 0},
           "text/html": {"text/html": 2, "text/*": 1, "*/*": 0}}


def prefers_json(accept: str | None) -> bool:
    """Whether an Accept header (RFC 9110 §12.5.2) asks for JSON rather than a page.

    Only when `application/json` itself is named with q > 0 and ranks above text/html, first by
    q and then by how specifically each was named; a tie keeps the page. So a browser
    (`text/html,...,*/*;q=0.8`) gets the page, and `application/json` or axios's
    `application/json, text/plain, */*` get JSON."""
    if not accept or "json" not in accept.lower():
        return False
    best: dict[str, tuple[float, int]] = {}
    for item in accept.lower().split(","):
        media, *params = item.split(";")
        q = _qvalue(params)
        if q is None:
            continue  # a malformed range says nothing
        for kind, ranges in _RANGES.items():
            specificity = ranges.get(media.strip())
            if specificity is None:
                continue
            old = best.get(kind)
            if old is None or (specificity, q) > (old[1], old[0]):
                best[kind] = (q, specificity)
    json = best.get("application/json")
    if json is None or json[1] != 2 or json[0] <= 0:
        return False
    return json > best.get("text/html", (0.0, 0))


def _qvalue(params: list[str]) -> float | None:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "q":
            value = value.strip()
            return float(value) if _QVALUE.fullmatch(value) else None
    return 1.0
