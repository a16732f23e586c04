"""A small synchronous HTTP client for set-up: the admin API, the sign-in pages, /metrics.

Set-up is not timed, so it uses the standard library's http.client over one keep-alive
connection (reopened when the server has closed it)."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from bench.http import FORM, host_port, is_https


class SetupError(RuntimeError):
    """The service refused a set-up call; the message has its answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Http:
    def __init__(self, url: str, admin_key: str | None = None, timeout: float = 60.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.host, self.port = host_port(self.url)
        self.admin_key = admin_key
        self.timeout = timeout
        self.tls = tls
        if is_https(self.url) and tls is None:
            raise ValueError(f"{self.url} needs a TLS context")
        self._conn: http.client.HTTPConnection | None = None

    def _open(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Answer:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._open()
            try:
                self._conn.request(method, path, body=body, headers=dict(headers or {}))
                resp = self._conn.getresponse()
                data = resp.read()
                return Answer(resp.status, resp.getheaders(), data)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def form(self, path: str, fields: Mapping[str, str], headers: Mapping[str, str] | None = None) -> Answer:
        return self.request("POST", path, body=urlencode(fields).encode(),
                            headers={"Content-Type": FORM, **(headers or {})})

    # -- admin API -----------------------------------------------------------------------

    def _admin(self, method: str, path: str, doc: Mapping[str, Any] | None = None) -> Answer:
        if not self.admin_key:
            raise SetupError("set-up needs the admin key: --admin-key or TOKENSVC_ADMIN_KEY")
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        body = None
        if doc is not None:
            body = json.dumps(doc).encode()
            headers["Content-Type"] = "application/json"
        return self.request(method, path, body=body, headers=headers)

    def create_client(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        answer = self._admin("POST", "/admin/clients", doc)
        if answer.status != 201:
            raise SetupError(f"POST /admin/clients answered {answer.status}: {answer.text[:300]}")
        created: dict[str, Any] = answer.json()
        return created

    def create_user(self, username: str, password: str) -> None:
        answer = self._admin("POST", "/admin/users",
                             {"username": username, "password": password, "verified": True})
        if answer.status != 201:
            raise SetupError(f"POST /admin/users answered {answer.status}: {answer.text[:300]}")

    def delete_client(self, client_id: str) -> None:
        self._admin("DELETE", f"/admin/clients/{client_id}")

    def delete_user(self, username: str) -> None:
        self._admin("DELETE", f"/admin/users/{username}")


def metric_values(exposition: str) -> dict[str, float]:
    """`name{labels}` → value for every sample line of a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


# Counters of the secret-verification path besides the three named ones (a verifier store, a
# client cache), kept in the result as they are exposed, so a run records them as soon as the
# service has them.
_RELATED = ("verifier", "client_cache", "secret_cache")


def secret_counters(client: Http) -> dict[str, float] | None:
    """tokensvc's verified-secret cache hits and argon2 runs (None when /metrics is not served),
    and any other `*_total` counter of the secret-verification path, by its exposed name."""
    try:
        answer = client.request("GET", "/metrics")
    except OSError:
        return None
    if answer.status != 200:
        return None
    values = metric_values(answer.text)
    out = {
        "secret_cache_hits": values.get("tokensvc_secret_cache_hits_total", 0.0),
        "argon2_client_secret": values.get('tokensvc_argon2_verifications_total{kind="client_secret"}', 0.0),
        "argon2_password": values.get('tokensvc_argon2_verifications_total{kind="password"}', 0.0),
    }
    for name, value in values.items():
        base = name.split("{", 1)[0]
        if (base.startswith("tokensvc_") and base.endswith("_total") and any(w in base for w in _RELATED)
                and base != "tokensvc_secret_cache_hits_total"):
            out[name] = value
    return out
