"""The authorization request (RFC 6749 §4.1.1): reading it and validating it.

Apart from the pages because the order of the checks is the security property: until the
client and its redirect URI are known to be genuine, an error can only be shown as a page
(ErrorPage), never sent to the URI; after, errors go back to the client (RedirectError, RFC
6749 §4.1.2.1). The request is read from the query or the posted form with every value of
every name kept, so a repeated parameter is seen and refused rather than silently resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from tokensvc import pkce, resources, scopes
from tokensvc.dpop import is_thumbprint
from tokensvc.errors import InvalidScope, InvalidTarget, OAuthError
from tokensvc.http.params import parse_form, read_body
from tokensvc.models import Client
from tokensvc.services import Services
from tokensvc.settings import Settings

# The parameters of an authorization request that the forms carry along.
REQUEST_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
                  "code_challenge_method", "prompt", "dpop_jkt")
_PROMPTS = ("none", "login", "consent")


class ErrorPage(Exception):
    """The request cannot be trusted to redirect (unknown client, unregistered redirect URI).

    Shown as a page, or as an RFC 6749 §5.2 body with `error` to a caller that asks for JSON."""

    def __init__(self, message: str, status: int = 400, error: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error = error


class RedirectError(Exception):
    """RFC 6749 §4.1.2.1: an error told to the client at its (verified) redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """A validated authorization request."""

    client: Client
    redirect_uri: str
    # Whether the request named redirect_uri; if it did, redeeming the code must name it too.
    redirect_uri_sent: bool
    scope: str
    state: str | None
    challenge: str | None
    method: str | None
    prompt: str | None
    raw: dict[str, str]
    # RFC 8707: the resources as asked (each once), and the audience the code will carry.
    resources: tuple[str, ...] = ()
    aud: str | None = None
    # RFC 9449 §10: the thumbprint of the DPoP key the code may only be redeemed with.
    jkt: str | None = None

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scope.split()) if self.scope else frozenset()

    @property
    def hidden(self) -> list[tuple[str, str]]:
        """The request as the forms carry it along: each parameter once, `resource` once per
        resource."""
        return [*self.raw.items(), *(("resource", uri) for uri in self.resources)]


def multi(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Every value of every name; empty values count as omitted (RFC 6749 §3.1)."""
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        if value != "":
            params.setdefault(name, []).append(value)
    return params


def _single(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name, [])
    if len(values) > 1:
        raise RedirectError("invalid_request", f"The parameter '{name}' was sent more than once.")
    return values[0] if values else None


async def read_form(request: Request, settings: Settings) -> dict[str, list[str]]:
    """The posted form; anything else is an error page, not a JSON error."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise ErrorPage("The form was not sent as a form.", 415)
    try:
        body = await read_body(request, settings.max_body_size, settings.request_timeout)
        return multi(parse_form(body))
    except OAuthError as exc:
        raise ErrorPage(exc.description, exc.status_code, exc.error) from None


async def parse(svc: Services,
                params: Mapping[str, list[str]]) -> AuthRequest | tuple[AuthRequest, RedirectError]:
    """Validate in the order RFC 6749 §4.1.2.1 needs: first what makes a redirect safe."""
    client_ids = params.get("client_id", [])
    uris = params.get("redirect_uri", [])
    if len(client_ids) != 1 or not client_ids[0]:
        raise ErrorPage("The request names no client (client_id is missing or repeated).")
    client = await svc.clients.get(client_ids[0])
    # An unknown client and an unregistered redirect URI are `invalid_client` in JSON, as RFC
    # 6749 §5.2 names an unknown client and as Gofundo answers a wrong callback URL.
    if client is None:
        raise ErrorPage("The application that sent you here is not registered.", error="invalid_client")
    if not uris and len(client.redirect_uris) == 1:
        # RFC 6749 §3.1.2.3: a client with a single registered URI may leave redirect_uri out;
        # the code then goes there, and is redeemed without one (§4.1.3).
        redirect_uri, sent = client.redirect_uris[0], False
    elif len(uris) != 1:
        raise ErrorPage("The request names no redirect_uri, or names it more than once.")
    # RFC 9700 §4.1.3: exact string comparison, no prefixes, ports or patterns.
    elif uris[0] not in client.redirect_uris:
        raise ErrorPage("The redirect_uri is not registered for this application.",
                        error="invalid_client")
    else:
        redirect_uri, sent = uris[0], True
    raw = {name: values[0] for name, values in params.items()
           if name in REQUEST_PARAMS and len(values) == 1}
    state = raw.get("state")
    asked = tuple(dict.fromkeys(params.get("resource", ())))
    req = AuthRequest(client, redirect_uri, sent, scopes.fmt(client.scopes), state, None, None,
                      None, raw, asked)
    try:
        return _check(req, params, svc.settings.allow_plain_pkce)
    except RedirectError as exc:
        return req, exc


def _check(req: AuthRequest, params: Mapping[str, list[str]], allow_plain_pkce: bool) -> AuthRequest:
    for name in REQUEST_PARAMS:
        _single(params, name)
    client = req.client
    response_type = req.raw.get("response_type")
    if response_type is None:
        raise RedirectError("invalid_request", "response_type is required.")
    if response_type != "code":
        raise RedirectError("unsupported_response_type", "Only response_type=code is supported.")
    if "authorization_code" not in client.grant_types:
        raise RedirectError("unauthorized_client",
                            "This application may not use the authorization code flow.")
    try:
        scope = scopes.grant(scopes.parse(req.raw.get("scope")), client.scopes)
    except InvalidScope as exc:
        raise RedirectError("invalid_scope", exc.description) from None
    try:
        challenge, method = pkce.challenge(
            req.raw.get("code_challenge"), req.raw.get("code_challenge_method"),
            public=client.is_public, allow_plain=allow_plain_pkce)
    except pkce.PkceError as exc:
        raise RedirectError("invalid_request", str(exc)) from None
    prompt = req.raw.get("prompt")
    if prompt is not None and prompt not in _PROMPTS:
        raise RedirectError("invalid_request", "prompt must be none, login or consent.")
    try:
        # RFC 8707 §2: absolute URIs, and ones the client may ask for.
        aud = resources.audience(resources.check(req.resources) if req.resources else None,
                                 client.resources)
    except InvalidTarget as exc:
        raise RedirectError("invalid_target", exc.description) from None
    jkt = req.raw.get("dpop_jkt")
    if jkt is not None and not is_thumbprint(jkt):
        raise RedirectError("invalid_request",
                            "dpop_jkt must be a JWK SHA-256 thumbprint (RFC 7638), base64url-encoded.")
    return AuthRequest(client, req.redirect_uri, req.redirect_uri_sent, scope, req.state,
                       challenge, method, prompt, req.raw, req.resources, aud, jkt)
