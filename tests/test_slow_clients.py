"""Slow and hostile clients against a real `tokensvc serve`, over raw sockets.

An idle keep-alive connection is closed after keep_alive_timeout (uvicorn's timeout_keep_alive);
a body that never completes is answered 408 after request_timeout (params.read_body: uvicorn
has no request-read timeout of its own); a body over max_body_size is answered 413 as soon as
its Content-Length is seen, without the service reading it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.redis_servers import RedisServer
from tests.support.service import Service

KEEP_ALIVE = 2
REQUEST_TIMEOUT = 2
SLACK = 4.0  # scheduling on a loaded CI machine


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    work: Path = tmp_path_factory.mktemp("slow-clients")
    redis = RedisServer(work / "redis")
    redis.start()
    svc = Service.deployed(redis.url, work / "var", keep_alive_timeout=KEEP_ALIVE,
                           request_timeout=REQUEST_TIMEOUT, log_level="warning")
    try:
        svc.start().wait_ready()
        yield "127.0.0.1", svc.port
    finally:
        svc.stop()
        redis.stop()


def connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=KEEP_ALIVE + REQUEST_TIMEOUT + 2 * SLACK)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response, framed by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside the body"
        body += chunk
    return status, headers, body[:length]


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the peer closes (reads nothing more), failing past `seconds`."""
    sock.settimeout(seconds)
    start = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {seconds} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_an_idle_keep_alive_connection_is_closed(served: tuple[str, int]) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection", "keep-alive") != "close"
        waited = closed_within(sock, KEEP_ALIVE + SLACK)
        assert waited >= KEEP_ALIVE - 0.5


def test_a_body_that_never_completes_is_answered_408(served: tuple[str, int]) -> None:
    with connect(served) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
                     b"grant_type=")
        status, _, body = read_response(sock)
        took = time.monotonic() - start
        assert status == 408, body
        assert orjson.loads(body)["error"] == "invalid_request"
        assert REQUEST_TIMEOUT - 0.5 <= took <= REQUEST_TIMEOUT + SLACK
        # The rest of the body can never be told from a next request: the connection ends.
        closed_within(sock, KEEP_ALIVE + SLACK)


def test_a_trickled_body_is_cut_at_the_same_bound(served: tuple[str, int]) -> None:
    """A byte at a time, each well within any idle timeout: the whole body still has a deadline."""
    with connect(served) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /oauth/introspect HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n")
        sock.settimeout(0.5)
        answer = b""
        while time.monotonic() - start < REQUEST_TIMEOUT + SLACK:
            try:
                sock.sendall(b"a")
            except OSError:
                break
            try:
                answer += sock.recv(65536)
                if b"\r\n\r\n" in answer:
                    break
            except TimeoutError:
                continue
        took = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert took <= REQUEST_TIMEOUT + SLACK


def test_a_2_mb_body_is_refused_413(served: tuple[str, int]) -> None:
    size = 2 * 1024 * 1024
    with connect(served) as sock:
        sock.sendall(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     + f"Content-Length: {size}\r\n\r\n".encode() + b"a" * 65536)
        status, _, body = read_response(sock)
        assert status == 413, body
        assert orjson.loads(body)["error"] == "invalid_request"


def test_a_connection_that_sends_nothing_is_closed(served: tuple[str, int]) -> None:
    with connect(served) as sock:
        assert closed_within(sock, REQUEST_TIMEOUT + SLACK) >= REQUEST_TIMEOUT - 0.5


def test_headers_trickled_a_byte_at_a_time_are_cut(served: tuple[str, int]) -> None:
    head = b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with connect(served) as sock:
        start = time.monotonic()
        sock.settimeout(0.5)
        try:
            for byte in head:  # a byte every 50 ms: the head never completes in time
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                assert time.monotonic() - start < REQUEST_TIMEOUT + SLACK, "still open"
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - start < REQUEST_TIMEOUT + SLACK
        closed_within(sock, SLACK)


def test_a_keep_alive_connection_gets_a_new_deadline_per_request(served: tuple[str, int]) -> None:
    """Two requests on one connection, each head sent at once after a pause shorter than both
    timeouts, are both answered: the deadline restarts with each request."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(served) as sock:
        for _ in range(2):
            time.sleep(REQUEST_TIMEOUT / 2)
            sock.sendall(request)
            status, _, _ = read_response(sock)
            assert status == 200
