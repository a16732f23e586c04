"""Scenarios: what each one sets up through the admin API, and the requests it sends.

Everything a timed request needs (clients, users, tokens to introspect or revoke, refresh
tokens, authorization codes) is made before the timed phase; the timed phase only sends
prebuilt bytes (a refresh chain builds each next request from the previous answer).
"""

from __future__ import annotations

import html
import json
import re
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from bench import dpop
from bench.admin import Http, SetupError
from bench.http import FORM, Reply, build_request, form_post
from bench.loadgen import ChainSource, CycleSource, MixSource, PoolSource, Source, fetch_all, json_field

SERVICE_SCENARIOS = ("client_credentials", "client_credentials_reuse", "client_credentials_dpop",
                     "password", "refresh",
                     "introspection", "revocation", "token_login", "authorization_code", "mix",
                     "healthz", "many_clients")
# Scenarios with processes of their own (a second tokensvc instance): bench/fleet.py.
FLEET_SCENARIOS = ("cold_start", "scale_out")
# Scenarios that load a protected API checking tokensvc's tokens with the kit: bench/kit.py.
RESOURCE_SCENARIOS = ("resource_jwt", "resource_introspection")
REFERENCE_SCENARIOS = ("static", "noop")
SCENARIOS = SERVICE_SCENARIOS + FLEET_SCENARIOS + RESOURCE_SCENARIOS + REFERENCE_SCENARIOS
# Distinct clients (--clients) of the scenarios that load many.
DEFAULT_CLIENTS = {"many_clients": 20_000, "cold_start": 10_000, "scale_out": 1_000}
# Admin API calls in flight while creating them: enough to keep the service's argon2 threads
# busy, few enough not to queue for long behind them.
CREATE_IN_FLIGHT = 32
# Which reference app route each reference run loads.
REFERENCE_PATHS = {"static": "/static", "noredis": "/token-noredis", "redis": "/token-redis"}
# Pool sizing for scenarios that use each prepared request once, in closed-loop mode: a
# guess of the rate (requests/s) the service may reach; --pool overrides it.
POOL_RATE_GUESS = {"revocation": 8000, "authorization_code": 4000, "client_credentials_dpop": 5000}
MIX_DEFAULT = {"client_credentials": 50, "introspection": 25, "token_login": 10, "refresh": 10,
               "revocation": 5}
MIXABLE = ("client_credentials", "client_credentials_reuse", "password", "refresh", "introspection",
           "revocation", "token_login")
PASSWORD = "bench-password-0123456789"
REDIRECT_URI = "http://127.0.0.1/cb"
# RFC 7636 appendix B.
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
TOKEN_POOL = 256


@dataclass
class Workload:
    """A prepared scenario: the source of its requests, and what wrk needs to send them."""

    name: str
    source: Source
    kind: str  # cycle | pool | chain | mix
    requests: list[bytes]
    chain: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    """Creates clients and users through the admin API, and prepares tokens with the generator."""

    http: Http
    host: str
    port: int
    connections: int
    users: int
    pool: int | None
    pool_seconds: float
    rate: float | None
    fleet_size: int = DEFAULT_CLIENTS["many_clients"]
    tls: ssl.SSLContext | None = None
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    clients: list[str] = field(default_factory=list)
    usernames: list[str] = field(default_factory=list)
    _cc: dict[bool, dict[str, Any]] = field(default_factory=dict)
    log: Callable[[str], None] = lambda _msg: None

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    # -- what scenarios share ----------------------------------------------------------

    def client(self, reuse: bool = False) -> dict[str, Any]:
        """A confidential client (client_secret_post) with client_credentials, password and
        refresh_token; reuse_tokens set explicitly so a global default does not change it."""
        if reuse not in self._cc:
            doc = {"name": f"bench {self.run_id} {'reuse' if reuse else 'cc'}",
                   "scopes": ["read", "write"],
                   "grant_types": ["client_credentials", "password", "refresh_token"],
                   "token_endpoint_auth_method": "client_secret_post", "reuse_tokens": reuse}
            created = self.http.create_client(doc)
            self.clients.append(created["client_id"])
            self._cc[reuse] = created
        return self._cc[reuse]

    def user_names(self, n: int) -> list[str]:
        while len(self.usernames) < n:
            name = f"bench-{self.run_id}-{len(self.usernames)}"
            self.http.create_user(name, PASSWORD)
            self.usernames.append(name)
        return self.usernames[:n]

    def creds(self, client: dict[str, Any]) -> dict[str, str]:
        return {"client_id": client["client_id"], "client_secret": client["client_secret"]}

    def cc_request(self, client: dict[str, Any]) -> bytes:
        return form_post("/oauth/token", self.hostport,
                         {"grant_type": "client_credentials", **self.creds(client)})

    def password_request(self, client: dict[str, Any], username: str) -> bytes:
        return form_post("/oauth/token", self.hostport,
                         {"grant_type": "password", "username": username, "password": PASSWORD,
                          **self.creds(client)})

    async def fetch(self, requests: Sequence[bytes], what: str, expect: int = 200) -> list[Reply]:
        started = time.perf_counter()
        replies = await fetch_all(self.host, self.port, requests, connections=min(32, self.connections),
                                  tls=self.tls)
        bad = [r for r in replies if r.status != expect]
        if bad:
            raise SetupError(f"preparing {what}: {len(bad)} of {len(replies)} answers were not "
                             f"{expect}; first: {bad[0].status} {bad[0].body[:300]!r}")
        self.log(f"prepared {len(replies)} {what} in {time.perf_counter() - started:.1f} s")
        return replies

    async def access_tokens(self, n: int) -> list[str]:
        """`n` fresh access tokens of the (reuse off) client."""
        req = self.cc_request(self.client())
        replies = await self.fetch([req] * n, "access tokens")
        return [_field(r, "access_token") for r in replies]

    async def fleet(self, n: int) -> list[dict[str, str]]:
        """`n` confidential clients (each its own secret, client_secret_post, reuse off),
        created concurrently through `POST /admin/clients`, then each used once (one
        client_credentials grant), as the clients of a deployment that has been running.

        Each creation hashes a secret with argon2id at the service's cost, which is why the
        bench starts the service with a cheap cost for these scenarios unless told otherwise."""
        key = self.http.admin_key
        if not key:
            raise SetupError("set-up needs the admin key: --admin-key or TOKENSVC_ADMIN_KEY")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        requests = [build_request("POST", "/admin/clients", self.hostport, headers=headers, body=json.dumps({
            "name": f"bench {self.run_id} fleet {i}", "scopes": ["read"],
            "grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post",
            "reuse_tokens": False}).encode()) for i in range(n)]
        started = time.perf_counter()
        every = max(100, min(2000, n // 10))

        def progress(done: int) -> None:
            spent = time.perf_counter() - started
            self.log(f"created {done}/{n} clients in {spent:.0f} s ({done / max(spent, 1e-9):.0f}/s)")

        replies = await fetch_all(self.host, self.port, requests, connections=CREATE_IN_FLIGHT,
                                  timeout=max(600.0, n * 0.25), tls=self.tls, progress=progress, every=every)
        creds: list[dict[str, str]] = []
        refused = [r for r in replies if r.status != 201]
        for reply in replies:
            if reply.status == 201:
                doc = json.loads(reply.body)
                self.clients.append(doc["client_id"])
                creds.append({"client_id": doc["client_id"], "client_secret": doc["client_secret"]})
        if refused:
            raise SetupError(f"POST /admin/clients: {len(refused)} of {n} refused; first: "
                             f"{refused[0].status} {refused[0].body[:300]!r}")
        self.log(f"created {n} clients in {time.perf_counter() - started:.1f} s")
        await self.fetch([self.cc_request(c) for c in creds], "first grants (each client used once)")
        return creds

    def pool_size(self, name: str, share: float = 1.0) -> int:
        if self.pool is not None:
            return max(1, int(self.pool * share))
        if self.rate is not None:
            return int(self.rate * share * self.pool_seconds * 1.05) + self.connections
        return int(POOL_RATE_GUESS.get(name, 8000) * share * self.pool_seconds) + self.connections

    def cleanup(self) -> None:
        """Remove what set-up created (for runs against a service that stays up)."""
        for client_id in self.clients:
            try:
                self.http.delete_client(client_id)
            except OSError:
                pass
        for username in self.usernames:
            try:
                self.http.delete_user(username)
            except OSError:
                pass

    # -- scenarios ------------------------------------------------------------------------

    async def prepare(self, name: str, mix: dict[str, int] | None = None,
                      mix_by_connection: bool = False) -> Workload:
        if name == "mix":
            return await self.mix(mix or MIX_DEFAULT, mix_by_connection)
        if name == "healthz":
            req = build_request("GET", "/healthz", self.hostport)
            return Workload(name, CycleSource([req], name), "cycle", [req])
        maker = getattr(self, "_" + name, None)
        if maker is None:
            raise ValueError(f"unknown scenario {name!r}")
        workload: Workload = await maker(1.0)
        return workload

    async def _client_credentials(self, share: float) -> Workload:
        req = self.cc_request(self.client())
        return Workload("client_credentials", CycleSource([req], "client_credentials"), "cycle", [req])

    async def _client_credentials_dpop(self, share: float) -> Workload:
        """client_credentials with a DPoP proof each (RFC 9449): a bound token per request. The
        proofs are signed here, by the generator, before the timed phase (bench/dpop.py)."""
        n = self.pool_size("client_credentials_dpop", share)
        reqs, info = dpop.token_requests(self.hostport, dpop.token_endpoint(self.http),
                                         self.creds(self.client()), n, self.pool_seconds)
        self.log(f"signed {n} DPoP proofs in {info['signing_seconds']} s")
        return Workload("client_credentials_dpop", PoolSource(reqs, "client_credentials_dpop"), "pool", reqs,
                        info=info)

    async def _many_clients(self, share: float) -> Workload:
        """`fleet_size` clients, each used once in set-up; the timed phase cycles through all of
        them, one request per client in turn, so each client comes back every N requests."""
        started = time.perf_counter()
        creds = await self.fleet(self.fleet_size)
        reqs = [self.cc_request(c) for c in creds]
        return Workload("many_clients", CycleSource(reqs, "many_clients"), "cycle", reqs,
                        info={"clients": len(creds), "each_used_once_before": True,
                              "setup_seconds": round(time.perf_counter() - started, 1)})

    async def _client_credentials_reuse(self, share: float) -> Workload:
        req = self.cc_request(self.client(reuse=True))
        return Workload("client_credentials_reuse", CycleSource([req], "client_credentials_reuse"),
                        "cycle", [req])

    async def _password(self, share: float) -> Workload:
        client = self.client()
        names = self.user_names(max(1, self.users))
        reqs = [self.password_request(client, u) for u in names]
        return Workload("password", CycleSource(reqs, "password"), "cycle", reqs,
                        info={"users": len(names)})

    async def _introspection(self, share: float) -> Workload:
        client = self.client()
        tokens = await self.access_tokens(TOKEN_POOL)
        reqs = [form_post("/oauth/introspect", self.hostport, {"token": t, **self.creds(client)})
                for t in tokens]
        return Workload("introspection", CycleSource(reqs, "introspection"), "cycle", reqs,
                        info={"tokens": len(tokens)})

    async def _token_login(self, share: float) -> Workload:
        tokens = await self.access_tokens(TOKEN_POOL)
        reqs = [build_request("POST", "/login", self.hostport, headers={"Authorization": f"Bearer {t}"},
                              body=b"") for t in tokens]
        return Workload("token_login", CycleSource(reqs, "token_login"), "cycle", reqs,
                        info={"tokens": len(tokens)})

    async def _revocation(self, share: float) -> Workload:
        client = self.client()
        n = self.pool_size("revocation", share)
        tokens = await self.access_tokens(n)
        reqs = [form_post("/oauth/revoke", self.hostport,
                          {"token": t, "token_type_hint": "access_token", **self.creds(client)})
                for t in tokens]
        return Workload("revocation", PoolSource(reqs, "revocation"), "pool", reqs, info={"pool": n})

    async def _refresh(self, share: float) -> Workload:
        """Rotation chains, one per connection: each answer holds the next refresh token."""
        client = self.client()
        names = self.user_names(min(16, max(1, self.users)))
        n = self.connections + 16
        grants = [self.password_request(client, names[i % len(names)]) for i in range(n)]
        starts = [_field(r, "refresh_token") for r in await self.fetch(grants, "refresh tokens")]
        prefix = urlencode({"grant_type": "refresh_token", **self.creds(client)}) + "&refresh_token="
        head = f"POST /oauth/token HTTP/1.1\r\nHost: {self.hostport}\r\nContent-Type: {FORM}\r\n"

        def build(token: str) -> bytes:
            body = prefix + token
            return (f"{head}Content-Length: {len(body)}\r\n\r\n{body}").encode()

        source = ChainSource(starts, build, json_field("refresh_token"), "refresh")
        chain = {"path": "/oauth/token", "prefix": prefix, "field": "refresh_token", "starts": starts}
        return Workload("refresh", source, "chain", [build(t) for t in starts], chain=chain,
                        info={"chains": len(starts)})

    async def _authorization_code(self, share: float) -> Workload:
        """Sign in once through the pages (login form, consent), then collect one code per
        GET /oauth/authorize with the session cookie (consent remembered); time the redemptions."""
        doc = {"name": f"bench {self.run_id} web", "scopes": ["read", "write"],
               "grant_types": ["authorization_code", "refresh_token"], "redirect_uris": [REDIRECT_URI],
               "token_endpoint_auth_method": "client_secret_post"}
        client = self.http.create_client(doc)
        self.clients.append(client["client_id"])
        username = self.user_names(1)[0]
        query = urlencode({"response_type": "code", "client_id": client["client_id"],
                           "redirect_uri": REDIRECT_URI, "scope": "read write", "state": "bench",
                           "code_challenge": CHALLENGE, "code_challenge_method": "S256"})
        path = "/oauth/authorize?" + query
        session = sign_in(self.http, path, username, PASSWORD)
        n = self.pool_size("authorization_code", share)
        get = build_request("GET", path, self.hostport, headers={"Cookie": f"tsv_session={session}"})
        replies = await self.fetch([get] * n, "authorization codes", expect=302)
        codes = [_code(r) for r in replies]
        reqs = [form_post("/oauth/token", self.hostport,
                          {"grant_type": "authorization_code", "code": c, "redirect_uri": REDIRECT_URI,
                           "code_verifier": VERIFIER, **self.creds(client)}) for c in codes]
        return Workload("authorization_code", PoolSource(reqs, "authorization_code"), "pool", reqs,
                        info={"pool": n})

    async def mix(self, weights: dict[str, int], by_connection: bool = False) -> Workload:
        total = sum(weights.values())
        parts: list[tuple[Source, int]] = []
        info: dict[str, Any] = {"weights": dict(weights),
                                "mix_by": "connection" if by_connection else "request"}
        for name, weight in weights.items():
            if name not in MIXABLE:
                raise ValueError(f"{name!r} cannot be part of a mix; use {', '.join(MIXABLE)}")
            if weight <= 0:
                continue
            part: Workload = await getattr(self, "_" + name)(weight / total)
            parts.append((part.source, weight))
        source = MixSource(parts, connections=self.connections if by_connection else None)
        return Workload("mix", source, "mix", [], info=info)


def reference_workload(kind: str, hostport: str) -> Workload:
    """The reference app's route for `--reference KIND`, loaded like a token request."""
    path = REFERENCE_PATHS[kind]
    if kind == "static":
        req = build_request("GET", path, hostport)
    else:
        # The same form a client_credentials request carries, secret of the same length.
        req = form_post(path, hostport, {"grant_type": "client_credentials",
                                         "client_id": secrets.token_urlsafe(16),
                                         "client_secret": "tsv_cs_" + secrets.token_urlsafe(32)})
    return Workload(f"reference-{kind}", CycleSource([req], f"reference-{kind}"), "cycle", [req])


def _field(reply: Reply, name: str) -> str:
    value = json_field(name)(reply)
    if value is None:
        raise SetupError(f"the answer has no {name}: {reply.body[:300]!r}")
    return value


def _code(reply: Reply) -> str:
    location = reply.header("location") or ""
    codes = parse_qs(urlsplit(location).query).get("code")
    if not codes:
        raise SetupError(f"the authorization redirect carries no code: {location[:300]!r}")
    return codes[0]


_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def _hidden_fields(page: str) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page)}


def _cookie(set_cookies: list[str], name: str) -> str | None:
    for header in set_cookies:
        if header.startswith(name + "="):
            return header.split(";", 1)[0].split("=", 1)[1]
    return None


def sign_in(client: Http, path: str, username: str, password: str) -> str:
    """Walk the login form and the consent form as a browser would; the session cookie.

    The forms carry CSRF fields bound to the visitor cookie (login) and to the session
    (consent); both are taken from the pages."""
    page = client.request("GET", path)
    if page.status != 200 or 'value="login"' not in page.text:
        raise SetupError(f"GET {path[:80]} did not show the login form ({page.status}): {page.text[:300]}")
    visitor = _cookie(page.all("set-cookie"), "tsv_visitor")
    if visitor is None:
        raise SetupError("the login page set no visitor cookie")
    fields = {**_hidden_fields(page.text), "username": username, "password": password}
    consent = client.form("/oauth/authorize", fields, headers={"Cookie": f"tsv_visitor={visitor}"})
    session = _cookie(consent.all("set-cookie"), "tsv_session")
    if session is None:
        raise SetupError(f"signing in failed ({consent.status}): {consent.text[:300]}")
    if consent.status in (302, 303):
        return session  # consent was already remembered
    if consent.status != 200 or 'value="approve"' not in consent.text:
        raise SetupError(f"no consent form after signing in ({consent.status}): {consent.text[:300]}")
    # the consent page has two forms (decision, sign-out); the first one's fields come first
    decision = consent.text.split("</form>", 1)[0]
    fields = {**_hidden_fields(decision), "action": "approve"}
    approved = client.form("/oauth/authorize", fields,
                           headers={"Cookie": f"tsv_visitor={visitor}; tsv_session={session}"})
    if approved.status != 303 or "code=" not in (approved.header("location") or ""):
        raise SetupError(f"approving did not redirect with a code ({approved.status}): {approved.text[:300]}")
    return session
