"""A client's authentication method (RFC 7591 §2 `token_endpoint_auth_method`) and what changing
it takes.

Changing a client's method never invents or reveals a secret behind the admin's back. A switch
that keeps the secret (client_secret_basic <-> client_secret_post, client_secret_jwt -> basic or
post, which drops the sealed copy the server no longer needs) or drops it (-> private_key_jwt,
which has no secret at all) is an edit. A switch that needs a secret the server does not hold
is a secret rotation that names the method (`Registry.rotate_secret(id, method)`, POST
/admin/clients/<id>/secret with {"token_endpoint_auth_method": ...}, the console's
authentication form), which shows the new secret once, as every rotation does: to
client_secret_jwt (the server keeps only argon2 hashes of the current secret, and a sealed copy
can only be made of a secret it is shown), and from private_key_jwt to a secret method. Public
(`none`) and confidential clients do not turn into each other: their grants differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokensvc.errors import InvalidRequest
from tokensvc.models import AUTH_METHODS, CLIENT_SECRET_JWT, PRIVATE_KEY_JWT, Client

# Methods whose client holds no secret.
SECRETLESS = ("none", PRIVATE_KEY_JWT)


def auth_method(doc: Mapping[str, Any], default: str) -> str:
    method = doc.get("token_endpoint_auth_method", default)
    if method not in AUTH_METHODS:
        raise InvalidRequest(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}.")
    return str(method)


def switch(current: Client, method: str) -> dict[str, Any]:
    """The record changes of an edit from the client's method to `method`, or the refusal that
    names the secret rotation the switch needs (the module docstring)."""
    if "none" in (method, current.token_endpoint_auth_method):
        raise InvalidRequest("A client cannot switch between public (none) and confidential "
                             "authentication; create a new client.")
    if method == PRIVATE_KEY_JWT:
        return {"token_endpoint_auth_method": method, "secret_hash": None, "secret_verifier": None,
                "secret_sealed": None}
    if method == CLIENT_SECRET_JWT or current.secret_hash is None:
        why = ("the server keeps it sealed to check the assertions" if method == CLIENT_SECRET_JWT
               else "the client has none")
        raise InvalidRequest(
            f"Switching to {method} needs a new secret ({why}): rotate the secret naming the method, "
            f"POST /admin/clients/{current.client_id}/secret with "
            f"{{\"token_endpoint_auth_method\": \"{method}\"}} (the console's rotation does the "
            "same); the new secret is shown once.")
    return {"token_endpoint_auth_method": method, "secret_sealed": None}


def needs_new_secret(current: Client, method: str) -> bool:
    """True when switching `current` to `method` must go through a secret rotation."""
    return method not in SECRETLESS and (
        current.secret_hash is None
        or (method == CLIENT_SECRET_JWT and current.token_endpoint_auth_method != CLIENT_SECRET_JWT))
