"""Races under real concurrency: hundreds of requests at once from four OS processes against a
real `tokensvc serve --workers 2`.

A code redeems once, a refresh token rotates once (no grace), token reuse hands out one token,
and the lockout counts every failure exactly once and checks at most the limit of passwords.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.api import new_client, new_user
from tests.support.authflow import CB, VERIFIER, get_code, web_app
from tests.support.config import ADMIN
from tests.support.load import Answer, Call, burst, process_pool
from tests.support.metrics import settled_metric
from tests.support.redis_servers import RedisServer
from tests.support.service import Service, serving
from tokensvc.store import keys

LIMIT = 50  # max_user_login_attempts of the service under test
PASSWORD_CHECKS = "tokensvc_argon2_verifications_total"

Client = dict[str, Any]


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    if redis_server.proc is None:
        redis_server.start()
    with redis_server.sync() as r:
        r.flushall()
    with serving(redis_server.url, tmp_path_factory.mktemp("races"), workers=2, metrics_port=True,
                 max_user_login_attempts=LIMIT, refresh_grace=0, redis_timeout=2) as (svc,):
        yield svc


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with process_pool(4) as running:
        yield running


def tally(answers: list[Answer]) -> collections.Counter[tuple[int, str | None]]:
    """How many answers of each (status, error)."""
    return collections.Counter((status, body.get("error") if isinstance(body, dict) else None)
                               for status, body in answers)


def creds(client: Client) -> tuple[str, str]:
    return client["client_id"], client["client_secret"]


def active(svc: Service, client: Client, token: str) -> bool:
    resp = httpx.post(f"{svc.url}/oauth/introspect", data={"token": token}, auth=creds(client))
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


async def test_a_code_redeems_exactly_once(live: Service, pool: ProcessPoolExecutor) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        await new_user(http, "carol")
        app = await web_app(http)
        code = (await get_code(http, app, username="carol"))["code"]
    redeem = {"grant_type": "authorization_code", "code": code, "redirect_uri": CB,
              "code_verifier": VERIFIER}
    answers = burst(pool, live.url, [("POST", "/oauth/token", redeem, creds(app))] * 100)

    assert tally(answers) == {(200, None): 1, (400, "invalid_grant"): 99}, tally(answers)
    won = next(body for status, body in answers if status == 200)
    # RFC 6749 §4.1.2: the replays revoked what the one redemption issued.
    assert not active(live, app, won["access_token"])
    assert not active(live, app, won["refresh_token"])


async def test_a_refresh_token_rotates_exactly_once(live: Service, pool: ProcessPoolExecutor) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        await new_user(http, "dave")
        client = await new_client(http)
        first = await http.post("/oauth/token", auth=creds(client), data={
            "grant_type": "password", "username": "dave", "password": "correct horse"})
        assert first.status_code == 200, first.text
    refresh = {"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"]}
    answers = burst(pool, live.url, [("POST", "/oauth/token", refresh, creds(client))] * 100)

    assert tally(answers) == {(200, None): 1, (400, "invalid_grant"): 99}, tally(answers)
    won = next(body for status, body in answers if status == 200)
    # The other 99 presented a rotated token: reuse, which ends the grant (tests/test_refresh.py).
    assert not active(live, client, won["access_token"])
    assert not active(live, client, won["refresh_token"])


async def test_token_reuse_hands_out_one_token(live: Service, pool: ProcessPoolExecutor) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        client = await new_client(http, reuse_tokens=True)
    cc = {"grant_type": "client_credentials", "scope": "read"}
    answers = burst(pool, live.url, [("POST", "/oauth/token", cc, creds(client))] * 200)

    assert tally(answers) == {(200, None): 200}, tally(answers)
    tokens = {body["access_token"] for _, body in answers}
    assert len(tokens) == 1
    assert active(live, client, tokens.pop())


@pytest.mark.slow
async def test_lockout_counts_every_failure_exactly_once(
        live: Service, pool: ProcessPoolExecutor, redis_server: RedisServer) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        await new_user(http, "erin")
        client = await new_client(http)
    checks_before = settled_metric(live.metrics_url, PASSWORD_CHECKS, 0, kind="password")

    def guesses(n: int, password: str = "wrong horse") -> list[Call]:
        data = {"grant_type": "password", "username": "erin", "password": password}
        return [("POST", "/oauth/token", data, creds(client))] * n

    def failures() -> tuple[int, bool]:
        with redis_server.sync() as r:
            raw = r.get(keys.user_failures("erin"))
            return int(raw or 0), bool(r.exists(keys.user_checks("erin")))

    def admin_view() -> int:
        resp = httpx.get(f"{live.url}/admin/users/erin", headers=ADMIN)
        assert resp.status_code == 200, resp.text
        return int(resp.json()["failed_logins"])

    answers = burst(pool, live.url, guesses(40))
    assert tally(answers) == {(400, "invalid_grant"): 40}, tally(answers)
    assert failures() == (40, False)  # each failure once; no check left reserved
    assert admin_view() == 40
    checks = settled_metric(live.metrics_url, PASSWORD_CHECKS, checks_before + 40, kind="password")
    assert checks - checks_before == 40

    # Ten more reach the limit: the one that makes it 50 is told the user is now locked.
    answers = burst(pool, live.url, guesses(10))
    assert tally(answers) == {(400, "invalid_grant"): 9, (423, "user_locked"): 1}, tally(answers)
    assert failures() == (LIMIT, False)
    # Locked: more guesses, and even the right password, are refused without a password check.
    answers = burst(pool, live.url, guesses(30) + guesses(10, "correct horse"))
    assert tally(answers) == {(423, "user_locked"): 40}, tally(answers)
    assert failures() == (LIMIT, False)
    checks = settled_metric(live.metrics_url, PASSWORD_CHECKS, checks_before + LIMIT, kind="password")
    assert checks - checks_before == LIMIT
