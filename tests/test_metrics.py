"""Prometheus metrics: exact counts for what the service did, bounded labels, on/off, ports.

In-process apps share prometheus-client's default registry, so every assertion here is on the
change between two scrapes. The multi-worker scrape against a real Prometheus is in
tests/test_prometheus.py; `tokensvc serve --metrics-port` is tested here with a real process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import cc_token, new_client, new_user, password_token
from tests.support.apps import AppFactory
from tests.support.config import ADMIN
from tests.support.metrics import delta, parse, scrape, scrape_until, value
from tests.support.redis_servers import RedisServer
from tests.support.service import Service
from tokensvc import metrics

ISSUED = "tokensvc_tokens_issued_total"

async def test_token_traffic_is_counted_exactly(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    await new_user(http)
    await cc_token(http, client)  # the secret is verified once with argon2 ...
    before = await scrape(http)
    for _ in range(10):  # ... and then comes from the cache
        assert (await cc_token(http, client)).status_code == 200
    for _ in range(3):
        assert (await password_token(http, client)).status_code == 200
    bad = await http.post("/oauth/token", data={"grant_type": "client_credentials",
                                                "client_id": client["client_id"],
                                                "client_secret": "wrong"})
    assert bad.status_code == 401
    unsupported = await http.post("/oauth/token", data={"grant_type": "implicit"},
                                  auth=(client["client_id"], client["client_secret"]))
    assert unsupported.status_code == 400
    after = await scrape(http)

    assert delta(before, after, "tokensvc_tokens_issued_total", grant_type="client_credentials") == 10
    assert delta(before, after, "tokensvc_tokens_issued_total", grant_type="password") == 3
    assert delta(before, after, "tokensvc_token_errors_total", error="invalid_client") == 1
    assert delta(before, after, "tokensvc_token_errors_total", error="unsupported_grant_type") == 1
    assert delta(before, after, "tokensvc_client_auth_failures_total") == 1
    # argon2 ran for the three passwords and the one wrong secret; the right secret, 10 + 3
    # times (the password grant authenticates the client too), came from the cache.
    assert delta(before, after, "tokensvc_argon2_verifications_total", kind="password") == 3
    assert delta(before, after, "tokensvc_argon2_verifications_total", kind="client_secret") == 1
    assert delta(before, after, "tokensvc_secret_cache_hits_total") == 13
    assert delta(before, after, "tokensvc_argon2_duration_seconds_count", kind="password") == 3
    # HTTP: by route template and status class; the latency histogram counts the same requests.
    assert delta(before, after, "tokensvc_http_requests_total", route="/oauth/token", method="POST",
                 status="2xx") == 13
    assert delta(before, after, "tokensvc_http_requests_total", route="/oauth/token", method="POST",
                 status="4xx") == 2
    assert delta(before, after, "tokensvc_http_request_duration_seconds_count",
                 route="/oauth/token", method="POST") == 15
    # Redis: every store call is timed by operation (one EVALSHA or SET per token here).
    assert delta(before, after, "tokensvc_redis_operation_duration_seconds_count",
                 operation="put_token") == 10
    assert value(after, "tokensvc_http_requests_in_flight") == 1  # the scrape itself
    assert value(after, "tokensvc_build_info") == 1


async def test_no_unbounded_label_values(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    await new_user(http, username="someone-secretive")
    token = (await password_token(http, client, username="someone-secretive")).json()
    await http.get(f"/admin/clients/{client['client_id']}", headers=ADMIN)
    await http.get("/no/such/path/abc123")
    body = (await http.get("/metrics")).text
    for secret in (client["client_id"], client["client_secret"], token["access_token"],
                   token["refresh_token"], "someone-secretive", "abc123"):
        assert secret not in body
    samples = parse(body)
    # A path with an id is counted under its template; an unknown path as "unmatched".
    assert value(samples, "tokensvc_http_requests_total", route="/admin/clients/{client_id}") >= 1
    assert value(samples, "tokensvc_http_requests_total", route="unmatched", status="4xx") >= 1
    routes = {dict(ls)["route"] for n, ls in samples if n == "tokensvc_http_requests_total"}
    assert all(r == "unmatched" or r.startswith("/") and "abc123" not in r for r in routes)


async def test_client_label_is_opt_in_and_bounded(app_factory: AppFactory) -> None:
    metrics._clients_named.clear()
    async with app_factory(metrics_client_label=True) as http:
        client = await new_client(http)
        assert (await cc_token(http, client)).status_code == 200
        samples = await scrape(http)
        assert value(samples, "tokensvc_tokens_issued_total", client=client["client_id"]) == 1
        # Past the limit, clients are folded into "other".
        metrics._clients_named.update(f"filler-{i}" for i in range(metrics.CLIENT_LABEL_LIMIT))
        late = await new_client(http)
        assert (await cc_token(http, late)).status_code == 200
        samples = await scrape(http)
        assert value(samples, "tokensvc_tokens_issued_total", client=late["client_id"]) == 0
        assert value(samples, "tokensvc_tokens_issued_total", client="other") >= 1
    metrics._clients_named.clear()


async def test_revocations_lockouts_codes_and_reuse(app_factory: AppFactory) -> None:
    async with app_factory(max_user_login_attempts=2) as http:
        client = await new_client(http)
        await new_user(http)
        before = await scrape(http)
        auth = (client["client_id"], client["client_secret"])
        first = (await password_token(http, client)).json()
        second = (await password_token(http, client)).json()
        await http.post("/oauth/revoke", data={"token": first["access_token"],
                                               "token_type_hint": "access_token"}, auth=auth)
        await http.post("/oauth/revoke", data={"token": second["refresh_token"]}, auth=auth)
        # A rotated refresh token presented again is reuse.
        third = (await password_token(http, client)).json()
        rotate = {"grant_type": "refresh_token", "refresh_token": third["refresh_token"]}
        assert (await http.post("/oauth/token", data=rotate, auth=auth)).status_code == 200
        assert (await http.post("/oauth/token", data=rotate, auth=auth)).status_code == 400
        # Two wrong passwords lock alice (limit 2); a third is refused as locked, not counted again.
        for _ in range(3):
            await password_token(http, client, password="wrong horse")
        after = await scrape(http)
    assert delta(before, after, "tokensvc_revocations_total", hint="access_token") == 1
    assert delta(before, after, "tokensvc_revocations_total", hint="none") == 1
    assert delta(before, after, "tokensvc_refresh_reuse_detected_total") == 1
    assert delta(before, after, "tokensvc_lockouts_total") == 1
    assert delta(before, after, "tokensvc_token_errors_total", error="user_locked") == 2
    assert delta(before, after, "tokensvc_tokens_issued_total", grant_type="refresh_token") == 1


async def test_authorization_codes_are_counted(http: httpx.AsyncClient) -> None:
    from tests.support.authflow import get_code, redeem, web_app

    await new_user(http)
    app = await web_app(http)
    before = await scrape(http)
    code = (await get_code(http, app, code_challenge=None, code_challenge_method=None))["code"]
    assert (await redeem(http, app, code, code_verifier=None)).status_code == 200
    assert (await redeem(http, app, code, code_verifier=None)).status_code == 400
    after = await scrape(http)
    for event in ("issued", "redeemed", "replayed"):
        assert delta(before, after, "tokensvc_authorization_codes_total", event=event) == 1, event
    assert delta(before, after, "tokensvc_tokens_issued_total", grant_type="authorization_code") == 1


async def test_redis_errors_are_counted(app_factory: AppFactory, redis_server: RedisServer) -> None:
    async with app_factory() as http:
        client = await new_client(http)
        assert (await cc_token(http, client)).status_code == 200
        before = await scrape(http)
        redis_server.stop()
        try:
            resp = await cc_token(http, client)
        finally:
            redis_server.start()
        assert resp.status_code == 503
        after = await scrape(http)
    assert delta(before, after, "tokensvc_redis_errors_total", operation="put_token") == 1
    assert delta(before, after, "tokensvc_token_errors_total", error="temporarily_unavailable") == 1


async def test_metrics_off_records_nothing(app_factory: AppFactory) -> None:
    async with app_factory() as on:
        before = await scrape(on)
    async with app_factory(metrics=False) as http:
        assert (await http.get("/metrics")).status_code == 404
        client = await new_client(http)
        for _ in range(3):
            assert (await cc_token(http, client)).status_code == 200
    async with app_factory() as on:
        after = await scrape(on)
    assert delta(before, after, "tokensvc_tokens_issued_total") == 0
    assert delta(before, after, "tokensvc_http_requests_total", route="/oauth/token") == 0
    assert delta(before, after, "tokensvc_redis_operation_duration_seconds_count",
                 operation="put_token") == 0


async def test_a_metrics_port_takes_metrics_off_the_service_port(app_factory: AppFactory) -> None:
    async with app_factory(metrics_port=9999) as http:
        assert (await http.get("/metrics")).status_code == 404


@pytest.fixture
def served(redis_server: RedisServer, tmp_path: Path) -> Iterator[Service]:
    """A real `tokensvc serve --workers 2 --metrics-port P`, its data in tmp_path."""
    svc = Service.deployed(redis_server.url, tmp_path, workers=2, metrics_port=True)
    try:
        svc.start().wait_ready()
        yield svc
    finally:
        svc.stop()


def workers_of(pid: int) -> set[int]:
    """The worker processes uvicorn's supervisor runs (its spawned children, not the tracker)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    workers = set()
    for child in found.stdout.split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.add(int(child))
    return workers


def test_serve_with_workers_and_a_metrics_port(served: Service) -> None:
    url, metrics_url, data_dir = served.url, served.metrics_url, served.workdir
    created = httpx.post(f"{url}/admin/clients", headers=ADMIN, json={"name": "m"})
    assert created.status_code == 201, created.text
    client = created.json()
    auth = (client["client_id"], client["client_secret"])
    # New connections spread the requests over both workers.
    for _ in range(30):
        resp = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials"}, auth=auth)
        assert resp.status_code == 200, resp.text
    assert httpx.get(f"{url}/metrics").status_code == 404
    samples = scrape_until(metrics_url, ISSUED, 30)
    assert value(samples, "tokensvc_tokens_issued_total") == 30
    # The secret's verifier was written when the client was made: no worker ran argon2 for it,
    # every request was answered from the verifier.
    assert value(samples, "tokensvc_argon2_verifications_total", kind="client_secret") == 0
    assert value(samples, "tokensvc_secret_cache_hits_total") == 30
    metrics_dir = data_dir / f"metrics-{url.rsplit(':', 1)[1]}"
    files = {re.sub(r"_\d+\.db$", "", p.name) for p in metrics_dir.iterdir()}
    assert {"counter", "histogram", "gauge_livesum"} <= files


def test_a_restarted_worker_loses_no_counts(served: Service) -> None:
    assert served.proc is not None
    url, metrics_url, pid = served.url, served.metrics_url, served.proc.pid
    client = httpx.post(f"{url}/admin/clients", headers=ADMIN, json={"name": "m"}).json()
    auth = (client["client_id"], client["client_secret"])
    for _ in range(20):
        assert httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials"},
                          auth=auth).status_code == 200
    assert value(scrape_until(metrics_url, ISSUED, 20), ISSUED) == 20
    workers = workers_of(pid)
    assert len(workers) == 2, workers
    # Stop one worker; the supervisor starts another in its place.
    os.kill(next(iter(workers)), signal.SIGTERM)
    deadline = time.monotonic() + 20
    while (len(workers_of(pid)) != 2 or workers_of(pid) == workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers_of(pid)) == 2 and workers_of(pid) != workers
    for _ in range(10):
        assert httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials"},
                          auth=auth).status_code == 200
    assert value(scrape_until(metrics_url, ISSUED, 30), ISSUED) == 30
