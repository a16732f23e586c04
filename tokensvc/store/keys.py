"""Redis key names. Every key one atomic operation touches shares a `{...}` hash tag.

- `{g:<grant id>}`: a grant's tokens, its index, its reuse record and its codes.
- `{c:<client id>}`: a client record, its usage buckets and its failed-authentication counter.
- `{s:<session digest>}`: a login session of the authorization pages.
- `{jwks}`: the deployment's JWT signing keys (one hash, field = key id).
- `{sealed}`: which clients keep a sealed secret, and the state of the sweep that seals them anew.
- `{u:<user hash>}`: a user record, its failure counter, its lock, its password checks in
  flight, the ids of its grants and its remembered consents. The tag is a digest of the
  username, so no username (which may hold `{` or `}`) can move or split the slot.
"""

from __future__ import annotations

import base64
import hashlib

CLIENTS_INDEX = "tsv:clients"
# Score 0, members "<casefolded name>\0<client id>": sorted by name, searched by prefix (BYLEX).
CLIENT_NAMES = "tsv:clients:names"
# Score = last time the client got a token (epoch ms), 0 for never.
CLIENTS_USED = "tsv:clients:used"
USERS_INDEX = "tsv:users"
INVALIDATION_CHANNEL = "tsv:invalidate"
INVALIDATED_CHANNEL = "tsv:invalidated"  # instances confirm here that they dropped a client
SIGNING_KEYS = "tsv:{jwks}:keys"
# The clients whose record keeps a sealed secret (client_secret_jwt), and the state of the
# sweep that seals them anew under the key the fleet signs with (reseal.py): `writes` counts
# writes of such records, `swept` is "<server key id> <writes>" after a complete sweep.
SEALED_CLIENTS = "tsv:{sealed}:clients"
SEALED_STATE = "tsv:{sealed}:state"


def token(grant_id: str, token_digest: str) -> str:
    return f"tsv:{{g:{grant_id}}}:t:{token_digest}"


def grant_index(grant_id: str) -> str:
    return f"tsv:{{g:{grant_id}}}:idx"


def reuse(grant_id: str) -> str:
    return f"tsv:{{g:{grant_id}}}:reuse"


def client(client_id: str) -> str:
    return f"tsv:{{c:{client_id}}}:client"


def _user_tag(username: str) -> str:
    raw = hashlib.sha256(username.encode("utf-8")).digest()[:12]
    return base64.urlsafe_b64encode(raw).decode("ascii")


def user(username: str) -> str:
    return f"tsv:{{u:{_user_tag(username)}}}:user"


def user_failures(username: str) -> str:
    return f"tsv:{{u:{_user_tag(username)}}}:fails"


def user_lock(username: str) -> str:
    """Present while the user is locked, through whichever client: every client refuses them
    until an admin unlocks or it expires (the lockout period)."""
    return f"tsv:{{u:{_user_tag(username)}}}:locked"


def user_checks(username: str) -> str:
    return f"tsv:{{u:{_user_tag(username)}}}:checking"


def user_grants(username: str) -> str:
    return f"tsv:{{u:{_user_tag(username)}}}:grants"


def user_consents(username: str) -> str:
    return f"tsv:{{u:{_user_tag(username)}}}:consents"


def session(session_digest: str) -> str:
    return f"tsv:{{s:{session_digest}}}:session"


def registrations(address: str) -> str:
    """Open-registration attempts from one remote address in the current window. The tag is a
    digest, so no raw address is kept and an IPv6 address cannot disturb the key's shape."""
    return f"tsv:{{r:{_user_tag(address)}}}:register"


def client_usage(client_id: str) -> str:
    return f"tsv:{{c:{client_id}}}:usage"


def client_auth_failures(client_id: str) -> str:
    """Failed secret checks of a client (plus checks in flight) in the current window."""
    return f"tsv:{{c:{client_id}}}:authfail"


def admin_session(session_digest: str) -> str:
    return f"tsv:{{a:{session_digest}}}:admin"


def once(nonce_digest: str) -> str:
    """Something accepted once (storage.OnceStorage): a console form already submitted (so a
    reload cannot create or rotate twice), a DPoP proof's or a client assertion's jti. One key
    per digest, in its own slot: the keys spread over a cluster."""
    return f"tsv:{{o:{nonce_digest}}}:once"
