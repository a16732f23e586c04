"""The resource-server kit (tokensvc.resource) as an API uses it.

JWT access tokens: against `Issuer`, a real HTTP server this module starts that does what the
contract says tokensvc's issuing side does (RFC 8414 metadata with `jwks_uri`, a JWKS of
public keys with `Cache-Control`, tokens signed by PyJWT with `typ: at+jwt` and `kid`), and
counts the key-set fetches it serves. Opaque tokens: a real tokensvc (the in-process app, and
a `tokensvc serve` for the README's example) issuing and introspecting them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib.util
import inspect
import json
import logging
import math
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from contextlib import AsyncExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import httpx
import jwt as pyjwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.support.api import auth, new_client, new_user, password_token
from tests.support.config import ADMIN, ISSUER
from tests.support.redis_servers import RedisServer, free_port
from tests.support.service import Service
from tokensvc.resource import (
    BearerError,
    BearerMiddleware,
    IssuerUnavailable,
    Principal,
    Rejected,
    ResourceServer,
    bearer_error_handler,
)

AUDIENCE = "https://api.example/orders"
LEEWAY = 10
DROP = object()  # a claim or header left out of a token
README = Path(__file__).parent.parent / "README.md"
BOUND = "The access token is bound to a DPoP key (cnf): present it with Authorization: DPoP and a proof."
# RFC 9449 §7.2: without credentials, both schemes are offered.
NO_CREDENTIALS = 'Bearer realm="orders", DPoP realm="orders", algs="ES256 ES384 EdDSA RS256 PS256"'


def now() -> int:
    return int(time.time())


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS built by hand, for the tokens PyJWT refuses to make."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def new_private_key(alg: str) -> Any:
    return ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else ed25519.Ed25519PrivateKey.generate()


def public_jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = pyjwt.algorithms.ECAlgorithm if alg == "ES256" else pyjwt.algorithms.OKPAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


class Issuer:
    """An issuer of JWT access tokens as the contract describes tokensvc's, over real HTTP.
    With `introspection` set it also has an RFC 7662 endpoint that gives that answer (and
    keeps each request's Authorization header and form)."""

    JWKS_PATH = "/.well-known/jwks.json"
    INTROSPECT_PATH = "/introspect"

    def __init__(self) -> None:
        self.private: dict[str, tuple[str, Any]] = {}  # kid -> (alg, private key)
        self.published: list[str] = []
        self.extra_jwks: list[Any] = []
        self.jwks_body: bytes | None = None  # served instead of the key set
        self.introspection: dict[str, Any] | None = None
        self.introspected: list[tuple[str, dict[str, list[str]]]] = []
        self.requests: Counter[str] = Counter()
        self.max_age = 150
        self.jwks_delay = 0.0
        self.status = 200
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def jwks_fetches(self) -> int:
        return self.requests[self.JWKS_PATH]

    def metadata(self) -> dict[str, Any]:
        doc = {"issuer": self.url, "jwks_uri": self.url + self.JWKS_PATH}
        if self.introspection is not None:
            doc["introspection_endpoint"] = self.url + self.INTROSPECT_PATH
        return doc

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with issuer._lock:
                    issuer.requests[self.path] += 1
                if self.path == "/.well-known/oauth-authorization-server":
                    self.answer(json.dumps(issuer.metadata()).encode())
                elif self.path == issuer.JWKS_PATH:
                    time.sleep(issuer.jwks_delay)
                    body = issuer.jwks_body or json.dumps(issuer.jwks()).encode()
                    self.answer(body, {"Cache-Control": f"public, max-age={issuer.max_age}"})
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                with issuer._lock:
                    issuer.requests[self.path] += 1
                form = self.rfile.read(int(self.headers["Content-Length"])).decode()
                issuer.introspected.append((self.headers["Authorization"], parse_qs(form)))
                self.answer(json.dumps(issuer.introspection).encode())

            def answer(self, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(issuer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def new_key(self, alg: str = "ES256", publish: bool = True) -> str:
        kid = f"{alg.lower()}-{secrets.token_hex(4)}"
        self.private[kid] = (alg, new_private_key(alg))
        if publish:
            self.published.append(kid)
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = [public_jwk(self.private[kid][1], kid, self.private[kid][0]) for kid in self.published]
        return {"keys": keys + self.extra_jwks}

    def claims(self, **overrides: object) -> dict[str, Any]:
        t = now()
        base: dict[str, Any] = {"iss": self.url, "sub": "alice", "aud": AUDIENCE, "exp": t + 300,
                                "iat": t, "jti": f"g1.{secrets.token_urlsafe(16)}",
                                "client_id": "orders-app", "scope": "orders:read"}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not DROP}

    def token(self, kid: object = None, *, typ: object = "at+jwt", signer: Any = None,
              **claims: object) -> str:
        """A token signed by PyJWT with the key `kid` (the first one by default), or with
        `signer`'s key under that kid."""
        key_id = self.published[0] if kid is None else kid
        alg, private = signer or self.private[key_id if isinstance(key_id, str) else self.published[0]]
        headers: dict[str, Any] = {"typ": None if typ is DROP else typ}
        if key_id is not DROP:
            headers["kid"] = key_id
        return pyjwt.encode(self.claims(**claims), private, algorithm=alg, headers=headers)


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    server.new_key()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def kits(issuer: Issuer) -> AsyncIterator[Callable[..., ResourceServer]]:
    """Resource servers of the test issuer (closed at the end)."""
    made: list[ResourceServer] = []

    def make(**options: Any) -> ResourceServer:
        rs = ResourceServer(**{"issuer": issuer.url, "audience": AUDIENCE, "realm": "orders",
                               "leeway": LEEWAY, **options})
        made.append(rs)
        return rs

    yield make
    for rs in made:
        await rs.aclose()


async def refusal(rs: ResourceServer, token: str) -> str:
    with pytest.raises(Rejected) as refused:
        await rs.authenticate(token)
    return str(refused.value)


# --- JWT access tokens, checked locally ---------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
async def test_a_valid_jwt_gives_its_principal_and_the_keys_are_fetched_once(
        issuer: Issuer, kits: Callable[..., ResourceServer], alg: str) -> None:
    kid = issuer.new_key(alg)
    rs = kits()
    token = issuer.token(kid, aud=[AUDIENCE, "https://api.example/invoices"],
                         scope="orders:read orders:write")
    found = await rs.authenticate(token)
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert found == Principal(sub="alice", client_id="orders-app",
                              scopes=frozenset({"orders:read", "orders:write"}),
                              aud=(AUDIENCE, "https://api.example/invoices"), exp=claims["exp"],
                              username="alice", claims=claims, checked_by="jwt")
    assert found.has("orders:read", "orders:write") and not found.has("orders:read", "orders:admin")
    # A client acting for itself (RFC 9068 §2.2: sub is its id) has no username; no scope is none.
    own = await rs.authenticate(issuer.token(kid, sub="orders-app", scope=DROP, aud=AUDIENCE))
    assert (own.sub, own.username, own.scopes, own.aud) == ("orders-app", None, frozenset(), (AUDIENCE,))
    for _ in range(20):
        await rs.authenticate(issuer.token(kid))
    assert issuer.requests == {"/.well-known/oauth-authorization-server": 1, Issuer.JWKS_PATH: 1}


async def test_the_rfc_9068_media_type_may_be_written_out(issuer: Issuer,
                                                          kits: Callable[..., ResourceServer]) -> None:
    rs = kits()
    assert (await rs.authenticate(issuer.token(typ="application/at+jwt"))).sub == "alice"
    assert (await rs.authenticate(issuer.token(typ="AT+JWT"))).sub == "alice"


async def test_the_leeway_is_honoured_and_no_more(issuer: Issuer,
                                                  kits: Callable[..., ResourceServer]) -> None:
    rs = kits()
    t = now()
    assert (await rs.authenticate(issuer.token(exp=t - LEEWAY + 3))).sub == "alice"
    assert (await rs.authenticate(issuer.token(nbf=t + LEEWAY - 3, iat=t + LEEWAY - 3))).sub == "alice"
    assert await refusal(rs, issuer.token(exp=t - LEEWAY - 3)) == "The access token expired."
    strict = kits(leeway=0)
    assert await refusal(strict, issuer.token(exp=t - 1)) == "The access token expired."


def _made_up_kid(i: Issuer) -> str:
    return i.token(kid="made-up", signer=("ES256", new_private_key("ES256")))


def _known_kid_wrong_key(i: Issuer) -> str:
    return i.token(signer=("ES256", new_private_key("ES256")))


def _alg_of_another_key(i: Issuer) -> str:
    """An ES256 signature under the kid of an EdDSA key."""
    return i.token(i.new_key("EdDSA"), signer=i.private[i.published[0]])


REJECTED: list[tuple[str, Callable[[Issuer], str], str]] = [
    ("another audience", lambda i: i.token(aud="https://api.example/invoices"),
     "The access token is not for this API (aud)."),
    ("the issuer as audience", lambda i: i.token(aud=i.url), "The access token is not for this API (aud)."),
    ("no audience", lambda i: i.token(aud=DROP), "The access token lacks the claim aud."),
    ("expired", lambda i: i.token(exp=now() - LEEWAY - 5), "The access token expired."),
    ("not yet valid", lambda i: i.token(nbf=now() + LEEWAY + 30), "The access token is not valid yet."),
    ("issued in the future", lambda i: i.token(iat=now() + LEEWAY + 30),
     "The access token is not valid yet."),
    ("typ JWT", lambda i: i.token(typ="JWT"),
     "The token is not a JWT access token (typ must be at+jwt, RFC 9068)."),
    ("no typ", lambda i: i.token(typ=DROP),
     "The token is not a JWT access token (typ must be at+jwt, RFC 9068)."),
    ("another issuer", lambda i: i.token(iss="https://auth.evil.example"),
     "The access token is from another issuer (iss)."),
    ("no client_id", lambda i: i.token(client_id=DROP), "The access token lacks the claim client_id."),
    ("no jti", lambda i: i.token(jti=DROP), "The access token lacks the claim jti."),
    ("no exp", lambda i: i.token(exp=DROP), "The access token lacks the claim exp."),
    ("exp as a string", lambda i: i.token(exp=str(now() + 300)),
     "The access token's exp is not a number of seconds."),
    ("iat not a number", lambda i: i.token(iat="soon"), "The access token is malformed."),
    ("scope as a list", lambda i: i.token(scope=["orders:read"]),
     "The access token's sub, client_id or scope is not a string."),
    ("sender-constrained", lambda i: i.token(cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
     BOUND),
    ("no kid", lambda i: i.token(DROP), "The token names no signing key (kid)."),
    ("unknown kid", _made_up_kid, "The token's signing key is not one of the issuer's."),
    ("another key under a known kid", _known_kid_wrong_key, "The access token's signature does not verify."),
    ("an algorithm not its key's", _alg_of_another_key, "The token's algorithm is not its key's."),
    ("three parts of nothing", lambda i: "a.b.c", "The access token is not a well-formed JWT."),
]


@pytest.mark.parametrize(("make", "why"), [(m, w) for _, m, w in REJECTED], ids=[d for d, _, _ in REJECTED])
async def test_a_jwt_that_fails_a_check_is_refused(issuer: Issuer, kits: Callable[..., ResourceServer],
                                                   make: Callable[[Issuer], str], why: str) -> None:
    rs = kits()
    assert await refusal(rs, make(issuer)) == why


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(issuer: Issuer, kits: Callable[..., ResourceServer], alg: str) -> None:
    rs = kits()
    await rs.authenticate(issuer.token())  # the issuer's keys are known
    forged = compact({"alg": alg, "typ": "at+jwt", "kid": issuer.published[0]}, issuer.claims(),
                     lambda _: b"")
    assert await refusal(rs, forged) == "The token's signing algorithm is not accepted here."


def _hmac_key(issuer: Issuer, form: str) -> tuple[str, bytes]:
    """(kid, HMAC key): the published EC key's PEM or JWK JSON, or a symmetric key the JWKS
    itself publishes with alg HS256."""
    kid = issuer.published[0]
    public = issuer.private[kid][1].public_key()
    if form == "pem":
        return kid, public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    if form == "jwk":
        return kid, json.dumps(public_jwk(issuer.private[kid][1], kid, "ES256")).encode()
    secret = secrets.token_bytes(32)
    issuer.extra_jwks.append({"kty": "oct", "k": b64(secret), "kid": "shared", "alg": "HS256"})
    return "shared", secret


@pytest.mark.parametrize("form", ["pem", "jwk", "published-oct-key"])
async def test_an_hs256_token_keyed_with_public_material_is_refused(
        issuer: Issuer, kits: Callable[..., ResourceServer], form: str) -> None:
    """The algorithm-confusion attack: HMAC keyed with what every client can read."""
    kid, key = _hmac_key(issuer, form)
    rs = kits()
    forged = compact({"alg": "HS256", "typ": "at+jwt", "kid": kid}, issuer.claims(),
                     lambda data: hmac.new(key, data, hashlib.sha256).digest())
    assert await refusal(rs, forged) == "The token's signing algorithm is not accepted here."
    # An API that allows only EdDSA refuses the issuer's ES256 tokens the same way.
    assert await refusal(kits(algorithms=["EdDSA"]), issuer.token()) == \
        "The token's signing algorithm is not accepted here."


async def test_an_unknown_kid_flood_costs_a_bounded_number_of_fetches(
        issuer: Issuer, kits: Callable[..., ResourceServer]) -> None:
    interval = 0.4
    rs = kits(jwks_min_interval=interval)
    good = issuer.token()
    await rs.authenticate(good)
    assert issuer.jwks_fetches == 1
    stranger = ("ES256", new_private_key("ES256"))
    forged = [issuer.token(f"made-up-{n}", signer=stranger) for n in range(200)]
    issuer.jwks_delay = 0.1  # so that the misses overlap the fetch
    await asyncio.sleep(interval)
    # 200 misses at once: one fetch, which they all wait for.
    results = await asyncio.gather(*(refusal(rs, token) for token in forged))
    assert set(results) == {"The token's signing key is not one of the issuer's."}
    assert issuer.jwks_fetches == 2
    # Misses on end for 1.2 s: at most one fetch per interval, and good tokens still pass.
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < 1.2:
        await refusal(rs, forged[n % len(forged)])
        assert (await rs.authenticate(good)).sub == "alice"
        n += 1
        await asyncio.sleep(0.005)
    assert n > 20
    assert issuer.jwks_fetches <= 2 + math.ceil(1.2 / interval) + 1


async def test_a_new_key_is_accepted_after_one_refetch_and_a_retired_one_dropped(
        issuer: Issuer, kits: Callable[..., ResourceServer]) -> None:
    rs = kits(jwks_min_interval=0.2)
    issuer.max_age = 2  # Cache-Control: the set is fetched again after two seconds
    old_kid = issuer.published[0]
    old = issuer.token()
    await rs.authenticate(old)
    assert issuer.jwks_fetches == 1
    new_kid = issuer.new_key()
    await asyncio.sleep(0.25)
    issuer.jwks_delay = 0.1
    # The first tokens of the new key, at once: one refetch, and every one accepted.
    found = await asyncio.gather(*(rs.authenticate(issuer.token(new_kid)) for _ in range(20)))
    assert {p.sub for p in found} == {"alice"}
    assert issuer.jwks_fetches == 2
    assert (await rs.authenticate(issuer.token(new_kid))).sub == "alice"
    assert (await rs.authenticate(old)).sub == "alice"  # still published: still good
    assert issuer.jwks_fetches == 2
    # The old key leaves the JWKS; once the set's max-age has run out it is gone here too.
    issuer.published.remove(old_kid)
    await asyncio.sleep(2.05)
    assert await refusal(rs, old) == "The token's signing key is not one of the issuer's."
    assert issuer.jwks_fetches == 3
    assert (await rs.authenticate(issuer.token(new_kid))).sub == "alice"
    assert issuer.jwks_fetches == 3


async def test_an_issuer_that_cannot_answer_is_503_and_is_not_asked_again_at_once(
        issuer: Issuer, kits: Callable[..., ResourceServer]) -> None:
    rs = kits(jwks_min_interval=0.5)
    issuer.max_age = 0  # the key set is stale as soon as the interval allows a fetch
    issuer.status = 500
    token = issuer.token()
    for _ in range(3):
        with pytest.raises(BearerError) as failed:
            await rs.check([f"Bearer {token}"])
        assert (failed.value.status_code, failed.value.headers) == (503, {"Retry-After": "5"})
    assert issuer.requests == {"/.well-known/oauth-authorization-server": 1}
    await asyncio.sleep(0.5)
    issuer.status = 200
    assert (await rs.check([f"Bearer {token}"])).sub == "alice"
    # The key set going stale while the issuer is down: the keys in hand still verify.
    issuer.status = 500
    await asyncio.sleep(0.5)
    assert (await rs.authenticate(token)).sub == "alice"
    assert issuer.jwks_fetches == 2
    # Nothing listens there: the same 503.
    nowhere = kits(issuer=f"http://127.0.0.1:{free_port()}", timeout=1.0)
    with pytest.raises(IssuerUnavailable):
        await nowhere.authenticate(token)


async def test_the_metadata_must_name_the_issuer_it_was_fetched_for(
        issuer: Issuer, kits: Callable[..., ResourceServer]) -> None:
    """RFC 8414 §3.3: otherwise any server could hand out another issuer's keys as its own."""
    rs = kits(issuer=issuer.url + "/")
    with pytest.raises(IssuerUnavailable, match="names another issuer"):
        await rs.authenticate(issuer.token())


def _leftover_keys(issuer: Issuer) -> dict[str, Any]:
    """Entries a JWKS may hold that are no key for this API, by kid; each one's private key."""
    made: dict[str, Any] = {}

    def ec_key(kid: str, **fields: Any) -> dict[str, Any]:
        made[kid] = new_private_key("ES256")
        return {**public_jwk(made[kid], kid, "ES256"), **fields}

    leaked = ec_key("leaked")
    leaked["d"] = pyjwt.algorithms.ECAlgorithm.to_jwk(made["leaked"], as_dict=True)["d"]
    issuer.extra_jwks += ["not a key", {"kty": "EC"}, ec_key("encryption", use="enc"), leaked,
                          ec_key("mislabelled", alg="EdDSA"), ec_key(issuer.published[0])]
    return made


async def test_the_key_set_keeps_only_public_signing_keys_of_allowed_algorithms(
        issuer: Issuer, kits: Callable[..., ResourceServer]) -> None:
    made = _leftover_keys(issuer)
    second = made.pop(issuer.published[0])  # a kid published twice: the first entry counts
    rs = kits()
    assert (await rs.authenticate(issuer.token())).sub == "alice"
    assert await refusal(rs, issuer.token(signer=("ES256", second))) == \
        "The access token's signature does not verify."
    for kid, private in made.items():
        assert await refusal(rs, issuer.token(kid, signer=("ES256", private))) == \
            "The token's signing key is not one of the issuer's."
    assert issuer.jwks_fetches == 1


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"keys": {}}',
                                  b'{"keys": [], "pad": "' + b"x" * 300_000 + b'"}'],
                         ids=["not-json", "array", "keys-not-a-list", "over-the-bound"])
async def test_a_key_set_that_is_not_one_is_503(issuer: Issuer, kits: Callable[..., ResourceServer],
                                               body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    issuer.jwks_body = body
    rs = kits(jwks_uri=issuer.url + Issuer.JWKS_PATH)  # given: no metadata request
    with caplog.at_level(logging.WARNING, logger="tokensvc.resource"):
        async with rs:  # the start: logged, not raised
            for _ in range(3):
                with pytest.raises(IssuerUnavailable):
                    await rs.authenticate(issuer.token())
    assert issuer.requests == {Issuer.JWKS_PATH: 1}
    assert [r.getMessage().split(" at ")[0] for r in caplog.records] == \
        ["tokensvc.resource: the JWKS", "tokensvc.resource: not ready"]


GOOD_ANSWER: dict[str, Any] = {"active": True, "token_type": "Bearer", "client_id": "shop", "sub": "alice",
                               "username": "alice", "scope": "orders:read", "aud": AUDIENCE}
ANSWERS: list[tuple[str, dict[str, Any], str]] = [
    ("inactive", {"active": False}, "The access token is invalid, expired or revoked."),
    ("active, as a string", {"active": "true"}, "The access token is invalid, expired or revoked."),
    ("a refresh token", {"token_type": "refresh_token"}, "The token is not an access token."),
    ("a DPoP token without cnf", {"token_type": "DPoP"},
     "The introspection answer's token_type and cnf disagree."),
    ("a bearer token with cnf", {"token_type": "Bearer", "cnf": {"jkt": "x"}},
     "The introspection answer's token_type and cnf disagree."),
    ("an mTLS-bound token", {"cnf": {"x5t#S256": "x"}},
     "The access token is bound to a key in a way this API cannot check (cnf)."),
    ("sender-constrained", {"token_type": "DPoP", "cnf": {"jkt": "x"}}, BOUND),
    ("another issuer", {"iss": "https://auth.evil.example"},
     "The access token is from another issuer (iss)."),
    ("other audiences", {"aud": ["https://api.example/a", "https://api.example/b"]},
     "The access token is not for this API (aud)."),
    ("no audience", {"aud": None}, "The access token is not for this API (aud)."),
    ("a malformed audience", {"aud": 7}, "The access token's audience is malformed."),
    ("no exp", {"exp": None}, "The access token has no expiry."),
    ("expired past the leeway", {"exp": -LEEWAY - 5}, "The access token expired."),
    ("no client_id", {"client_id": None}, "The introspection answer lacks the client or the scope."),
]


def answer(**changes: Any) -> dict[str, Any]:
    doc = {**GOOD_ANSWER, "iat": now(), "exp": now() + 300, **changes}
    if isinstance(changes.get("exp"), int):
        doc["exp"] = now() + changes["exp"]
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize(("changes", "why"), [(c, w) for _, c, w in ANSWERS], ids=[d for d, _, _ in ANSWERS])
async def test_an_introspection_answer_that_fails_a_check_is_refused(
        issuer: Issuer, kits: Callable[..., ResourceServer], changes: dict[str, Any], why: str) -> None:
    """The checks a JWT gets, on any RFC 7662 server's answer."""
    issuer.introspection = answer(**changes)
    rs = kits(client_id="orders-api", client_secret="s3cret")
    assert await refusal(rs, "an-opaque-token") == why


async def test_the_api_introspects_as_its_client(issuer: Issuer, kits: Callable[..., ResourceServer]) -> None:
    issuer.introspection = answer(aud=["https://api.example/invoices", AUDIENCE], sub=None, token_type=None)
    rs = kits(client_id="orders api:1", client_secret="s%cret/+=")
    found = await rs.authenticate("an-opaque-token")
    assert (found.sub, found.aud) == ("shop", ("https://api.example/invoices", AUDIENCE))
    # RFC 6749 §2.3.1: the id and secret are form-encoded before Basic joins them.
    authorization, form = issuer.introspected[0]
    scheme, _, credentials = authorization.partition(" ")
    user, _, password = base64.b64decode(credentials).decode().partition(":")
    assert (scheme, unquote_plus(user), unquote_plus(password)) == ("Basic", "orders api:1", "s%cret/+=")
    assert form == {"token": ["an-opaque-token"], "token_type_hint": ["access_token"]}


# --- HTTP: the middleware, the dependencies, RFC 6750's answers ---------------------------------


def orders_app(rs: ResourceServer) -> Starlette:
    can_write = rs.requires("orders:write")

    async def list_orders(request: Request) -> JSONResponse:
        return JSONResponse({"for": request.state.principal.sub})

    async def create_order(request: Request) -> JSONResponse:
        who = await can_write(request)
        return JSONResponse({"created_by": who.sub}, status_code=201)

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"for": websocket.state.principal.sub})
        await websocket.close()

    return Starlette(routes=[Route("/orders", list_orders), Route("/orders", create_order, methods=["POST"]),
                             WebSocketRoute("/live", socket)],
                     middleware=[Middleware(BearerMiddleware, server=rs)],
                     exception_handlers={BearerError: bearer_error_handler})


def client_of(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orders")


NO_TOKEN = (401, NO_CREDENTIALS, {"error_description": "An access token is required."})
NOT_BEARER = "The Authorization header is not 'Bearer <token>'."
MALFORMED = (400, f'Bearer realm="orders", error="invalid_request", error_description="{NOT_BEARER}"',
             {"error": "invalid_request", "error_description": NOT_BEARER})
SHAPES: list[tuple[str, list[tuple[str, str]], tuple[int, str, dict[str, str]]]] = [
    ("no header", [], NO_TOKEN),
    ("another scheme", [("Authorization", "Basic YTpi")], NO_TOKEN),
    ("bearer without a token", [("Authorization", "Bearer")], MALFORMED),
    ("not a b64token", [("Authorization", "Bearer a b")], MALFORMED),
    ("two headers", [("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
     (400, 'Bearer realm="orders", error="invalid_request", '
           'error_description="Send one Authorization header."',
      {"error": "invalid_request", "error_description": "Send one Authorization header."})),
    ("too long", [("Authorization", "Bearer " + "a" * 17000)],
     (401, 'Bearer realm="orders", error="invalid_token", error_description="The access token is too long."',
      {"error": "invalid_token", "error_description": "The access token is too long."})),
    ("unknown opaque token", [("Authorization", "Bearer tsv_at_nothing")],
     (401, 'Bearer realm="orders", error="invalid_token", '
           'error_description="This API cannot check this kind of access token."',
      {"error": "invalid_token", "error_description": "This API cannot check this kind of access token."})),
]


@pytest.mark.parametrize(("headers", "expected"), [(h, e) for _, h, e in SHAPES],
                         ids=[d for d, _, _ in SHAPES])
async def test_a_request_without_a_usable_token_gets_rfc_6750s_answer(
        kits: Callable[..., ResourceServer], headers: list[tuple[str, str]],
        expected: tuple[int, str, dict[str, str]]) -> None:
    async with client_of(orders_app(kits())) as client:
        resp = await client.get("/orders", headers=headers)
    assert (resp.status_code, resp.headers["www-authenticate"], resp.json()) == expected


async def test_a_bad_token_is_401_invalid_token_and_a_missing_scope_403(
        issuer: Issuer, kits: Callable[..., ResourceServer]) -> None:
    async with client_of(orders_app(kits())) as client:
        expired = {"Authorization": f"Bearer {issuer.token(exp=now() - 60)}"}
        resp = await client.get("/orders", headers=expired)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == \
            'Bearer realm="orders", error="invalid_token", error_description="The access token expired."'
        assert resp.json() == {"error": "invalid_token", "error_description": "The access token expired."}

        reader = {"Authorization": f"Bearer {issuer.token()}"}
        assert (await client.get("/orders", headers=reader)).json() == {"for": "alice"}
        resp = await client.post("/orders", headers=reader)
        assert resp.status_code == 403
        assert resp.headers["www-authenticate"] == (
            'Bearer realm="orders", error="insufficient_scope", '
            'error_description="This request needs the scope orders:write.", scope="orders:write"')
        assert resp.json() == {"error": "insufficient_scope",
                               "error_description": "This request needs the scope orders:write."}

        writer = {"Authorization": f"Bearer {issuer.token(scope='orders:read orders:write')}"}
        resp = await client.post("/orders", headers=writer)
        assert (resp.status_code, resp.json()) == (201, {"created_by": "alice"})


async def test_middleware_scopes_and_public_paths(issuer: Issuer,
                                                  kits: Callable[..., ResourceServer]) -> None:
    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    rs = kits()
    app = Starlette(routes=[Route("/healthz", hello), Route("/admin", hello)],
                    middleware=[Middleware(BearerMiddleware, server=rs, scopes=["orders:admin"],
                                           public=["/healthz"])])
    async with client_of(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        reader = {"Authorization": f"Bearer {issuer.token()}"}
        resp = await client.get("/admin", headers=reader)
        assert resp.status_code == 403 and 'scope="orders:admin"' in resp.headers["www-authenticate"]
        admin = {"Authorization": f"Bearer {issuer.token(scope='orders:admin')}"}
        assert (await client.get("/admin", headers=admin)).status_code == 200


async def websocket_handshake(app: Starlette, headers: dict[str, str],
                              denial_extension: bool = True) -> list[MutableMapping[str, Any]]:
    """What the app sends for a WebSocket handshake on /live, driven as an ASGI server would."""
    sent: list[MutableMapping[str, Any]] = []
    scope = {"type": "websocket", "asgi": {"version": "3.0", "spec_version": "2.4"}, "scheme": "ws",
             "path": "/live", "raw_path": b"/live", "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "server": ("orders", 80), "client": ("127.0.0.1", 50000), "subprotocols": [],
             "extensions": {"websocket.http.response": {}} if denial_extension else {}}
    incoming: Iterator[dict[str, Any]] = iter([{"type": "websocket.connect"},
                                               {"type": "websocket.disconnect", "code": 1000}])

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_websocket_without_a_token_is_denied(issuer: Issuer,
                                                     kits: Callable[..., ResourceServer]) -> None:
    app = orders_app(kits())
    start, body = await websocket_handshake(app, {})
    assert (start["type"], start["status"], body["type"]) == (
        "websocket.http.response.start", 401, "websocket.http.response.body")
    assert (b"www-authenticate", NO_CREDENTIALS.encode()) in start["headers"]
    # A server that cannot send a denial response: the handshake is closed, policy violation.
    assert await websocket_handshake(app, {}, denial_extension=False) == [
        {"type": "websocket.close", "code": 1008, "reason": "An access token is required."}]
    accepted = await websocket_handshake(app, {"Authorization": f"Bearer {issuer.token()}"})
    assert [m["type"] for m in accepted] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(accepted[1]["text"]) == {"for": "alice"}


async def test_the_dependencies_have_the_signature_fastapi_reads(
        issuer: Issuer, kits: Callable[..., ResourceServer]) -> None:
    """FastAPI's Depends() reads the dependency's signature and injects the Request into a
    parameter annotated with Starlette's Request; an HTTPException it raises is sent with its
    status and headers. Without FastAPI here, both halves are checked as such."""
    rs = kits()
    guard = rs.requires("orders:write")
    for dependency in (rs, guard):
        # Read with and without evaluating strings: FastAPI's releases do one or the other.
        for signature in (inspect.signature(dependency, eval_str=True), inspect.signature(dependency)):
            assert [(p.name, p.annotation) for p in signature.parameters.values()] == [("request", Request)]
            assert signature.return_annotation is Principal
        assert inspect.iscoroutinefunction(type(dependency).__call__)

    # Used in a plain Starlette route, no middleware and no handler: Starlette's own
    # HTTPException handling sends the status and the challenge.
    async def create_order(request: Request) -> JSONResponse:
        who = await guard(request)
        return JSONResponse({"created_by": who.sub})

    async with client_of(Starlette(routes=[Route("/orders", create_order, methods=["POST"])])) as client:
        resp = await client.post("/orders")
        assert (resp.status_code, resp.headers["www-authenticate"]) == (401, NO_CREDENTIALS)
        resp = await client.post("/orders", headers={"Authorization": f"Bearer {issuer.token()}"})
        assert resp.status_code == 403 and 'error="insufficient_scope"' in resp.headers["www-authenticate"]


@pytest.mark.parametrize("options", [
    {"algorithms": ["HS256"]}, {"algorithms": ["ES256", "RS256"]}, {"algorithms": []},
    {"realm": 'say "hi"'}, {"client_id": "orders-api"}, {"leeway": -1}, {"jwks_min_interval": 0},
    {"cache_size": 0}, {"audience": ""},
], ids=["symmetric", "unsupported", "no-algorithm", "quote-in-realm", "id-without-secret",
        "negative-leeway", "unbounded-jwks-rate", "no-cache", "no-audience"])
def test_a_misconfiguration_is_refused_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ResourceServer(**{"issuer": "https://auth.example", "audience": AUDIENCE, **options})


async def test_required_scopes_are_scope_tokens(kits: Callable[..., ResourceServer]) -> None:
    """They are quoted in the 403's challenge: a '"' would break the header."""
    rs = kits()
    for bad in ([], ['a"b'], ["two words"], [""]):
        with pytest.raises(ValueError):
            rs.requires(*bad)
    with pytest.raises(ValueError):
        BearerMiddleware(orders_app(rs), server=rs, scopes=['a"b'])


# --- Opaque tokens, introspected at a real tokensvc ---------------------------------------------


class Counting(httpx.AsyncBaseTransport):
    """The kit's requests to the in-process service, counted by path on their way."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.paths: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths[request.url.path] += 1
        return await self.inner.handle_async_request(request)

    @property
    def introspections(self) -> int:
        return self.paths["/oauth/introspect"]


class Deployment:
    """alice, the client her tokens are for, and the API's own client (introspection: all)."""

    def __init__(self, http: httpx.AsyncClient, owner: dict[str, Any], api: dict[str, Any]) -> None:
        self.http = http
        self.owner = owner
        self.api = api
        self.transport = Counting(http.app)  # type: ignore[attr-defined]
        self.stack = AsyncExitStack()

    async def kit(self, **options: Any) -> ResourceServer:
        client = await self.stack.enter_async_context(httpx.AsyncClient(transport=self.transport))
        return ResourceServer(**{"issuer": ISSUER, "audience": AUDIENCE, "realm": "orders",
                                 "client_id": self.api["client_id"],
                                 "client_secret": self.api["client_secret"],
                                 "http": client, **options})

    async def token(self, kind: str = "access_token", **extra: str) -> str:
        resp = await password_token(self.http, self.owner, **{"scope": "read", "resource": AUDIENCE, **extra})
        assert resp.status_code == 200, resp.text
        token: str = resp.json()[kind]
        return token

    async def revoke(self, token: str) -> None:
        resp = await self.http.post("/oauth/revoke", data={"token": token}, auth=auth(self.owner))
        assert resp.status_code == 200


@pytest.fixture
async def svc(http: httpx.AsyncClient) -> AsyncIterator[Deployment]:
    await new_user(http)
    owner = await new_client(http)
    api = await new_client(http, name="orders API", scopes=[], introspection="all")
    service = Deployment(http, owner, api)
    async with service.stack:
        yield service


async def test_an_opaque_token_is_introspected_into_its_principal(svc: Deployment) -> None:
    rs = await svc.kit()
    token = await svc.token(scope="read write")
    found = await rs.authenticate(token)
    assert (found.sub, found.username, found.client_id, found.scopes, found.aud, found.checked_by) == \
        ("alice", "alice", svc.owner["client_id"], frozenset({"read", "write"}), (AUDIENCE,), "introspection")
    assert found.claims["active"] is True and found.exp == found.claims["exp"]
    cc = await svc.http.post("/oauth/token", auth=auth(svc.owner),
                             data={"grant_type": "client_credentials", "resource": AUDIENCE})
    mine = await rs.authenticate(cc.json()["access_token"])
    assert (mine.sub, mine.username) == (svc.owner["client_id"], None)


async def test_introspection_answers_are_cached_and_revocation_lands_within_the_ttl(svc: Deployment) -> None:
    rs = await svc.kit(cache_ttl=1.0, negative_cache_ttl=0.5)
    token = await svc.token()
    for _ in range(5):
        assert (await rs.authenticate(token)).sub == "alice"
    assert svc.transport.introspections == 1
    await svc.revoke(token)
    assert (await rs.authenticate(token)).sub == "alice"  # the cached answer, inside its TTL
    await asyncio.sleep(1.05)
    assert await refusal(rs, token) == "The access token is invalid, expired or revoked."
    assert svc.transport.introspections == 2
    # The refusal is kept for the shorter negative TTL.
    assert await refusal(rs, token) == "The access token is invalid, expired or revoked."
    assert svc.transport.introspections == 2
    await asyncio.sleep(0.55)
    await refusal(rs, token)
    assert svc.transport.introspections == 3


async def test_a_cache_ttl_of_zero_introspects_every_check(svc: Deployment) -> None:
    """`cache_ttl=0` and `negative_cache_ttl=0` turn the caches off (README): every check of an
    opaque token asks the issuer, good or bad, and nothing is kept."""
    rs = await svc.kit(cache_ttl=0, negative_cache_ttl=0)
    token = await svc.token()
    for _ in range(3):
        assert (await rs.authenticate(token)).sub == "alice"
    bad = secrets.token_urlsafe(40)
    for _ in range(2):
        await refusal(rs, bad)
    assert svc.transport.introspections == 5
    assert rs.introspector is not None and rs.introspector.cached == (0, 0)


async def test_the_introspection_cache_is_bounded(svc: Deployment) -> None:
    rs = await svc.kit(cache_size=3)
    tokens = [await svc.token() for _ in range(5)]
    for token in tokens:
        await rs.authenticate(token)
    assert rs.introspector is not None and rs.introspector.cached == (3, 0)
    assert svc.transport.introspections == 5
    await rs.authenticate(tokens[-1])  # kept
    assert svc.transport.introspections == 5
    await rs.authenticate(tokens[0])  # evicted: asked again
    assert svc.transport.introspections == 6
    for _ in range(10):
        await refusal(rs, secrets.token_urlsafe(40))
    assert rs.introspector.cached == (3, 3)


async def test_a_flood_of_bad_tokens_does_not_evict_good_ones(svc: Deployment) -> None:
    rs = await svc.kit(cache_size=2)
    token = await svc.token()
    await rs.authenticate(token)
    for _ in range(20):
        await refusal(rs, secrets.token_urlsafe(40))
    asked = svc.transport.introspections
    assert (await rs.authenticate(token)).sub == "alice"
    assert svc.transport.introspections == asked


async def test_the_cache_never_outlives_the_token(svc: Deployment) -> None:
    resp = await svc.http.patch(f"/admin/clients/{svc.owner['client_id']}", json={"access_token_ttl": 2},
                                headers=ADMIN)
    assert resp.status_code == 200, resp.text
    rs = await svc.kit(cache_ttl=60, leeway=0)
    token = await svc.token()
    found = await rs.authenticate(token)
    assert found.exp - time.time() <= 2
    await asyncio.sleep(max(0.0, found.exp - time.time()) + 0.05)
    await refusal(rs, token)
    assert svc.transport.introspections == 2


async def test_concurrent_checks_of_one_token_share_one_introspection(svc: Deployment) -> None:
    rs = await svc.kit()
    token = await svc.token()
    found = await asyncio.gather(*(rs.authenticate(token) for _ in range(25)))
    assert {p.sub for p in found} == {"alice"}
    assert svc.transport.introspections == 1


async def test_a_refresh_token_never_opens_the_api(svc: Deployment) -> None:
    """Introspection calls a live refresh token active too (RFC 7662 §2.2)."""
    rs = await svc.kit()
    refresh_token = await svc.token("refresh_token")
    assert await refusal(rs, refresh_token) == "The token is not an access token."


async def test_an_opaque_token_for_another_audience_is_refused(svc: Deployment) -> None:
    rs = await svc.kit()
    other = await svc.token(resource="https://api.example/invoices")
    assert await refusal(rs, other) == "The access token is not for this API (aud)."
    # No resource asked for: the issuer is the audience, as a JWT's aud says.
    unrestricted = (await password_token(svc.http, svc.owner, scope="read")).json()["access_token"]
    assert await refusal(rs, unrestricted) == "The access token is not for this API (aud)."
    anything = await svc.kit(audience=ISSUER)
    assert (await anything.authenticate(unrestricted)).aud == (ISSUER,)


async def test_an_api_client_without_introspection_all_sees_no_token(svc: Deployment) -> None:
    """RFC 7662 §4 at tokensvc: the API's client must be a resource server."""
    plain = await new_client(svc.http, name="plain API", scopes=[])
    rs = await svc.kit(client_id=plain["client_id"], client_secret=plain["client_secret"])
    assert await refusal(rs, await svc.token()) == "The access token is invalid, expired or revoked."


async def test_a_principal_checked_once_serves_the_whole_request_of_its_own_api(svc: Deployment) -> None:
    rs = await svc.kit(cache_ttl=0)  # no cache: every check is an introspection
    other = await svc.kit(audience="https://api.example/invoices", cache_ttl=0)

    async def create_order(request: Request) -> JSONResponse:
        who = await rs.requires("read")(request)
        assert await rs(request) is who
        return JSONResponse({"created_by": who.sub})

    async def create_invoice(request: Request) -> JSONResponse:
        who = await other(request)  # another API: checked for its own audience
        return JSONResponse({"created_by": who.sub})

    app = Starlette(routes=[Route("/orders", create_order, methods=["POST"]),
                            Route("/invoices", create_invoice, methods=["POST"])],
                    middleware=[Middleware(BearerMiddleware, server=rs)],
                    exception_handlers={BearerError: bearer_error_handler})
    bearer = {"Authorization": f"Bearer {await svc.token()}"}
    async with client_of(app) as client:
        resp = await client.post("/orders", headers=bearer)
        assert (resp.status_code, resp.json()) == (200, {"created_by": "alice"})
        assert svc.transport.introspections == 1
        resp = await client.post("/invoices", headers=bearer)
        assert resp.status_code == 401
        assert resp.json()["error_description"] == "The access token is not for this API (aud)."
        assert svc.transport.introspections == 3


# --- The README's example API, as written --------------------------------------------------------


def readme_module(name: str, tmp_path: Path) -> ModuleType:
    """The README's ```python block that starts with `# <name>`, loaded as a module."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    source = next(b for b in blocks if b.startswith(f"# {name}\n"))
    path = tmp_path / name
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def drive(module: ModuleType, tokens: dict[str, str]) -> dict[str, tuple[int, Any]]:
    """The example's app started (lifespan) and asked GET and POST /orders with each token."""
    app: Starlette = module.app
    seen: dict[str, tuple[int, Any]] = {}
    async with app.router.lifespan_context(app), client_of(app) as client:
        resp = await client.get("/healthz")
        seen["healthz"] = (resp.status_code, resp.json())
        resp = await client.get("/orders")
        seen["GET none"] = (resp.status_code, resp.headers["www-authenticate"])
        for name, token in tokens.items():
            for method in ("GET", "POST"):
                resp = await client.request(method, "/orders", headers={"Authorization": f"Bearer {token}"})
                seen[f"{method} {name}"] = (resp.status_code, resp.json())
    return seen


def readme_example_answers(client_id: str) -> dict[str, tuple[int, Any]]:
    """What the README's example API answers `drive`'s requests, for tokens of `client_id`."""
    not_ours = {"error": "invalid_token",
                "error_description": "The access token is not for this API (aud)."}
    return {
        "healthz": (200, {"status": "ok"}),
        "GET none": (401, NO_CREDENTIALS),
        "GET reader": (200, {"orders": [], "for": "alice", "scopes": ["orders:read"]}),
        "POST reader": (403, {"error": "insufficient_scope",
                              "error_description": "This request needs the scope orders:write."}),
        "GET writer": (200, {"orders": [], "for": "alice", "scopes": ["orders:read", "orders:write"]}),
        "POST writer": (201, {"created_by": "alice", "client": client_id}),
        "GET other API": (401, not_ours),
        "POST other API": (401, not_ours),
    }


async def test_the_readme_example_api_works_with_jwts(issuer: Issuer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISSUER_URL", issuer.url)
    monkeypatch.setenv("ORDERS_CLIENT_ID", "orders-api")
    monkeypatch.setenv("ORDERS_CLIENT_SECRET", "unused: this issuer has no introspection")
    module = readme_module("orders_api.py", tmp_path)
    assert issuer.jwks_fetches == 0
    seen = await drive(module, {"reader": issuer.token(),
                                "writer": issuer.token(scope="orders:read orders:write"),
                                "other API": issuer.token(aud="https://api.example/invoices")})
    assert issuer.jwks_fetches == 1  # at start, by the lifespan
    assert seen == readme_example_answers("orders-app")


async def test_the_readme_example_api_works_with_a_running_tokensvc(
        redis_server: RedisServer, redis_db: redis.Redis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    service = Service.deployed(redis_server.url, tmp_path / "svc", own_issuer=True).start()
    try:
        service.wait_ready()
        await service.create_user()
        app = await service.create_client(name="shop", scopes=["orders:read", "orders:write"])
        api = await service.create_client(name="orders API", scopes=[], introspection="all")
        tokens = {}
        async with service.http() as http:
            for name, scope, resource in [("reader", "orders:read", AUDIENCE),
                                          ("writer", "orders:read orders:write", AUDIENCE),
                                          ("other API", "orders:read", "https://api.example/invoices")]:
                resp = await password_token(http, app, scope=scope, resource=resource)
                assert resp.status_code == 200, resp.text
                tokens[name] = resp.json()["access_token"]
        monkeypatch.setenv("ISSUER_URL", service.url)
        monkeypatch.setenv("ORDERS_CLIENT_ID", api["client_id"])
        monkeypatch.setenv("ORDERS_CLIENT_SECRET", api["client_secret"])
        seen = await drive(readme_module("orders_api.py", tmp_path), tokens)
    finally:
        service.stop()
    assert seen == readme_example_answers(app["client_id"])


async def test_a_jwt_from_tokensvc_is_checked_locally_by_the_kit(http: httpx.AsyncClient) -> None:
    """The two halves together: tokensvc's own JWT access tokens (RFC 9068) and JWKS, verified
    by the kit with no introspection; a rotation's new key is picked up by one refetch."""
    await new_user(http)
    owner = await new_client(http, access_token_format="jwt")
    service = Deployment(http, owner, await new_client(http, name="orders API", scopes=[]))
    async with service.stack:
        rs = await service.kit()
        token = await service.token(scope="read")
        assert token.count(".") == 2
        found = await rs.authenticate(token)
        assert (found.sub, found.username, found.client_id, found.scopes, found.aud, found.checked_by) == \
            ("alice", "alice", owner["client_id"], frozenset({"read"}), (AUDIENCE,), "jwt")
        assert service.transport.introspections == 0
        assert service.transport.paths["/.well-known/jwks.json"] == 1
        # Not for this API: a token asked for no resource has the issuer as its audience.
        other = await password_token(http, owner, scope="read")
        refused = await refusal(rs, other.json()["access_token"])
        assert refused == "The access token is not for this API (aud)."
        assert service.transport.introspections == 0
