"""The error vocabulary: one class per RFC 6749 §5.2 code, plus the statuses the contract adds.

The description is what the client reads (`error_description`, repeated as `message` for
Gofundo clients); it never carries a Redis key, a token or a stack.
"""

from __future__ import annotations

from typing import ClassVar

from tokensvc import dpop


class OAuthError(Exception):
    """An error the client is told about in an RFC-shaped JSON body."""

    error: ClassVar[str] = "invalid_request"
    status_code: ClassVar[int] = 400

    def __init__(self, description: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"


class InvalidRequest(OAuthError):
    """RFC 6749 §5.2: a parameter is missing, repeated, malformed or not allowed."""

    error = "invalid_request"


class InvalidClient(OAuthError):
    """RFC 6749 §5.2: client authentication failed (unknown client, wrong secret, wrong method)."""

    error = "invalid_client"
    status_code = 401


class InvalidGrant(OAuthError):
    """RFC 6749 §5.2: the grant, credentials or refresh token is invalid, expired, revoked or not ours."""

    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """RFC 6749 §5.2: the client may not use this grant type (or touch this token)."""

    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    """RFC 6749 §5.2: the grant type is not one this server implements."""

    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    """RFC 6749 §5.2: the scope is malformed or exceeds what the client or grant allows."""

    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 §2: a `resource` is malformed (not an absolute URI, or with a fragment), or not
    one this client may ask for, or wider than the grant it narrows."""

    error = "invalid_target"


class UnsupportedTokenType(OAuthError):
    """RFC 7009 §2.2.1: the token_type_hint names a type this server does not revoke."""

    error = "unsupported_token_type"


class InvalidToken(OAuthError):
    """RFC 6750 §3.1: the bearer token is missing, expired, revoked or unknown. `also` is a
    further challenge for an endpoint that takes another scheme too (RFC 9449 §7.2)."""

    error = "invalid_token"
    status_code = 401

    def __init__(self, description: str, also: str | None = None) -> None:
        challenge = (f'Bearer realm="tokensvc", error="invalid_token", '
                     f'error_description="{description}"')
        super().__init__(description, {"WWW-Authenticate": challenge if also is None
                                       else f"{challenge}, {also}"})


# RFC 9449 §7.1: a DPoP challenge names the proof algorithms this server accepts.
DPOP_ALGS = " ".join(dpop.ALGS)
DPOP_CHALLENGE = f'DPoP realm="tokensvc", algs="{DPOP_ALGS}"'


class DPoPRefused(OAuthError):
    """RFC 9449 §7.1: a token presented with the DPoP scheme is refused: 401 and a DPoP
    challenge carrying the error (and, for `use_dpop_nonce`, a fresh `DPoP-Nonce`)."""

    status_code = 401

    def __init__(self, description: str, nonce: str | None = None) -> None:
        headers = {"WWW-Authenticate": f'DPoP realm="tokensvc", error="{self.error}", '
                                       f'error_description="{description}", '
                                       f'algs="{DPOP_ALGS}"'}
        if nonce is not None:
            headers["DPoP-Nonce"] = nonce
        super().__init__(description, headers)


class DPoPTokenRefused(DPoPRefused):
    """RFC 9449 §7.1: the token is unknown, expired or revoked, or not bound to the proof's key."""

    error = "invalid_token"


class DPoPProofRefused(DPoPRefused):
    """RFC 9449 §7.1: the proof is missing, malformed, not for this request, or replayed."""

    error = "invalid_dpop_proof"


class DPoPNonceRequired(DPoPRefused):
    """RFC 9449 §9: the resource wants the server's nonce in the proof; `DPoP-Nonce` has one."""

    error = "use_dpop_nonce"


class InvalidDPoPProof(OAuthError):
    """RFC 9449 §5: the DPoP proof is missing where required, malformed, not for this request,
    replayed, or signed by another key than the one the refresh token is bound to."""

    error = "invalid_dpop_proof"


class UseDPoPNonce(OAuthError):
    """RFC 9449 §8: the server demands its nonce in the proof; the `DPoP-Nonce` header of the
    answer carries a fresh one to retry with."""

    error = "use_dpop_nonce"


class UserNotVerified(OAuthError):
    """finAPI: the client requires verified users and this one is not verified (403)."""

    error = "access_denied"
    status_code = 403


class UserLocked(OAuthError):
    """finAPI: too many consecutive failed logins locked the user (423)."""

    error = "user_locked"
    status_code = 423


class NotFound(OAuthError):
    """Admin API: the named client or user does not exist."""

    error = "not_found"
    status_code = 404


class Conflict(OAuthError):
    """Admin API: the resource already exists."""

    error = "conflict"
    status_code = 409


class PayloadTooLarge(OAuthError):
    """The body exceeds the configured maximum (413)."""

    error = "invalid_request"
    status_code = 413


class RequestTimeout(OAuthError):
    """The body did not arrive in full within the configured time (408)."""

    error = "invalid_request"
    status_code = 408


class UnsupportedMediaType(OAuthError):
    """The body is neither form-urlencoded nor JSON (415)."""

    error = "invalid_request"
    status_code = 415


class Throttled(OAuthError):
    """Too many requests of one kind at once; retry after the `Retry-After` seconds (429)."""

    error = "temporarily_unavailable"
    status_code = 429


class TemporarilyUnavailable(OAuthError):
    """RFC 6749 §4.1.2.1 vocabulary: storage is unreachable; retry later (503)."""

    error = "temporarily_unavailable"
    status_code = 503


class StoreUnavailable(Exception):
    """Redis could not be reached in time; the HTTP layer answers 503, never 500."""
