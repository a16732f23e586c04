"""Password checks for users, shared by the password grant and the login form.

Both count toward one lockout, and it is the user's, not a client's: RFC 6749 §4.3.2 asks the
server to protect the password against brute force, which a per-client lock would not do (a
guesser would spread guesses over clients, and a right password through a lenient client
would undo a stricter client's lock). Failures through any client add up; once they reach the
limit of the client in use, the user is locked for every client until an admin unlocks them or
the lockout period ends, and a right password through any client meanwhile resets nothing and
is refused.

A check is reserved in Redis before argon2 runs: failures plus checks in flight may never
exceed the limit, so a burst of concurrent guesses gets at most `limit` passwords checked
before the lock holds (counting only after each failure would let every guess that arrives
while the first ones are still hashing slip under the limit). Requests beyond the reservations
wait for a slot instead of being refused, so a burst of concurrent *right* passwords (a
technical user shared by many workers) still succeeds.
"""

from __future__ import annotations

import asyncio
import time
from typing import NoReturn

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
# The scripts' codes (login_attempt.lua, login_result.lua).
IS_LOCKED = -1
BUSY = -2
LOCKED_NOW = -3


def login_limit(client: Client, settings: Settings) -> int:
    """The client's own `max_user_login_attempts`, else the service-wide one."""
    return client.max_user_login_attempts or settings.max_user_login_attempts


async def _reserve(store: LoginStorage, username: str, limit: int) -> tuple[User | None, int]:
    deadline = time.monotonic() + WAIT_S
    pause = 0.005
    while True:
        user, n = await store.login_attempt(username, limit, HOLD_MS)
        if n != BUSY:
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
    if n in (IS_LOCKED, LOCKED_NOW):
        _locked(n)
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
        settled = await store.login_result(username, ok, settings.lockout_period * 1000, limit)
    if settled in (IS_LOCKED, LOCKED_NOW):
        _locked(settled)
    if not ok:
        raise InvalidGrant(BAD_CREDENTIALS)
    if client.require_verified_users and not user.verified:
        raise UserNotVerified("The user is not verified, and this client requires verified users.")
    return user


def _locked(code: int) -> NoReturn:
    if code == LOCKED_NOW:
        metrics.locked_out()  # once per lockout: only the script that sets the lock says so
    raise UserLocked(LOCKED)
