"""Hostile input: schemathesis against a real `tokensvc serve`, driven by its own /openapi.json.

Every operation of the document gets a bounded, derandomized set of generated requests (valid
and invalid bodies, parameters, headers), sent over real HTTP to a real process on its own
redis-server. Each answer must not be a 5xx and must match the document: a documented status,
a documented content type, a body matching the documented schema and documented headers.
The admin key goes as the bearer to /admin and the registration endpoints, so their validation
runs too, not just the 401; elsewhere schemathesis sends what the security schemes allow.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.config import ADMIN
from tests.support.redis_servers import RedisServer
from tests.support.service import Service
from tokensvc.http.openapi import JSON, document

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
# Paths that take the admin key as their bearer (registration is open to it too).
MAX_EXAMPLES = 25
ADMIN_PATHS = ("/admin/clients", "/admin/users", "/oauth/register", "/api/client")


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `tokensvc serve` (one worker) on a private redis-server of its own, so no other
    test's FLUSHALL pulls the data from under it."""
    work = tmp_path_factory.mktemp("schemathesis")
    redis = RedisServer(work / "redis")
    redis.start()
    svc = Service.deployed(redis.url, work / "var", own_issuer=True, log_level="warning")
    try:
        svc.start().wait_ready()
        # Something to find: a client and a user, so lookups by id can hit as well as miss.
        httpx.post(f"{svc.url}/admin/clients", json={"name": "fuzz", "scopes": ["read"]},
                   headers=ADMIN).raise_for_status()
        yield svc.url
    finally:
        svc.stop()
        redis.stop()
        # A 5xx leaves its traceback in the log; show it with the failure.
        tail = svc.output[-4000:]
        if "Traceback" in tail:
            print(tail, file=sys.stderr)


# /metrics: Prometheus exposition text whose content depends on everything else the process did;
# the document can only say "text/plain" with a string body, and generated input has nothing to
# vary (no parameters, no body). Its counts are tested in tests/test_metrics.py.
EXCLUDED = {("/metrics", "get")}

def _operations() -> list[tuple[str, str, GenerationMode]]:
    """Every operation with valid input; those with a JSON or a typed form body, with invalid
    input too. The others have nothing that can be made invalid: their only parameters are
    strings in the path (any string is one) and their forms are untyped objects."""
    out = []
    for path, item in document("http://testserver")["paths"].items():
        for method, op in item.items():
            if method not in {"get", "post", "put", "patch", "delete"} or (path, method) in EXCLUDED:
                continue
            out.append((path, method, GenerationMode.POSITIVE))
            content = op.get("requestBody", {}).get("content", {})
            if any(JSON in media or "$ref" in spec["schema"] for media, spec in content.items()):
                out.append((path, method, GenerationMode.NEGATIVE))
    return sorted(out)


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def api(live_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS,
                         ids=[f"{m.upper()} {p} {g.value}" for p, m, g in OPERATIONS])
def test_every_operation_survives_generated_input(api: Any, path: str, method: str,
                                                   mode: GenerationMode) -> None:
    operation = api[path][method]
    headers = ADMIN if path.startswith(ADMIN_PATHS) else None

    @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)

    run()
