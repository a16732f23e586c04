"""The component schemas of the OpenAPI document (openapi.py): the request and response bodies
the endpoints share, and the client fields, kept apart so that the document's paths read on
their own."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_ref = ref

# The client fields that decide what other parties see of its tokens.
CLIENT_POLICY: dict[str, Schema] = {
    "introspection": {
        "enum": ["own", "all"], "default": "own",
        "description": "RFC 7662 §4: `own`, the client may introspect only tokens issued to it "
                       "(another client's are `active: false`); `all`, a resource server that "
                       "may introspect every client's tokens. Set by the admin API only."},
    "resources": {
        "type": "array", "items": {"type": "string", "format": "uri"}, "maxItems": 20,
        "description": "RFC 8707 resource indicators (absolute URIs, no fragment) the client may "
                       "ask tokens for; another is `invalid_target`. A token request naming none "
                       "gets all of them as its audience. Empty (the default): any resource, "
                       "and no audience unless one is asked for."},
    "access_token_format": {
        "enum": ["opaque", "jwt", None], "default": None,
        "description": "`jwt`: RFC 9068 JWT access tokens signed with the keys of "
                       "/.well-known/jwks.json; `opaque`: tsv_at_ tokens; null: "
                       "TOKENSVC_ACCESS_TOKEN_FORMAT. Either way introspection and revocation "
                       "work alike."},
    "dpop_bound_access_tokens": {
        "type": "boolean", "default": False,
        "description": "RFC 9449 §5.2: every token request of the client must carry a DPoP "
                       "proof (without one: invalid_dpop_proof)."},
}
# RFC 7521 §4.2 / RFC 7523 §2.2: private_key_jwt and client_secret_jwt, in place of a secret.
CLIENT_ASSERTION: dict[str, Schema] = {
    "client_assertion_type": {"const": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
    "client_assertion": {
        "type": "string", "maxLength": 16384,
        "description": "A JWT: iss = sub = the client id, aud the issuer or this endpoint's URL, "
                       "exp at most 300 s ahead, a jti accepted once; signed with a key of the "
                       "client's jwks (private_key_jwt) or its secret (client_secret_jwt)."},
}
# The client's authentication method and its public keys.
CLIENT_AUTH_FIELDS: dict[str, Schema] = {
    "token_endpoint_auth_method": {
        "enum": ["client_secret_basic", "client_secret_post", "client_secret_jwt",
                 "private_key_jwt", "none"],
        "description": "How the client authenticates. private_key_jwt needs jwks and has no "
                       "secret; switching to client_secret_jwt (or from private_key_jwt) is a "
                       "secret rotation naming the method."},
    "jwks": {
        "type": ["object", "null"], "required": ["keys"],
        "properties": {"keys": {"type": "array", "minItems": 1, "maxItems": 10,
                                "items": {"type": "object", "required": ["kty"]}}},
        "description": "RFC 7517 JWK Set of the client's PUBLIC keys (RSA >= 2048 bits, EC "
                       "P-256, Ed25519; no private members, no oct keys; unique kids)."},
}
_AUD: Schema = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                "description": "RFC 8707: the resources the token is for (one string, or several)."}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object", "required": ["error", "error_description", "message"],
        "properties": {"error": {"type": "string"}, "error_description": {"type": "string"},
                       "message": {"type": "string"}},
    },
    "TokenRequest": {
        "type": "object", "required": ["grant_type"],
        "properties": {**{name: {"type": "string"} for name in (
            "grant_type", "client_id", "client_secret", "scope", "username", "password",
            "refresh_token", "code", "redirect_uri", "code_verifier")}, **CLIENT_ASSERTION,
            "resource": {**_AUD, "description": "RFC 8707: an absolute URI; repeat the parameter "
                                                "(or send a JSON array) for several."}},
    },
    "TokenResponse": {
        "type": "object", "required": ["access_token", "token_type", "expires_in", "scope"],
        "properties": {"access_token": {"type": "string"},
                       "token_type": {"enum": ["Bearer", "DPoP"],
                                      "description": "DPoP: bound to the proof's key (RFC 9449)."},
                       "expires_in": {"type": "integer"},
                       "scope": {"type": ["string", "null"]}, "refresh_token": {"type": "string"}},
    },
    "TokenParam": {
        "type": "object", "required": ["token"],
        "properties": {"token": {"type": "string"},
                       "token_type_hint": {"enum": ["access_token", "refresh_token"]},
                       "client_id": {"type": "string"}, "client_secret": {"type": "string"},
                       **CLIENT_ASSERTION},
    },
    "Introspection": {
        "type": "object", "required": ["active"],
        "properties": {"active": {"type": "boolean"}, "scope": {"type": "string"},
                       "client_id": {"type": "string"}, "username": {"type": "string"},
                       "token_type": {"type": "string"}, "exp": {"type": "integer"},
                       "iat": {"type": "integer"}, "sub": {"type": "string"},
                       "iss": {"type": "string"}, "aud": _AUD,
                       "cnf": {"type": "object", "required": ["jkt"],
                               "properties": {"jkt": {"type": "string"}},
                               "description": "RFC 9449 §6.2: the DPoP key the token is bound "
                                              "to (its token_type is DPoP)."}},
    },
    "Principal": {"type": "object", "properties": {"active": {"type": "boolean"}},
                  "additionalProperties": True},
    "Client": {
        "type": "object", "required": ["client_id", "name"],
        "properties": {"client_id": {"type": "string"}, "client_secret": {"type": "string"},
                       "name": {"type": "string"}, "grant_types": {"type": "array"},
                       "scopes": {"type": "array"}, "redirect_uris": {"type": "array"},
                       **CLIENT_POLICY, **CLIENT_AUTH_FIELDS},
        "additionalProperties": True,
    },
    "ClientInput": {"type": "object", "properties": {**CLIENT_POLICY, **CLIENT_AUTH_FIELDS},
                    "additionalProperties": True},
    "SecretRotation": {"type": "object", "additionalProperties": False, "properties": {
        "token_endpoint_auth_method": {"enum": ["client_secret_basic", "client_secret_post",
                                                "client_secret_jwt"]}}},
    "User": {
        "type": "object", "required": ["username", "verified"],
        "properties": {"username": {"type": "string"}, "verified": {"type": "boolean"},
                       "created_at": {"type": "integer"}, "failed_logins": {"type": "integer"},
                       "locked": {"type": "boolean",
                                  "description": "Refused by every client until unlocked."}},
    },
    "UserInput": {"type": "object", "additionalProperties": True},
    "SigningKey": {
        "type": "object", "required": ["kid", "alg", "created", "activates"],
        "properties": {"kid": {"type": "string"}, "alg": {"enum": ["ES256", "EdDSA"]},
                       "created": {"type": "integer"}, "activates": {"type": "integer"}}},
    "Metadata": {"type": "object", "required": ["issuer", "token_endpoint"],
                 "additionalProperties": True},
}
