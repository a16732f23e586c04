"""The OpenAPI 3.1 description of the whole HTTP surface, served at /openapi.json.

Written by hand from the contract (API.md) rather than generated, so it says what clients may
rely on (error bodies, statuses, media types), and kept true by tests/test_openapi.py, which
checks that every route the app serves is described here with its methods and nothing else.
Built once at start-up.
"""

from __future__ import annotations

from typing import Any

from tokensvc import __version__
from tokensvc.http.schemas import SCHEMAS, Schema, ref

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
HTML = "text/html"

_ref = ref


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str, *, retry_after: bool = False) -> Schema:
    out = _json(_ref("Error"), description)
    if retry_after:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                          "description": "Seconds to wait before retrying."}}
    return out


def _html(description: str) -> Schema:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def _redirect(description: str) -> Schema:
    return {"description": description,
            "headers": {"Location": {"schema": {"type": "string"}, "description": "Where to go."}}}


# Answers any endpoint can give: bad input, size, media type, storage outage.
COMMON = {
    "408": _error("The body did not arrive in full within the configured time."),
    "413": _error("The body is larger than the configured limit."),
    "415": _error("The body is neither form-urlencoded nor JSON."),
    "503": _error("Storage is unavailable (`temporarily_unavailable`); retry after Retry-After.",
                  retry_after=True),
}
OAUTH_ERRORS = {
    "400": _error("RFC 6749 §5.2 error: invalid_request, invalid_grant, unsupported_grant_type, "
                  "invalid_scope, unauthorized_client; RFC 8707 §2 invalid_target."),
    "401": _error("invalid_client: client authentication failed."),
    "403": _error("access_denied: the user is not verified and the client requires it."),
    "423": _error("user_locked: too many failed password attempts."),
    "429": _error("Throttled; retry after Retry-After.", retry_after=True),
    **COMMON,
}
ADMIN_ERRORS = {
    "400": _error("Invalid field."),
    "401": _error("invalid_token: the admin key is missing or wrong."),
    "404": _error("No such client or user."),
    "409": _error("Already exists."),
    **COMMON,
}


def _body(schema: Schema, *types: str) -> Schema:
    return {"required": True, "content": {t: {"schema": schema} for t in types}}


def _op(summary: str, responses: dict[str, Any], *, body: Schema | None = None,
        security: list[dict[str, list[str]]] | None = None,
        parameters: list[Schema] | None = None) -> Schema:
    op: Schema = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if security is not None:
        op["security"] = security
    if parameters:
        op["parameters"] = parameters
    return op


def _path_param(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


CLIENT_AUTH: list[dict[str, list[str]]] = [{"clientBasic": []}, {}]  # {}: secret or id in the body
ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
# RFC 9449 §7: a DPoP-bound access token is presented with the DPoP scheme and a proof.
TOKEN_HOLDER: list[dict[str, list[str]]] = [*BEARER, {"dpop": []}]


_NONCE = {"DPoP-Nonce": {"schema": {"type": "string"},
                         "description": "RFC 9449 §8: the server nonce to put in the next proof "
                                        "(with TOKENSVC_DPOP_NONCE)."}}
# RFC 9449 §4: the proof that binds the tokens to the client's key.
_DPOP_HEADER = {"name": "DPoP", "in": "header", "required": False, "schema": {"type": "string"},
                "description": "A DPoP proof JWT (RFC 9449 §4) for POST and this URL: the tokens "
                               "are bound to its key (token_type DPoP)."}


# RFC 9449 §7: the proof that goes with `Authorization: DPoP <token>`.
_DPOP_PRESENTED = {**_DPOP_HEADER, "description": "With `Authorization: DPoP`: a proof for this "
                   "method and URL, with `ath` (the token's hash), signed by the token's key."}


def _token_holder(summary: str, method: str) -> Schema:
    """An endpoint that answers for the access token presented (Bearer, or DPoP with a proof)."""
    refused = {**_error("invalid_token, invalid_dpop_proof or use_dpop_nonce (RFC 6750 §3, "
                        "RFC 9449 §7.1)."), "headers": _NONCE}
    return {method: _op(summary, {"200": _json(_ref("Principal"), "The principal."),
                                  "401": refused, **COMMON},
                        security=TOKEN_HOLDER, parameters=[_DPOP_PRESENTED])}


def _token_endpoint(summary: str) -> Schema:
    ok = {**_json(_ref("TokenResponse"), "Tokens issued."), "headers": _NONCE}
    refused = {**OAUTH_ERRORS["400"], "headers": _NONCE, "description":
               "RFC 6749 §5.2 error (invalid_request, invalid_grant, unsupported_grant_type, "
               "invalid_scope, unauthorized_client), RFC 8707 invalid_target, RFC 9449 "
               "invalid_dpop_proof or use_dpop_nonce (with DPoP-Nonce)."}
    return {"post": _op(summary, {"200": ok, **OAUTH_ERRORS, "400": refused},
                        body=_body(_ref("TokenRequest"), FORM, JSON), security=CLIENT_AUTH,
                        parameters=[_DPOP_HEADER])}


def _page(summary: str, *, post: bool, json_errors: bool = False) -> Schema:
    """An HTML endpoint; with `json_errors`, its refusals are also RFC 6749 §5.2 JSON to a
    caller whose Accept prefers application/json (the authorization endpoint)."""

    def refusal(description: str) -> Schema:
        out = _html(description)
        if json_errors:
            out["content"][JSON] = {"schema": _ref("Error")}
        return out

    get = _op(summary, {"200": _html("A page."), "302": _redirect("To the client or a page."),
                        "400": refusal("An error page (never a redirect).")})
    item: Schema = {"get": get}
    if post:
        item["post"] = _op(summary + " (form submission)",
                           {"200": _html("A page."), "303": _redirect("See other."),
                            "400": refusal("An error page."), "401": _html("Sign-in failed."),
                            "403": refusal("Form expired or forged."), "408": refusal("Too slow."),
                            "413": refusal("Too large."),
                            "415": refusal("Not a form."), "423": _html("Locked."),
                            "503": _error("Storage unavailable.", retry_after=True)},
                           body=_body({"type": "object", "additionalProperties": True}, FORM))
    return item


def _console_page(summary: str) -> Schema:
    return {"get": _op(summary, {"200": _html("A console page."),
                                 "303": _redirect("To the sign-in page when signed out.")})}


def _console_form(summary: str) -> Schema:
    return {"post": _op(summary, {"200": _html("A console page."),
                                  "303": _redirect("Done; back to a page."),
                                  "400": _html("Invalid input."), "401": _html("Wrong key."),
                                  "403": _html("Form expired or forged."),
                                  "404": _html("No such client."), **COMMON},
                        body=_body({"type": "object", "additionalProperties": True}, FORM))}


def _merge(*items: Schema) -> Schema:
    out: Schema = {}
    for item in items:
        out.update(item)
    return out


def document(issuer: str) -> dict[str, Any]:
    """The OpenAPI document for a service at `issuer`."""
    revoke_ok = {"200": {"description": "Revoked, or nothing to revoke (RFC 7009 §2.2)."}}
    paths: dict[str, Schema] = {
        "/oauth/token": _token_endpoint("Token endpoint (RFC 6749 §3.2)."),
        "/oauth/v2/token": _token_endpoint("Token endpoint, finAPI's path."),
        "/oauth/revoke": {"post": _op(
            "Revocation (RFC 7009; or finAPI's Bearer style).", {**revoke_ok, **OAUTH_ERRORS},
            body=_body(_ref("TokenParam"), FORM, JSON), security=[*CLIENT_AUTH, *TOKEN_HOLDER],
            parameters=[_DPOP_PRESENTED])},
        "/oauth/introspect": {"post": _op(
            "Introspection (RFC 7662).", {"200": _json(_ref("Introspection"), "The token's state."),
                                          **OAUTH_ERRORS},
            body=_body(_ref("TokenParam"), FORM, JSON), security=[{"clientBasic": []}, {}])},
        "/login": _token_holder("Token login: who holds this access token.", "post"),
        "/oauth/userinfo": _token_holder("The principal of an access token.", "get"),
        "/oauth/authorize": _page("Authorization endpoint (RFC 6749 §4.1, PKCE).", post=True,
                                  json_errors=True),
        "/authorize": _page("Authorization endpoint (alias).", post=True, json_errors=True),
        "/oauth/logout": _page("End the sign-in session.", post=True),
        "/oauth/register": {"post": _op(
            "Dynamic client registration (RFC 7591).",
            {"201": _json(_ref("Client"), "Registered; the secret is shown once."),
             "400": _error("invalid_redirect_uri or invalid_client_metadata."),
             "401": _error("Registration is closed without the admin key."),
             "429": _error("Too many registrations from this address.", retry_after=True),
             **COMMON}, body=_body(_ref("ClientInput"), JSON), security=[*ADMIN, {}])},
        "/api/client": {"post": _op(
            "Client registration with Gancio's fields.",
            {"201": _json(_ref("Client"), "Registered; the secret is shown once."),
             "400": _error("Invalid field."),
             "401": _error("Registration is closed without the admin key."),
             "429": _error("Too many registrations from this address.", retry_after=True),
             **COMMON}, body=_body(_ref("ClientInput"), FORM, JSON), security=[*ADMIN, {}])},
        "/.well-known/oauth-authorization-server": {"get": _op(
            "Authorization server metadata (RFC 8414).", {"200": _json(_ref("Metadata"), "Metadata.")})},
        "/.well-known/jwks.json": {"get": _op(
            "The public keys of JWT access tokens (RFC 7517 JWK Set): the next key before it "
            "signs, old ones until their last token expires.",
            {"200": _json({"type": "object", "required": ["keys"],
                           "properties": {"keys": {"type": "array", "items": {"type": "object"}}}},
                          "The JWK Set."),
             "503": _error("Storage unavailable before any key was read.", retry_after=True)})},
        "/healthz": {"get": _op("Liveness.", {"200": _json({"type": "object"}, "Alive.")})},
        "/readyz": {"get": _op("Readiness: Redis answers.",
                               {"200": _json({"type": "object"}, "Ready."),
                                "503": _error("Not ready.", retry_after=True)})},
        "/metrics": {"get": _op("Prometheus metrics (absent with a metrics port).", {
            "200": {"description": "Exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/openapi.json": {"get": _op("This document.", {"200": _json({"type": "object"},
                                                                     "OpenAPI 3.1.")})},
        "/admin/clients": {
            "get": _op("List active clients.", {"200": _json({"type": "object"}, "A page of clients."),
                                                **ADMIN_ERRORS}, security=ADMIN),
            "post": _op("Create a client; the secret is shown once.",
                        {"201": _json(_ref("Client"), "Created."), **ADMIN_ERRORS},
                        body=_body(_ref("ClientInput"), JSON), security=ADMIN)},
        "/admin/clients/{client_id}": {
            "parameters": [_path_param("client_id")],
            "get": _op("A client.", {"200": _json(_ref("Client"), "The client."), **ADMIN_ERRORS},
                       security=ADMIN),
            "patch": _op("Edit a client and its configuration.",
                         {"200": _json(_ref("Client"), "Edited."), **ADMIN_ERRORS},
                         body=_body(_ref("ClientInput"), JSON), security=ADMIN),
            "delete": _op("Revoke a client and all its tokens.",
                          {"204": {"description": "Revoked."}, **ADMIN_ERRORS}, security=ADMIN)},
        "/admin/clients/{client_id}/secret": {
            "parameters": [_path_param("client_id")],
            "post": _op("Rotate the secret (shown once); with a method, switch to it too.",
                        {"200": _json(_ref("Client"), "Rotated."), **ADMIN_ERRORS}, security=ADMIN,
                        body={"content": {JSON: {"schema": _ref("SecretRotation")}}})},
        "/admin/signing-keys/rotate": {"post": _op(
            "Rotate the JWT signing key: a new key, published now, signs after the publish-ahead.",
            {"201": _json(_ref("SigningKey"), "Made; it signs from `activates` (epoch ms)."),
             "200": _json(_ref("SigningKey"), "A key already waits to sign; nothing made."),
             **ADMIN_ERRORS}, security=ADMIN)},
        "/admin/users": {"post": _op("Create a user.", {"201": _json(_ref("User"), "Created."),
                                                        **ADMIN_ERRORS},
                                     body=_body(_ref("UserInput"), JSON), security=ADMIN)},
        "/admin/users/{username}": {
            "parameters": [_path_param("username")],
            "get": _op("A user.", {"200": _json(_ref("User"), "The user."), **ADMIN_ERRORS},
                       security=ADMIN),
            "patch": _op("Verify or set the password of a user.",
                         {"200": _json(_ref("User"), "Edited."), **ADMIN_ERRORS},
                         body=_body(_ref("UserInput"), JSON), security=ADMIN),
            "delete": _op("Delete a user and end their tokens.",
                          {"204": {"description": "Deleted."}, **ADMIN_ERRORS}, security=ADMIN)},
        "/admin/users/{username}/unlock": {
            "parameters": [_path_param("username")],
            "post": _op("Lift a lockout.", {"204": {"description": "Unlocked."}, **ADMIN_ERRORS},
                        security=ADMIN)},
        "/admin": _console_page("The admin console: the clients table."),
        "/admin/console/login": _merge(_console_page("Console sign-in."),
                                       _console_form("Sign in with the admin key.")),
        "/admin/console/logout": _console_form("Sign out of the console."),
        "/admin/console/clients": _console_form("Create a client from the console."),
        "/admin/console/clients/new": _console_page("The new-client form."),
        "/admin/console/clients/{client_id}": _merge(
            {"parameters": [_path_param("client_id")]},
            _console_page("A client's page."), _console_form("Change a client from the console.")),
        "/admin/console/clients/{client_id}/usage": {
            "parameters": [_path_param("client_id")],
            "get": _op("The live panel's numbers.", {"200": _json({"type": "object"}, "Counts."),
                                                     "401": {"description": "Signed out."}})},
        "/admin/console/users": _merge(_console_page("Users."),
                                       _console_form("Change users from the console.")),
        "/static/tokensvc.css": {"get": _op("The stylesheet.", {"200": {
            "description": "CSS.", "content": {"text/css": {"schema": {"type": "string"}}}}})},
        "/static/console.js": {"get": _op("The console's script.", {"200": {
            "description": "JavaScript.",
            "content": {"text/javascript": {"schema": {"type": "string"}}}}})},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tokensvc", "version": __version__,
                 "description": "OAuth 2.0 token service: tokens, revocation, introspection, "
                                "the authorization-code flow, registration and administration."},
        "servers": [{"url": issuer}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "clientBasic": {"type": "http", "scheme": "basic",
                                "description": "client_secret_basic (RFC 6749 §2.3.1)."},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An access token, or the admin key for /admin."},
                "dpop": {"type": "http", "scheme": "DPoP",
                         "description": "A DPoP-bound access token (RFC 9449 §7.1), with its "
                                        "proof in the DPoP header."},
            },
        },
    }
