"""RFC 9449 DPoP proofs as this deployment accepts them: the pure check of `dpop.py`, plus what
needs the deployment: its server nonces (under the shared server keys) and the once-only claim
of each proof's `jti` in Redis, so a proof replayed to any instance is refused.

The token endpoint (http/oauth.py) and the endpoints that take `Authorization: DPoP` use the
same `DeploymentNonces` (Services.nonces) and `accept_once`; how a refusal is worded (400 at
the token endpoint, 401 with `WWW-Authenticate: DPoP` at a protected resource) is theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tokensvc import dpop, metrics
from tokensvc.errors import InvalidDPoPProof, OAuthError, UseDPoPNonce
from tokensvc.keyring import DPOP_NONCES, Keyring
from tokensvc.storage import OnceStorage
from tokensvc.tokens import digest

HEADER = "dpop"
NONCE_HEADER = "DPoP-Nonce"
ONE_PROOF = "Send exactly one DPoP header with the proof."
REPLAY_TTL_MS = dpop.REPLAY_TTL_S * 1000


class DeploymentNonces(dpop.Nonces):
    """Server nonces every instance accepts: made under the subkey of the server key the fleet
    signs with, checked under every listed key (as the CSRF tokens are, keyring.py), so a key
    roll does not refuse the nonces another instance handed out a moment ago."""

    def __init__(self, keyring: Keyring, window_s: int = 60) -> None:
        self._keyring = keyring
        self._each = tuple(dpop.Nonces(k, window_s) for k in keyring.subkeys(DPOP_NONCES))
        super().__init__(self._each[0]._key, window_s)

    def current(self, now: float | None = None) -> str:
        return self._each[self._keyring.signing].current(now)

    def valid(self, nonce: object, now: float | None = None) -> bool:
        return any(n.valid(nonce, now) for n in self._each)


def nonce_header(nonces: dpop.Nonces | None) -> dict[str, str]:
    """RFC 9449 §8.2: a fresh nonce with a successful answer, when nonces are demanded."""
    return {} if nonces is None else {NONCE_HEADER: nonces.current()}


def _use_nonce(description: str, nonce: str) -> OAuthError:
    return UseDPoPNonce(description, {NONCE_HEADER: nonce})


def check(values: Sequence[str], method: str, url: str, nonces: dpop.Nonces | None,
          access_token: str | None = None, *,
          refused: Callable[[str], OAuthError] = InvalidDPoPProof,
          nonce_required: Callable[[str, str], OAuthError] = _use_nonce) -> dpop.Proof:
    """The request's one proof, checked (RFC 9449 §4.3) and its refusals counted. Refused with
    the token endpoint's errors by default (RFC 9449 §5, §8: 400 `invalid_dpop_proof`, or
    `use_dpop_nonce` with a fresh nonce); a protected resource passes its own (§7.1, §9: 401
    with a DPoP challenge)."""
    if len(values) != 1:
        metrics.dpop_refused("invalid")
        raise refused(ONE_PROOF)
    try:
        return dpop.check(values[0], method, url, access_token=access_token, nonces=nonces)
    except dpop.NonceRequired as exc:
        assert nonces is not None  # noqa: S101 -- raised only when nonces are demanded
        metrics.dpop_refused("nonce")
        raise nonce_required(str(exc), nonces.current()) from None
    except dpop.ProofError as exc:
        metrics.dpop_refused("invalid")
        raise refused(str(exc)) from None


async def accept_once(store: OnceStorage, proof: dpop.Proof) -> bool:
    """RFC 9449 §11.1: True the first time the deployment sees this proof (one SET NX PX for
    as long as its `iat` is accepted), False for a replay on any instance."""
    fresh = await store.first_use(digest("dpop:" + proof.replay_key()), REPLAY_TTL_MS)
    if not fresh:
        metrics.dpop_refused("replayed")
    return fresh
