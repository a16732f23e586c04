"""Password checks for users, shared by the password grant and the login form.

Both count toward one lockout. A check is reserved in Redis before argon2 runs: failures
plus checks in flight may never exceed the limit, so a burst of concurrent guesses gets at
most `limit` passwords checked before the lock holds (counting only after each failure would
let every guess that arrives while the first ones are still hashing slip under the limit).
Requests beyond the reservations wait for a slot instead of being refused, so a burst of
concurrent *right* passwords (a technical user shared by many workers) still succeeds.
"""

from __future__ import annotations

import asyncio
import time

from tokensvc import metrics
from tokensvc.errors import InvalidGrant, Throttled, UserLocked, UserNotVerified
from tokensvc.hashing import Hasher
from tokensvc.models import Client, User
from tokensvc.settings import Settings
from tokensvc.storage import LoginStorage

LOCKED = "The user is locked after too many failed logins."
BAD_CREDENTIALS = "Invalid username or password."
# A reservation left by a worker that died mid-check frees itself after this long.
HOLD_MS = 30_000
# How long a request waits for a check slot before it is told to come back.
WAIT_S = 5.0


def login_limit(client: Client, settings: Settings) -> int:
    """The client's own `max_user_login_attempts`, else the service-wide one."""
    return client.max_user_login_attempts or settings.max_user_login_attempts


async def _reserve(store: LoginStorage, username: str, limit: int) -> tuple[User | None, int]:
    deadline = time.monotonic() + WAIT_S
    pause = 0.005
    while True:
        user, n = await store.login_attempt(username, limit, HOLD_MS)
        if n != -2:
            return user, n
        if time.monotonic() >= deadline:
            raise Throttled("Too many concurrent logins for this user; retry shortly.",
                                  {"Retry-After": "1"})
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)


async def authenticate(store: LoginStorage, hasher: Hasher, settings: Settings, client: Client,
                       username: str, password: str) -> User:
    """The verified user, or InvalidGrant (400), UserLocked (423), UserNotVerified (403)."""
    limit = login_limit(client, settings)
    user, n = await _reserve(store, username, limit)
    if n == -1:
        raise UserLocked(LOCKED)
    if user is None:
        # No counter for unknown names (nothing to lock, no keys to fill Redis with), but the
        # same argon2 time, so the answer's timing does not reveal which usernames exist.
        await hasher.verify_nobody(password)
        raise InvalidGrant(BAD_CREDENTIALS)
    ok = False
    try:
        ok = await hasher.verify(user.password_hash, password)
    finally:
        # Settled even when the request is cancelled mid-check; a crash leaves HOLD_MS.
        failures = await store.login_result(username, ok, settings.lockout_period * 1000)
    if not ok:
        if failures >= limit:
            if failures == limit:
                metrics.locked_out()
            raise UserLocked(LOCKED)
        raise InvalidGrant(BAD_CREDENTIALS)
    if client.require_verified_users and not user.verified:
        raise UserNotVerified("The user is not verified, and this client requires verified users.")
    return user
