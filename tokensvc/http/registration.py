"""Client registration: RFC 7591 dynamic registration (`POST /oauth/register`) and Gancio's
`POST /api/client`.

Both are closed by default: they take the admin bearer key, checked by the admin API's own
guard. The `open_registration` setting lets anyone register, at most `registration_rate_limit`
times per remote address per hour. Clients are made by the admin API's Registry, so a
registered client is stored, hashed and validated exactly like one an admin creates; this
module only maps each dialect's fields onto it and adds the rules that matter for clients an
unknown party registers (redirect URIs a browser may really be sent to).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from tokensvc.errors import InvalidRequest, OAuthError, Throttled, UnsupportedMediaType
from tokensvc.http.bearer import bearer_token
from tokensvc.http.forwarded import client_address
from tokensvc.http.params import JSON, media_type, read_document
from tokensvc.http.responses import json_response
from tokensvc.models import Client
from tokensvc.registry import _redirect_uri, _strings, _text
from tokensvc.services import Services

if TYPE_CHECKING:
    from tokensvc.http.admin import AdminEndpoints

audit = logging.getLogger("tokensvc.audit")

WINDOW = 3600  # the rate limit's fixed window, seconds: the setting counts per hour
MAX_REDIRECT_URIS = 20
MAX_URI_LENGTH = 2000
# Gancio's tokens come from its authorization form; the refresh token keeps an app signed in.
GANCIO_GRANTS = ("authorization_code", "refresh_token")


class InvalidRedirectUri(OAuthError):
    """RFC 7591 §3.2.2: the value of one or more redirection URIs is invalid."""

    error = "invalid_redirect_uri"


class InvalidClientMetadata(OAuthError):
    """RFC 7591 §3.2.2: the value of one of the client metadata fields is invalid."""

    error = "invalid_client_metadata"


def _redirect_uris(doc: Mapping[str, Any], *, required: bool) -> tuple[str, ...]:
    """The registrant's redirect URIs, checked by the admin API's rule (registry._redirect_uri),
    plus limits on how many and how long, since anyone may register when registration is open."""
    uris = _strings(doc, "redirect_uris") or ()
    if required and not uris:
        raise InvalidRequest("'redirect_uris' is required: at least one redirect URI.")
    if len(uris) > MAX_REDIRECT_URIS:
        raise InvalidRequest(f"at most {MAX_REDIRECT_URIS} redirect URIs may be registered.")
    for uri in uris:
        if len(uri) > MAX_URI_LENGTH:
            raise InvalidRequest(f"redirect URI '{uri[:100]}' is longer than {MAX_URI_LENGTH} characters.")
        _redirect_uri(uri)
    return uris


def _default_name(uris: tuple[str, ...]) -> str:
    """RFC 7591 makes client_name optional, but the consent page must name the client. The host
    the user will be sent back to is a truthful name; a claimed client_uri would not be."""
    host = urlsplit(uris[0]).hostname if uris else None
    return host or "unnamed client"


ANONYMOUS_GRANTS = ("authorization_code", "refresh_token")


class RegistrationEndpoints:
    """The two registration endpoints, sharing the admin API's key check and Registry."""

    def __init__(self, svc: Services, admin: AdminEndpoints) -> None:
        self.svc = svc
        self.settings = svc.settings
        self.registry = admin.registry
        self._admin_guard: Callable[[Request], None] = admin.key.check
        self._default_scopes = [name for name, _ in svc.settings.scope_descriptions]

    async def _admit(self, request: Request) -> str:
        """Let the request in, or raise: 401 without the admin key while registration is closed,
        429 beyond the rate limit while it is open. The admin key is never rate-limited; a wrong
        bearer key is refused even when registration is open, so a caller who meant to use the
        key learns it is wrong rather than being quietly counted as anonymous.

        Every anonymous attempt counts, refused ones too (bad metadata, 413, 415): each still
        costs the server work, and counting before the body is read means a flood of malformed
        requests cannot probe the validation for free."""
        if bearer_token(request) is not None or not self.settings.open_registration:
            self._admin_guard(request)
            return "admin key"
        # The peer, or behind a proxy listed in trusted_proxies the client it names; a forwarded
        # header from anyone else changes nothing (forwarded.py).
        address = client_address(request)
        count, left = await self.svc.store.count_registration(address, WINDOW)
        if count > self.settings.registration_rate_limit:
            raise Throttled("Too many client registrations from this address; retry later.",
                            {"Retry-After": str(left if left > 0 else WINDOW)})
        return "open registration"

    async def _document(self, request: Request, *, form: bool) -> dict[str, Any]:
        """The body as a document: a JSON object, or (Gancio, `form`) a form (params.py's one
        reader and its rule for repeated fields). 413 beyond the size limit, 415 for other types."""
        if not form and media_type(request) != JSON:
            raise UnsupportedMediaType("Send application/json (RFC 7591 §3.1).")
        return await read_document(request, self.settings.max_body_size,
                                   self.settings.request_timeout, form=form, empty_json=form)

    async def api_client(self, request: Request) -> Response:
        """Gancio's `POST /api/client`: a confidential client for its authorization form. A
        missing `scopes` gets the service's scopes, as Gancio gives its only scope."""
        via = await self._admit(request)
        doc = await self._document(request, form=True)
        name = _text(doc, "client_name", required=True)
        uris = _redirect_uris(doc, required=True)
        scopes = doc.get("scopes")
        client, secret = await self.registry.create_client({
            "name": name,
            "redirect_uris": list(uris),
            "scopes": self._default_scopes if scopes is None else scopes,
            "website": doc.get("website"),
            "grant_types": list(GANCIO_GRANTS),
            # Gancio's documented token request posts the secret in the body; Basic works too.
            "token_endpoint_auth_method": "client_secret_post",
        })
        audit.info("client %s registered at /api/client (%s)", client.client_id, via)
        return json_response({
            "client_id": client.client_id,
            "client_secret": secret,
            "client_name": client.name,
            "name": client.name,  # what Gancio's own answer calls it
            "redirect_uris": list(client.redirect_uris),
            "scopes": " ".join(client.scopes),
            "website": client.website,
        }, 201, no_store=True)

    async def register(self, request: Request) -> Response:
        """RFC 7591 §3: register from client metadata; answer every registered field (§3.2.1)."""
        via = await self._admit(request)
        doc = await self._document(request, form=False)
        try:
            fields, response_types = self._metadata(doc)
            if via != "admin key":
                # Without the admin key a registrant gets only grants where a user decides:
                # a self-registered client_credentials or password client would act alone.
                extra = set(fields["grant_types"]) - set(ANONYMOUS_GRANTS)
                if extra:
                    raise InvalidClientMetadata(
                        f"open registration allows only {', '.join(ANONYMOUS_GRANTS)}; "
                        f"'{sorted(extra)[0]}' needs the admin key.")
            client, secret = await self.registry.create_client(fields)
        except InvalidRequest as exc:
            # Registry speaks RFC 6749's vocabulary; RFC 7591 §3.2.2 names this error.
            raise InvalidClientMetadata(exc.description) from None
        audit.info("client %s registered at /oauth/register (%s)", client.client_id, via)
        return json_response(_rfc7591_view(client, secret, response_types), 201, no_store=True)

    def _metadata(self, doc: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """RFC 7591 §2 metadata as Registry fields, with the RFC's defaults, plus the response
        types (which follow from the grant types, so they are not stored)."""
        grant_types = _strings(doc, "grant_types")
        if grant_types is None:
            grant_types = ("authorization_code",)  # RFC 7591 §2
        elif not grant_types:
            # Registry would give an empty list the admin API's defaults, which were not asked for.
            raise InvalidClientMetadata("'grant_types' must name at least one grant type.")
        wants_code = "authorization_code" in grant_types
        response_types = _strings(doc, "response_types")
        if response_types is None:
            # RFC 7591 §2 defaults to "code", which only an authorization_code client can use:
            # a client_credentials client that omits response_types has none, rather than being
            # refused for an inconsistency it never wrote.
            response_types = ("code",) if wants_code else ()
        for rtype in response_types:
            if rtype != "code":
                raise InvalidClientMetadata(f"response type '{rtype[:64]}' is not supported; use code.")
        # RFC 7591 §2.1: response type "code" goes with grant type "authorization_code".
        if ("code" in response_types) != wants_code:
            raise InvalidClientMetadata("response_types and grant_types disagree: response type 'code' "
                                        "goes with grant type 'authorization_code' (RFC 7591 §2.1).")
        try:
            uris = _redirect_uris(doc, required=wants_code)
        except InvalidRequest as exc:
            raise InvalidRedirectUri(exc.description) from None
        scope = doc.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise InvalidClientMetadata("'scope' must be a string of space-separated scopes.")
        client_uri = _text(doc, "client_uri", limit=MAX_URI_LENGTH)
        if client_uri is not None and urlsplit(client_uri).scheme not in ("http", "https"):
            raise InvalidClientMetadata("'client_uri' must be an http(s) URL.")
        method = doc.get("token_endpoint_auth_method")
        if doc.get("jwks_uri") is not None:
            # Keys fetched from a URL would make every authentication depend on the client's
            # server (and this one fetch from wherever a registrant points it).
            raise InvalidClientMetadata("'jwks_uri' is not supported: register the public keys "
                                        "themselves in 'jwks'.")
        fields = {
            "name": _text(doc, "client_name") or _default_name(uris),
            "redirect_uris": list(uris),
            "grant_types": list(grant_types),
            "scopes": self._default_scopes if scope is None else scope,
            "website": client_uri,
            "token_endpoint_auth_method": "client_secret_basic" if method is None else method,
        }
        if doc.get("jwks") is not None:
            fields["jwks"] = doc["jwks"]  # RFC 7591 §2; checked by Registry (jwkset.py)
        # RFC 9449 §5.2: false when omitted; the registry checks it is a boolean.
        if doc.get("dpop_bound_access_tokens") is not None:
            fields["dpop_bound_access_tokens"] = doc["dpop_bound_access_tokens"]
        return fields, response_types


def _rfc7591_view(client: Client, secret: str | None,
                  response_types: tuple[str, ...]) -> dict[str, Any]:
    """RFC 7591 §3.2.1: the credentials, then every registered metadata field."""
    view: dict[str, Any] = {"client_id": client.client_id}
    if secret is not None:
        view["client_secret"] = secret
        view["client_secret_expires_at"] = 0  # required with a secret; 0: it does not expire
    view.update({
        "client_id_issued_at": client.created_at,
        "client_name": client.name,
        "redirect_uris": list(client.redirect_uris),
        "grant_types": list(client.grant_types),
        "response_types": list(response_types),
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
    })
    if client.scopes:
        view["scope"] = " ".join(client.scopes)
    if client.website is not None:
        view["client_uri"] = client.website
    if client.jwks is not None:
        view["jwks"] = client.jwks
    if client.dpop_bound_access_tokens:  # RFC 9449 §5.2; absent means false
        view["dpop_bound_access_tokens"] = True
    return view
