"""Outside tools some suites need (chromium, prometheus): without one, its tests are skipped
on a developer's machine, but fail in CI (`CI=true`), where a suite that quietly skips is a
suite that did not run."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for `reason`; in CI, fail it."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing tool fails the run instead of skipping it)")
    pytest.skip(reason)


def prometheus_tools() -> tuple[str, str]:
    """The paths of prometheus and promtool (Debian's prometheus package)."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        unavailable("Debian's prometheus package (prometheus, promtool) is not installed: "
                    "`make prometheus` installs it when run as root, or `sudo apt-get install prometheus`")
    return prometheus, promtool
