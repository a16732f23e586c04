"""Keys generated under the data dir when the settings name none: the admin key and the server
key, each made once (racing workers agree on it) and held to the rules of its setting."""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path
from typing import Any, TypeVar

from tokensvc.settings import Settings, SettingsError, check

_T = TypeVar("_T")


def _key_file(path: Path) -> str:
    """Read a generated key, or create it exactly once (O_EXCL) so racing workers agree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def with_generated_keys(settings: Settings) -> Settings:
    """Fill an unset admin key or server key from files under the data dir (made on first use).

    A key file is held to the rules of its setting: an emptied or truncated admin.key would
    otherwise guard the admin API with a key shorter than the setting allows (or none), and an
    emptied secret.key would tag tokens, CSRF tokens and secret verifiers with a key anyone
    knows."""
    changes: dict[str, Any] = {}
    if settings.admin_key is None:
        path = settings.data_dir / "admin.key"
        changes["admin_key"] = _checked_key_file("admin_key", path, _key_file(path))
    if not settings.secret_keys:
        path = settings.data_dir / "secret.key"
        changes["secret_keys"] = _checked_key_file("secret_keys", path, (_key_file(path),))
    return dataclasses.replace(settings, **changes) if changes else settings


def _checked_key_file(name: str, path: Path, value: _T) -> _T:
    problem = check(name, value)
    if problem:
        raise SettingsError(name, f"the key in {path} {problem}; delete the file to have a new one made")
    return value
