"""Prometheus metrics: what SREs watch and are paged on.

Every worker counts into prometheus-client's multiprocess files when
`PROMETHEUS_MULTIPROC_DIR` is set (`tokensvc serve` sets it under the data dir), so one scrape
sums every worker, and a worker that restarts leaves its counts behind rather than losing
them. Without it (tests, an app embedded elsewhere) the default in-process registry is used.

Labels are bounded: route templates (never raw paths), methods, status classes, grant types,
OAuth error codes from a fixed vocabulary, store operations. No client id, token or username
is a label, except the opt-in `metrics_client_label`, which names at most
`CLIENT_LABEL_LIMIT` clients per worker and folds the rest into "other".

Recording is a module-level switch: with `metrics` off, the middleware is not installed and
the recording functions return at once, so the cost of metrics can be measured on vs off.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import platform
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from tokensvc import __version__

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CLIENT_LABEL_LIMIT = 100
# From 50 µs (a cached hot-path step) to 10 s (argon2 at a high cost, a hung Redis timing out).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
ARGON2_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
OAUTH_ERRORS = frozenset({
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope", "unsupported_token_type", "invalid_token",
    "access_denied", "user_locked", "temporarily_unavailable", "server_error", "not_found",
    "method_not_allowed", "invalid_dpop_proof", "use_dpop_nonce",
})
# Why DPoP proofs were refused: malformed or not for the request, without the server nonce,
# replayed, missing where required, signed by another key than the token's.
DPOP_REASONS = ("invalid", "nonce", "replayed", "missing", "key")

HTTP_REQUESTS = Counter("tokensvc_http_requests", "HTTP requests answered.",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("tokensvc_http_request_duration_seconds",
                         "Time from request to the end of the response.", ["route", "method"],
                         buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("tokensvc_http_requests_in_flight", "Requests being served.",
                  multiprocess_mode="livesum")
TOKENS_ISSUED = Counter("tokensvc_tokens_issued", "Token responses issued by the token endpoint.",
                        ["grant_type", "client"])
TOKEN_ERRORS = Counter("tokensvc_token_errors", "Token endpoint error responses by OAuth error code.",
                       ["error"])
CLIENT_AUTH_FAILURES = Counter("tokensvc_client_auth_failures",
                               "Client authentications refused (unknown client or wrong secret).",
                               ["client"])
ARGON2_RUNS = Counter("tokensvc_argon2_verifications", "argon2id verifications actually run.",
                      ["kind"])
ARGON2_LATENCY = Histogram("tokensvc_argon2_duration_seconds", "Time of one argon2id verification.",
                           ["kind"], buckets=ARGON2_BUCKETS)
SECRET_CACHE_HITS = Counter("tokensvc_secret_cache_hits",
                            "Client secrets accepted from the verified-secret cache (no argon2).")
REDIS_LATENCY = Histogram("tokensvc_redis_operation_duration_seconds",
                          "Time of one store operation (one round trip or script).", ["operation"],
                          buckets=LATENCY_BUCKETS)
REDIS_ERRORS = Counter("tokensvc_redis_errors", "Store operations that failed (Redis down, slow, full).",
                       ["operation"])
REVOCATIONS = Counter("tokensvc_revocations", "Tokens revoked at the revocation endpoint, by hint.",
                      ["hint"])
LOCKOUTS = Counter("tokensvc_lockouts", "Users locked after too many failed logins.")
CODES = Counter("tokensvc_authorization_codes", "Authorization codes by event.", ["event"])
REFRESH_REUSE = Counter("tokensvc_refresh_reuse_detected",
                        "Rotated refresh tokens presented again (the grant was revoked).")
DPOP_REFUSED = Counter("tokensvc_dpop_proofs_refused", "DPoP proofs refused (RFC 9449), by reason.",
                       ["reason"])
SIGNING_KEY_AGE = Gauge("tokensvc_signing_key_age_seconds",
                        "Seconds since the JWT signing key in use began signing (read every "
                        "signing_key_refresh seconds).", multiprocess_mode="livemax")
SIGNING_KEYS_PUBLISHED = Gauge("tokensvc_signing_keys_published",
                               "JWT signing keys in the JWKS (next, active and still-valid old "
                               "ones).", multiprocess_mode="livemax")
BUILD_INFO = Gauge("tokensvc_build_info", "Version of tokensvc, Python and redis-py.",
                   ["version", "python", "redis_py"], multiprocess_mode="max")

# Store operations register here as they are defined (store/redis.py), so their series exist
# from the start.
STORE_OPERATIONS: set[str] = set()
# The grant registry's wire names (tokensvc.grants), given by create_app: series exist from 0.
GRANT_TYPES: tuple[str, ...] = ()

ENABLED = True
CLIENT_LABEL = False
_clients_named: set[str] = set()


def configure(enabled: bool, client_label: bool, grant_types: tuple[str, ...] = ()) -> None:
    """Switch recording on or off for this worker; called once by create_app."""
    global ENABLED, CLIENT_LABEL, GRANT_TYPES
    ENABLED = enabled
    GRANT_TYPES = grant_types
    CLIENT_LABEL = client_label
    if os.environ.get(MULTIPROC_ENV) and values.ValueClass.__name__ != "MmapedValue":
        # prometheus-client picks its value store when first imported, which in `tokensvc
        # serve` happens before the CLI has set the directory: switch to the multiprocess
        # files now, before any request, and rebuild the values of the unlabelled metrics
        # (labelled ones make their values on first use, so they follow on their own).
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        _children.clear()
        _bounds.clear()
        _counts.clear()
        _observed.clear()
        for metric in (IN_FLIGHT, SECRET_CACHE_HITS, LOCKOUTS, REFRESH_REUSE, SIGNING_KEY_AGE,
                       SIGNING_KEYS_PUBLISHED):
            metric._metric_init()
    if enabled:
        BUILD_INFO.labels(__version__, platform.python_version(), redis.__version__).set(1)
        _precreate()


def _precreate() -> None:
    """Make every series with a known label value exist at 0 from the start: a counter that
    first appears already at 1 is invisible to rate() and increase() for that first event."""
    for grant_type in GRANT_TYPES:
        _child(TOKENS_ISSUED, grant_type, "")
    for error in (*OAUTH_ERRORS, "other"):
        _child(TOKEN_ERRORS, error)
    for kind in ("client_secret", "password"):
        _child(ARGON2_RUNS, kind)
        _child(ARGON2_LATENCY, kind)
    for event in ("issued", "redeemed", "replayed"):
        _child(CODES, event)
    for hint in ("access_token", "refresh_token", "none"):
        _child(REVOCATIONS, hint)
    for reason in DPOP_REASONS:
        _child(DPOP_REFUSED, reason)
    for operation in STORE_OPERATIONS:
        _child(REDIS_LATENCY, operation)
        _child(REDIS_ERRORS, operation)
    _child(CLIENT_AUTH_FAILURES, "")


def client_label(client_id: str) -> str:
    """The client as a label value: only with the opt-in setting, and for boundedly many."""
    if not CLIENT_LABEL:
        return ""
    if client_id in _clients_named:
        return client_id
    if len(_clients_named) < CLIENT_LABEL_LIMIT:
        _clients_named.add(client_id)
        return client_id
    return "other"


# -- recording -------------------------------------------------------------------------------
#
# The hot path only adds to plain dicts here; `flush()` moves the sums into prometheus-client
# (one value write per series, not per request) every FLUSH_SECONDS, before every scrape this
# worker answers, and when the worker stops. In multiprocess mode a value write is a locked
# mmap update, about a microsecond each and nine per token request, which is what batching
# saves. The price: another worker's latest second is not yet in a scrape, and a worker that
# crashes (rather than stopping) loses at most that second.

FLUSH_SECONDS = 1.0
_children: dict[tuple[object, tuple[str, ...]], Any] = {}
_counts: dict[Any, float] = {}
_observed: dict[Any, list[float]] = {}
_bounds: dict[Any, tuple[float, ...]] = {}
_in_flight = 0


def _child(metric: Any, *labels: str) -> Any:
    """A labelled child, looked up once: `.labels()` takes a lock and builds a key every call."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels) if labels else metric
    return found


def _count(child: Any, amount: float = 1.0) -> None:
    _counts[child] = _counts.get(child, 0.0) + amount


def _observe(child: Any, seconds: float) -> None:
    """One histogram observation: [sum, count in bucket 0, bucket 1, ...] per child."""
    pending = _observed.get(child)
    if pending is None:
        bounds = _bounds.get(child)
        if bounds is None:
            bounds = _bounds[child] = tuple(child._upper_bounds)
        pending = _observed[child] = [0.0] * (len(bounds) + 1)
    pending[0] += seconds
    pending[1 + bisect.bisect_left(_bounds[child], seconds)] += 1


def flush() -> None:
    """Move what was recorded since the last flush into prometheus-client's values."""
    global _counts, _observed
    counts, observed = _counts, _observed
    _counts, _observed = {}, {}
    for child, amount in counts.items():
        child.inc(amount)
    for child, pending in observed.items():
        # The same writes Histogram.observe makes, once per bucket instead of once per request.
        child._sum.inc(pending[0])
        for index, n in enumerate(pending[1:]):
            if n:
                child._buckets[index].inc(n)
    if ENABLED:
        IN_FLIGHT.set(_in_flight)


async def flush_forever() -> None:
    """The worker's flusher; it flushes once more when cancelled at shutdown."""
    try:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            flush()
    finally:
        flush()


def token_issued(grant_type: str, client_id: str) -> None:
    if ENABLED:
        _count(_child(TOKENS_ISSUED, grant_type, client_label(client_id)))


def token_error(error: str) -> None:
    if ENABLED:
        _count(_child(TOKEN_ERRORS, error if error in OAUTH_ERRORS else "other"))


def client_auth_failed(client_id: str) -> None:
    if ENABLED:
        _count(_child(CLIENT_AUTH_FAILURES, client_label(client_id)))


def argon2_ran(kind: str, seconds: float) -> None:
    if ENABLED:
        _count(_child(ARGON2_RUNS, kind))
        _observe(_child(ARGON2_LATENCY, kind), seconds)


def secret_cache_hit() -> None:
    if ENABLED:
        _count(SECRET_CACHE_HITS)


def revoked(hint: str | None) -> None:
    if ENABLED:
        _count(_child(REVOCATIONS, hint or "none"))


def locked_out() -> None:
    if ENABLED:
        _count(LOCKOUTS)


def code_event(event: str) -> None:
    if ENABLED:
        _count(_child(CODES, event))


def dpop_refused(reason: str) -> None:
    if ENABLED:
        _count(_child(DPOP_REFUSED, reason if reason in DPOP_REASONS else "invalid"))


def refresh_reuse() -> None:
    if ENABLED:
        _count(REFRESH_REUSE)


def signing_keys(age_seconds: float, published: int) -> None:
    """Set on every reading of the signing keys (a few seconds apart), not per request."""
    if ENABLED:
        SIGNING_KEY_AGE.set(age_seconds)
        SIGNING_KEYS_PUBLISHED.set(published)


def store_operation(operation: str, seconds: float, failed: bool) -> None:
    if ENABLED:
        _observe(_child(REDIS_LATENCY, operation), seconds)
        if failed:
            _count(_child(REDIS_ERRORS, operation))


def exposition() -> bytes:
    """The scrape body: every worker's files in multiprocess mode, else this process."""
    flush()
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


def worker_exit() -> None:
    """Drop this worker's live gauges (in-flight) from the sum once it stops serving."""
    flush()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_started() -> None:
    global _in_flight
    _in_flight += 1


def request_finished(route: str, method: str, status: int, seconds: float) -> None:
    """One answered request, by route template (never a raw path), method and status class."""
    global _in_flight
    _in_flight -= 1
    if ENABLED:
        method = method if method in _METHODS else "OTHER"
        _count(_child(HTTP_REQUESTS, route, method, _STATUS_CLASS.get(status // 100, "5xx")))
        _observe(_child(HTTP_LATENCY, route, method), seconds)


_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

__all__ = ["CONTENT_TYPE_LATEST", "configure", "exposition"]
