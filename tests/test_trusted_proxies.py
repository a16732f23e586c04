"""`TOKENSVC_TRUSTED_PROXIES`: X-Forwarded-For and Forwarded (RFC 7239) are believed only from
the listed proxies; from anyone else, loopback included, rate limits and audit lines use the
connection's peer. Seen through what the service counts (the open-registration window of an
address) and logs (the console's audit lines), in-process and against a real `tokensvc serve`."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner

from tests.support.apps import AppFactory
from tests.support.assertions import assert_error
from tests.support.console import LOGIN, sign_in_csrf
from tests.support.redis_servers import RedisServer
from tests.support.service import Service, serving
from tokensvc import settings
from tokensvc.cli import main
from tokensvc.settings import SettingsError
from tokensvc.store import keys

RFC7591 = {"client_name": "Calendar", "redirect_uris": ["https://cal.example/cb"]}
THROTTLED = "Too many client registrations from this address; retry later."
Headers = list[tuple[str, str]]


def networks(*items: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(item) for item in items)


def counted(r: redis.Redis) -> list[bytes]:
    """The open-registration windows Redis holds, one per client address seen."""
    return sorted(r.scan_iter(match="tsv:{r:*"))


@contextlib.asynccontextmanager
async def peer(http: httpx.AsyncClient, host: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same app whose connection comes from `host`."""
    transport = httpx.ASGITransport(app=http.app, client=(host, 40000))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url=str(http.base_url)) as other:
        yield other


LOOP = ("127.0.0.1",)
RULES: list[tuple[str, tuple[str, ...], str, Headers, str]] = [
    # id, trusted proxies, connection's peer, headers, the address counted
    ("nobody-trusted-xff-ignored", (), "127.0.0.1", [("X-Forwarded-For", "1.2.3.4")], "127.0.0.1"),
    ("nobody-trusted-forwarded-ignored", (), "127.0.0.1", [("Forwarded", "for=1.2.3.4")], "127.0.0.1"),
    ("peer-outside-the-list", ("10.0.0.0/8",), "192.0.2.9", [("X-Forwarded-For", "1.2.3.4")],
     "192.0.2.9"),
    ("trusted-peer-no-header", LOOP, "127.0.0.1", [], "127.0.0.1"),
    ("trusted-peer-xff", LOOP, "127.0.0.1", [("X-Forwarded-For", "1.2.3.4")], "1.2.3.4"),
    ("client-written-hops-on-the-left", LOOP, "127.0.0.1",
     [("X-Forwarded-For", "9.9.9.9, 8.8.8.8,1.2.3.4")], "1.2.3.4"),
    ("trusted-hops-skipped", ("127.0.0.1", "10.0.0.0/8"), "127.0.0.1",
     [("X-Forwarded-For", "9.9.9.9, 1.2.3.4, 10.1.1.1, 10.2.2.2")], "1.2.3.4"),
    ("all-hops-trusted-leftmost", ("127.0.0.1", "10.0.0.0/8"), "127.0.0.1",
     [("X-Forwarded-For", "10.0.0.5, 10.0.0.6")], "10.0.0.5"),
    ("repeated-xff-headers-joined", LOOP, "127.0.0.1",
     [("X-Forwarded-For", "9.9.9.9"), ("X-Forwarded-For", "1.2.3.4")], "1.2.3.4"),
    ("xff-with-port", LOOP, "127.0.0.1", [("X-Forwarded-For", "1.2.3.4:5555")], "1.2.3.4"),
    ("xff-ipv6-canonical", LOOP, "127.0.0.1", [("X-Forwarded-For", "2001:DB8:0:0::7")], "2001:db8::7"),
    ("xff-ipv4-mapped", LOOP, "127.0.0.1", [("X-Forwarded-For", "::ffff:1.2.3.4")], "1.2.3.4"),
    ("xff-garbage-stops-at-the-proxy", LOOP, "127.0.0.1",
     [("X-Forwarded-For", "1.2.3.4, not-an-address")], "127.0.0.1"),
    ("xff-empty", LOOP, "127.0.0.1", [("X-Forwarded-For", "")], "127.0.0.1"),
    ("ipv6-peer-in-the-list", ("::1",), "::1", [("X-Forwarded-For", "1.2.3.4")], "1.2.3.4"),
    ("forwarded", LOOP, "127.0.0.1", [("Forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")],
     "192.0.2.60"),
    ("forwarded-quoted-ipv6-port", LOOP, "127.0.0.1",
     [("Forwarded", 'for="[2001:db8:cafe::17]:4711"')], "2001:db8:cafe::17"),
    ("forwarded-chain", LOOP, "127.0.0.1", [("Forwarded", "for=9.9.9.9, for=1.2.3.4;proto=https")],
     "1.2.3.4"),
    ("forwarded-name-any-case", LOOP, "127.0.0.1", [("Forwarded", "proto=https;FOR=1.2.3.4")],
     "1.2.3.4"),
    ("forwarded-quoted-comma-elsewhere", LOOP, "127.0.0.1",
     [("Forwarded", 'for=9.9.9.9;host="a,b", for=1.2.3.4')], "1.2.3.4"),
    ("forwarded-unknown", LOOP, "127.0.0.1", [("Forwarded", "for=unknown")], "127.0.0.1"),
    ("forwarded-unparsable", LOOP, "127.0.0.1", [("Forwarded", 'for="1.2.3.4')], "127.0.0.1"),
    ("headers-agree", LOOP, "127.0.0.1",
     [("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=1.2.3.4")], "1.2.3.4"),
    ("headers-disagree", LOOP, "127.0.0.1",
     [("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=9.9.9.9")], "127.0.0.1"),
]


@pytest.mark.parametrize(("trusted", "peer_host", "headers", "address"), [r[1:] for r in RULES],
                         ids=[r[0] for r in RULES])
async def test_which_address_is_counted(app_factory: AppFactory, redis_db: redis.Redis,
                                        trusted: tuple[str, ...], peer_host: str, headers: Headers,
                                        address: str) -> None:
    async with app_factory(open_registration=True, trusted_proxies=networks(*trusted)) as http:
        async with peer(http, peer_host) as client:
            resp = await client.post("/oauth/register", json=RFC7591, headers=headers)
    assert resp.status_code == 201, resp.text
    assert counted(redis_db) == [keys.registrations(address).encode()]


async def test_console_audit_lines_name_the_forwarded_client_only_from_a_trusted_proxy(
        app_factory: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tokensvc.audit")
    spoofed = {"X-Forwarded-For": "9.9.9.9, 1.2.3.4"}
    for trusted, shown in (((), "127.0.0.1"), (LOOP, "1.2.3.4")):
        caplog.clear()
        async with app_factory(trusted_proxies=networks(*trusted)) as http:
            csrf = await sign_in_csrf(http)
            resp = await http.post(LOGIN, data={"csrf": csrf, "admin_key": "not the key"}, headers=spoofed)
            assert resp.status_code == 401
        [line] = [r.getMessage() for r in caplog.records if r.name == "tokensvc.audit"]
        assert line == f"console action=sign-in-failed addr={shown}"


# -- against a real `tokensvc serve` -------------------------------------------------------


def open_registration(redis_server: RedisServer, tmp_path: Path, **options: Any) -> Iterator[Service]:
    with serving(redis_server.url, tmp_path, open_registration=True, registration_rate_limit=3,
                 **options) as (svc,):
        yield svc


@pytest.fixture
def live(redis_db: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Service]:
    yield from open_registration(redis_server, tmp_path)


@pytest.fixture
def behind_proxy(redis_db: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Service]:
    """The service behind a proxy on loopback (the test plays it), trusted by setting."""
    yield from open_registration(redis_server, tmp_path, trusted_proxies="127.0.0.1", access_log=True)


async def test_forwarded_for_from_loopback_does_not_escape_the_limit_by_default(
        live: Service, redis_db: redis.Redis) -> None:
    """The spoof: a caller on loopback names a new address in each request. Nobody is trusted
    by default, so all of them count against the caller's own (the peer's) window."""
    async with live.http() as http:
        statuses = []
        for i in range(3):
            resp = await http.post("/oauth/register", json=RFC7591,
                                   headers={"X-Forwarded-For": f"203.0.113.{i}"})
            statuses.append(resp.status_code)
        assert statuses == [201, 201, 201]
        for headers in ({"X-Forwarded-For": "203.0.113.99"}, {"Forwarded": "for=198.51.100.7"},
                        {"X-Forwarded-For": "203.0.113.98", "Forwarded": "for=203.0.113.98"}):
            assert_error(await http.post("/oauth/register", json=RFC7591, headers=headers), 429,
                         "temporarily_unavailable", THROTTLED)
    assert counted(redis_db) == [keys.registrations("127.0.0.1").encode()]


async def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(
        behind_proxy: Service, redis_db: redis.Redis) -> None:
    async with behind_proxy.http() as http:
        # What the client wrote itself (the left hops) varies; what the proxy appended does not.
        for spoof in ("9.9.9.1", "9.9.9.2", "9.9.9.3"):
            resp = await http.post("/oauth/register", json=RFC7591,
                                   headers={"X-Forwarded-For": f"{spoof}, 203.0.113.5"})
            assert resp.status_code == 201, resp.text
        assert_error(await http.post("/oauth/register", json=RFC7591,
                                     headers={"X-Forwarded-For": "9.9.9.4, 203.0.113.5"}),
                     429, "temporarily_unavailable", THROTTLED)
        assert_error(await http.post("/oauth/register", json=RFC7591,
                                     headers={"Forwarded": "for=9.9.9.5, for=203.0.113.5"}),
                     429, "temporarily_unavailable", THROTTLED)
        # Another client behind the same proxy has its own window.
        other = await http.post("/oauth/register", json=RFC7591,
                                headers={"Forwarded": 'for="[2001:db8::5]:4711"'})
        assert other.status_code == 201, other.text
    assert redis_db.get(keys.registrations("203.0.113.5")) == b"5"
    assert redis_db.get(keys.registrations("2001:db8::5")) == b"1"
    assert redis_db.get(keys.registrations("127.0.0.1")) is None
    # uvicorn's access log names the same client (its own proxy handling is off).
    assert '203.0.113.5:0 - "POST /oauth/register HTTP/1.1" 201' in behind_proxy.output


# -- the setting ---------------------------------------------------------------------------


def test_the_setting_is_parsed_at_start() -> None:
    loaded = settings.load(environ={"TOKENSVC_TRUSTED_PROXIES": " 10.0.0.0/8, 192.0.2.7 ,::1,"})
    assert loaded.trusted_proxies == networks("10.0.0.0/8", "192.0.2.7/32", "::1/128")
    assert settings.load(environ=loaded.to_env()) == loaded
    assert settings.load(environ={}).trusted_proxies == ()


@pytest.mark.parametrize("raw", ["localhost", "10.0.0.0/33", "10.0.0.1/8", "192.0.2.7, proxy",
                                 "*", "1.2.3.4;5.6.7.8", "::1/129"])
def test_a_malformed_setting_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings.load(environ={"TOKENSVC_TRUSTED_PROXIES": raw})
    message = str(err.value)
    assert message.startswith("setting TOKENSVC_TRUSTED_PROXIES (--trusted-proxies): expected IP "
                              "addresses or CIDR networks separated by commas: "), message


def test_serve_refuses_a_malformed_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["serve", "--trusted-proxies", "10.0.0.1/8"],
                                env={"TOKENSVC_TRUSTED_PROXIES": None})
    assert result.exit_code == 2
    assert "setting TOKENSVC_TRUSTED_PROXIES (--trusted-proxies)" in result.output
    assert "has host bits set" in result.output
    assert not (tmp_path / "var").exists()  # stopped before starting anything
