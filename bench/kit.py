"""The resource-server kit's scenarios: load a small protected API (bench/resource_api.py)
that checks every request's bearer token with `tokensvc.resource`, and count the CPU of every
process that does the checking.

- `resource_jwt`: JWT access tokens (RFC 9068) issued by the running tokensvc for the API's
  audience, verified locally by the kit (the JWKS fetched once, at the API's start);
- `resource_introspection`: opaque tokens for the same audience, introspected on every
  request (the kit's `cache_ttl=0`: no cache), the API authenticating as a client of its own
  with `"introspection": "all"`.

Each connection sends its own token (one token per connection), so no two requests in flight
carry the same token: neither a cache nor the kit's sharing of concurrent checks of one token
can hide work. The API runs under uvicorn, one worker, pinned like the service.

"Per core" is requests per CPU-second summed over every process doing the work: the API for
local verification; the API, tokensvc and redis-server for introspection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.admin import Http, SetupError
from bench.http import Reply, build_request, form_post, host_port
from bench.loadgen import Request, fetch_all
from bench.scenarios import RESOURCE_SCENARIOS, Setup, Workload
from bench.services import Proc, StartError, start_api

# The API's audience: tokens are asked for it (`resource=`), and the kit checks `aud` against it.
AUDIENCE = "https://api.bench.example/me"
# The processes whose CPU does each scenario's work (names of the run's `cpu` figures).
WORKING: dict[str, tuple[str, ...]] = {
    "resource_jwt": ("api",),
    "resource_introspection": ("api", "server", "redis"),
}
FORMATS = {"resource_jwt": "jwt", "resource_introspection": "opaque"}
CHECKED_BY = {"resource_jwt": "jwt", "resource_introspection": "introspection"}

__all__ = ["AUDIENCE", "RESOURCE_SCENARIOS", "WORKING", "PerConnectionSource", "api_stats",
           "per_core", "prepare", "start_api"]


class PerConnectionSource:
    """Connection i always sends request i (modulo their number): with one request per
    connection, no two requests in flight carry the same token."""

    def __init__(self, requests: list[bytes], label: str) -> None:
        if not requests:
            raise ValueError("a per-connection source needs at least one request")
        self.requests = requests
        self.label = label

    def next(self, conn: int) -> Request | None:
        return self.requests[conn % len(self.requests)], self.label

    def reply(self, conn: int, label: str, reply: Reply) -> None:
        pass


def api_stats(api: Proc) -> dict[str, float]:
    """The kit's counters in the API (introspection requests, JWKS fetches)."""
    http = Http(api.url)
    try:
        answer = http.request("GET", "/stats")
    finally:
        http.close()
    if answer.status != 200:
        raise StartError(f"the protected API's /stats answered {answer.status}")
    stats: dict[str, float] = answer.json()
    return stats


async def prepare(setup: Setup, scenario: str, issuer: str, workdir: Path,
                  cpus: str | None) -> tuple[Workload, Proc]:
    """The clients (through tokensvc's admin API), the protected API, and one token per
    connection for the API's audience; returns the workload aimed at the API, and the API."""
    if scenario not in RESOURCE_SCENARIOS:
        raise ValueError(f"not a resource-server scenario: {scenario!r}")
    metadata = setup.http.request("GET", "/.well-known/oauth-authorization-server")
    if metadata.status != 200 or metadata.json().get("issuer") != issuer:
        raise SetupError(f"the service's metadata does not name {issuer} as its issuer "
                         "(the resource scenarios need the issuer to be where the service listens)")
    token_format = FORMATS[scenario]
    caller = setup.http.create_client({
        "name": f"bench {setup.run_id} {scenario} caller", "scopes": ["read"],
        "grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post",
        "reuse_tokens": False, "access_token_format": token_format})
    setup.clients.append(caller["client_id"])
    api_client: dict[str, Any] | None = None
    if scenario == "resource_introspection":
        api_client = setup.http.create_client({
            "name": f"bench {setup.run_id} protected API", "scopes": [],
            "grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_basic",
            "introspection": "all"})
        setup.clients.append(api_client["client_id"])
    api = start_api(workdir, cpus, issuer, AUDIENCE, api_client, cache_ttl=0)
    try:
        grant = form_post("/oauth/token", setup.hostport,
                          {"grant_type": "client_credentials", "scope": "read", "resource": AUDIENCE,
                           **setup.creds(caller)})
        replies = await setup.fetch([grant] * setup.connections,
                                    f"{token_format} access tokens for {AUDIENCE}")
        tokens = [json.loads(r.body)["access_token"] for r in replies]
        if len(set(tokens)) != len(tokens):
            raise SetupError("the service handed out the same token twice (is reuse on?)")
        host, port = host_port(api.url)
        reqs = [build_request("GET", "/me", f"{host}:{port}", headers={"Authorization": f"Bearer {t}"})
                for t in tokens]
        await _check(host, port, reqs[0], caller["client_id"], CHECKED_BY[scenario])
    except BaseException:
        api.stop()
        raise
    info = {"tokens": len(tokens), "token_format": token_format, "audience": AUDIENCE,
            "checked_by": CHECKED_BY[scenario], "kit_cache_ttl": 0, "api_url": api.url,
            "one_token_per_connection": True, "working_processes": list(WORKING[scenario])}
    return Workload(scenario, PerConnectionSource(reqs, scenario), "cycle", reqs, info=info), api


async def _check(host: str, port: int, request: bytes, sub: str, checked_by: str) -> None:
    """One request before the load: the API accepts the token and checked it the right way."""
    [reply] = await fetch_all(host, port, [request], connections=1)
    doc = json.loads(reply.body) if reply.status == 200 else {}
    if doc != {"sub": sub, "checked_by": checked_by}:
        raise SetupError(f"the protected API refused a prepared token or checked it otherwise: "
                         f"{reply.status} {reply.body[:300]!r}")


def per_core(scenario: str, throughput: float, cpu: dict[str, float],
             before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, Any]:
    """The run's figures for the kit: requests per CPU-second of the working processes (the
    throughput of the measured window over their CPU in cores across the whole load, warm-up
    included, at the same load), and the kit's counters over the load (`served`: requests the
    API answered, warm-up included)."""
    working = WORKING[scenario]
    cores = sum(cpu.get(name, 0.0) for name in working)
    introspections = after.get("introspections", 0.0) - before.get("introspections", 0.0)
    served = after.get("served", 0.0) - before.get("served", 0.0)
    return {
        "working_processes": list(working),
        "cpu_cores": {name: cpu.get(name) for name in working},
        "cpu_cores_total": cores,
        "requests_per_cpu_second": throughput / cores if cores > 0 else None,
        "served": served,
        "introspections": introspections,
        "introspections_per_request": introspections / served if served else None,
        "jwks_fetches": after.get("jwks_fetches"),
        "requests_measured": requests,
    }
