"""Presenting DPoP-bound tokens (RFC 9449 §7) to a real `tokensvc serve`: `/oauth/userinfo`,
`/login` and finAPI's revocation take `Authorization: DPoP <token>` with a proof.

Two instances share one Redis and one public issuer URL (A's), as instances behind one name
do: a proof spent at one is refused at the other. The tokens come from the real token
endpoint, asked for and used by `requests-oauth2client`, a client library that implements
DPoP (its auth handler signs a proof per request, `ath` included); the refusals are sent by
hand with proofs from tests/support/dpop.py, each wrong in one way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from requests_oauth2client import DPoPKey as LibraryKey, DPoPToken, OAuth2Client

from tests.support.config import ADMIN
from tests.support.dpop import DPoPKey
from tests.support.redis_servers import RedisServer
from tests.support.service import Service
from tokensvc.dpop import b64url
from tokensvc.errors import DPOP_ALGS
from tokensvc.http.bearer import BOUND, INVALID, NOT_BOUND, OTHER_KEY, REPLAYED
from tokensvc.proofs import ONE_PROOF


def dpop_challenge(error: str, description: str) -> str:
    return (f'DPoP realm="tokensvc", error="{error}", error_description="{description}", '
            f'algs="{DPOP_ALGS}"')


def bearer_challenge(description: str) -> str:
    return f'Bearer realm="tokensvc", error="invalid_token", error_description="{description}"'


def refused(resp: httpx.Response | requests.Response, challenge: str) -> str:
    """The 401's error code, after checking its challenge and that it is never cached."""
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"] == challenge
    assert resp.headers["cache-control"] == "no-store"
    error: str = resp.json()["error"]
    return error


def start(svc: Service) -> Service:
    svc.start()
    svc.wait_ready()
    return svc


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    """A and B on one Redis; both answer for A's URL (the deployment's public name)."""
    tmp = tmp_path_factory.mktemp("dpop-use")
    a = Service.deployed(redis_server.url, tmp / "a", own_issuer=True)
    b = Service.deployed(redis_server.url, tmp / "b", issuer=a.url)
    try:
        yield start(a), start(b)
    finally:
        a.stop()
        b.stop()


def new_client(svc: Service, **fields: Any) -> dict[str, Any]:
    body = {"name": "dpop client", "scopes": ["read", "write"],
            "grant_types": ["client_credentials", "password"], **fields}
    resp = httpx.post(f"{svc.url}/admin/clients", json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def library_client(svc: Service, client: dict[str, Any]) -> OAuth2Client:
    return OAuth2Client(token_endpoint=f"{svc.url}/oauth/token", client_id=client["client_id"],
                        client_secret=client["client_secret"], dpop_bound_access_tokens=True,
                        testing=True)  # the library wants https endpoints; these are loopback http


def bound_token(svc: Service, key: DPoPKey, client: dict[str, Any]) -> str:
    """An access token bound to `key`, asked for by hand."""
    proof = key.proof("POST", f"{svc.url}/oauth/token")
    resp = httpx.post(f"{svc.url}/oauth/token", headers={"DPoP": proof},
                      data={"grant_type": "client_credentials"},
                      auth=(client["client_id"], client["client_secret"]))
    assert resp.status_code == 200 and resp.json()["token_type"] == "DPoP", resp.text
    token: str = resp.json()["access_token"]
    return token


def unsigned(proof: str, key: DPoPKey) -> str:
    """The proof with `alg: none` and no signature (PyJWT will not sign so)."""
    header = b64url(json.dumps({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}).encode())
    return f"{header}.{proof.split('.')[1]}."


def userinfo(base: str, token: str, proofs: list[str], scheme: str = "DPoP") -> httpx.Response:
    headers = [("Authorization", f"{scheme} {token}")] + [("DPoP", p) for p in proofs]
    return httpx.get(f"{base}/oauth/userinfo", headers=headers)


@pytest.mark.parametrize("token_format", ["opaque", "jwt"])
def test_a_client_library_gets_bound_tokens_and_uses_them(pair: tuple[Service, Service],
                                                         token_format: str) -> None:
    a, _ = pair
    client = new_client(a, access_token_format=token_format)
    user = "dpop-" + token_format
    created = httpx.post(f"{a.url}/admin/users", headers=ADMIN,
                         json={"username": user, "password": "correct horse", "verified": True})
    assert created.status_code == 201
    oauth = library_client(a, client)

    token = oauth.client_credentials(scope="read")
    assert isinstance(token, DPoPToken) and token.token_type == "DPoP"
    for method, path in (("GET", "/oauth/userinfo"), ("POST", "/login")):
        resp = requests.request(method, f"{a.url}{path}", auth=token, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.json() | {"iat": 0, "exp": 0} == {
            "type": "client", "sub": client["client_id"], "client_id": client["client_id"],
            "scope": "read", "iat": 0, "exp": 0}
        assert resp.request.headers["Authorization"] == f"DPoP {token.access_token}"
    introspected = httpx.post(f"{a.url}/oauth/introspect", data={"token": token.access_token},
                              auth=(client["client_id"], client["client_secret"])).json()
    assert (introspected["token_type"], introspected["cnf"]) == ("DPoP", {"jkt": token.dpop_key.dpop_jkt})

    mine = oauth.resource_owner_password(username=user, password="correct horse", scope="write")
    resp = requests.get(f"{a.url}/oauth/userinfo", auth=mine, timeout=10)
    assert resp.status_code == 200 and (resp.json()["type"], resp.json()["username"]) == ("user", user)


def test_a_proof_for_another_url_method_key_or_token_is_refused(pair: tuple[Service, Service]) -> None:
    a, _ = pair
    client = new_client(a)
    key = DPoPKey()
    token, other_token = bound_token(a, key, client), bound_token(a, key, client)
    url = f"{a.url}/oauth/userinfo"
    wrong = {
        "another URL": (key.proof("GET", f"{a.url}/login", access_token=token),
                        "invalid_dpop_proof", "The DPoP proof is for another URL."),
        "another method": (key.proof("POST", url, access_token=token),
                           "invalid_dpop_proof", "The DPoP proof is for another HTTP method."),
        "another token": (key.proof("GET", url, access_token=other_token),
                          "invalid_dpop_proof", "The DPoP proof is for another access token (ath)."),
        "no ath": (key.proof("GET", url), "invalid_dpop_proof",
                   "The DPoP proof is for another access token (ath)."),
        "another key": (DPoPKey("ES384").proof("GET", url, access_token=token), "invalid_token", OTHER_KEY),
        "too old": (key.proof("GET", url, access_token=token, iat=1_700_000_000), "invalid_dpop_proof",
                    "The DPoP proof's iat is outside the accepted window."),
        "alg none": (unsigned(key.proof("GET", url, access_token=token), key), "invalid_dpop_proof",
                     "The DPoP proof's alg is not one this server accepts."),
    }
    for name, (proof, error, description) in wrong.items():
        assert refused(userinfo(a.url, token, [proof]), dpop_challenge(error, description)) == error, name
    assert refused(userinfo(a.url, token, []), dpop_challenge("invalid_dpop_proof", ONE_PROOF))
    two = [key.proof("GET", url, access_token=token), key.proof("GET", url, access_token=token)]
    assert refused(userinfo(a.url, token, two), dpop_challenge("invalid_dpop_proof", ONE_PROOF))
    # None of the refusals spent the token: the right proof still opens it.
    assert userinfo(a.url, token, [key.proof("GET", url, access_token=token)]).status_code == 200


def test_a_replayed_proof_is_refused_here_and_at_another_instance(pair: tuple[Service, Service]) -> None:
    a, b = pair
    client = new_client(a)
    key = DPoPKey("EdDSA")
    token = bound_token(a, key, client)
    url = f"{a.url}/oauth/userinfo"  # the public URL both instances answer for
    replayed = dpop_challenge("invalid_dpop_proof", REPLAYED)
    first = key.proof("GET", url, access_token=token)
    assert userinfo(a.url, token, [first]).status_code == 200
    assert refused(userinfo(a.url, token, [first]), replayed) == "invalid_dpop_proof"
    assert refused(userinfo(b.url, token, [first]), replayed) == "invalid_dpop_proof"
    # The other way round: spent at B, refused at A; a fresh proof passes at either.
    second = key.proof("GET", url, access_token=token)
    assert userinfo(b.url, token, [second]).status_code == 200
    assert refused(userinfo(a.url, token, [second]), replayed) == "invalid_dpop_proof"
    assert userinfo(a.url, token, [key.proof("GET", url, access_token=token)]).status_code == 200


def test_a_bound_token_as_bearer_and_a_bearer_token_as_dpop_are_refused(
        pair: tuple[Service, Service]) -> None:
    a, _ = pair
    client = new_client(a)
    key = DPoPKey()
    token = bound_token(a, key, client)
    proof = key.proof("GET", f"{a.url}/oauth/userinfo", access_token=token)
    # RFC 9449 §7.2: a DPoP-bound token presented as a bearer token, with its proof or not.
    assert refused(userinfo(a.url, token, [], "Bearer"), bearer_challenge(BOUND)) == "invalid_token"
    assert refused(userinfo(a.url, token, [proof], "Bearer"), bearer_challenge(BOUND)) == "invalid_token"
    resp = httpx.post(f"{a.url}/login", headers={"Authorization": f"Bearer {token}"})
    assert refused(resp, bearer_challenge(BOUND)) == "invalid_token"
    resp = httpx.post(f"{a.url}/oauth/revoke", data={"token": token},
                      headers={"Authorization": f"Bearer {token}"})
    assert refused(resp, bearer_challenge(BOUND)) == "invalid_token"
    # A bearer token with the DPoP scheme and a proof of some key: bound to none, so no proof fits.
    bearer = httpx.post(f"{a.url}/oauth/token", data={"grant_type": "client_credentials"},
                        auth=(client["client_id"], client["client_secret"])).json()["access_token"]
    proof = key.proof("GET", f"{a.url}/oauth/userinfo", access_token=bearer)
    assert refused(userinfo(a.url, bearer, [proof]), dpop_challenge("invalid_token", NOT_BOUND))
    assert userinfo(a.url, bearer, [], "Bearer").status_code == 200
    # An unknown token with a good proof: invalid_token, in the DPoP challenge.
    fake = "tsv_at_" + "A" * 70
    proof = key.proof("GET", f"{a.url}/oauth/userinfo", access_token=fake)
    assert refused(userinfo(a.url, fake, [proof]), dpop_challenge("invalid_token", INVALID))


def test_revocation_in_finapi_style_takes_a_bound_token_with_its_proof(pair: tuple[Service, Service]) -> None:
    a, b = pair
    client = new_client(a)
    key = DPoPKey("RS256")
    token = bound_token(a, key, client)
    revoke = f"{a.url}/oauth/revoke"
    proof = key.proof("POST", revoke, access_token=token)
    resp = httpx.post(revoke, data={"token": token, "token_type_hint": "access_token"},
                      headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert resp.status_code == 200, resp.text
    proof = key.proof("GET", f"{a.url}/oauth/userinfo", access_token=token)
    assert refused(userinfo(b.url, token, [proof]), dpop_challenge("invalid_token", INVALID))


def test_nonce_round_trip_at_userinfo(redis_server: RedisServer, tmp_path: Path) -> None:
    """TOKENSVC_DPOP_NONCE=1: the library's first proof has no nonce, gets 401 use_dpop_nonce
    with a DPoP-Nonce, and its retry with that nonce passes (RFC 9449 §9)."""
    svc = start(Service.deployed(redis_server.url, tmp_path / "nonce", own_issuer=True, dpop_nonce=True))
    try:
        client = new_client(svc)
        token = library_client(svc, client).client_credentials(scope="read")
        assert isinstance(token, DPoPToken)
        key: LibraryKey = token.dpop_key
        assert key.as_nonce is not None and key.rs_nonce is None  # the token endpoint's own round trip
        resp = requests.get(f"{svc.url}/oauth/userinfo", auth=token, timeout=10)
        assert resp.status_code == 200, resp.text
        assert key.rs_nonce is not None and resp.json()["sub"] == client["client_id"]

        # The same by hand: what the 401 says, and that the nonce it gives is the one to use.
        mine = DPoPKey()
        bound = bound_token_with_nonce(svc, mine, client)
        url = f"{svc.url}/oauth/userinfo"
        resp = userinfo(svc.url, bound, [mine.proof("GET", url, access_token=bound)])
        assert refused(resp, dpop_challenge("use_dpop_nonce", "The authorization server requires a DPoP "
                                            "nonce in the proof.")) == "use_dpop_nonce"
        nonce = resp.headers["dpop-nonce"]
        resp = userinfo(svc.url, bound, [mine.proof("GET", url, access_token=bound, nonce="made-up")])
        assert refused(resp, dpop_challenge("use_dpop_nonce", "The authorization server requires a DPoP "
                                            "nonce in the proof.")) == "use_dpop_nonce"
        resp = userinfo(svc.url, bound, [mine.proof("GET", url, access_token=bound, nonce=nonce)])
        assert resp.status_code == 200 and resp.headers["dpop-nonce"], resp.text
    finally:
        svc.stop()


def bound_token_with_nonce(svc: Service, key: DPoPKey, client: dict[str, Any]) -> str:
    url = f"{svc.url}/oauth/token"
    creds = (client["client_id"], client["client_secret"])
    first = httpx.post(url, headers={"DPoP": key.proof("POST", url)},
                       data={"grant_type": "client_credentials"}, auth=creds)
    assert first.status_code == 400 and first.json()["error"] == "use_dpop_nonce"
    resp = httpx.post(url, headers={"DPoP": key.proof("POST", url, nonce=first.headers["dpop-nonce"])},
                      data={"grant_type": "client_credentials"}, auth=creds)
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def test_the_bearer_path_is_untouched(pair: tuple[Service, Service]) -> None:
    """A plain bearer token works as before on both instances, with no DPoP header."""
    a, b = pair
    client = new_client(a)
    bearer = httpx.post(f"{a.url}/oauth/token", data={"grant_type": "client_credentials"},
                        auth=(client["client_id"], client["client_secret"])).json()
    assert bearer["token_type"] == "Bearer"
    for svc in (a, b):
        resp = userinfo(svc.url, bearer["access_token"], [], "Bearer")
        assert resp.status_code == 200 and "dpop-nonce" not in resp.headers
