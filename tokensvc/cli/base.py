"""The `tokensvc` click group and what all its commands share.

Every setting of `tokensvc.settings.OPTIONS` can be a flag, generated from that table so that
a new setting can never be missing from the CLI. The flags are plain strings handed to
`settings.load`, which also reads `TOKENSVC_*`: one parser, so a bad value gets the same
message (naming the setting) whether it came from a flag or from the environment.

The command modules (`serve`, `admin`) register on `main` from here, and the package imports
them; nothing here imports them, so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click

from tokensvc import __version__, settings as settings_mod
from tokensvc.settings import ENV_PREFIX, OPTIONS, Option, Settings, SettingsError

FC = TypeVar("FC", bound=Callable[..., Any])

DEFAULTS = Settings()


class CliError(click.ClickException):
    """A failure the user can act on: printed as `Error: ...`, without a traceback; exit 1."""

    exit_code = 1


class SettingsProblem(CliError):
    """A setting is unknown or malformed: exit 2, as for any other bad command line."""

    exit_code = 2


def _metavar(default: object) -> str:
    if isinstance(default, int):
        return "INTEGER"
    if isinstance(default, float):
        return "SECONDS"
    if isinstance(default, Path):
        return "DIR"
    return "TEXT"


def _setting_option(opt: Option) -> Callable[[FC], FC]:
    """The flag of one setting. Its value stays a string (or None when absent) for settings.load."""
    flag = "--" + opt.name.replace("_", "-")
    default = getattr(DEFAULTS, opt.name)
    if isinstance(default, bool):
        shown = f"; default {'on' if default else 'off'}"
    else:
        shown = "" if default in (None, ()) else f"; default {default}"
    help_text = f"{opt.help} [env {ENV_PREFIX}{opt.name.upper()}{shown}]"
    if isinstance(default, bool):
        return click.option(f"{flag}/--no-{flag[2:]}", opt.name, default=None, help=help_text)
    return click.option(flag, opt.name, default=None, metavar=_metavar(default), help=help_text)


def setting_options(names: tuple[str, ...] | None = None) -> Callable[[FC], FC]:
    """Flags for the named settings (all of OPTIONS by default), in OPTIONS' order."""
    chosen = [opt for opt in OPTIONS if names is None or opt.name in names]

    def decorate(func: FC) -> FC:
        for opt in reversed(chosen):
            func = _setting_option(opt)(func)
        return func

    return decorate


def load_settings(flags: Mapping[str, Any]) -> Settings:
    """Settings from `TOKENSVC_*` and the given flags; a bad one ends the command with exit 2."""
    try:
        return settings_mod.load(flags)
    except SettingsError as exc:
        raise SettingsProblem(str(exc)) from None


def masked(url: str) -> str:
    """A Redis URL fit to print: any password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="tokensvc")
def main() -> None:
    """tokensvc: an OAuth 2.0 token service.

    `tokensvc serve` runs it (with its own redis-server when no Redis URL is given);
    `tokensvc client ...` and `tokensvc user ...` manage clients and users in the same Redis.
    Every setting can also be given as an environment variable TOKENSVC_<NAME>.
    """
