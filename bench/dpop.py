"""DPoP (RFC 9449) for the bench: proofs signed by the load generator before the timed phase,
and the server-side cost of checking one (`python -m bench.dpop`).

A proof is good once (its `jti`) and for 60 s after its `iat`, so the `client_credentials_dpop`
pool holds one proof per request, all signed in set-up, just before the generator's ceiling,
warm-up and timed phase; signing them there keeps the generator's CPU out of the measured
figure. `MAX_RUN_SECONDS` bounds warm-up plus duration so the last proof is still in its window
when it is sent.
"""

from __future__ import annotations

import functools
import secrets
import statistics
import sys
import time
import timeit
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from bench.admin import Http, SetupError
from bench.http import FORM, build_request

# The service accepts a proof whose iat is up to 60 s old; set-up, the generator's ceiling (3 s)
# and a margin come out of that.
MAX_RUN_SECONDS = 45.0
ALGS = ("ES256", "ES384", "EdDSA", "RS256", "PS256")


class ProofKey:
    """A client's DPoP key, signing with PyJWT (as a client library would)."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        algo: Any
        if alg == "EdDSA":
            self.private: Any = ed25519.Ed25519PrivateKey.generate()
            algo = OKPAlgorithm
        elif alg in ("RS256", "PS256"):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            algo = RSAAlgorithm
        else:
            self.private = ec.generate_private_key(ec.SECP384R1() if alg == "ES384" else ec.SECP256R1())
            algo = ECAlgorithm
        self.header = {"typ": "dpop+jwt", "jwk": algo.to_jwk(self.private.public_key(), as_dict=True)}

    def proof(self, method: str, url: str, iat: int, **claims: str) -> str:
        payload = {"jti": secrets.token_urlsafe(12), "htm": method, "htu": url, "iat": iat, **claims}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=self.header)


def token_endpoint(http: Http) -> str:
    """The URL proofs for the token endpoint name (`htu`): the service's own, from its metadata."""
    metadata = http.request("GET", "/.well-known/oauth-authorization-server")
    endpoint = metadata.json().get("token_endpoint") if metadata.status == 200 else None
    if not isinstance(endpoint, str):
        raise SetupError(f"no token_endpoint in the service's metadata ({metadata.status})")
    return endpoint


def token_requests(hostport: str, endpoint: str, creds: dict[str, str], n: int,
                   run_seconds: float) -> tuple[list[bytes], dict[str, Any]]:
    """`n` client_credentials requests, each with a proof of its own (one key, as one client)."""
    if run_seconds > MAX_RUN_SECONDS:
        raise SetupError(f"DPoP proofs are good for 60 s after they are signed: keep --warmup plus "
                         f"--duration under {MAX_RUN_SECONDS:.0f} s (got {run_seconds:.0f})")
    key = ProofKey()
    body = urlencode({"grant_type": "client_credentials", **creds}).encode("ascii")
    started = time.perf_counter()
    iat = int(time.time())
    reqs = [build_request("POST", "/oauth/token", hostport, body=body,
                          headers={"Content-Type": FORM, "DPoP": key.proof("POST", endpoint, iat)})
            for _ in range(n)]
    return reqs, {"proofs": n, "proof_alg": key.alg,
                  "signing_seconds": round(time.perf_counter() - started, 2)}


def check_costs(repeat: int = 5, number: int = 400) -> dict[str, float]:
    """Microseconds per `tokensvc.dpop.check` of a token-endpoint proof, by algorithm (the
    median of `repeat` rounds): the CPU a DPoP request adds before its SET NX round trip."""
    from tokensvc import dpop

    url = "http://127.0.0.1:8000/oauth/token"
    costs: dict[str, float] = {}
    for alg in ALGS:
        key = ProofKey(alg)
        proof = key.proof("POST", url, int(time.time()))
        dpop.check(proof, "POST", url)
        once = functools.partial(dpop.check, proof, "POST", url)
        rounds = timeit.repeat(once, repeat=repeat, number=number)
        costs[alg] = round(statistics.median(rounds) / number * 1e6, 1)
    return costs


if __name__ == "__main__":
    for alg, us in check_costs().items():
        sys.stdout.write(f"{alg:6} {us:8.1f} us per dpop.check\n")
