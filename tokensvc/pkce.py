"""RFC 7636 PKCE in one place: the challenge an authorization request carries, the verifier a
token request carries, and the S256 transform between them.

The comparison itself runs in redeem.lua, in the same script that spends the code, so a code
can never be redeemed twice whatever the verifier; this module decides what is well-formed and
computes what that script compares (`rec.cc` against the S256 of the verifier, or the verifier
itself for `plain`).
"""

from __future__ import annotations

import base64
import hashlib
import re

# RFC 7636 §4.1 and §4.2: 43 to 128 unreserved characters (S256 gives exactly 43).
_UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


class PkceError(ValueError):
    """A malformed or missing PKCE parameter; the message is the client's error description."""


def challenge(code_challenge: str | None, method: str | None, *, public: bool,
              allow_plain: bool) -> tuple[str | None, str | None]:
    """The (challenge, method) an authorization request binds its code to, or PkceError.

    Public clients must use PKCE (RFC 9700 §2.1.1); S256 only unless plain is allowed."""
    if code_challenge is None:
        if method is not None:
            raise PkceError("code_challenge_method without code_challenge.")
        if public:
            raise PkceError("PKCE is required: send code_challenge with method S256.")
        return None, None
    method = method or "plain"  # RFC 7636 §4.3: the default when none is named
    if method not in ("S256", "plain"):
        raise PkceError("code_challenge_method must be S256.")
    if method == "plain" and not allow_plain:
        raise PkceError("code_challenge_method plain is not allowed; use S256.")
    if _UNRESERVED.fullmatch(code_challenge) is None or (method == "S256" and len(code_challenge) != 43):
        raise PkceError("code_challenge is malformed (RFC 7636 §4.2).")
    return code_challenge, method


def verifier(code_verifier: str | None) -> str | None:
    """The token request's verifier if well-formed (RFC 7636 §4.1), else PkceError."""
    if code_verifier is not None and _UNRESERVED.fullmatch(code_verifier) is None:
        raise PkceError("code_verifier must be 43-128 unreserved characters (RFC 7636 §4.1).")
    return code_verifier


def s256(code_verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(ASCII(code_verifier))), unpadded."""
    raw = hashlib.sha256(code_verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
