"""The token endpoint's grants, keyed by their `grant_type` wire value."""

from __future__ import annotations

from tokensvc.grants import authorization_code, client_credentials, password, refresh_token
from tokensvc.grants.base import Grant

GRANTS: dict[str, Grant] = {
    g.grant_type: g for g in (authorization_code.GRANT, client_credentials.GRANT, password.GRANT,
                              refresh_token.GRANT)
}
# The one list of grant types: what clients may register, the console offers, the CLI names
# and the metrics pre-create.
GRANT_TYPES: tuple[str, ...] = tuple(sorted(GRANTS))
