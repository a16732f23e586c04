"""Browser fixtures: a real `tokensvc serve` process, driven by Debian's headless chromium.

- `live_server`: `python -m tokensvc serve` on a free loopback port, against the session's
  redis-server (its own Redis DB), with the test keys and cheap argon2. One process per test
  module (a module overrides `live_settings` for other settings); every test starts with that
  DB empty. `await live_server.create_client(...)`,
  `await live_server.create_user(...)` and `await live_server.admin(method, path, json)` use the
  admin API over real HTTP.
- `browser` (one chromium for the session) and `page` (a fresh browser context per test, so no
  cookies carry over; screenshotted into tests/artifacts/ when the test fails).
- `callback`: a redirect URI (http://127.0.0.1:<port>/callback) served by a small HTTP server
  of the test's own, answering with a page that shows the query; `await callback.wait()` gives
  the query (code, state, error, ...) of the redirect that reached it. `new_callback(path)`
  makes more.
- `artifacts`: tests/artifacts/, for screenshots.

The browser is /usr/bin/chromium from Debian (`make browser` installs it when run as root);
playwright drives it and never downloads one. Without it the tests that need a browser are
skipped, or in CI (CI=true) failed. All async tests here run on the session's event loop,
which the browser lives on.
"""

from __future__ import annotations

import html
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_asyncio
import redis
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from pytest_asyncio import is_async_test

from tests.support.redis_servers import RedisServer
from tests.support.service import Service
from tests.support.tools import unavailable

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
HERE = Path(__file__).resolve().parent
# The live server's Redis DB: other tests use DB 0 (and empty every DB before they start, which
# is harmless: no other test runs while a browser test does).
LIVE_DB = 1
# Playwright's own default is 30 s; a page of this service that takes longer is broken anyway.
PAGE_TIMEOUT_MS = 10_000


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run this directory's async tests on the session loop, where `browser` lives."""
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if is_async_test(item) and item.path.is_relative_to(HERE):
            item.add_marker(session_loop, append=False)


_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the outcome of the test's call phase, so `page` can screenshot a failure."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


# -- the service ---------------------------------------------------------------------------


def _live_redis_url(server: RedisServer) -> str:
    return f"redis://127.0.0.1:{server.port}/{LIVE_DB}"


@pytest.fixture(scope="module")
def live_settings() -> dict[str, str]:
    """More settings for this module's service, by name: a module overrides this fixture, e.g.
    `return {"consent_ttl": "0", "open_registration": "1"}`."""
    return {}


@pytest.fixture(scope="module")
def _live_process(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory,
                  live_settings: dict[str, str]) -> Iterator[Service]:
    """One `tokensvc serve` per test module (starting it costs about a second)."""
    if redis_server.proc is None:  # a test stopped it
        redis_server.start()
    workdir = tmp_path_factory.mktemp("live-server")
    settings: dict[str, Any] = {"own_issuer": True, **live_settings}
    server = Service.deployed(_live_redis_url(redis_server), workdir / "var", **settings)
    try:
        server.start().wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def live_server(_live_process: Service) -> Iterator[Service]:
    """The module's running service, its Redis DB emptied for this test."""
    _live_process.check_running()
    with redis.Redis.from_url(_live_process.redis_url) as r:
        r.flushdb()
    yield _live_process
    _live_process.check_running()


# -- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """tests/artifacts/ (git-ignored), for screenshots and the like."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless, launched once per session."""
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} is not installed: `make browser` installs it as root, "
                    "or `sudo apt-get install chromium`")
    async with async_playwright() as pw:
        # chromium_sandbox=False makes playwright pass --no-sandbox, which chromium needs when it
        # runs as root (as it does here and in CI).
        launched = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                            chromium_sandbox=False)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser context (no cookies, no storage) for one test."""
    ctx = await browser.new_context()
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(context: BrowserContext, request: pytest.FixtureRequest,
               artifacts: Path) -> AsyncIterator[Page]:
    """A page in this test's context; if the test fails, its screenshot is kept in artifacts."""
    tab = await context.new_page()
    yield tab
    report = request.node.stash.get(_CALL_REPORT, None)
    if report is not None and report.failed and not tab.is_closed():
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.nodeid)
        try:
            await tab.screenshot(path=artifacts / f"FAILED-{name}.png", full_page=True)
        except Exception as exc:  # the page may be what broke; the test's own failure matters
            print(f"no failure screenshot: {exc}", file=sys.stderr)


# -- redirect URIs ---------------------------------------------------------------------------


_CALLBACK_PAGE = ("<!doctype html><meta charset=utf-8><title>callback</title>"
                  "<h1>callback reached</h1><pre id=query>{query}</pre>")


class _CallbackHandler(BaseHTTPRequestHandler):
    server: _CallbackServer

    def do_GET(self) -> None:
        if urlsplit(self.path).path != self.server.path:
            self.send_error(404)
            return
        self.server.hits.append(f"http://127.0.0.1:{self.server.server_address[1]}{self.path}")
        body = _CALLBACK_PAGE.format(query=html.escape(urlsplit(self.path).query)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _CallbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        super().__init__(("127.0.0.1", 0), _CallbackHandler)
        self.path = path
        self.hits: list[str] = []


class Callback:
    """A client's redirect URI, http://127.0.0.1:<port>/callback, served by a small loopback
    HTTP server of the test's own (playwright's page.route() cannot stand in for one: it does
    not see the request that a redirect from the service leads to).

    Register `uri` with a client; the browser's GETs of it are answered with a small page
    showing the query and kept in `hits`. `await callback.wait()` waits until `page` is there
    and returns the query parameters (code, state, error, ...).
    """

    def __init__(self, page: Page, path: str = "/callback") -> None:
        self.page = page
        self._server = _CallbackServer(path)
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        # A short poll interval: shutdown() waits for one.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"callback {self.uri}", daemon=True)
        self._thread.start()

    @property
    def hits(self) -> list[str]:
        """Every URL (with its query) the browser has fetched from `uri`, oldest first."""
        return list(self._server.hits)

    def reached(self, url: str) -> bool:
        """Whether `url` is this redirect URI (with any query)."""
        got, want = urlsplit(url), urlsplit(self.uri)
        return (got.scheme, got.netloc, got.path) == (want.scheme, want.netloc, want.path)

    async def wait(self, timeout_ms: float = PAGE_TIMEOUT_MS) -> dict[str, str]:
        """Wait until the page is at the redirect URI; its query parameters."""
        await self.page.wait_for_url(self.reached, timeout=timeout_ms)
        return self.params

    @property
    def params(self) -> dict[str, str]:
        """The query parameters of the page's URL (each must appear once)."""
        pairs = parse_qsl(urlsplit(self.page.url).query, keep_blank_values=True)
        params = dict(pairs)
        assert len(params) == len(pairs), f"a repeated query parameter: {self.page.url}"
        return params

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


NewCallback = Callable[..., Callback]


@pytest.fixture
def new_callback(page: Page) -> Iterator[NewCallback]:
    """Make more redirect URIs for `page`: `new_callback()` or `new_callback("/other")`."""
    made: list[Callback] = []

    def make(path: str = "/callback") -> Callback:
        made.append(Callback(page, path))
        return made[-1]

    yield make
    for cb in made:
        cb.close()


@pytest.fixture
def callback(new_callback: NewCallback) -> Callback:
    """A redirect URI, `callback.uri` (http://127.0.0.1:<port>/callback), for `page`."""
    return new_callback()
