"""The JWT signing keys: published before they sign, one active key for the whole deployment,
old keys kept until their last token has expired, private keys sealed in Redis, kept across
restarts and server-key rotations; rotation on schedule, by the admin API and by the CLI.

Times are short here (publish-ahead 2 s, re-read every 0.2 s); the rules are the same at the
defaults (300 s, 5 s). The active key is chosen by each worker on its own clock; in-process
instances share one clock, so the stated bound (the clocks' difference around an activation)
is zero here, and is asserted as such.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api import (
    active,
    cc_token,
    introspect,
    new_client,
    new_user,
    password_token,
    refresh,
)
from tests.support.apps import ON_SINGLE_AND_CLUSTER, AppFactory, running_app
from tests.support.config import ADMIN, ISSUER, SECRET_KEY, make_settings, service_env
from tests.support.redis_servers import free_port
from tokensvc.keyring import SIGNING_KEYS as SEALING, Keyring
from tokensvc.settings import SettingsError, load
from tokensvc.store import keys

FAST = {"signing_key_publish_ahead": 2, "signing_key_refresh": 0.2}
JWT = {"access_token_format": "jwt"}
OTHER_SERVER_KEY = "another-server-key-0123456789abcdef0123456"


async def jwks(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.get("/.well-known/jwks.json")
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def kids(doc: dict[str, Any]) -> set[str]:
    return {k["kid"] for k in doc["keys"]}


async def jwt_token(http: httpx.AsyncClient, client: dict[str, Any]) -> str:
    resp = await cc_token(http, client)
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def kid_of(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def verifies(token: str, doc: dict[str, Any]) -> bool:
    """PyJWT alone against a JWKS: the kid's key, alg pinned, issuer and audience checked."""
    found = [k for k in doc["keys"] if k["kid"] == kid_of(token)]
    if not found:
        return False
    jwt.decode(token, jwt.PyJWK(found[0]).key, algorithms=[found[0]["alg"]], audience=ISSUER,
               issuer=ISSUER)
    return True


def raw_records(r: redis.Redis) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = r.hgetall(keys.SIGNING_KEYS)  # type: ignore[assignment]
    return found


def stored(r: redis.Redis) -> dict[str, dict[str, Any]]:
    """The key records as Redis holds them (tokensvc/store/records.py says what each field is)."""
    return {k.decode(): orjson.loads(v) for k, v in raw_records(r).items()}


async def wait_until(predicate: Any, what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_the_jwks(http: httpx.AsyncClient) -> None:
    """Public members only (kty, crv, x, y, kid, alg, use), kid the RFC 7638 thumbprint,
    cacheable for half the publish-ahead (300 s by default)."""
    resp = await http.get("/.well-known/jwks.json")
    assert resp.headers["cache-control"] == "public, max-age=150"
    [key] = resp.json()["keys"]
    assert set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    canonical = json.dumps({m: key[m] for m in ("crv", "kty", "x", "y")}, separators=(",", ":"),
                           sort_keys=True).encode()
    assert key["kid"] == base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    meta = (await http.get("/.well-known/oauth-authorization-server")).json()
    assert meta["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"


async def test_eddsa(app_factory: AppFactory) -> None:
    async with app_factory(signing_alg="EdDSA", **JWT) as http:
        [key] = (await jwks(http))["keys"]
        assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert (key["kty"], key["crv"], key["alg"]) == ("OKP", "Ed25519", "EdDSA")
        token = await jwt_token(http, await new_client(http))
        assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "at+jwt", "kid": key["kid"]}
        assert verifies(token, await jwks(http))


@ON_SINGLE_AND_CLUSTER
async def test_a_forced_rotation_while_tokens_are_live(app_factory: AppFactory) -> None:
    """The next key is in the JWKS from the moment it is made, before it signs; it signs from
    its activation; tokens of the old key still verify and stay active; asking again before
    it activates makes no second key."""
    async with app_factory(**FAST, **JWT) as http:
        client = await new_client(http)
        rs = await new_client(http, name="rs", introspection="all")
        old = await jwt_token(http, client)
        resp = await http.post("/admin/signing-keys/rotate", headers=ADMIN)
        assert resp.status_code == 201, resp.text
        made = resp.json()
        assert set(made) == {"kid", "alg", "created", "activates"} and made["alg"] == "ES256"
        assert 1900 <= made["activates"] - made["created"] <= 2100
        assert kids(await jwks(http)) == {kid_of(old), made["kid"]}  # published at once
        again = await http.post("/admin/signing-keys/rotate", headers=ADMIN)
        assert again.status_code == 200 and again.json() == made
        refused = await http.post("/admin/signing-keys/rotate")
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
        while time.time() * 1000 < made["activates"] - 300:
            assert kid_of(await jwt_token(http, client)) == kid_of(old)
            await asyncio.sleep(0.1)
        await asyncio.sleep(max(0.0, made["activates"] / 1000 - time.time()) + 0.01)
        new = await jwt_token(http, client)
        assert kid_of(new) == made["kid"]
        doc = await jwks(http)
        assert kids(doc) == {kid_of(old), made["kid"]}
        assert verifies(old, doc) and verifies(new, doc)
        assert await active(http, rs, old) and await active(http, rs, new)


@contextlib.asynccontextmanager
async def instances(redis_url: str, count: int, **settings: Any) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_app(make_settings(redis_url, **settings)))
               for _ in range(count)]


async def test_two_instances_agree_across_a_rotation(app_factory: AppFactory,
                                                     redis_server: Any, redis_db: redis.Redis) -> None:
    """A rotation asked of one instance: the other publishes the key within a refresh interval,
    long before it signs; then both sign with the old key until the activation and with the new
    one from it, never one with each (the bound: their clocks' difference, zero here)."""
    async with instances(redis_server.url, 2, **FAST, **JWT) as (a, b):
        client = await new_client(a)
        before = kid_of(await jwt_token(a, client))
        assert kid_of(await jwt_token(b, client)) == before
        made = (await a.post("/admin/signing-keys/rotate", headers=ADMIN)).json()
        published = time.monotonic()

        async def b_publishes() -> bool:
            return made["kid"] in kids(await jwks(b))

        await wait_until(b_publishes, "the other instance to publish the new key")
        assert time.monotonic() - published < 0.2 + 0.5  # a refresh interval, and scheduling slack
        assert made["activates"] - time.time() * 1000 > 1000  # well before it signs
        seen: list[tuple[float, float, str, str]] = []
        while time.time() * 1000 < made["activates"] + 500:
            for name, http in (("a", a), ("b", b)):
                started = time.time() * 1000
                kid = kid_of(await jwt_token(http, client))
                seen.append((started, time.time() * 1000, name, kid))
        for started, ended, name, kid in seen:
            if ended < made["activates"]:
                assert kid == before, (name, started - made["activates"])
            elif started >= made["activates"]:
                assert kid == made["kid"], (name, started - made["activates"])
        assert {kid for *_, kid in seen} == {before, made["kid"]}
        assert len([s for s in seen if s[0] >= made["activates"]]) >= 4


async def test_every_instance_follows_the_key_set_in_redis(redis_server: Any,
                                                           redis_db: redis.Redis) -> None:
    """A key Redis lost (a failover before replication) is dropped by every instance within a
    refresh interval: none signs with a key the others do not know."""
    async with instances(redis_server.url, 2, **FAST, **JWT) as (a, b):
        client = await new_client(a)
        current = kid_of(await jwt_token(a, client))
        made = (await a.post("/admin/signing-keys/rotate", headers=ADMIN)).json()
        assert redis_db.hdel(keys.SIGNING_KEYS, made["kid"]) == 1
        lost = time.monotonic()

        async def both_dropped() -> bool:
            return [made["kid"] in kids(await jwks(h)) for h in (a, b)] == [False, False]

        await wait_until(both_dropped, "both instances to drop the lost key")
        assert time.monotonic() - lost < 0.2 + 0.5
        await asyncio.sleep(max(0.0, made["activates"] / 1000 - time.time()) + 0.05)
        assert {kid_of(await jwt_token(h, client)) for h in (a, b)} == {current}


async def test_instances_starting_together_make_one_key(redis_server: Any, redis_db: redis.Redis) -> None:
    """However many workers find Redis without keys at once, one key is made (a compare-and-set
    in Lua), and all sign with it; so do concurrent rotations: one new key."""
    apps = [running_app(make_settings(redis_server.url, **FAST, **JWT)) for _ in range(4)]
    async with contextlib.AsyncExitStack() as stack:
        started = await asyncio.gather(*(stack.enter_async_context(app) for app in apps))
        assert len(stored(redis_db)) == 1
        client = await new_client(started[0])
        assert len({kid_of(await jwt_token(h, client)) for h in started}) == 1
        answers = await asyncio.gather(*(h.post("/admin/signing-keys/rotate", headers=ADMIN)
                                         for h in started for _ in range(3)))
        assert sorted(r.status_code for r in answers).count(201) == 1
        assert len({r.json()["kid"] for r in answers}) == 1
        assert len(stored(redis_db)) == 2


async def test_automatic_rotation_and_retirement(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    """On schedule: a key signs for the rotation period; its successor is made the publish-ahead
    before; the old key stays published until the last token it signed has expired (the
    longest lifetime it signed, plus a margin of the publish-ahead), then leaves the JWKS and
    Redis. A client whose tokens live longer keeps the key published longer."""
    settings = {"signing_key_rotation": 3, "signing_key_publish_ahead": 1,
                "signing_key_refresh": 0.1, "access_token_ttl": 1}
    async with app_factory(**settings, **JWT) as http:
        short = await new_client(http)
        first = (await jwks(http))["keys"][0]["kid"]
        record = stored(redis_db)[first]
        assert record["l"] == 1000 and "s" not in record and "r" not in record
        token = await jwt_token(http, short)
        # A token living 4 s is signed by the first key: its record is raised first.
        longer = await new_client(http, access_token_ttl=4)
        long_token = await jwt_token(http, longer)
        assert kid_of(long_token) == first and stored(redis_db)[first]["l"] == 4000
        assert kid_of(token) == first

        async def next_published() -> bool:
            return len(stored(redis_db)) == 2

        await wait_until(next_published, "the scheduled next key")
        [second] = set(stored(redis_db)) - {first}
        nxt = stored(redis_db)[second]
        # The rotation period after the first's activation, made at least the publish-ahead
        # before (a little more: it is due a couple of refresh intervals early).
        assert record["a"] + 3000 <= nxt["a"] <= record["a"] + 3300
        assert nxt["a"] - nxt["c"] >= 1000
        assert stored(redis_db)[first]["r"] == nxt["a"] + 4000 + 1000
        await asyncio.sleep(max(0.0, nxt["a"] / 1000 - time.time()) + 0.05)
        assert kid_of(await jwt_token(http, short)) == second
        assert first in kids(await jwks(http)) and verifies(long_token, await jwks(http))

        async def first_gone() -> bool:
            return first not in stored(redis_db) and first not in kids(await jwks(http))

        await wait_until(first_gone, "the first key's retirement", limit=8)
        assert time.time() * 1000 >= nxt["a"] + 5000


async def test_private_keys_are_sealed_under_the_server_key(app_factory: AppFactory,
                                                            redis_db: redis.Redis) -> None:
    """Redis holds no private key in the clear (no JWK `d`, no PEM or DER, no raw scalar):
    only a blob that opens with the server key, and with no other."""
    async with app_factory(**JWT) as http:
        await http.post("/admin/signing-keys/rotate", headers=ADMIN)
        everything = b"".join(k + v for k, v in raw_records(redis_db).items())
        for kid, rec in stored(redis_db).items():
            assert set(rec) <= {"kid", "alg", "jwk", "p", "c", "a", "l", "s", "r"}
            assert set(rec["jwk"]) == {"kty", "crv", "x", "y"}
            assert b"PRIVATE" not in everything and b'"d"' not in everything
            assert Keyring([OTHER_SERVER_KEY]).unseal(SEALING, rec["p"], kid.encode()) is None
            der = Keyring([SECRET_KEY]).unseal(SEALING, rec["p"], kid.encode())
            assert der is not None
            private = serialization.load_der_private_key(der, password=None)
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            scalar = private.private_numbers().private_value.to_bytes(32, "big")
            for form in (der, scalar, base64.urlsafe_b64encode(scalar).rstrip(b"="),
                         base64.b64encode(der), scalar.hex().encode()):
                assert form not in everything
            public = jwt.PyJWK({**rec["jwk"], "alg": "ES256"}).key
            assert private.public_key().public_numbers() == public.public_numbers()


async def test_a_restart_keeps_the_keys(app_factory: AppFactory) -> None:
    async with app_factory(**JWT) as http:
        client = await new_client(http)
        rs = await new_client(http, name="rs", introspection="all")
        token = await jwt_token(http, client)
        before = await jwks(http)
    async with app_factory(**JWT) as http:
        assert await jwks(http) == before
        assert verifies(token, before) and await active(http, rs, token)
        assert kid_of(await jwt_token(http, client)) == kid_of(token)


async def test_a_server_key_rotation_reseals_the_signing_keys(redis_server: Any,
                                                              redis_db: redis.Redis) -> None:
    """Rotating TOKENSVC_SECRET_KEYS (new first, then the old one dropped) keeps the signing
    keys usable: instances holding both seal them anew under the key the fleet signs with."""
    url = redis_server.url
    async with running_app(make_settings(url, **JWT)) as http:
        client = await new_client(http)
        token = await jwt_token(http, client)
    async with running_app(make_settings(url, secret_keys=(OTHER_SERVER_KEY, SECRET_KEY), **JWT)):
        pass
    new_id = Keyring([OTHER_SERVER_KEY]).ids[0]
    assert {Keyring.sealed_under(rec["p"]) for rec in stored(redis_db).values()} == {new_id}
    async with running_app(make_settings(url, secret_keys=(OTHER_SERVER_KEY,), **JWT)) as http:
        assert kid_of(await jwt_token(http, client)) == kid_of(token)


async def test_the_cli_rotates(redis_server: Any, redis_db: redis.Redis) -> None:
    """`tokensvc keys rotate` makes the next key in the service's Redis, sealed under the
    deployment's server key, and the running instance publishes it."""
    async with running_app(make_settings(redis_server.url, **FAST, **JWT)) as http:
        env = service_env(redis_url=redis_server.url, secret_keys=SECRET_KEY,
                          signing_key_publish_ahead=2, signing_key_refresh=0.2)
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "tokensvc", "keys", "rotate"], env=env,
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        made = json.loads(result.stdout)
        assert set(made) == {"kid", "alg", "created", "activates", "new"} and made["new"] is True

        async def published() -> bool:
            return made["kid"] in kids(await jwks(http))

        await wait_until(published, "the instance to publish the CLI's key")
        await asyncio.sleep(max(0.0, made["activates"] / 1000 - time.time()) + 0.05)
        assert kid_of(await jwt_token(http, await new_client(http))) == made["kid"]
        env.pop("TOKENSVC_SECRET_KEYS")
        env["TOKENSVC_DATA_DIR"] = "/nonexistent-tokensvc-dir"
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "tokensvc", "keys", "rotate"], env=env,
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "TOKENSVC_SECRET_KEYS" in result.stderr


async def test_metrics(app_factory: AppFactory) -> None:
    async with app_factory(**FAST) as http:
        await http.post("/admin/signing-keys/rotate", headers=ADMIN)
        await asyncio.sleep(0.5)
        text = (await http.get("/metrics")).text
        published = [line for line in text.splitlines()
                     if line.startswith("tokensvc_signing_keys_published ")]
        assert published == ["tokensvc_signing_keys_published 2.0"]
        [age] = [float(line.split()[1]) for line in text.splitlines()
                 if line.startswith("tokensvc_signing_key_age_seconds ")]
        assert 0 <= age < 5


async def test_no_keys_read_yet_is_503_not_500() -> None:
    """An instance started while Redis is unreachable has read no key: its JWKS is 503
    temporarily_unavailable (not an empty set, not a 500)."""
    settings = make_settings(f"redis://127.0.0.1:{free_port()}", **JWT)
    async with running_app(settings, wait_live=False) as http:
        resp = await http.get("/.well-known/jwks.json")
        assert resp.status_code == 503 and resp.json()["error"] == "temporarily_unavailable"
        assert resp.headers["retry-after"] == "1"


@pytest.mark.parametrize(("env", "name"), [
    ({"TOKENSVC_SIGNING_KEY_PUBLISH_AHEAD": "4", "TOKENSVC_SIGNING_KEY_REFRESH": "2.5"},
     "TOKENSVC_SIGNING_KEY_REFRESH"),
    ({"TOKENSVC_SIGNING_KEY_ROTATION": "300"}, "TOKENSVC_SIGNING_KEY_ROTATION"),
    ({"TOKENSVC_SIGNING_ALG": "RS256"}, "TOKENSVC_SIGNING_ALG"),
    ({"TOKENSVC_ACCESS_TOKEN_FORMAT": "paseto"}, "TOKENSVC_ACCESS_TOKEN_FORMAT"),
])
def test_settings_that_could_not_work_are_refused(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load(environ=env)
    assert load(environ={"TOKENSVC_ACCESS_TOKEN_FORMAT": "JWT"}).access_token_format == "jwt"


async def test_introspection_of_a_jwt_after_its_key_is_gone(app_factory: AppFactory,
                                                            redis_db: redis.Redis) -> None:
    """A JWT whose key has left the JWKS (retired, or lost) no longer verifies anywhere:
    introspection says inactive, as a resource server would refuse it."""
    async with app_factory(**FAST, **JWT) as http:
        client = await new_client(http)
        rs = await new_client(http, name="rs", introspection="all")
        token = await jwt_token(http, client)
        assert (await introspect(http, rs, token))["active"] is True
        redis_db.delete(keys.SIGNING_KEYS)

        async def forgotten() -> bool:
            return kid_of(token) not in kids(await jwks(http))

        await wait_until(forgotten, "the instance to drop the deleted key")
        assert not await active(http, rs, token)


async def test_a_key_no_server_key_of_this_instance_opens_is_503(
        redis_server: Any, redis_db: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """A deployment started afresh on a new server key (the fleet's record deleted) cannot open
    the signing keys sealed under the old one: JWT requests are 503 and the log says what to
    do, never a 500, and nothing is spent (a refresh token is not rotated for a JWT that cannot
    be signed); opaque tokens are not affected; a rotation makes a key it can use."""
    async with running_app(make_settings(redis_server.url, **FAST)):
        pass
    redis_db.delete("tsv:{fleet}:signing")
    async with running_app(make_settings(redis_server.url, secret_keys=(OTHER_SERVER_KEY,),
                                         **FAST)) as http:
        assert "tokensvc keys rotate" in caplog.text and keys.SIGNING_KEYS in caplog.text
        client = await new_client(http, **JWT)
        resp = await cc_token(http, client)
        assert resp.status_code == 503 and resp.json()["error"] == "temporarily_unavailable"
        opaque = await new_client(http)
        assert (await cc_token(http, opaque)).status_code == 200
        await new_user(http)
        rt = (await password_token(http, opaque)).json()["refresh_token"]
        path = f"/admin/clients/{opaque['client_id']}"
        assert (await http.patch(path, headers=ADMIN, json=JWT)).status_code == 200
        assert (await refresh(http, opaque, rt)).status_code == 503
        assert (await http.patch(path, headers=ADMIN, json={"access_token_format": None})).status_code == 200
        assert (await refresh(http, opaque, rt)).status_code == 200  # not spent by the 503
        made = (await http.post("/admin/signing-keys/rotate", headers=ADMIN)).json()
        await asyncio.sleep(max(0.0, made["activates"] / 1000 - time.time()) + 0.05)
        assert kid_of(await jwt_token(http, client)) == made["kid"]

