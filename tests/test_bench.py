"""The bench tool itself (bench/): set-up against a live tokensvc, the prebuilt requests of
every scenario, the result format, compare, the response parser, open-loop accounting, wrk
script and output handling, the CLI. No assertion here is about speed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest

from bench.admin import Http, metric_values, secret_counters
from bench.fleet import (
    analyse_cold_start,
    analyse_scale_out,
    cold_start_goals,
    first_share_window,
    time_to_fraction,
)
from bench.http import ProtocolError, build_request, form_post, parse_response, with_connection_close
from bench.loadgen import (
    ChainSource,
    ConnectionCloseSource,
    CycleSource,
    Load,
    LoadConfig,
    MixSource,
    PoolSource,
    Source,
    Trace,
    fetch_all,
    json_field,
    oauth_error,
    run_load,
)
from bench.results import REQUIRED_KEYS, compare_table, load_result, summary_table, write_result
from bench.runner import RunOptions, check_options, effective_settings, execute, run_argv
from bench.scenarios import MIX_DEFAULT, SERVICE_SCENARIOS, Setup, reference_workload
from bench.services import (
    Proc,
    parse_cpus,
    service_settings,
    start_redis,
    start_reference,
    start_tokensvc,
)
from bench.stats import Histogram, latency_summary, percentile
from bench.tls import make_certificate
from bench.wrk import lua_script, parse_output

ROOT = Path(__file__).resolve().parent.parent
FAST = {"password_time_cost": "1", "password_memory_cost": "1024"}


@pytest.fixture(scope="module")
def service() -> Iterator[Proc]:
    """A real `tokensvc serve` (one worker) on its own redis-server, started by the bench."""
    with tempfile.TemporaryDirectory(prefix="bench-test-") as tmp:
        work = Path(tmp)
        redis = start_redis(work, None)
        try:
            svc = start_tokensvc(work, redis.url, 1, None, service_settings(FAST))
            try:
                yield svc
            finally:
                svc.stop()
        finally:
            redis.stop()


@contextlib.asynccontextmanager
async def setup_for(svc: Proc, **kw: Any) -> AsyncIterator[Setup]:
    http = Http(svc.url, svc.extra["admin_key"])
    host, port = http.host, http.port
    values: dict[str, Any] = {"connections": 4, "users": 4, "pool": 12, "pool_seconds": 1.0, "rate": None,
                              "fleet_size": 5}
    values.update(kw)
    setup = Setup(http, host, port, **values)
    try:
        yield setup
    finally:
        http.close()


# -- scenarios against a live service ----------------------------------------------------


@pytest.mark.parametrize("scenario", [s for s in SERVICE_SCENARIOS if s != "mix"])
async def test_each_scenario_prepares_requests_that_tokensvc_answers_with_2xx(
        service: Proc, scenario: str) -> None:
    async with setup_for(service) as setup:
        workload = await setup.prepare(scenario)
        # what the timed phase would send first: one per connection, and a few more (a chain
        # has one request per connection until its answer arrives)
        sent: list[tuple[bytes, str]] = []
        source = workload.source
        for i in range(4 if workload.kind == "chain" else 8):
            item = source.next(i % 4)
            assert item is not None
            sent.append(item)
        replies = await fetch_all(setup.host, setup.port, [req for req, _ in sent], connections=4)
        for (_, label), reply in zip(sent, replies, strict=True):
            assert 200 <= reply.status < 300, (label, reply.status, reply.body[:300])
            source.reply(0, label, reply)
        if scenario == "introspection":
            assert all(orjson.loads(r.body)["active"] is True for r in replies)
        if scenario in ("client_credentials", "client_credentials_reuse", "password", "refresh",
                        "authorization_code"):
            assert all("access_token" in orjson.loads(r.body) for r in replies)
        if scenario == "client_credentials_reuse":
            assert len({orjson.loads(r.body)["access_token"] for r in replies}) == 1
        if scenario == "client_credentials":
            assert len({orjson.loads(r.body)["access_token"] for r in replies}) == len(replies)
        if scenario == "client_credentials_dpop":
            # each request its own proof, each answer a token bound to the generator's key
            assert all(orjson.loads(r.body)["token_type"] == "DPoP" for r in replies)
            assert workload.info["proofs"] == len(workload.requests)
            assert len({req.split(b"DPoP: ")[1].split(b"\r\n")[0] for req, _ in sent}) == len(sent)


async def test_refresh_chains_carry_each_answer_into_the_next_request(service: Proc) -> None:
    async with setup_for(service, connections=2) as setup:
        workload = await setup.prepare("refresh")
        source = workload.source
        assert isinstance(source, ChainSource)
        for _ in range(3):  # three rotations on connection 0: each uses the token just issued
            item = source.next(0)
            assert item is not None
            [reply] = await fetch_all(setup.host, setup.port, [item[0]], connections=1)
            assert reply.status == 200, reply.body
            source.reply(0, item[1], reply)
            assert source.current[0] == orjson.loads(reply.body)["refresh_token"]
        assert source.broken == 0


async def test_the_mix_walks_its_weighted_parts(service: Proc) -> None:
    async with setup_for(service) as setup:
        workload = await setup.prepare("mix", dict(MIX_DEFAULT))
        labels = []
        for i in range(40):
            item = workload.source.next(i % 4)
            assert item is not None
            labels.append(item[1])
        assert set(labels) <= set(MIX_DEFAULT)
        assert labels.count("client_credentials") > labels.count("revocation")


async def test_set_up_creates_clients_through_the_admin_api_and_cleans_up(service: Proc) -> None:
    async with setup_for(service) as setup:
        await setup.prepare("password")
        assert len(setup.usernames) == 4 and len(setup.clients) == 1
        answer = setup.http._admin("GET", f"/admin/clients/{setup.clients[0]}")
        doc = answer.json()
        assert doc["token_endpoint_auth_method"] == "client_secret_post"
        assert doc["reuse_tokens"] is False
        setup.cleanup()
        assert setup.http._admin("GET", f"/admin/clients/{setup.clients[0]}").status == 404
        assert setup.http._admin("GET", f"/admin/users/{setup.usernames[0]}").status == 404


# -- a whole run: the result file ----------------------------------------------------------


async def test_a_short_run_writes_a_result_with_the_required_keys(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    opts = RunOptions(scenario="client_credentials", duration=1.0, warmup=0.3, connections=4,
                      settings=dict(FAST), ceiling_seconds=0.5, output=out, quiet=True)
    doc = await execute(opts, run_argv(opts))
    stored = load_result(out)
    for key in REQUIRED_KEYS:
        assert key in stored
    assert stored["summary"]["requests"] > 0
    assert stored["summary"]["errors"] == 0
    assert set(stored["summary"]["latency_ms"]) >= {"p50", "p90", "p99", "p99_9", "max"}
    assert stored["errors"]["by_status"].keys() == {"200"}
    assert stored["target"]["started_by_bench"] is True
    assert stored["settings"]["admin_key"] == "***" and stored["settings"]["log_level"] == "warning"
    assert stored["ceiling"]["throughput"] > 0
    assert stored["git"]["commit"] and isinstance(stored["git"]["dirty"], bool)
    assert stored["machine"]["cores"] and stored["machine"]["python"]
    assert stored["machine"]["redis_server"]
    assert stored["time_series"] and {"t", "throughput", "p50_ms", "p99_ms"} <= set(stored["time_series"][0])
    assert stored["server_metrics"]["secret_cache_hits"] > 0
    assert stored["command"].startswith("python -m bench run --scenario client_credentials")
    assert "throughput" in summary_table(doc)


async def test_the_static_reference_answers_and_runs(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ref = start_reference(Path(tmp), None)
        try:
            host, port = Http(ref.url).host, Http(ref.url).port
            work = reference_workload("static", f"{host}:{port}")
            replies = await fetch_all(host, port, work.requests * 3, connections=2)
            assert [r.status for r in replies] == [200] * 3
            assert orjson.loads(replies[0].body) == {"status": "ok", "service": "reference"}
        finally:
            ref.stop()


async def test_the_form_references_answer_with_a_token(tmp_path: Path) -> None:
    import httpx

    from bench.reference import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://ref") as client:
        resp = await client.post("/token-noredis",
                                 data={"grant_type": "client_credentials", "client_id": "x"})
        assert resp.status_code == 200
        assert resp.headers["cache-control"] == "no-store"
        assert len(resp.json()["access_token"]) >= 40


# -- compare ---------------------------------------------------------------------------------


def _synthetic(name: str, throughput: float, p99: float) -> dict[str, Any]:
    return {
        "format": "tokensvc-bench/1", "name": name, "scenario": name,
        "started_at": "2026-01-01T00:00:00+00:00",
        "command": "python -m bench run", "git": {"commit": "0" * 40, "dirty": False}, "machine": {},
        "target": {}, "settings": {}, "load": {"mode": "closed", "connections": 64},
        "generator": {"kind": "python"}, "ceiling": None, "generator_bound": False,
        "summary": {"requests": int(throughput * 10), "errors": 0, "throughput": throughput, "duration": 10.0,
                    "latency_ms": {"p50": p99 / 3, "p90": p99 / 2, "p99": p99, "p99_9": p99, "max": p99}},
        "errors": {"by_status": {"200": 1}, "by_oauth_error": {}, "transport": {}},
        "time_series": [],
    }


def test_compare_prints_ratios_against_the_first(tmp_path: Path) -> None:
    a = write_result(_synthetic("redis-ref", 5000.0, 20.0), tmp_path / "a.json")
    b = write_result(_synthetic("client_credentials", 8000.0, 10.0), tmp_path / "b.json")
    out = subprocess.run([sys.executable, "-m", "bench", "compare", str(a), str(b)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["result", "req/s", "vs"]
    assert "1.60x" in lines[2] and "0.50x" in lines[2]
    assert "1.00x" in lines[1]
    markdown = compare_table([load_result(a), load_result(b)], markdown=True)
    assert markdown.splitlines()[2].startswith("| redis-ref | 5000 | 1.00x")


def test_load_result_refuses_files_that_are_not_results(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError):
        load_result(bad)
    partial = _synthetic("a", 1.0, 1.0)
    del partial["git"]
    bad.write_text(json.dumps(partial))
    with pytest.raises(ValueError, match="git"):
        load_result(bad)


# -- the response parser --------------------------------------------------------------------


def test_parser_frames_by_content_length_and_keeps_the_rest() -> None:
    one = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    two = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 26\r\n\r\n{\"error\":\"invalid_client\"}"
    buf = bytearray(one + two)
    first = parse_response(buf)
    assert first is not None and first.status == 200 and first.body == b"{}" and first.keep_alive
    del buf[:first.consumed]
    second = parse_response(buf)
    assert second is not None and second.status == 401 and second.consumed == len(two)
    assert oauth_error(second.body) == "invalid_client"


def test_parser_waits_for_the_whole_head_and_body() -> None:
    full = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
    for cut in (0, 3, 20, len(full) - 11, len(full) - 1):
        assert parse_response(full[:cut]) is None
    assert parse_response(full) is not None


def test_parser_reads_keep_alive_and_close() -> None:
    close = parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert close is not None and not close.keep_alive
    old = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert old is not None and not old.keep_alive
    old_kept = parse_response(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert old_kept is not None and old_kept.keep_alive
    empty = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert empty is not None and empty.body == b"" and empty.keep_alive


def test_parser_gives_headers_with_their_case_kept() -> None:
    reply = parse_response(b"HTTP/1.1 302 Found\r\nLocation: https://x/cb?code=AbC\r\n"
                           b"set-cookie: a=1\r\nSet-Cookie: b=2\r\ncontent-length: 0\r\n\r\n")
    assert reply is not None
    assert reply.header("location") == "https://x/cb?code=AbC"
    assert reply.headers("Set-Cookie") == ["a=1", "b=2"]
    assert reply.header("x-missing") is None


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n",
    b"SMTP ready and waiting\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
])
def test_parser_refuses_what_it_cannot_frame(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_response(raw)


def test_requests_are_prebuilt_http_11() -> None:
    get = build_request("GET", "/healthz", "127.0.0.1:80")
    assert get == b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n"
    post = form_post("/oauth/token", "h:1", {"grant_type": "client_credentials", "client_secret": "a+b"})
    head, body = post.split(b"\r\n\r\n")
    assert body == b"grant_type=client_credentials&client_secret=a%2Bb"
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Content-Type: application/x-www-form-urlencoded" in head


# -- the generator on synthetic endpoints ------------------------------------------------------


class _Slow(asyncio.Protocol):
    """Answers each request after a delay, one at a time per connection."""

    DELAY = 0.02

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.queue = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            self.queue += 1
            asyncio.get_running_loop().call_later(self.DELAY * self.queue, self._answer)

    def _answer(self) -> None:
        self.queue -= 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@contextlib.asynccontextmanager
async def _slow_server() -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(_Slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield int(port)
    finally:
        server.close()
        await server.wait_closed()


async def test_open_loop_counts_from_the_schedule_and_reports_the_backlog() -> None:
    # 2 connections at 20 ms per answer serve ~100/s; 200/s are scheduled.
    async with _slow_server() as port:
        req = build_request("GET", "/", f"127.0.0.1:{port}")
        cfg = LoadConfig("127.0.0.1", port, connections=2, duration=1.0, warmup=0.0, rate=200.0,
                         drain=0.5, name="slow")
        result = await run_load(cfg, CycleSource([req], "slow"))
    sched = result.schedule
    assert sched is not None
    assert sched["due"] == sched["sent_on_time_connection"] + sched["waited_for_connection"]
    assert sched["waited_for_connection"] > 0 and sched["max_backlog"] > 0
    assert sched["unsent_at_end"] > 0
    assert sched["service_kept_up"] is False
    # every answer takes the server's delay at least; queued ones add their wait to it
    assert result.latency_ms["p50"] >= _Slow.DELAY * 1000
    assert result.requests < sched["due"]


async def test_closed_loop_stops_when_a_pool_runs_out() -> None:
    async with _slow_server() as port:
        req = build_request("GET", "/", f"127.0.0.1:{port}")
        cfg = LoadConfig("127.0.0.1", port, connections=2, duration=5.0, warmup=0.0, name="pool")
        pool = PoolSource([req] * 6, "pool")
        result = await run_load(cfg, pool)
    assert pool.exhausted and result.exhausted
    assert result.stopped_early_at is not None and result.stopped_early_at < 5.0
    assert result.status == {"200": 6}


def test_mix_and_chain_sources() -> None:
    a, b = CycleSource([b"A"], "a"), CycleSource([b"B"], "b")
    mix = MixSource([(a, 3), (b, 1)])
    got = [mix.next(0) for _ in range(400)]
    assert sum(1 for g in got if g and g[1] == "a") == 300
    chain = ChainSource(["t0", "t1"], lambda t: t.encode(), json_field("next"), "chain")
    assert chain.next(0) == (b"t1", "chain") and chain.next(1) == (b"t0", "chain")
    assert chain.next(2) is None  # no spare left for a third connection
    reply = parse_response(b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{"next":"t9"} ')
    assert reply is not None
    chain.reply(0, "chain", reply)
    assert chain.next(0) == (b"t9", "chain")


def test_a_mix_by_connection_gives_each_connection_one_kind() -> None:
    a, b = CycleSource([b"A"], "a"), CycleSource([b"B"], "b")
    mix = MixSource([(a, 60), (b, 4)], connections=64)
    kinds = [mix.next(conn) for conn in range(64)]
    assert [k[1] for k in kinds if k] == ["a"] * 60 + ["b"] * 4
    assert all(mix.next(63) == (b"B", "b") for _ in range(5))


def test_the_suite_summary_computes_medians_ratios_and_goals() -> None:
    from bench.suite import summarise

    def doc(tput: float, p99: float, hits: float | None = None) -> dict[str, Any]:
        d = _synthetic("x", tput, p99)
        if hits is not None:
            d["server_metrics"] = {"secret_cache_hit_rate": hits}
        return d

    runs = {"static": [doc(30000, 3), doc(29000, 3), doc(31000, 3)],
            "redis": [doc(5000, 24), doc(5500, 25), doc(6000, 23)],
            "cc": [doc(9000, 12, 0.9999), doc(8000, 14, 0.9999), doc(8500, 13, 0.9998)],
            "cc_reuse": [doc(17000, 6)] * 3}
    table, facts = summarise(runs)
    assert facts["medians"]["cc"]["throughput"] == 8500 and facts["medians"]["redis"]["throughput"] == 5500
    goals = {g["goal"]: g for g in facts["goals"]}
    assert goals["client_credentials >= 1.45x the redis reference"]["measured"] == "1.55x"
    assert goals["client_credentials >= 1.45x the redis reference"]["met"] is True
    assert goals["reuse on >= 2x reuse off"]["met"] is True
    assert goals["2 workers >= 1.6x 1 worker"]["met"] is None  # not run
    assert "| client_credentials, reuse off | 8500 | 13.00 | 1.55x |" in table
    assert "99.9900%" in table


def test_percentiles_and_histogram() -> None:
    values = list(range(1, 1001))
    assert percentile(values, 50) == 500 and percentile(values, 99) == 990 and percentile([], 99) == 0
    summary = latency_summary([1000, 2000, 3000])
    assert summary["p50"] == 2.0 and summary["max"] == 3.0
    hist = Histogram()
    hist.add_all(range(1, 100_001))
    for q in (50, 90, 99, 99.9):
        exact = percentile(range(1, 100_001), q)
        assert abs(hist.percentile(q) - exact) <= exact * 0.02
    assert Histogram.upper(Histogram.index(123_456)) >= 123_456


# -- wrk, metrics, CLI --------------------------------------------------------------------


WRK_OUT = """Running 10s test @ http://127.0.0.1:8000
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.52ms    2.10ms  41.20ms   90.00%
    Req/Sec     9.80k   400.00    10.50k    70.00%
  Latency Distribution
     50%    6.10ms
     75%    7.00ms
     90%    8.50ms
     99%   15.30ms
  97612 requests in 10.00s, 30.00MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   9761.20
Transfer/sec:      3.00MB
"""


def test_wrk_output_is_parsed_with_or_without_our_done_lines() -> None:
    plain = parse_output(WRK_OUT)
    assert plain["throughput"] == 9761.2 and plain["requests"] == 97612
    assert plain["latency_ms"]["p99"] == 15.3 and plain["latency_ms"]["max"] == 41.2
    assert plain["errors"] == {"non_2xx_3xx": 12}
    ours = parse_output(WRK_OUT + "BENCH requests 97612\nBENCH duration_us 10000000\nBENCH errors_status 12\n"
                        "BENCH errors_connect 0\nBENCH errors_read 0\nBENCH errors_write 0\n"
                        "BENCH errors_timeout 0\nBENCH p50 6100\nBENCH p90 8500\nBENCH p99 15300\n"
                        "BENCH p99.9 30000\nBENCH max 41200\nBENCH mean 6520.5\n")
    assert ours["latency_ms"]["p99_9"] == 30.0 and ours["throughput"] == pytest.approx(9761.2)


def test_wrk_scripts_keep_requests_byte_exact(tmp_path: Path) -> None:
    work = reference_workload("noredis", "127.0.0.1:1")
    script = lua_script(work, 2, "127.0.0.1:1", str(tmp_path / "reqs.bin"))
    assert (tmp_path / "reqs.bin").read_bytes() == work.requests[0]
    assert "function request()" in script and "function done(" in script
    chain = ChainSource(["a"], lambda t: t.encode(), json_field("refresh_token"), "refresh")
    from bench.scenarios import Workload

    refresh = Workload("refresh", chain, "chain", [], chain={
        "path": "/oauth/token", "prefix": "grant_type=refresh_token&refresh_token=", "field": "refresh_token",
        "starts": ["tok1", "tok2"]})
    text = lua_script(refresh, 1, "h:1", str(tmp_path / "unused"))
    assert "\\013\\010Content-Type" in text  # CR LF escaped, not left to a long bracket
    assert "function response(" in text


def test_metrics_exposition_is_read() -> None:
    values = metric_values('# HELP x\ntokensvc_secret_cache_hits_total 41.0\n'
                           'tokensvc_argon2_verifications_total{kind="client_secret"} 2.0\n')
    assert values["tokensvc_secret_cache_hits_total"] == 41.0
    assert values['tokensvc_argon2_verifications_total{kind="client_secret"}'] == 2.0


def test_cpu_lists_and_settings() -> None:
    assert parse_cpus("0") == {0} and parse_cpus("0,1") == {0, 1} and parse_cpus("0-2") == {0, 1, 2}
    settings = service_settings({"reuse_tokens": "1"})
    assert settings["reuse_tokens"] == "1" and settings["log_level"] == "warning"


def test_cli_help_lists_the_commands_and_scenarios() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True,
                              text=True, check=False)

    top = run("--help")
    assert top.returncode == 0
    for command in ("run", "compare", "plot", "suite"):
        assert command in top.stdout
    sub = run("run", "--help")
    assert sub.returncode == 0
    for word in ("--scenario", "--rate", "--url", "--start", "--wrk", "--pin-server", "--set",
                 "--reference", "authorization_code", "client_credentials_reuse"):
        assert word in sub.stdout
    bad = run("run", "--set", "no_such_setting=1")
    assert bad.returncode == 2 and "unknown tokensvc setting" in bad.stderr


# -- fleet scale: many clients, a cold instance, scale-out, TLS --------------------------------


async def test_many_clients_set_up_makes_distinct_clients_used_once_then_cycles_them(service: Proc) -> None:
    async with setup_for(service, fleet_size=6) as setup:
        workload = await setup.prepare("many_clients")
        assert len(setup.clients) == 6 and len(set(setup.clients)) == 6
        assert workload.info["clients"] == 6 and workload.info["each_used_once_before"] is True
        # one request per client in turn, whichever connection asks
        sent = [workload.source.next(i % 3) for i in range(12)]
        ids = [parse_qs(item[0].split(b"\r\n\r\n", 1)[1].decode())["client_id"][0] for item in sent if item]
        assert ids[:6] == ids[6:] and sorted(ids[:6]) == sorted(setup.clients)
        replies = await fetch_all(setup.host, setup.port, [item[0] for item in sent if item], connections=3)
        assert [r.status for r in replies] == [200] * 12
        # each secret was verified once in set-up: none of these ran argon2
        counters = secret_counters(setup.http)
        assert counters is not None and counters["secret_cache_hits"] >= 12


def _trace(points: list[tuple[float, float, int, int]], backends: tuple[str, ...] = ("A",)) -> Trace:
    """A Trace from (start s, latency ms, backend, status)."""
    trace = Trace(0, backends)
    for start, latency, backend, status in points:
        trace.add(int(start * 1e9), int(latency * 1e6), backend, status)
    return trace


def test_time_to_90_percent_needs_a_sustained_rate() -> None:
    ramp = [10, 20, 50, 95, 100, 100, 100, 100, 100, 100]
    assert time_to_fraction(ramp, 0.1, 1000.0) == pytest.approx(0.4)
    lucky = [95, 10, 10, 10, 10, 100, 100, 100, 100, 100]  # one fast bucket amid slow ones
    assert time_to_fraction(lucky, 0.1, 1000.0) == pytest.approx(0.6)
    assert time_to_fraction([10] * 20, 0.1, 1000.0) is None
    assert time_to_fraction([], 0.1, 1000.0) is None


def test_cold_start_analysis_of_a_synthetic_trace() -> None:
    # 3 s: 200 req/s in the first second (slow, 40 ms), then 1000 req/s at 2 ms; one failure
    points = [(i / 200, 40.0, 0, 200) for i in range(200)]
    points += [(1.0 + i / 1000, 2.0, 0, 200) for i in range(2000)]
    points.append((1.5, 1.0, 0, 0))
    cold = analyse_cold_start(_trace(points), clients=1000, duration_s=3.0, early_s=1.0, warm_s=1.0)
    assert cold["warm_rate"] == pytest.approx(1000, rel=0.01)
    assert cold["warm_window_s"] == [2.0, 3.0] and cold["every_client_seen_before_warm_window"] is True
    # the answers of the first second arrive from 40 ms on; the fast ones from 1.002 s
    assert cold["time_to_90_s"] == pytest.approx(1.1)
    assert cold["early_latency_ms"]["p99"] == pytest.approx(40.0)
    assert len(cold["buckets"]) == 30 and sum(cold["buckets"]) == 2200 - 2  # the last two arrive after 3 s
    assert analyse_cold_start(_trace(points), clients=5000, duration_s=3.0, warm_s=1.0)[
        "every_client_seen_before_warm_window"] is False
    goals = cold_start_goals(cold, argon2_runs=0.0)
    assert [g["met"] for g in goals] == [True, True, True]


def test_share_window_and_per_backend_series_of_a_synthetic_trace() -> None:
    # A alone for 2 s; B from 2 s on, slow (30 ms) until 3 s, then fast (2 ms), half the answers
    points = [(i / 100, 2.0, 0, 200) for i in range(600)]
    points += [(2.0 + i / 100, 30.0 if i < 100 else 2.0, 1, 200) for i in range(400)]
    trace = _trace(points, ("A", "B"))
    window = first_share_window(trace, 1, from_s=2.0, end_s=6.0)
    # [3.0, 4.0) still holds the slow answers of requests started just before 3 s: its p99 is 30 ms
    assert window is not None and window.start_s == pytest.approx(3.1) and window.share == pytest.approx(0.5)
    scale = analyse_scale_out(trace, start_command_s=1.0, healthz_s=2.0, end_s=6.0)
    assert scale["start_to_healthz_s"] == pytest.approx(1.0)
    assert scale["start_to_share_s"] == pytest.approx(3.1)
    series = scale["per_backend_series"]
    assert set(series[0]["backends"]) == {"A"} and set(series[4]["backends"]) == {"A", "B"}
    assert series[4]["backends"]["B"]["requests"] == 100 and series[4]["backends"]["B"]["p99_ms"] == 2.0


class _Quick(asyncio.Protocol):
    """Answers each request at once (keep-alive, or closing on Connection: close)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            if b"Connection: close" in data:
                self.transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
                self.transport.close()
                return
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@contextlib.asynccontextmanager
async def _quick_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(_Quick, "127.0.0.1", 0, ssl=tls)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def test_the_round_robin_front_gives_a_joining_backend_its_share() -> None:
    async with _quick_server() as port_a, _quick_server() as port_b:
        req = build_request("GET", "/", f"127.0.0.1:{port_a}")
        cfg = LoadConfig("127.0.0.1", port_a, connections=4, duration=1.2, rate=500.0, drain=0.5,
                         trace=True, name="rr")
        load = Load(cfg, CycleSource([req], "rr"))

        async def join() -> None:
            await load.started.wait()
            await asyncio.sleep(0.4)
            assert await load.add_backend("127.0.0.1", port_b, 4) == 1

        joiner = asyncio.create_task(join())
        result = await load.run()
        await joiner
    trace = result.trace
    assert trace is not None and trace.backends == ["A", "B"] and result.errors == 0
    joined_at = min(trace.start_us[i] for i in range(len(trace)) if trace.backend[i] == 1)
    assert joined_at >= 400_000
    before = [trace.backend[i] for i in range(len(trace)) if trace.start_us[i] < joined_at]
    after = [trace.backend[i] for i in range(len(trace)) if trace.start_us[i] >= joined_at]
    assert set(before) == {0}
    assert abs(after.count(0) - after.count(1)) <= 2  # strict alternation, give or take the edges
    assert len(trace) == result.schedule["due"] if result.schedule else False


def test_a_certificate_is_made_and_requests_carry_connection_close(tmp_path: Path) -> None:
    files = make_certificate(tmp_path)
    text = subprocess.run(["openssl", "x509", "-in", str(files.certfile), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "prime256v1" in text and "IP Address:127.0.0.1" in text
    assert files.keyfile.stat().st_mode & 0o077 == 0
    req = with_connection_close(build_request("GET", "/x", "h:1"))
    assert req == b"GET /x HTTP/1.1\r\nConnection: close\r\nHost: h:1\r\n\r\n"


@pytest.mark.parametrize("new_connection", [False, True])
async def test_the_generator_speaks_tls(tmp_path: Path, new_connection: bool) -> None:
    files = make_certificate(tmp_path)
    async with _quick_server(files.server_context()) as port:
        req = build_request("GET", "/", f"127.0.0.1:{port}")
        cfg = LoadConfig("127.0.0.1", port, connections=2, duration=0.5, drain=0.5,
                         tls=files.client_context(), new_connection=new_connection, name="tls")
        source: Source = CycleSource([req], "tls")
        result = await run_load(cfg, ConnectionCloseSource(source) if new_connection else source)
    assert result.requests > 0 and result.errors == 0
    if new_connection:
        assert result.connections_opened >= result.requests - 2
    else:
        assert result.connections_opened == 0 and "reconnects" not in result.transport_errors


async def test_a_tls_run_with_a_handshake_per_request_against_tokensvc(tmp_path: Path) -> None:
    out = tmp_path / "tls.json"
    opts = RunOptions(scenario="client_credentials", duration=1.0, warmup=0.2, connections=4, tls=True,
                      new_connection=True, settings=dict(FAST), ceiling_seconds=0.3, output=out, quiet=True)
    doc = await execute(opts, run_argv(opts))
    assert doc["target"]["url"].startswith("https://127.0.0.1:")
    assert doc["load"]["tls"] is True and doc["load"]["new_connection_per_request"] is True
    assert doc["summary"]["requests"] > 0 and doc["summary"]["errors"] == 0
    assert doc["load"]["connections_opened"] > 0
    assert doc["ceiling"]["tls"] is True and doc["ceiling"]["new_connection_per_request"] is True
    assert "--tls --new-connection-per-request" in doc["command"]


async def test_cold_start_loads_a_new_instance_of_the_same_deployment(tmp_path: Path) -> None:
    out = tmp_path / "cold.json"
    opts = RunOptions(scenario="cold_start", clients=20, duration=1.0, connections=4, ceiling_seconds=0,
                      output=out, quiet=True)
    doc = await execute(opts, run_argv(opts))
    cold = doc["cold_start"]
    assert doc["target"]["second_url"] != doc["target"]["url"]
    assert doc["summary"]["errors"] == 0 and doc["summary"]["requests"] > 20
    assert cold["start_to_healthz_s"] > 0 and cold["every_client_seen_before_warm_window"] is True
    assert cold["argon2_client_secret_runs"] is not None and cold["secret_cache_hits"] is not None
    assert doc["hash_cost"]["cheap_setup_cost"] is True and doc["hash_cost"]["password_time_cost"] == "1"
    assert len(cold["buckets"]) == 10 and {g["goal"][:4] for g in cold["goals"]} == {">= 9", "p99 ", "argo"}
    for key in REQUIRED_KEYS:
        assert key in load_result(out)


async def test_scale_out_starts_b_under_load_and_puts_it_into_the_round_robin(tmp_path: Path) -> None:
    opts = RunOptions(scenario="scale_out", clients=10, rate=200.0, duration=2.5, join_at=0.1, connections=2,
                      output=tmp_path / "scale.json", quiet=True)
    doc = await execute(opts, run_argv(opts))
    scale = doc["scale_out"]
    assert doc["summary"]["errors"] == 0 and doc["load"]["mode"] == "open"
    assert scale["peak"] is None and scale["rate"] == 200.0
    assert scale["start_to_healthz_s"] > 0 and scale["in_rotation_s"] >= scale["healthz_s"]
    answered_by_b = sum(p["backends"].get("B", {}).get("requests", 0) for p in scale["per_backend_series"])
    assert answered_by_b > 0
    assert scale["instance_b_metrics"] is not None


def test_option_combinations_that_cannot_be_measured_are_refused() -> None:
    for opts in (RunOptions(new_connection=True, rate=100.0), RunOptions(tls=True, reference="static"),
                 RunOptions(scenario="cold_start", url="http://127.0.0.1:1"),
                 RunOptions(scenario="scale_out", duration=5.0, join_at=5.0),
                 RunOptions(tls=True, url="https://127.0.0.1:1")):
        with pytest.raises(SystemExit):
            check_options(opts)
    assert effective_settings(RunOptions(scenario="many_clients"))[1] is True
    assert effective_settings(RunOptions(scenario="many_clients", real_hash_cost=True)) == ({}, False)
    assert effective_settings(RunOptions(scenario="client_credentials")) == ({}, False)
    kept = effective_settings(RunOptions(scenario="cold_start", settings={"password_time_cost": "3"}))[0]
    assert kept == {"password_time_cost": "3", "password_memory_cost": "1024"}


def test_the_suite_reports_the_fleet_figures_and_goals() -> None:
    from bench.suite import summarise

    def fleet_doc(tput: float, **extra: Any) -> dict[str, Any]:
        d = _synthetic("x", tput, 10.0)
        d.update(extra)
        return d

    cold = {"start_to_healthz_s": 0.8, "time_to_90_s": 0.3, "warm_rate": 9000.0,
            "early_latency_ms": {"p50": 5.0, "p99": 20.0}, "argon2_client_secret_runs": 0.0,
            "secret_cache_hits": 90000.0}
    runs = {"cc": [fleet_doc(10000)], "many_clients": [fleet_doc(9500, workload={"clients": 20000})],
            "cold_start": [fleet_doc(8000, cold_start=cold),
                           fleet_doc(8000, cold_start={**cold, "time_to_90_s": None}),
                           fleet_doc(8000, cold_start={**cold, "argon2_client_secret_runs": 3.0})],
            "tls_handshake": [fleet_doc(600, cpu={"server": 0.5})]}
    table, facts = summarise(runs)
    goals = {g["goal"]: g for g in facts["goals"]}
    assert goals["many clients >= 0.9x one-client client_credentials"]["met"] is True
    assert goals["cold start: >= 90 % of the warm rate within 2 s"]["measured"] == "0.30 s"
    assert goals["cold start: argon2 runs on the new process = 0"]["met"] is False
    assert "(20,000 clients)" in table and "0.30 s, never, 0.30 s" in table
    assert "| generator ceiling (same handshakes) | - | - |" in table
    assert facts["fleet"]["tls_handshake"]["tokens/s per server CPU"] == 1200.0


def test_cli_help_lists_the_fleet_options() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for word in ("many_clients", "cold_start", "scale_out", "--clients", "--real-hash-cost", "--tls",
                 "--new-connection-per-request", "--join-at", "--pin-second"):
        assert word in out


# -- JWT access tokens and the resource-server kit -----------------------------------------------


def _bearer(request: bytes) -> bytes:
    return request.split(b"Authorization: Bearer ")[1].split(b"\r\n")[0]


@pytest.mark.parametrize("scenario", ["resource_jwt", "resource_introspection"])
async def test_resource_scenarios_aim_one_token_per_connection_at_the_protected_api(
        service: Proc, scenario: str, tmp_path: Path) -> None:
    from bench import kit

    async with setup_for(service) as setup:
        workload, api = await kit.prepare(setup, scenario, service.url, tmp_path, None)
        try:
            assert api.url != service.url and workload.info["audience"] == kit.AUDIENCE
            assert workload.info["tokens"] == 4 and workload.info["kit_cache_ttl"] == 0
            # connection i always sends token i: none of the four shares a token with another
            sent = [workload.source.next(i % 4) for i in range(8)]
            assert [item[0] for item in sent if item] == workload.requests * 2
            assert len({_bearer(req) for req in workload.requests}) == 4
            before = kit.api_stats(api)
            host, port = Http(api.url).host, Http(api.url).port
            replies = await fetch_all(host, port, workload.requests * 2, connections=4)
            assert [r.status for r in replies] == [200] * 8
            checked = {orjson.loads(r.body)["checked_by"] for r in replies}
            after = kit.api_stats(api)
            assert after["served"] - before["served"] == 8
            if scenario == "resource_jwt":
                assert checked == {"jwt"} and after["introspections"] == 0 and after["jwks_fetches"] == 1
                assert _bearer(workload.requests[0]).count(b".") == 2  # a JWT
            else:
                # no cache: every request (and the set-up check) was one introspection
                assert checked == {"introspection"}
                assert after["introspections"] - before["introspections"] == 8
                assert after["cached_answers"] == 0
            # a token that is not for the API is refused by it
            wrong = build_request("GET", "/me", f"{host}:{port}", headers={"Authorization": "Bearer nope"})
            [refused] = await fetch_all(host, port, [wrong], connections=1)
            assert refused.status == 401
        finally:
            api.stop()
            setup.cleanup()


@pytest.mark.parametrize("scenario", ["resource_jwt", "resource_introspection"])
async def test_a_short_resource_run_counts_the_cpu_of_every_process_doing_the_work(
        tmp_path: Path, scenario: str) -> None:
    out = tmp_path / "kit.json"
    opts = RunOptions(scenario=scenario, duration=1.0, warmup=0.3, connections=4, settings=dict(FAST),
                      ceiling_seconds=0.3, output=out, quiet=True)
    doc = await execute(opts, run_argv(opts))
    assert doc["summary"]["requests"] > 0 and doc["summary"]["errors"] == 0
    assert doc["errors"]["by_status"].keys() == {"200"}
    assert set(doc["cpu"]) >= {"api", "server", "redis", "generator"}
    kit_doc = doc["resource_kit"]
    working = ["api"] if scenario == "resource_jwt" else ["api", "server", "redis"]
    assert kit_doc["working_processes"] == working
    total = sum(doc["cpu"][name] for name in working)
    assert kit_doc["cpu_cores_total"] == pytest.approx(total)
    assert kit_doc["requests_per_cpu_second"] == pytest.approx(doc["summary"]["throughput"] / total)
    assert kit_doc["served"] > doc["summary"]["requests"] * 0.9
    if scenario == "resource_introspection":
        assert kit_doc["introspections_per_request"] == 1.0
    else:
        assert kit_doc["introspections"] == 0 and kit_doc["jwks_fetches"] == 1
    assert doc["workload"]["one_token_per_connection"] is True
    assert doc["command"].startswith(f"python -m bench run --scenario {scenario}")
    assert "per core" in summary_table(doc)
    for key in REQUIRED_KEYS:
        assert key in load_result(out)


async def test_the_jwt_suite_row_issues_jwt_access_tokens(tmp_path: Path) -> None:
    from bench.suite import CONFIGS, config_options

    base = RunOptions(duration=1.0, warmup=0.2, connections=4, settings=dict(FAST), ceiling_seconds=0,
                      output=tmp_path / "jwt.json", quiet=True)
    row = next(c for c in CONFIGS if c.key == "cc_jwt")
    opts = config_options(base, row)
    assert opts.scenario == "client_credentials"
    assert opts.settings == {**FAST, "access_token_format": "jwt"}  # the suite's --set kept
    doc = await execute(opts, run_argv(opts))
    assert doc["summary"]["requests"] > 0 and doc["summary"]["errors"] == 0
    assert doc["settings"]["access_token_format"] == "jwt"
    assert "--set access_token_format=jwt" in doc["command"]
    # what the timed phase sent is answered with a JWT access token
    with tempfile.TemporaryDirectory() as tmp:
        redis = start_redis(Path(tmp), None)
        try:
            svc = start_tokensvc(Path(tmp), redis.url, 1, None, service_settings(opts.settings))
            try:
                async with setup_for(svc) as setup:
                    workload = await setup.prepare("client_credentials")
                    [reply] = await fetch_all(setup.host, setup.port, workload.requests, connections=1)
                    assert orjson.loads(reply.body)["access_token"].count(".") == 2
            finally:
                svc.stop()
        finally:
            redis.stop()


def test_the_suite_reports_dpop_against_bearer() -> None:
    from bench.suite import CONFIGS, summarise

    row = next(c for c in CONFIGS if c.key == "cc_dpop")
    assert (row.changes, row.default) == ({"scenario": "client_credentials_dpop"}, False)
    _, facts = summarise({"cc": [_synthetic("cc", 8000, 9.0)],
                          "cc_dpop": [_synthetic("cc_dpop", 5000, 12.0)]})
    goals = {g["goal"]: g for g in facts["goals"]}
    assert goals["DPoP-bound client_credentials vs bearer (same run)"] == {
        "goal": "DPoP-bound client_credentials vs bearer (same run)", "met": None, "measured": "0.62x"}


def test_dpop_proofs_must_outlive_the_run() -> None:
    from bench.admin import SetupError
    from bench.dpop import token_requests

    creds = {"client_id": "c", "client_secret": "s"}
    reqs, info = token_requests("h:1", "http://h:1/oauth/token", creds, 3, 11)
    assert len(reqs) == 3 and info["proofs"] == 3 and all(b"\r\nDPoP: ey" in r for r in reqs)
    with pytest.raises(SetupError, match="keep --warmup plus --duration under 45 s"):
        token_requests("h:1", "http://h:1/oauth/token", {}, 1, 60)


def test_the_suite_reports_the_jwt_and_kit_goals() -> None:
    from bench.suite import summarise

    def kit_doc(tput: float, per_cpu: float, **cores: float) -> dict[str, Any]:
        d = _synthetic("x", tput, 5.0)
        d["resource_kit"] = {"requests_per_cpu_second": per_cpu, "cpu_cores": cores, "jwks_fetches": 1,
                             "introspections_per_request": 1.0 if "server" in cores else None}
        return d

    runs = {"cc": [_synthetic("cc", 10000, 9.0)], "cc_jwt": [_synthetic("cc_jwt", 8500, 10.0)],
            "resource_jwt": [kit_doc(4000, 4100, api=0.98), kit_doc(4200, 4300, api=0.98),
                             kit_doc(3900, 4000, api=0.97)],
            "resource_introspection": [kit_doc(1500, 1200, api=0.7, server=0.4, redis=0.15)] * 3}
    table, facts = summarise(runs)
    goals = {g["goal"]: g for g in facts["goals"]}
    jwt = goals["JWT issuance >= 0.8x opaque"]
    assert jwt["measured"] == "0.85x" and jwt["met"] is True
    kit_goal = goals["kit local verification per core >= 3x introspection per core"]
    assert kit_goal["measured"] == "3.42x (4100 vs 1200 req per CPU-second)" and kit_goal["met"] is True
    fleet = facts["fleet"]
    assert fleet["resource_jwt"]["requests per CPU-second (API)"] == 4100
    assert fleet["resource_introspection"]["tokensvc CPU"] == 0.4
    assert fleet["resource_introspection"]["introspection requests per API request"] == 1.0
    # a protected API's row has no ratio against the token references
    assert "| protected API, JWT verified locally by the kit | 4000 | 5.00 | - | - | - |" in table
    slow = {**runs, "resource_jwt": [kit_doc(3000, 3000, api=1.0)]}
    assert {g["goal"]: g for g in summarise(slow)[1]["goals"]}[
        "kit local verification per core >= 3x introspection per core"]["met"] is False


def test_resource_scenarios_refuse_what_they_cannot_measure() -> None:
    for opts in (RunOptions(scenario="resource_jwt", url="http://127.0.0.1:1"),
                 RunOptions(scenario="resource_introspection", tls=True),
                 RunOptions(scenario="resource_jwt", reference="static")):
        with pytest.raises(SystemExit):
            check_options(opts)
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "resource_jwt" in out and "resource_introspection" in out
