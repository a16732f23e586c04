"""A missing outside tool (chromium, prometheus) skips its tests on a developer's machine and
fails them in CI, where a suite that quietly skips is a suite that did not run."""

from __future__ import annotations

import shutil

import pytest

from tests.support.tools import prometheus_tools, unavailable


@pytest.mark.parametrize("ci", [None, "", "false", "1"])
def test_outside_ci_a_missing_tool_skips(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        unavailable("chromium is not installed")


def test_in_ci_a_missing_tool_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"chromium is not installed \(CI=true"):
        unavailable("chromium is not installed")


def test_prometheus_tools_are_looked_up_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    assert prometheus_tools() == ("/opt/bin/prometheus", "/opt/bin/promtool")
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "promtool" else f"/opt/bin/{name}")
    with pytest.raises(pytest.fail.Exception, match="prometheus package"):
        prometheus_tools()
