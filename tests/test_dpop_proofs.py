"""RFC 9449 §4.3 proof checks of tokensvc.dpop, with proofs signed by PyJWT as a client would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.dpop import DPoPKey
from tokensvc import dpop

URL = "https://as.example/oauth/token"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "RS256", "PS256"])
def test_a_proof_of_each_algorithm_gives_its_keys_thumbprint(alg: str) -> None:
    key = DPoPKey(alg)
    proof = dpop.check(key.proof("POST", URL), "POST", URL)
    assert proof.jkt == key.jkt
    assert len(proof.jkt) == 43


def test_the_rfc_7638_example_thumbprint() -> None:
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
                "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Q"
                "vzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQF"
                "h6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert dpop.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_the_proof_binds_method_and_url_but_not_query_or_case_of_host() -> None:
    key = DPoPKey()
    assert dpop.check(key.proof("POST", "HTTPS://AS.example:443/oauth/token?x=1#f"), "POST", URL)
    with pytest.raises(dpop.ProofError, match="another HTTP method"):
        dpop.check(key.proof("GET", URL), "POST", URL)
    with pytest.raises(dpop.ProofError, match="another URL"):
        dpop.check(key.proof("POST", "https://as.example/oauth/introspect"), "POST", URL)
    with pytest.raises(dpop.ProofError, match="another URL"):
        dpop.check(key.proof("POST", "https://as.example:8443/oauth/token"), "POST", URL)


def test_iat_outside_the_window_is_refused() -> None:
    key = DPoPKey()
    now = time.time()
    assert dpop.check(key.proof("POST", URL, iat=now - dpop.IAT_PAST_S + 2), "POST", URL)
    for iat in (now - dpop.IAT_PAST_S - 5, now + dpop.IAT_FUTURE_S + 5):
        with pytest.raises(dpop.ProofError, match="iat"):
            dpop.check(key.proof("POST", URL, iat=iat), "POST", URL)
    with pytest.raises(dpop.ProofError, match="numeric iat"):
        dpop.check(key.proof("POST", URL, claims={"iat": "soon"}), "POST", URL)


def test_ath_must_match_the_presented_token() -> None:
    key = DPoPKey()
    good = key.proof("GET", URL, access_token="tok-1")
    assert dpop.check(good, "GET", URL, access_token="tok-1")
    with pytest.raises(dpop.ProofError, match="ath"):
        dpop.check(good, "GET", URL, access_token="tok-2")
    with pytest.raises(dpop.ProofError, match="ath"):
        dpop.check(key.proof("GET", URL), "GET", URL, access_token="tok-1")


def _unsigned(header: dict[str, object], claims: dict[str, object]) -> str:
    enc = [base64.urlsafe_b64encode(orjson.dumps(p)).rstrip(b"=").decode() for p in (header, claims)]
    return ".".join(enc) + "."


def test_none_hmac_and_key_mismatches_are_refused() -> None:
    key = DPoPKey()
    claims = {"jti": "j", "htm": "POST", "htu": URL, "iat": int(time.time())}
    with pytest.raises(dpop.ProofError, match="alg"):
        dpop.check(_unsigned({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}, claims), "POST", URL)
    # HS256 keyed with the public key's PEM: the classic confusion.
    pem = key.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    header = orjson.dumps({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk})
    signing_input = ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode()
                             for p in (header, orjson.dumps(claims)))
    mac = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    with pytest.raises(dpop.ProofError, match="alg"):
        dpop.check(signing_input + "." + mac.rstrip(b"=").decode(), "POST", URL)
    with pytest.raises(dpop.ProofError, match="does not fit"):
        dpop.check(key.proof("POST", URL, headers={"jwk": DPoPKey("EdDSA").jwk}), "POST", URL)
    with pytest.raises(dpop.ProofError, match="signature"):
        dpop.check(key.proof("POST", URL, headers={"jwk": DPoPKey().jwk}), "POST", URL)
    assert isinstance(key.private, ec.EllipticCurvePrivateKey)
    private_jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.private, as_dict=True)
    with pytest.raises(dpop.ProofError, match="public key"):
        dpop.check(key.proof("POST", URL, headers={"jwk": private_jwk}), "POST", URL)
    with pytest.raises(dpop.ProofError, match="typ"):
        dpop.check(key.proof("POST", URL, headers={"typ": "JWT"}), "POST", URL)
    with pytest.raises(dpop.ProofError, match="jti"):
        dpop.check(key.proof("POST", URL, jti="x" * 300), "POST", URL)
    for bad in ("", "a.b", "x" * (dpop.MAX_PROOF_LENGTH + 1)):
        with pytest.raises(dpop.ProofError):
            dpop.check(bad, "POST", URL)


def test_nonces_are_accepted_for_two_windows_on_any_instance_with_the_key() -> None:
    one, other, stranger = dpop.Nonces(b"k" * 32), dpop.Nonces(b"k" * 32), dpop.Nonces(b"z" * 32)
    now = 1_000_000.0
    nonce = one.current(now)
    assert other.valid(nonce, now) and other.valid(nonce, now + 60)
    assert not other.valid(nonce, now + 120)
    assert not stranger.valid(nonce, now)
    key = DPoPKey()
    with pytest.raises(dpop.NonceRequired):
        dpop.check(key.proof("POST", URL), "POST", URL, nonces=one)
    with pytest.raises(dpop.NonceRequired):
        dpop.check(key.proof("POST", URL, nonce=stranger.current()), "POST", URL, nonces=one)
    assert dpop.check(key.proof("POST", URL, nonce=one.current()), "POST", URL, nonces=other)


def test_the_replay_key_depends_on_key_and_jti() -> None:
    a, b = dpop.Proof("k1", "j"), dpop.Proof("k2", "j")
    assert a.replay_key() != b.replay_key()
    assert a.replay_key() == dpop.Proof("k1", "j").replay_key()


def test_a_known_header_with_another_keys_signature_is_refused() -> None:
    """The key built from a header is kept for the next proof with that header: the signature
    is still checked against it, so a forger copying a client's header gains nothing."""
    owner, forger = DPoPKey(), DPoPKey()
    assert dpop.check(owner.proof("POST", URL), "POST", URL).jkt == owner.jkt
    forged = forger.proof("POST", URL, headers={"jwk": owner.jwk})
    assert forged.partition(".")[0] == owner.proof("POST", URL).partition(".")[0]
    with pytest.raises(dpop.ProofError, match="signature"):
        dpop.check(forged, "POST", URL)
