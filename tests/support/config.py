"""The test deployment's keys and settings.

In-process apps (`make_settings`) and `tokensvc serve` processes (`service_env`) get the same
ones, so a token minted by either parses with `tests.support.stored.CODEC` and every redirect
names the same issuer.
"""

from __future__ import annotations

import os
from typing import Any

from tokensvc.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789"
SECRET_KEY = "test-server-key-0123456789abcdef0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ISSUER = "http://testserver"  # the in-process client's base URL, so `iss` and links agree

# Cheap argon2 for tests (production defaults are OWASP's minimum); a hash records its own
# parameters, so a later verify with any settings still works.
FAST_HASHING: dict[str, Any] = {"password_time_cost": 1, "password_memory_cost": 1024}
# What every test deployment shares unless a test says otherwise. A short Redis timeout keeps
# the outage tests quick.
TEST_SETTINGS: dict[str, Any] = {
    "admin_key": ADMIN_KEY,
    "secret_keys": (SECRET_KEY,),
    "issuer": ISSUER,
    "redis_timeout": 0.5,
    **FAST_HASHING,
}


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": redis_url, **TEST_SETTINGS, **overrides}
    return Settings(**values)


def _env_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def service_env(**settings: Any) -> dict[str, str]:
    """The test's environment for a `tokensvc` process: none of the caller's TOKENSVC_* (nor
    PROMETHEUS_MULTIPROC_DIR, which `serve` chooses per port), cheap argon2, and `settings` as
    TOKENSVC_<NAME> variables (a tuple as a comma-separated list)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOKENSVC_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    for name, value in {**FAST_HASHING, **settings}.items():
        env[f"TOKENSVC_{name.upper()}"] = _env_value(value)
    return env
