"""Raw HTTP/1.1 for the load generator: requests prebuilt as bytes, a minimal response parser.

No HTTP library runs per request: a request is a `bytes` object written as it is, and a
response is framed by its status line, its `Content-Length` and the blank line. Chunked
responses are not supported (tokensvc and the reference routes always send a length).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

# A response head longer than this without its blank line is not HTTP we can read.
MAX_HEAD = 64 * 1024
_CL = b"\r\ncontent-length:"
_TE = b"\r\ntransfer-encoding:"
_CONN = b"\r\nconnection:"


class ProtocolError(Exception):
    """The bytes received are not a response this parser can frame."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One framed response: status, raw head (status line and headers) and body."""

    status: int
    head: bytes
    body: bytes
    consumed: int
    keep_alive: bool

    def header(self, name: str) -> str | None:
        """The first value of a header, case-insensitively, or None."""
        lower = self.head.lower()
        key = b"\r\n" + name.lower().encode("ascii") + b":"
        i = lower.find(key)
        if i < 0:
            return None
        start = i + len(key)
        end = self.head.find(b"\r\n", start)
        if end < 0:
            end = len(self.head)
        return self.head[start:end].strip().decode("latin-1")

    def headers(self, name: str) -> list[str]:
        """Every value of a header (for Set-Cookie)."""
        out: list[str] = []
        key = name.lower().encode("ascii") + b":"
        for line in self.head.split(b"\r\n")[1:]:
            if line.lower().startswith(key):
                out.append(line[len(key):].strip().decode("latin-1"))
        return out


def parse_response(buf: bytes | bytearray) -> Reply | None:
    """The first complete response in `buf`, or None while more bytes are needed.

    Raises ProtocolError for what cannot be framed: not HTTP, a chunked body, a body
    without a length, an oversized head.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise ProtocolError("response head too long")
        if len(buf) >= 5 and buf[:5] != b"HTTP/":
            raise ProtocolError(f"not an HTTP response: {bytes(buf[:20])!r}")
        return None
    head = bytes(buf[:end])
    if not head.startswith(b"HTTP/1.") or len(head) < 12 or head[8:9] != b" ":
        raise ProtocolError(f"bad status line: {head[:40]!r}")
    try:
        status = int(head[9:12])
    except ValueError:
        raise ProtocolError(f"bad status code: {head[:40]!r}") from None
    lower = head.lower()
    i = lower.find(_CL)
    if i >= 0:
        j = lower.find(b"\r\n", i + len(_CL))
        raw = lower[i + len(_CL): j if j >= 0 else len(lower)].strip()
        if not raw.isdigit():
            raise ProtocolError(f"bad Content-Length: {raw!r}")
        length = int(raw)
    elif lower.find(_TE) >= 0:
        raise ProtocolError("Transfer-Encoding (chunked) responses are not supported")
    elif status in (204, 304) or 100 <= status < 200:
        length = 0
    else:
        raise ProtocolError("response without Content-Length")
    keep_alive = head[5:8] == b"1.1"
    c = lower.find(_CONN)
    if c >= 0:
        j = lower.find(b"\r\n", c + len(_CONN))
        value = lower[c + len(_CONN): j if j >= 0 else len(lower)].strip()
        if value == b"close":
            keep_alive = False
        elif value == b"keep-alive":
            keep_alive = True
    start = end + 4
    total = start + length
    if len(buf) < total:
        return None
    return Reply(status, head, bytes(buf[start:total]), total, keep_alive)


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"only http:// and https:// URLs are supported, got {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def is_https(url: str) -> bool:
    return urlsplit(url).scheme == "https"


def with_connection_close(request: bytes) -> bytes:
    """The request with `Connection: close` after its request line: the server answers and
    closes, so the next request needs a new connection (and, over TLS, a new handshake)."""
    line_end = request.index(b"\r\n")
    return request[:line_end + 2] + b"Connection: close\r\n" + request[line_end + 2:]


def build_request(method: str, path: str, host: str, *, headers: Mapping[str, str] | None = None,
                  body: bytes | None = None) -> bytes:
    """One HTTP/1.1 keep-alive request as bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


FORM = "application/x-www-form-urlencoded"


def form_post(path: str, host: str, fields: Mapping[str, str],
              headers: Mapping[str, str] | None = None) -> bytes:
    """A urlencoded POST, as an OAuth client sends to the token endpoints."""
    return build_request("POST", path, host, headers={"Content-Type": FORM, **(headers or {})},
                         body=urlencode(fields).encode("ascii"))
