"""RFC 6749 §2.3 client authentication: client_secret_basic, client_secret_post and none, and
(assertions.py) RFC 7523 private_key_jwt and client_secret_jwt."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

from tokensvc import metrics
from tokensvc.assertions import read_assertion
from tokensvc.clients import ClientDirectory
from tokensvc.errors import InvalidClient, InvalidRequest, Throttled
from tokensvc.models import ASSERTION_METHODS, Client

_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="tokensvc"'}


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who called, and how they proved it."""

    client: Client
    method: str


def _basic(header: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidClient("The Basic credentials are malformed.", _BASIC_CHALLENGE) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id:
        raise InvalidClient("The Basic credentials are malformed.", _BASIC_CHALLENGE)
    # RFC 6749 §2.3.1: id and secret are form-encoded before they are Basic-encoded.
    return unquote_plus(client_id), unquote_plus(secret)


async def authenticate(authorization: str | None, params: Mapping[str, str], clients: ClientDirectory,
                       *, allow_public: bool, endpoint: str = "/oauth/token") -> Authenticated:
    """The calling client, or InvalidClient / InvalidRequest as RFC 6749 §5.2 says. `endpoint`
    is the path called, which a client assertion's `aud` may name.

    Every refusal counts as a client authentication failure in the metrics, whatever the
    endpoint and whatever was wrong (unknown client, wrong or missing secret, bad Basic, or a
    client throttled after too many failures: Throttled, 429).
    """
    try:
        if "client_assertion" in params or "client_assertion_type" in params:
            return await _by_assertion(authorization, params, clients, endpoint)
        return await _authenticate(authorization, params, clients, allow_public=allow_public)
    except (InvalidClient, Throttled):
        client_id = params.get("client_id")
        metrics.client_auth_failed(client_id if client_id is not None else "unknown")
        raise


async def _by_assertion(authorization: str | None, params: Mapping[str, str],
                        clients: ClientDirectory, endpoint: str) -> Authenticated:
    verifier = clients.assertions
    if verifier is None:
        raise InvalidClient("Client assertions are not accepted here.")
    sub, header = read_assertion(authorization, params)
    client = await clients.get(sub)
    try:
        await verifier.verify(params, client, header, endpoint)
    except InvalidClient:
        if client is not None:
            _failed(clients, client)
        raise
    assert client is not None  # noqa: S101 -- type narrowing: verify() refuses an unknown client
    return Authenticated(client, client.token_endpoint_auth_method)


def _failed(clients: ClientDirectory, client: Client) -> None:
    if clients.usage is not None:
        clients.usage.failed(client.client_id)


async def _authenticate(authorization: str | None, params: Mapping[str, str], clients: ClientDirectory,
                        *, allow_public: bool) -> Authenticated:
    if authorization is not None and authorization[:6].lower() == "basic ":
        if "client_secret" in params:
            # RFC 6749 §2.3: the client MUST NOT use more than one authentication method.
            raise InvalidRequest("Use one client authentication method, not Basic and a body secret.")
        client_id, secret = _basic(authorization)
        if params.get("client_id", client_id) != client_id:
            raise InvalidRequest("client_id in the body differs from the Basic credentials.")
        method = "client_secret_basic"
    elif "client_secret" in params:
        if "client_id" not in params:
            raise InvalidRequest("client_secret was sent without client_id.")
        client_id, secret = params["client_id"], params["client_secret"]
        method = "client_secret_post"
    elif "client_id" in params:
        client_id, secret = params["client_id"], ""
        method = "none"
    else:
        raise InvalidClient("Client authentication is required.", _BASIC_CHALLENGE)

    challenge = _BASIC_CHALLENGE if method == "client_secret_basic" else None
    client = await clients.get(client_id)
    if client is None:
        raise InvalidClient("Client authentication failed.", challenge)
    if client.token_endpoint_auth_method in ASSERTION_METHODS:
        # The client registered a key-based method: a secret (it may have none) is not it.
        _failed(clients, client)
        raise InvalidClient(f"This client authenticates with {client.token_endpoint_auth_method}: send "
                            "client_assertion and client_assertion_type (RFC 7523).", challenge)
    if method == "none":
        if not client.is_public:
            raise InvalidClient("This client must authenticate with its secret.", challenge)
        if not allow_public:
            raise InvalidClient("Public clients may not use this endpoint.", challenge)
        return Authenticated(client, method)
    if client.is_public:
        raise InvalidClient("A public client has no secret to present.", challenge)
    try:
        ok = await clients.check_secret(client, secret)
    except Throttled:
        _failed(clients, client)
        raise
    if not ok:
        _failed(clients, client)
        raise InvalidClient("Client authentication failed.", challenge)
    return Authenticated(client, method)
