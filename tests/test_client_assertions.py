"""RFC 7523 client authentication (private_key_jwt, client_secret_jwt) against real `tokensvc
serve` processes: a third-party client library gets, introspects and revokes tokens with it;
every forged, stale, misdirected or replayed assertion is refused, on either of two instances
that share one Redis."""

from __future__ import annotations

import base64
import hashlib
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from jwskate import Jwk, Jwt, SymmetricJwk
from requests_oauth2client import ClientSecretJwt, OAuth2Client, PrivateKeyJwt

from tests.support.assertions import assert_error
from tests.support.config import ADMIN
from tests.support.redis_servers import RedisServer
from tests.support.service import Service
from tokensvc.assertions import JWT_BEARER
from tokensvc.store.keys import once

TYPE = {"client_assertion_type": JWT_BEARER}
Keys = dict[str, Jwk]


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    """Two instances of one deployment on one Redis. The first's URL is the issuer of both,
    so an assertion made for the one is, but for its jti, good at the other."""
    if redis_server.proc is None:
        redis_server.start()
    with redis_server.sync() as r:
        r.flushall()
    root = tmp_path_factory.mktemp("assertions")
    first = Service.deployed(redis_server.url, root / "a", own_issuer=True)
    second = Service.deployed(redis_server.url, root / "b")
    second.env["TOKENSVC_ISSUER"] = first.url
    try:
        for svc in (first, second):
            svc.start()
        for svc in (first, second):
            svc.wait_ready()
        yield first, second
    finally:
        for svc in (first, second):
            svc.stop()


@pytest.fixture(scope="module")
def live(pair: tuple[Service, Service]) -> Service:
    return pair[0]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return {"ES256": Jwk.generate(alg="ES256", kid="ec-1"),
            "PS256": Jwk.generate(alg="PS256", kid="rsa-1", key_size=2048),
            "EdDSA": Jwk.generate(alg="EdDSA", kid="ed-1")}


def public_set(*private: Jwk) -> dict[str, Any]:
    return {"keys": [k.public_jwk().to_dict() for k in private]}


def create(svc: Service, **fields: Any) -> dict[str, Any]:
    resp = httpx.post(f"{svc.url}/admin/clients", headers=ADMIN, timeout=10,
                      json={"name": "workload", "grant_types": ["client_credentials"],
                            "scopes": ["read"], **fields})
    assert resp.status_code == 201, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def library(svc: Service, auth: Any) -> OAuth2Client:
    """requests-oauth2client configured from the metadata, as its users configure it."""
    return OAuth2Client.from_discovery_endpoint(
        f"{svc.url}/.well-known/oauth-authorization-server", issuer=svc.url, auth=auth, testing=True)


def claims(client_id: str, aud: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    doc = {"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 60,
           "jti": str(uuid.uuid4())}
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def signed(key: Jwk, payload: dict[str, Any], alg: str | None = None) -> str:
    return str(Jwt.sign(payload, key=key, alg=alg or key.alg))


def cc(svc: Service, client_id: str | None, assertion: str, **extra: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", "client_assertion": assertion, **TYPE, **extra}
    if client_id is not None:
        data["client_id"] = client_id
    return httpx.post(f"{svc.url}/oauth/token", data=data, timeout=10)


def jti_of(assertion: str) -> str:
    jti: str = jwt.decode(assertion, options={"verify_signature": False})["jti"]
    return jti


def once_name(client_id: str, jti: str) -> str:
    """The once-only key's digest for a client's jti (assertions.py names it so)."""
    named = hashlib.sha256(f"assertion:{client_id}:{jti}".encode()).digest()
    return base64.urlsafe_b64encode(named).rstrip(b"=").decode("ascii")


def refused(resp: httpx.Response, description: str) -> None:
    assert_error(resp, 401, "invalid_client", description)


@pytest.mark.parametrize("alg", ["ES256", "PS256", "EdDSA"])
def test_private_key_jwt_gets_introspects_and_revokes(live: Service, keys: Keys, alg: str) -> None:
    client = create(live, token_endpoint_auth_method="private_key_jwt", jwks=public_set(*keys.values()))
    assert "client_secret" not in client  # none shown, and none stored
    assert client["token_endpoint_auth_method"] == "private_key_jwt"
    assert client["jwks"] == public_set(*keys.values())
    oauth = library(live, PrivateKeyJwt(client["client_id"], keys[alg]))
    token = oauth.client_credentials(scope="read")
    assert token.token_type.lower() == "bearer" and token.access_token.startswith("tsv_at_")
    # Introspection and revocation take the assertion too (aud: the URL of the endpoint called).
    doc = oauth.introspect_token(token.access_token)
    assert doc["active"] is True and doc["client_id"] == client["client_id"]
    assert oauth.revoke_access_token(token.access_token) is True
    assert oauth.introspect_token(token.access_token) == {"active": False}


def test_client_secret_jwt_gets_introspects_and_revokes(live: Service) -> None:
    client = create(live, token_endpoint_auth_method="client_secret_jwt")
    secret = client["client_secret"]
    oauth = library(live, ClientSecretJwt(client["client_id"], secret))
    token = oauth.client_credentials(scope="read")
    assert oauth.introspect_token(token.access_token)["active"] is True
    assert oauth.revoke_access_token(token.access_token) is True
    assert oauth.introspect_token(token.access_token) == {"active": False}
    for alg in ("HS384",):
        other = library(live, ClientSecretJwt(client["client_id"], secret, alg=alg))
        assert other.client_credentials(scope="read").access_token.startswith("tsv_at_")
    # The secret itself is not sent, and not accepted in its place.
    resp = httpx.post(f"{live.url}/oauth/token", auth=(client["client_id"], secret), timeout=10,
                      data={"grant_type": "client_credentials"})
    assert_error(resp, 401, "invalid_client", "This client authenticates with client_secret_jwt: "
                 "send client_assertion and client_assertion_type (RFC 7523).",
                 'Basic realm="tokensvc"')


def test_the_client_secret_jwt_secret_is_nowhere_in_redis(live: Service, redis_server: RedisServer) -> None:
    client = create(live, token_endpoint_auth_method="client_secret_jwt")
    secret = client["client_secret"].encode()
    assert library(live, ClientSecretJwt(client["client_id"], client["client_secret"])).client_credentials()
    seen = 0
    with redis_server.sync() as r:
        for key in r.scan_iter(count=1000):
            kind = r.type(key)
            values: list[bytes] = [key]
            if kind == b"string":
                values.append(r.get(key) or b"")
            elif kind == b"hash":
                values += [b for pair in r.hgetall(key).items() for b in pair]
            elif kind == b"zset":
                values += r.zrange(key, 0, -1)
            elif kind == b"set":
                values += list(r.smembers(key))
            elif kind == b"list":
                values += r.lrange(key, 0, -1)
            seen += 1
            assert not any(secret in v for v in values), key
        record = r.get(f"tsv:{{c:{client['client_id']}}}:client")
    assert seen > 3 and record is not None and b'"secret_sealed":"' in record


def test_a_replayed_assertion_is_refused_on_every_instance(pair: tuple[Service, Service], keys: Keys) -> None:
    first, second = pair
    client = create(first, token_endpoint_auth_method="private_key_jwt", jwks=public_set(keys["ES256"]))
    cid = client["client_id"]
    assertion = signed(keys["ES256"], claims(cid, f"{first.url}/oauth/token"))
    assert cc(first, cid, assertion).status_code == 200
    used = "This client assertion was already used: each jti is accepted once."
    refused(cc(first, cid, assertion), used)
    refused(cc(second, cid, assertion), used)
    # The second instance does accept a fresh assertion of the same client, once.
    fresh = signed(keys["ES256"], claims(cid, f"{first.url}/oauth/token"))
    assert cc(second, cid, fresh).status_code == 200
    refused(cc(first, cid, fresh), used)
    # The jti is kept only until the assertion has expired (plus the leeway).
    with redis.Redis.from_url(first.redis_url) as r:
        ttls = [r.pttl(once(once_name(cid, jti))) for jti in (jti_of(assertion), jti_of(fresh))]
    assert all(0 < t <= 90_000 for t in ttls), ttls


def _hs256_with(public: bytes, payload: dict[str, Any]) -> str:
    """The HMAC-with-the-public-key forgery: the public key's bytes used as an HMAC secret."""
    return str(Jwt.sign(payload, key=SymmetricJwk.from_bytes(public), alg="HS256"))


def test_forged_and_misdirected_assertions_are_refused(live: Service, keys: Keys) -> None:
    key = keys["PS256"]
    client = create(live, token_endpoint_auth_method="private_key_jwt", jwks=public_set(key, keys["ES256"]))
    cid = client["client_id"]
    aud = f"{live.url}/oauth/token"
    now = int(time.time())
    pem = key.public_jwk().cryptography_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    impostor = Jwk.generate(alg="PS256", kid="rsa-1", key_size=2048)  # same kid, another key
    cases = {
        "alg none": (jwt.encode(claims(cid, aud), "", algorithm="none"),
                     "A private_key_jwt assertion must be signed with one of RS256, PS256, ES256, "
                     "EdDSA, not 'none'."),
        "HS256 with the public key's PEM": (
            _hs256_with(pem, claims(cid, aud)),
            "A private_key_jwt assertion must be signed with one of RS256, PS256, ES256, EdDSA, "
            "not 'HS256'."),
        "HS256 with the public JWK": (
            _hs256_with(key.public_jwk().to_json().encode(), claims(cid, aud)),
            "A private_key_jwt assertion must be signed with one of RS256, PS256, ES256, EdDSA, "
            "not 'HS256'."),
        "wrong aud": (signed(key, claims(cid, "https://elsewhere.example/oauth/token")),
                      f"The client assertion's aud must name this server: {live.url} or "
                      f"{live.url}/oauth/token."),
        "expired": (signed(key, claims(cid, aud, iat=now - 600, exp=now - 120)),
                    "The client assertion has expired (exp)."),
        "exp too far ahead": (signed(key, claims(cid, aud, exp=now + 3600)),
                              "The client assertion's exp is more than 300 seconds ahead."),
        "not yet valid": (signed(key, claims(cid, aud, nbf=now + 600)),
                          "The client assertion is not valid yet (nbf or iat in the future)."),
        "no jti": (signed(key, claims(cid, aud, jti=None)),
                   "The client assertion lacks the 'jti' claim."),
        "no exp": (signed(key, claims(cid, aud, exp=None)),
                   "The client assertion lacks the 'exp' claim."),
        "iss is not sub": (signed(key, claims(cid, aud, iss="someone-else")),
                           "The client assertion's iss and sub must both be the client id (RFC 7523 §3)."),
        "unknown kid": (jwt.encode(claims(cid, aud), key.cryptography_key, algorithm="PS256",
                                   headers={"kid": "nope"}),
                        "No key registered for this client has the kid 'nope'."),
        "no kid, several keys": (jwt.encode(claims(cid, aud), key.cryptography_key, algorithm="PS256"),
                                 "The client assertion has no kid, and the client has several keys: "
                                 "name the key in the header's kid."),
        "wrong key": (signed(impostor, claims(cid, aud)),
                      "The client assertion's signature does not verify with the client's "
                      "registered key."),
        "not a JWT": ("not.a.jwt", "The client assertion is not a JWT (RFC 7523 §3)."),
        "unknown client": (signed(key, claims("no-such-client", aud)), "Client authentication failed."),
    }
    for name, (assertion, description) in cases.items():
        resp = cc(live, None, assertion)
        assert resp.status_code == 401, (name, resp.text)
        assert_error(resp, 401, "invalid_client", description)
    # A key's alg is pinned (its type's, narrowed by its alg member): ES256 over the RSA kid fails.
    resp = cc(live, cid, jwt.encode(claims(cid, aud), keys["ES256"].cryptography_key, algorithm="ES256",
                                    headers={"kid": "rsa-1"}))
    refused(resp, "The client's key does not verify ES256; it takes PS256.")
    # Nothing was issued, and a good assertion still works afterwards.
    assert cc(live, cid, signed(key, claims(cid, aud))).status_code == 200


def test_one_method_per_request_and_the_registered_one(live: Service, keys: Keys) -> None:
    key = keys["ES256"]
    pkj = create(live, token_endpoint_auth_method="private_key_jwt", jwks=public_set(key))
    basic = create(live)
    aud = f"{live.url}/oauth/token"
    token_url = f"{live.url}/oauth/token"
    two = "Use one client authentication method: a client assertion, or Basic, or client_secret, not two."
    good = signed(key, claims(pkj["client_id"], aud))
    # An assertion with Basic, or with client_secret: invalid_request, and nothing spent.
    resp = httpx.post(token_url, auth=(basic["client_id"], basic["client_secret"]), timeout=10,
                      data={"grant_type": "client_credentials", "client_assertion": good, **TYPE})
    assert_error(resp, 400, "invalid_request", two)
    resp = cc(live, pkj["client_id"], good, client_secret="whatever")
    assert_error(resp, 400, "invalid_request", two)
    resp = cc(live, basic["client_id"], good)
    assert_error(resp, 400, "invalid_request", "client_id differs from the client assertion's iss and sub.")
    resp = httpx.post(token_url, timeout=10, data={"grant_type": "client_credentials",
                                                   "client_assertion": good})
    assert_error(resp, 400, "invalid_request",
                 "client_assertion and client_assertion_type go together (RFC 7521 §4.2).")
    saml = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    resp = cc(live, None, good, client_assertion_type=saml)
    refused(resp, f"client_assertion_type must be {JWT_BEARER} (RFC 7523 §2.2).")
    assert cc(live, pkj["client_id"], good).status_code == 200  # unspent until now
    # A secret client sending an assertion (even one that is HS256 under its own secret).
    hs = str(Jwt.sign(claims(basic["client_id"], aud), key=SymmetricJwk.from_bytes(
        basic["client_secret"].encode()), alg="HS256"))
    refused(cc(live, basic["client_id"], hs),
            "This client authenticates with client_secret_basic, not with a client assertion.")
    # A private_key_jwt client sending a secret, by Basic or in the body, or nothing.
    for data, auth in (({}, (pkj["client_id"], "guess")),
                       ({"client_id": pkj["client_id"], "client_secret": "guess"}, None),
                       ({"client_id": pkj["client_id"]}, None)):
        resp = httpx.post(token_url, auth=auth, timeout=10,
                          data={"grant_type": "client_credentials", **data})
        assert resp.status_code == 401 and resp.json()["error_description"] == (
            "This client authenticates with private_key_jwt: send client_assertion and "
            "client_assertion_type (RFC 7523)."), resp.text
    # A client_secret_jwt assertion signed with another client's secret.
    csj = create(live, token_endpoint_auth_method="client_secret_jwt")
    forged = str(Jwt.sign(claims(csj["client_id"], aud), key=SymmetricJwk.from_bytes(
        basic["client_secret"].encode()), alg="HS256"))
    refused(cc(live, csj["client_id"], forged),
            "The client assertion's signature does not verify with the client's registered secret.")
    refused(cc(live, csj["client_id"], signed(key, claims(csj["client_id"], aud))),
            "A client_secret_jwt assertion must be an HMAC (HS256, HS384), not 'ES256'.")
    refused(cc(live, csj["client_id"], jwt.encode(claims(csj["client_id"], aud), "", algorithm="none")),
            "A client_secret_jwt assertion must be an HMAC (HS256, HS384), not 'none'.")


def test_key_rotation_through_the_admin_api(live: Service, keys: Keys) -> None:
    """A new jwks takes effect on the next request (the parsed keys follow the record), and a
    switch to client_secret_jwt is a secret rotation naming the method."""
    old, new = keys["ES256"], keys["EdDSA"]
    client = create(live, token_endpoint_auth_method="private_key_jwt", jwks=public_set(old))
    cid = client["client_id"]
    aud = f"{live.url}/oauth/token"
    assert cc(live, cid, signed(old, claims(cid, aud))).status_code == 200
    resp = httpx.patch(f"{live.url}/admin/clients/{cid}", headers=ADMIN, timeout=10,
                       json={"jwks": public_set(new)})
    assert resp.status_code == 200, resp.text
    refused(cc(live, cid, signed(old, claims(cid, aud))),
            "No key registered for this client has the kid 'ec-1'.")
    assert cc(live, cid, signed(new, claims(cid, aud))).status_code == 200
    resp = httpx.patch(f"{live.url}/admin/clients/{cid}", headers=ADMIN, timeout=10,
                       json={"token_endpoint_auth_method": "client_secret_jwt"})
    assert resp.status_code == 400 and "POST /admin/clients/" in resp.json()["error_description"]
    resp = httpx.post(f"{live.url}/admin/clients/{cid}/secret", headers=ADMIN, timeout=10,
                      json={"token_endpoint_auth_method": "client_secret_jwt"})
    assert resp.status_code == 200, resp.text
    secret = resp.json()["client_secret"]
    refused(cc(live, cid, signed(new, claims(cid, aud))),
            "A client_secret_jwt assertion must be an HMAC (HS256, HS384), not 'EdDSA'.")
    assert library(live, ClientSecretJwt(cid, secret)).client_credentials().access_token


def test_redis_down_is_503_and_the_assertion_stays_unspent(live: Service, keys: Keys,
                                                           redis_server: RedisServer) -> None:
    """With Redis hung the answer is 503 (never a pass, never a 500). The client was never read
    by this instance, so its record's read is what fails, before the jti is written: the
    assertion is accepted once Redis answers again, and only once."""
    client = create(live, token_endpoint_auth_method="private_key_jwt", jwks=public_set(keys["ES256"]))
    cid = client["client_id"]
    assertion = signed(keys["ES256"], claims(cid, f"{live.url}/oauth/token"))
    proc = redis_server.proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        resp = cc(live, cid, assertion)
        assert_error(resp, 503, "temporarily_unavailable", "Storage is unavailable; retry shortly.")
        assert resp.headers["retry-after"] == "1"
    finally:
        proc.send_signal(signal.SIGCONT)
    live.wait_ready()
    assert cc(live, cid, assertion).status_code == 200
    refused(cc(live, cid, assertion), "This client assertion was already used: each jti is accepted once.")
