"""A dump of Redis reveals no token, no client secret and no password; every token expires."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import redis

from tests.support.api import cc_token, new_client, new_user, password_token
from tests.support.apps import AppFactory
from tests.support.config import ADMIN, SECRET_KEY
from tests.support.stored import CODEC
from tokensvc.store import keys

PASSWORDS = {"alice": "correct horse battery", "bob": "Tr0ub4dor&3 staple", "carol": "hunter2hunter2"}
ARGON2ID = re.compile(rb'^\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$')


def _bytes(value: object) -> bytes:
    assert isinstance(value, bytes), value  # the client does not decode responses
    return value


def dump(r: redis.Redis) -> dict[bytes, tuple[bytes, list[bytes], int]]:
    """Every key: its type, every byte string it holds, and its PTTL."""
    out: dict[bytes, tuple[bytes, list[bytes], int]] = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        raw: list[object]
        if kind == b"string":
            raw = [r.get(key)]
        elif kind == b"set":
            raw = list(r.smembers(key))
        elif kind == b"zset":
            raw = list(r.zrange(key, 0, -1))
        elif kind == b"hash":
            raw = [x for kv in r.hgetall(key).items() for x in kv]
        elif kind == b"list":
            raw = list(r.lrange(key, 0, -1))
        else:
            raise AssertionError(f"unexpected type {kind!r} for {key!r}")
        out[_bytes(key)] = (kind, [_bytes(v) for v in raw], r.pttl(key))
    return out


def secret_parts(secret: str) -> list[str]:
    """The secret, its part after the prefix, and every 12-character window of its random part.

    For a token the first 12 characters after the prefix spell the grant id, which is not
    secret (it names the keys); the windows start after it.
    """
    prefix = secret[:7] if re.match(r"tsv_[a-z]{2}_", secret) else ""
    rest = secret[len(prefix):]
    random_part = rest[12:56] if prefix in ("tsv_at_", "tsv_rt_", "tsv_ac_") else rest
    parts = [secret, rest]
    parts += [random_part[i:i + 12] for i in range(0, max(len(random_part) - 11, 1))]
    return parts


async def populate(http: httpx.AsyncClient) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Clients, users, and every kind of token: (tokens, client secrets, clients)."""
    tokens: list[str] = []
    plain = await new_client(http, name="plain")
    reusing = await new_client(http, name="reusing", reuse_tokens=True)
    short = await new_client(http, name="short", access_token_ttl=60, refresh_token_ttl=120)
    rotated = await new_client(http, name="rotated")
    public = await new_client(http, name="public", token_endpoint_auth_method="none")
    clients = [plain, reusing, short, rotated]
    for name, password in PASSWORDS.items():
        await new_user(http, name, password)

    for client in clients:
        cc = await cc_token(http, client)
        assert cc.status_code == 200, cc.text
        tokens.append(cc.json()["access_token"])
        for name, password in PASSWORDS.items():
            resp = await password_token(http, client, username=name, password=password)
            assert resp.status_code == 200, resp.text
            tokens += [resp.json()["access_token"], resp.json()["refresh_token"]]
            refreshed = await http.post("/oauth/token", data={
                "grant_type": "refresh_token", "refresh_token": resp.json()["refresh_token"],
                "scope": "read"}, auth=(client["client_id"], client["client_secret"]))
            assert refreshed.status_code == 200, refreshed.text
            tokens += [refreshed.json()["access_token"], refreshed.json()["refresh_token"]]
    # finAPI reuse: the same token handed out again (and so never stored in the clear).
    again = await cc_token(http, reusing)
    assert again.json()["access_token"] in tokens
    # (A refresh ends reuse for its grant, so a scope set not used above.)
    first_user = await password_token(http, reusing, username="alice", password=PASSWORDS["alice"],
                                      scope="write")
    again_user = await password_token(http, reusing, username="alice", password=PASSWORDS["alice"],
                                      scope="write")
    for name in ("access_token", "refresh_token"):
        assert again_user.json()[name] == first_user.json()[name]
    tokens += [first_user.json()["access_token"], first_user.json()["refresh_token"]]
    pub = await http.post("/oauth/token", data={"grant_type": "password",
                                                "client_id": public["client_id"],
                                                "username": "bob", "password": PASSWORDS["bob"]})
    assert pub.status_code == 200, pub.text
    tokens += [pub.json()["access_token"], pub.json()["refresh_token"]]
    # A failed login leaves a counter; a rotated secret replaces a hash.
    assert (await password_token(http, plain, username="carol", password="wrong!wrong")).status_code == 400
    resp = await http.post(f"/admin/clients/{rotated['client_id']}/secret", headers=ADMIN)
    assert resp.status_code == 200
    secrets = [c["client_secret"] for c in clients] + [resp.json()["client_secret"]]
    assert len(set(tokens)) == 4 + 4 * 3 * 4 + 2 + 2
    return tokens, secrets, [*clients, public]


async def test_no_secret_in_any_key_or_value(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory() as http:
        tokens, secrets, clients = await populate(http)
    contents = dump(redis_db)
    assert contents
    haystack = [key for key in contents] + [v for _, values, _ in contents.values() for v in values]
    for plaintext in [*tokens, *secrets]:
        for part in secret_parts(plaintext):
            needle = part.encode()
            assert not any(needle in item for item in haystack), f"{part!r} is stored"
    for password in PASSWORDS.values():
        assert not any(password.encode() in item for item in haystack)
    # Not even the server key.
    assert not any(SECRET_KEY.encode() in item for item in haystack)


async def test_secrets_and_passwords_are_argon2id_hashes(app_factory: AppFactory,
                                                         redis_db: redis.Redis) -> None:
    async with app_factory() as http:
        _, _, clients = await populate(http)
    hashes: set[bytes] = set()
    for client in clients:
        record = orjson.loads(redis_db.get(keys.client(client["client_id"])) or b"null")
        if client["token_endpoint_auth_method"] == "none":
            assert record["secret_hash"] is None
            continue
        assert ARGON2ID.match(record["secret_hash"].encode()), record["secret_hash"]
        hashes.add(record["secret_hash"].encode())
    for name in PASSWORDS:
        record = orjson.loads(redis_db.get(keys.user(name)) or b"null")
        assert set(record) == {"username", "password_hash", "verified", "created_at"}
        assert ARGON2ID.match(record["password_hash"].encode()), record["password_hash"]
        hashes.add(record["password_hash"].encode())
    assert len(hashes) == len(PASSWORDS) + 4  # salted: no two alike


async def test_every_token_key_expires(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory() as http:
        tokens, _, clients = await populate(http)
    contents = dump(redis_db)
    token_keys = {keys.token(p.grant_id, p.digest).encode()
                  for p in (CODEC.parse(t) for t in tokens) if p is not None}
    assert len(token_keys) == len(set(tokens))
    # Every issued token is stored (or was rotated and is kept for reuse detection) ...
    assert token_keys <= set(contents)
    permanent = {keys.CLIENTS_INDEX.encode(), keys.USERS_INDEX.encode(), keys.CLIENT_NAMES.encode(),
                 keys.CLIENTS_USED.encode()}
    permanent |= {keys.client(c["client_id"]).encode() for c in clients}
    # The key the deployment signs with, by fingerprint (the workers' registry left with them).
    permanent.add(b"tsv:{fleet}:signing")
    # The JWT signing keys: each leaves the hash when it retires (tokensvc/signing.py).
    permanent.add(keys.SIGNING_KEYS.encode())
    permanent |= {keys.user(name).encode() for name in PASSWORDS}
    # A failure counter lasts until an admin unlocks (lockout_period 0) or the next good login.
    permanent.add(keys.user_failures("carol").encode())
    for key, (kind, _, pttl) in contents.items():
        if key in permanent:
            assert pttl == -1, key
            continue
        assert re.fullmatch(rb"tsv:\{g:[A-Za-z0-9_-]{12}\}:(t:[A-Za-z0-9_-]{43}|idx|reuse)", key) or \
            re.fullmatch(rb"tsv:\{u:[A-Za-z0-9_-]{16}\}:grants", key) or \
            re.fullmatch(rb"tsv:\{c:[A-Za-z0-9_-]{22}\}:usage", key), key
        assert pttl > 0, f"{key!r} has no TTL"
        if b":t:" in key:
            assert kind == b"string"
    # ... with a TTL no longer than its lifetime, and an index that outlives none of its tokens.
    for key in token_keys:
        assert 0 < contents[key][2] <= 14 * 86400 * 1000
    for key, (kind, members, _) in contents.items():
        if key.endswith(b":idx"):
            assert kind == b"set"
            with redis_db.pipeline(transaction=True) as pipe:  # one instant for all the PTTLs
                pipe.pttl(key)
                for member in members:
                    pipe.pttl(member)
                index_ttl, *member_ttls = pipe.execute()
            assert all(ttl <= index_ttl for ttl in member_ttls), (key, index_ttl, member_ttls)


async def test_lockout_counter_expires_with_a_lockout_period(app_factory: AppFactory,
                                                             redis_db: redis.Redis) -> None:
    async with app_factory(lockout_period=300) as http:
        client = await new_client(http)
        await new_user(http, "dave", "right password")
        resp = await password_token(http, client, username="dave", password="wrong password")
        assert resp.status_code == 400
    assert 0 < redis_db.pttl(keys.user_failures("dave")) <= 300_000
