"""RFC 6750 §3: how a protected API refuses a request, and the two ways a check can fail.

A check ends in `Rejected` (the token is no good here: `invalid_token`) or `IssuerUnavailable`
(the issuer's metadata, keys or introspection could not be had, so nothing is known about the
token either way: 503, never a 401 that would make a client throw away a good token).
`BearerError` is the refusal as it is sent.
"""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException

from tokensvc.dpop import ALGS

# RFC 9449 §7.1 `algs`: what a proof may be signed with (tokensvc.dpop.ALGS).
DPOP_ALGS = " ".join(ALGS)
# Seconds a client is told to wait when the issuer cannot be reached.
RETRY_AFTER = 5
# RFC 6750 §3: realm, error_description and scope are quoted-strings restricted to
# %x20-21 / %x23-5B / %x5D-7E (no '"', no '\', nothing outside printable ASCII).
_UNQUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


class Rejected(Exception):
    """The token is not acceptable to this API; the message says why (it reaches the caller)."""


class IssuerUnavailable(Exception):
    """The issuer could not be asked (network, status, body): no verdict on the token."""


def quotable(text: str, limit: int = 200) -> str:
    """`text` made safe for a quoted-string of the WWW-Authenticate header."""
    return _UNQUOTABLE.sub("?", text)[:limit]


def challenge(realm: str, error: str | None = None, description: str | None = None,
              scope: str | None = None, scheme: str = "Bearer") -> str:
    """The WWW-Authenticate value: RFC 6750 §3 (`Bearer realm="api", error="invalid_token", ...`),
    or RFC 9449 §7.1's for the DPoP scheme (the same parameters, and `algs`)."""
    params = [f'realm="{realm}"']
    if error is not None:
        params.append(f'error="{error}"')
    if description is not None:
        params.append(f'error_description="{quotable(description)}"')
    if scope is not None:
        params.append(f'scope="{scope}"')
    if scheme == "DPoP":
        params.append(f'algs="{DPOP_ALGS}"')
    return f"{scheme} " + ", ".join(params)


class BearerError(HTTPException):
    """A refusal ready to send: status, RFC 6750 error code, description and headers.

    It is a Starlette HTTPException, so Starlette and FastAPI send its status and its
    WWW-Authenticate header with no handler registered (`bearer_error_handler` makes the body
    an RFC-shaped JSON document too).
    """

    def __init__(self, status_code: int, error: str | None, description: str,
                 headers: dict[str, str]) -> None:
        super().__init__(status_code, description, headers)
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        """The JSON body: RFC 6749 §5.2's shape (no `error` when the request carried no token,
        RFC 6750 §3.1)."""
        doc = {"error_description": self.description}
        if self.error is not None:
            doc = {"error": self.error, **doc}
        return doc


def unauthorized(realm: str, error: str | None, description: str, scheme: str = "Bearer") -> BearerError:
    """401 (400 for `invalid_request`, RFC 6750 §3.1) with the challenge of the scheme the
    request used. Without any credentials (no error), both schemes are offered (RFC 9449 §7.2)."""
    status = 400 if error == "invalid_request" else 401
    if error is None:
        offered = f"{challenge(realm)}, {challenge(realm, scheme='DPoP')}"
    else:
        offered = challenge(realm, error, description, scheme=scheme)
    return BearerError(status, error, description, {"WWW-Authenticate": offered})


def insufficient_scope(realm: str, required: str, scheme: str = "Bearer") -> BearerError:
    """403 `insufficient_scope` naming the scope the request needs (RFC 6750 §3.1)."""
    description = f"This request needs the scope {required}."
    return BearerError(403, "insufficient_scope", description,
                       {"WWW-Authenticate": challenge(realm, "insufficient_scope", description, required,
                                                      scheme)})


def unavailable() -> BearerError:
    """503: the token could not be checked now; a retry may succeed."""
    return BearerError(503, "temporarily_unavailable",
                       "The token cannot be checked right now; retry shortly.",
                       {"Retry-After": str(RETRY_AFTER)})
