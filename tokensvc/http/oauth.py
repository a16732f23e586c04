"""The token (RFC 6749 §3.2), revocation (RFC 7009) and introspection (RFC 7662) endpoints."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from tokensvc import metrics
from tokensvc.clientauth import authenticate
from tokensvc.errors import (
    InvalidDPoPProof,
    InvalidRequest,
    OAuthError,
    StoreUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedTokenType,
)
from tokensvc.grants import GRANTS
from tokensvc.grants.base import GrantContext
from tokensvc.http.bearer import (
    DPoPPresentations,
    introspection,
    live_record,
    parse_token,
    presented_record,
)
from tokensvc.http.params import TOKEN_LISTS, read_params
from tokensvc.http.responses import json_response
from tokensvc.proofs import HEADER as DPOP, accept_once, check, nonce_header
from tokensvc.services import Services
from tokensvc.tokens import CODE, REFRESH

_HINTS = (None, "access_token", "refresh_token")

# RFC 6749 §2.3.1: client credentials "MUST NOT be included in the request URI", and §3.2: the
# token request's parameters go in the entity-body. The token and introspection endpoints define
# no parameter of their URL at all, so the rule is the simplest one that cannot miss a name: any
# query string is refused. A list of forbidden names would let through the next credential
# (client_assertion, a password, a refresh token, ...) and would cost a parse per request; this
# costs one look at the raw bytes, nothing when they are empty. Refused before the body is read,
# so nothing is authenticated, counted or spent.
_NO_URL_PARAMETERS = (
    "The token endpoint takes no parameters in its URL: send grant_type, the client "
    "credentials and every other parameter in the request body (RFC 6749 §2.3.1, §3.2).")
# RFC 7662 §2.1: the introspection request's parameters are sent in the body, too.
_INTROSPECT_QUERY = ("The introspection endpoint takes no parameters in its URL: send token, "
                     "token_type_hint and the client credentials in the request body "
                     "(RFC 7662 §2.1, RFC 6749 §2.3.1).")
# finAPI's revocation reads the token and its hint from the URL; nothing else may come that way.
_REVOKE_QUERY_NAMES = frozenset(("token", "token_type_hint"))


class OAuthEndpoints:
    """Request handlers bound to the service's parts at start-up."""

    def __init__(self, svc: Services, presentations: DPoPPresentations) -> None:
        self.svc = svc
        self.presentations = presentations
        self.limit = svc.settings.max_body_size
        self.timeout = svc.settings.request_timeout

    async def token(self, request: Request) -> Response:
        try:
            return await self._token(request)
        except OAuthError as exc:
            metrics.token_error(exc.error)
            raise
        except StoreUnavailable:
            metrics.token_error("temporarily_unavailable")
            raise

    async def _token(self, request: Request) -> Response:
        svc = self.svc
        if request.scope["query_string"]:
            raise InvalidRequest(_NO_URL_PARAMETERS)
        params = await read_params(request, self.limit, self.timeout, TOKEN_LISTS)
        grant_type = params.get("grant_type")
        if grant_type is None:
            raise InvalidRequest("grant_type is required.")
        grant = GRANTS.get(grant_type)
        if grant is None:
            raise UnsupportedGrantType(f"The grant_type '{grant_type[:64]}' is not supported.")
        headers = request.headers
        # RFC 9449 §5: checked before the client is authenticated, so a request without the
        # server's nonce is sent back for it at once. A bearer request pays one header lookup.
        proof = None
        if headers.get(DPOP) is not None:
            proof = check(headers.getlist(DPOP), "POST",
                          svc.settings.issuer_url + request.scope["path"], svc.nonces)
        auth = await authenticate(headers.get("authorization"), params, svc.clients,
                                  allow_public=grant.allows_public, endpoint=request.scope["path"])
        if grant_type not in auth.client.grant_types:
            raise UnauthorizedClient(f"The client may not use grant_type={grant_type}.")
        if proof is None:
            if auth.client.dpop_bound_access_tokens:
                metrics.dpop_refused("missing")
                raise InvalidDPoPProof("The client's access tokens are DPoP-bound: send a "
                                       "DPoP proof (RFC 9449 §5.2).")
        elif not await accept_once(svc.store, proof):
            raise InvalidDPoPProof("The DPoP proof was already used.")
        result = await grant.handle(GrantContext(auth.client, params, svc.tokens, svc.store,
                                                 svc.hasher, svc.settings,
                                                 None if proof is None else proof.jkt))
        svc.usage.issued(auth.client.client_id)
        metrics.token_issued(grant_type, auth.client.client_id)
        if proof is None:
            return json_response(result.to_dict(), no_store=True)
        return json_response(result.to_dict(), headers=nonce_header(svc.nonces), no_store=True)

    async def revoke(self, request: Request) -> Response:
        """RFC 7009, plus finAPI's `Authorization: Bearer <the client's own access token>` (or
        `DPoP <it>` with a proof, when it is bound: RFC 9449 §7)."""
        svc = self.svc
        if request.scope["query_string"]:
            _revoke_query(request.scope["query_string"])
        params = await read_params(request, self.limit, self.timeout)
        for name in ("token", "token_type_hint"):
            value = request.query_params.get(name)
            if value:
                if name in params or len(request.query_params.getlist(name)) > 1:
                    raise InvalidRequest(f"The parameter '{name}' was sent more than once.")
                params[name] = value
        username: str | None = None
        caller = await presented_record(request, svc, self.presentations)
        if caller is not None:
            client_id, username = caller.client_id, caller.username
        else:
            auth = await authenticate(request.headers.get("authorization"), params, svc.clients,
                                      allow_public=True, endpoint=request.scope["path"])
            client_id = auth.client.client_id
        token = params.get("token")
        if token is None:
            raise InvalidRequest("token is required.")
        hint = params.get("token_type_hint")
        if hint not in _HINTS:
            raise UnsupportedTokenType("token_type_hint must be access_token or refresh_token.")
        parsed = parse_token(svc, token)
        # RFC 7009 §2.2: an invalid token is answered with 200, since there is nothing to do.
        if parsed is None or parsed.kind == CODE:
            return Response(status_code=200)
        # finAPI: an access token with hint access_token goes alone; a refresh token, or any
        # token without a hint, takes every token of its grant with it.
        whole_grant = parsed.kind == REFRESH or hint is None
        outcome = await svc.store.revoke(parsed.grant_id, parsed.digest, client_id, whole_grant,
                                         username)
        if outcome == "FORBIDDEN":
            raise UnauthorizedClient("The token was not issued to this client.")
        if outcome == "OK":
            metrics.revoked(hint)
        return Response(status_code=200)

    async def introspect(self, request: Request) -> Response:
        """RFC 7662: anything unknown, expired, rotated or revoked is just `active: false`, and
        so is another client's token unless the caller is a resource server (RFC 7662 §4:
        its client document says `"introspection": "all"`)."""
        svc = self.svc
        if request.scope["query_string"]:
            raise InvalidRequest(_INTROSPECT_QUERY)
        params = await read_params(request, self.limit, self.timeout)
        caller = (await authenticate(request.headers.get("authorization"), params, svc.clients,
                                     allow_public=False, endpoint=request.scope["path"])).client
        token = params.get("token")
        if token is None:
            raise InvalidRequest("token is required.")
        if params.get("token_type_hint") not in _HINTS:
            raise UnsupportedTokenType("token_type_hint must be access_token or refresh_token.")
        record = await live_record(svc, token)
        if (record is not None and record.client_id != caller.client_id
                and caller.introspection != "all"):
            record = None  # told apart from an unknown token by nothing
        return json_response(introspection(record, svc.settings.issuer_url), no_store=True)


def _revoke_query(query: bytes) -> None:
    """Refuse any name in revocation's URL but finAPI's two (RFC 6749 §2.3.1: client credentials
    "MUST NOT be included in the request URI"). An allow-list, so that no credential's name
    (client_secret, client_assertion, access_token, ...) can slip past it."""
    for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name not in _REVOKE_QUERY_NAMES:
            raise InvalidRequest(
                f"The parameter '{name[:64]}' does not belong in the URL: only token and "
                "token_type_hint may be sent there; send client credentials in the "
                "Authorization header or the request body (RFC 6749 §2.3.1).")
