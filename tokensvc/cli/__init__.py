"""The `tokensvc` command: `serve` runs the service, `client` and `user` administer it.

A package rather than one module so that each part stays small and reads on its own:
`base` holds the click group `main` and what every command shares (settings as flags, the
errors that end a command), `serve` runs the service, and `admin` holds the `client` and `user`
commands that manage the service's Redis directly. Importing this package imports both command
modules, which registers their commands on `main`; `tokensvc.cli:main` is the console script.
"""

from __future__ import annotations

# Imported for their effect: each registers its commands on `main`.
from tokensvc.cli import admin, serve  # noqa: F401
from tokensvc.cli.base import main

__all__ = ["main"]
