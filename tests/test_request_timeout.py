"""`--request-timeout` reaches the HTTP protocol and the body reader in every worker, one worker
included (the setting once came from the environment at import time, before the flags were
parsed, so `serve --request-timeout 2` with one worker kept the 10 s default)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_servers import RedisServer
from tests.support.service import PYTHON_M_TOKENSVC, Service

pytestmark = pytest.mark.slow


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def service(request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path) -> Iterator[Service]:
    svc = Service.deployed(redis_server.url, tmp_path)
    # The flag, not TOKENSVC_REQUEST_TIMEOUT: the environment holds the default.
    svc.env.pop("TOKENSVC_REQUEST_TIMEOUT", None)
    svc.spawn([*PYTHON_M_TOKENSVC, "serve", "--port", str(svc.port), "--workers", str(request.param),
               "--request-timeout", "2"], svc.env)
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def seconds_until_answer_or_close(port: int, sent: bytes) -> tuple[float, bytes]:
    """Seconds until a whole response head arrives or the server closes, and what arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        start = time.monotonic()
        sock.sendall(sent)
        received = b""
        while b"\r\n\r\n" not in received and (chunk := sock.recv(4096)):
            received += chunk
        return time.monotonic() - start, received


def test_a_stalled_request_head_is_cut_after_the_flags_timeout(service: Service) -> None:
    elapsed, received = seconds_until_answer_or_close(service.port, b"POST /oauth/token HTTP/1.1\r\nHo")
    assert received == b""
    assert 1.5 <= elapsed < 5, elapsed  # 2 s, not the default 10 s


def test_a_stalled_body_is_answered_408_after_the_flags_timeout(service: Service) -> None:
    head = (b"POST /oauth/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 40\r\n\r\ngrant_type=")
    elapsed, received = seconds_until_answer_or_close(service.port, head)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert 1.5 <= elapsed < 5, elapsed
