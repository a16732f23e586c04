"""Settings: one frozen value read once at start-up from flags and `TOKENSVC_*` variables.

Every option exists both as a CLI flag (`--access-token-ttl`) and as an environment
variable (`TOKENSVC_ACCESS_TOKEN_TTL`). A bad or unknown setting stops the service at
start with a message that names it, rather than surfacing as odd behaviour under load.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "TOKENSVC_"
ACCESS_TOKEN_FORMATS = ("opaque", "jwt")
SIGNING_ALGS = ("ES256", "EdDSA")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting is unknown or malformed; the message names it."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(f"setting {ENV_PREFIX}{name.upper()} (--{name.replace('_', '-')}): {message}")


@dataclass(frozen=True, slots=True)
class Option:
    """How one setting is parsed and documented, shared by the env reader and the CLI."""

    name: str
    help: str
    parse: Callable[[str], Any]
    check: Callable[[Any], str | None] = lambda _: None


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {raw!r}")


def _int(raw: str) -> int:
    return int(raw.strip(), 10)


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _networks(raw: str) -> tuple[Network, ...]:
    """`192.0.2.7, 10.0.0.0/8, ::1`: addresses (each its own /32 or /128) or CIDR networks."""
    found: list[Network] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            found.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ValueError(f"expected IP addresses or CIDR networks separated by commas: {exc}") from None
    return tuple(found)


def _str(raw: str) -> str:
    return raw.strip()


def _at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be at least {low}, got {v}"


# Lifetimes beyond ten years are mistakes (a typo'd unit), and keep epoch milliseconds far from
# the 64-bit limits of Redis TTLs and of the JSON codec.
MAX_TTL = 10 * 365 * 86400


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}, got {v}"


def _redis_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return f"must be a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r}"
    if parts.scheme != "unix" and not parts.hostname:
        return "names no host"
    return None


def _secret_keys(keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if len(key) < 32:
            return "each key must be at least 32 characters (use `openssl rand -hex 32`)"
    return None


def _issuer(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        return "must be an http(s) URL without query or fragment"
    return None


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else f"must be one of {', '.join(allowed)}, got {v!r}"


# What the consent page says for each scope; a deployment names its own scopes in a setting.
DEFAULT_SCOPE_DESCRIPTIONS: tuple[tuple[str, str], ...] = (
    ("read", "See your data"),
    ("write", "Change your data"),
    ("offline_access", "Keep access while you are not using it"),
)


def _descriptions(raw: str) -> tuple[tuple[str, str], ...]:
    """`read=See your data;write=Change your data` (`;` between pairs, `=` in each)."""
    pairs: list[tuple[str, str]] = []
    for item in raw.split(";"):
        if not item.strip():
            continue
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise ValueError(f"expected scope=description pairs separated by ';', got {item!r}")
        pairs.append((name.strip(), text.strip()))
    return tuple(pairs)


@dataclass(frozen=True, slots=True)
class Settings:
    """The service's configuration. Field names are the settings' names."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_timeout: float = 1.0
    redis_pool_size: int = 64
    redis_wait_replicas: int = 0
    data_dir: Path = Path("var")
    admin_key: str | None = None
    secret_keys: tuple[str, ...] = ()
    issuer: str | None = None
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 14 * 24 * 3600
    code_ttl: int = 60
    access_token_format: str = "opaque"  # noqa: S105 -- a format's name, not a secret
    signing_alg: str = "ES256"
    signing_key_rotation: int = 7 * 86400
    signing_key_publish_ahead: int = 300
    signing_key_refresh: float = 5.0
    allow_plain_pkce: bool = False
    dpop_nonce: bool = False
    session_ttl: int = 8 * 3600
    consent_ttl: int = 90 * 86400
    scope_descriptions: tuple[tuple[str, str], ...] = DEFAULT_SCOPE_DESCRIPTIONS
    open_registration: bool = False
    registration_rate_limit: int = 10
    trusted_proxies: tuple[Network, ...] = ()
    reuse_tokens: bool = False
    refresh_grace: int = 0
    max_user_login_attempts: int = 5
    lockout_period: int = 0
    password_time_cost: int = 2
    password_memory_cost: int = 19456
    password_parallelism: int = 1
    secret_cache_size: int = 100_000
    argon2_per_worker: bool = False
    fleet_heartbeat: float = 5.0
    client_auth_failure_limit: int = 20
    client_auth_failure_window: int = 60
    max_body_size: int = 65536
    request_timeout: float = 10.0
    keep_alive_timeout: int = 15
    retry_after: int = 1
    log_level: str = "info"
    access_log: bool = False
    metrics: bool = True
    metrics_port: int = 0
    metrics_client_label: bool = False

    @property
    def issuer_url(self) -> str:
        """The RFC 8414 issuer: the setting, or where this process listens."""
        scheme = "https" if self.ssl_certfile is not None else "http"
        return (self.issuer or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    def to_env(self) -> dict[str, str]:
        """The settings as `TOKENSVC_*` variables, so worker processes read the same values."""
        env: dict[str, str] = {}
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if value is None:
                continue
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif opt.name == "scope_descriptions":
                text = ";".join(f"{name}={words}" for name, words in value)
            elif isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            else:
                text = str(value)
            env[ENV_PREFIX + opt.name.upper()] = text
        return env


def _float(raw: str) -> float:
    return float(raw.strip())


def _path(raw: str) -> Path:
    return Path(raw.strip())


def _readable(path: Path | None) -> str | None:
    if path is None or path.is_file() and os.access(path, os.R_OK):
        return None
    return f"{path} is not a readable file"


OPTIONS: tuple[Option, ...] = (
    Option("host", "Address to listen on.", _str),
    Option("port", "TCP port to listen on.", _int, lambda v: None if 0 < v < 65536 else "must be 1-65535"),
    Option("workers", "Worker processes.", _int, _at_least(1)),
    Option("ssl_certfile", "Serve HTTPS with this PEM certificate (chain); needs ssl_keyfile.", _path,
           _readable),
    Option("ssl_keyfile", "The PEM private key of ssl_certfile.", _path, _readable),
    Option("redis_url", "Redis URL (redis://, rediss://, unix://); none starts a private redis-server.",
           _str, _redis_url),
    Option("redis_cluster", "Treat the Redis URL as any node of a Redis Cluster.", _bool),
    Option("redis_timeout", "Seconds before a Redis call counts as an outage (503).", _float,
           lambda v: None if 0 < v <= 30 else "must be between 0 and 30 seconds"),
    Option("redis_pool_size", "Redis connections per worker (per node on a cluster).", _int,
           _at_least(1)),
    Option("redis_wait_replicas", "After each token write (issue, reuse, rotation, code "
           "redemption, revocation), WAIT until this many replicas of the node holding it have "
           "it (at most half of redis_timeout) before answering, so a failover does not lose "
           "it; fewer in time is logged, not refused. 0 = do not wait.", _int,
           _between(0, 16)),
    Option("data_dir", "Where the embedded Redis and generated keys live.", _path),
    Option("admin_key", "Bearer key of the admin API; generated under the data dir when unset.", _str,
           lambda v: None if v is None or len(v) >= 16 else "must be at least 16 characters"),
    Option("secret_keys", "Comma-separated server keys that tag tokens (newest first); "
           "every instance must share them. Generated under the data dir when unset.", _keys,
           _secret_keys),
    Option("issuer", "Public base URL of the service (RFC 8414 issuer).", _str, _issuer),
    Option("access_token_ttl", "Default access token lifetime, seconds.", _int, _between(1, MAX_TTL)),
    Option("refresh_token_ttl", "Default refresh token lifetime, seconds.", _int, _between(1, MAX_TTL)),
    Option("code_ttl", "Authorization code lifetime, seconds.", _int, _between(1, MAX_TTL)),
    Option("access_token_format", "Access tokens of clients that do not choose: opaque or jwt "
           "(RFC 9068).", lambda s: s.strip().lower(), _one_of(*ACCESS_TOKEN_FORMATS)),
    Option("signing_alg", "Algorithm of new JWT signing keys: ES256 or EdDSA.", _str,
           _one_of(*SIGNING_ALGS)),
    Option("signing_key_rotation", "Seconds a JWT signing key signs before the next one.", _int,
           _between(2, MAX_TTL)),
    Option("signing_key_publish_ahead", "Seconds a new JWT signing key is published before it "
           "signs.", _int, _between(1, 86400)),
    Option("signing_key_refresh", "Seconds between a worker's readings of the signing keys.",
           _float, lambda v: None if 0.05 <= v <= 3600 else "must be between 0.05 and 3600"),
    Option("allow_plain_pkce", "Accept PKCE method `plain` (RFC 7636); S256 only when off.", _bool),
    Option("dpop_nonce", "Demand a server nonce in DPoP proofs (RFC 9449 §8).", _bool),
    Option("session_ttl", "Seconds a login session on the authorization pages lasts.", _int,
           _between(60, MAX_TTL)),
    Option("consent_ttl", "Seconds a user's consent to a client is remembered; 0 never.", _int,
           _between(0, MAX_TTL)),
    Option("scope_descriptions", "Consent-page wording: `scope=words;scope=words`.", _descriptions),
    Option("open_registration", "Let anyone register clients (RFC 7591) without the admin key.",
           _bool),
    Option("registration_rate_limit", "Open registrations per remote address per hour.", _int,
           _at_least(1)),
    Option("trusted_proxies", "Comma-separated addresses or CIDR networks of the reverse proxies "
           "whose X-Forwarded-For / Forwarded (RFC 7239) name the client; from any other peer "
           "they are ignored, and rate limits and audit lines use the peer's address.", _networks),
    Option("reuse_tokens", "Return the still-valid token for identical requests (finAPI).", _bool),
    Option("refresh_grace", "Seconds a just-rotated refresh token still works.", _int,
           _between(0, 3600)),
    Option("max_user_login_attempts", "Consecutive password failures before a user is locked.",
           _int, _at_least(1)),
    Option("lockout_period", "Seconds a lockout lasts; 0 keeps it until an admin unlocks.", _int,
           _between(0, MAX_TTL)),
    Option("password_time_cost", "argon2id iterations for passwords and secrets.", _int, _at_least(1)),
    Option("password_memory_cost", "argon2id memory in KiB.", _int, _at_least(8)),
    Option("password_parallelism", "argon2id lanes.", _int, _at_least(1)),
    Option("secret_cache_size", "Client records (with their secret verifiers) a worker keeps in "
           "memory, least recently used out first (about 1 KiB each; deploy/SIZING.md).", _int,
           _at_least(1)),
    Option("argon2_per_worker", "Do not keep keyed verifiers of client secrets in Redis: every "
           "worker runs argon2 once per secret it sees (the behaviour before verifiers).", _bool),
    Option("fleet_heartbeat", "Seconds between a worker's entries in the deployment's registry "
           "(which server key it signs with and which it accepts); a worker silent for three "
           "beats is dropped from it.", _float,
           lambda v: None if 0.1 <= v <= 60 else "must be between 0.1 and 60 seconds"),
    Option("client_auth_failure_limit", "Failed secret checks per client in a window before its "
           "uncached authentications are refused (429).", _int, _at_least(1)),
    Option("client_auth_failure_window", "Seconds in which failed secret checks are counted.", _int,
           _between(1, 86400)),
    Option("max_body_size", "Largest request body accepted, bytes (413 beyond).", _int, _at_least(1024)),
    Option("request_timeout", "Seconds a request's head may take to arrive (the connection is "
           "closed beyond), then its body (408 beyond).",
           _float, lambda v: None if 0 < v <= 3600 else "must be > 0 and <= 3600"),
    Option("keep_alive_timeout", "Seconds an idle keep-alive connection is kept open (uvicorn's "
           "timeout_keep_alive); a load balancer in front should use a shorter idle timeout.", _int,
           _between(1, 3600)),
    Option("retry_after", "Retry-After seconds sent with 503.", _int, _at_least(1)),
    Option("log_level", "Log level.", lambda s: s.strip().lower(),
           _one_of("critical", "error", "warning", "info", "debug")),
    Option("access_log", "Log one line per request (uvicorn's access log; costs throughput).",
           _bool),
    Option("metrics", "Record Prometheus metrics (off: no recording at all, for comparison).", _bool),
    Option("metrics_port", "Serve /metrics on this port instead of the service port; 0 = the "
           "service port.", _int, lambda v: None if 0 <= v <= 65535 else "must be 0-65535"),
    Option("metrics_client_label", "Add a client label to per-client metrics (at most 100 clients "
           "per worker are named, the rest are 'other').", _bool),
)
_BY_NAME = {opt.name: opt for opt in OPTIONS}


def check(name: str, value: Any) -> str | None:
    """What is wrong with a value of the setting `name`, or None."""
    return _BY_NAME[name].check(value)


def load(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `TOKENSVC_*` variables, then explicit overrides (CLI flags win)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        opt = _BY_NAME.get(name)
        if opt is None:
            raise SettingsError(name, "unknown setting")
        try:
            values[name] = opt.parse(raw)
        except ValueError as exc:
            raise SettingsError(name, str(exc)) from None
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in _BY_NAME:
            raise SettingsError(name, "unknown setting")
        if isinstance(value, str):
            try:
                value = _BY_NAME[name].parse(value)
            except ValueError as exc:
                raise SettingsError(name, str(exc)) from None
        values[name] = value
    for name, value in values.items():
        problem = _BY_NAME[name].check(value)
        if problem:
            raise SettingsError(name, problem)
    if bool(values.get("ssl_certfile")) != bool(values.get("ssl_keyfile")):
        raise SettingsError("ssl_keyfile", "ssl_certfile and ssl_keyfile go together")
    if values.get("redis_cluster") and not values.get("redis_url"):
        raise SettingsError("redis_cluster", "needs a redis_url naming a cluster node")
    timing = Settings(**{k: v for k, v in values.items() if k.startswith("signing_key_")})
    # Every worker reads a new signing key (twice) before it signs, and a key signs longer than
    # it waits (tokensvc/signing.py).
    if timing.signing_key_refresh * 2 > timing.signing_key_publish_ahead:
        raise SettingsError("signing_key_refresh", "must be at most half of signing_key_publish_ahead")
    if timing.signing_key_rotation <= timing.signing_key_publish_ahead:
        raise SettingsError("signing_key_rotation", "must be longer than signing_key_publish_ahead")
    return Settings(**values)


def admin_key_of(settings: Settings) -> str:
    """The admin key, or a refusal to build the admin API and console without one.

    An explicit check rather than an assert, which `python -O` would drop."""
    if not settings.admin_key:
        raise SettingsError("admin_key", "is not set; the admin API is never unprotected")
    return settings.admin_key
