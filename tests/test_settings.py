"""Settings: `TOKENSVC_*` parsing, flag precedence, and refusals that name the setting.

A bad setting must stop the service at start with a message naming it, never surface later
as odd behaviour; the same parser serves the environment and the CLI flags.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.config import service_env
from tokensvc import keyfiles, settings
from tokensvc.cli import main
from tokensvc.settings import OPTIONS, Settings, SettingsError

KEY_A = "a" * 32
KEY_B = "b" * 40


def test_environment_is_parsed_into_typed_settings() -> None:
    s = settings.load(environ={
        "TOKENSVC_HOST": " 0.0.0.0 ",
        "TOKENSVC_PORT": "9000",
        "TOKENSVC_WORKERS": "4",
        "TOKENSVC_REDIS_URL": "rediss://:pw@redis.internal:6380/2",
        "TOKENSVC_REDIS_TIMEOUT": "0.25",
        "TOKENSVC_DATA_DIR": "/srv/tokensvc",
        "TOKENSVC_SECRET_KEYS": f"{KEY_A}, {KEY_B},",
        "TOKENSVC_REUSE_TOKENS": "yes",
        "TOKENSVC_REFRESH_GRACE": "3",
        "TOKENSVC_LOG_LEVEL": "WARNING",
        "PATH": "/usr/bin",  # not ours: ignored
    })
    assert s.host == "0.0.0.0" and s.port == 9000 and s.workers == 4  # noqa: S104 -- parsed, nothing binds
    assert s.redis_url == "rediss://:pw@redis.internal:6380/2"
    assert s.redis_timeout == 0.25
    assert s.data_dir == Path("/srv/tokensvc")
    assert s.secret_keys == (KEY_A, KEY_B)
    assert s.reuse_tokens is True and s.refresh_grace == 3
    assert s.log_level == "warning"
    assert s.access_token_ttl == 3600  # untouched defaults stay


@pytest.mark.parametrize("raw, expected", [("1", True), ("true", True), ("ON", True), ("0", False),
                                           ("no", False), ("off", False), ("", False)])
def test_booleans(raw: str, expected: bool) -> None:
    assert settings.load(environ={"TOKENSVC_REUSE_TOKENS": raw}).reuse_tokens is expected


def test_no_environment_gives_the_defaults() -> None:
    assert settings.load(environ={}) == Settings()


def test_flags_override_the_environment() -> None:
    s = settings.load({"port": "7000", "reuse_tokens": False, "host": None},
                      environ={"TOKENSVC_PORT": "9000", "TOKENSVC_REUSE_TOKENS": "1",
                               "TOKENSVC_HOST": "0.0.0.0"})  # noqa: S104 -- parsed, nothing binds
    assert s.port == 7000
    assert s.reuse_tokens is False
    # A flag left unset (None) does not override.
    assert s.host == "0.0.0.0"  # noqa: S104 -- parsed, nothing binds


def test_to_env_round_trips() -> None:
    s = settings.load(environ={"TOKENSVC_REDIS_URL": "redis://localhost:6390/0",
                               "TOKENSVC_SECRET_KEYS": f"{KEY_A},{KEY_B}",
                               "TOKENSVC_ADMIN_KEY": "x" * 20, "TOKENSVC_REUSE_TOKENS": "1",
                               "TOKENSVC_DATA_DIR": "state"})
    assert settings.load(environ=s.to_env()) == s


def test_unknown_variable_is_refused_by_name() -> None:
    with pytest.raises(SettingsError) as err:
        settings.load(environ={"TOKENSVC_FOO": "1"})
    assert err.value.name == "foo"
    assert "TOKENSVC_FOO" in str(err.value) and "unknown setting" in str(err.value)


@pytest.mark.parametrize("name, raw, problem", [
    ("PORT", "eighty", "invalid literal"),
    ("PORT", "70000", "must be 1-65535"),
    ("WORKERS", "0", "must be at least 1"),
    ("REUSE_TOKENS", "maybe", "expected a boolean"),
    ("REDIS_URL", "http://localhost:6379", "must be a redis://, rediss:// or unix:// URL"),
    ("REDIS_TIMEOUT", "60", "must be between 0 and 30 seconds"),
    ("SECRET_KEYS", "short", "at least 32 characters"),
    ("ADMIN_KEY", "short", "at least 16 characters"),
    ("ACCESS_TOKEN_TTL", "0", "must be between 1 and 315360000"),
    ("REFRESH_TOKEN_TTL", "315360001", "must be between 1 and 315360000"),
    ("CODE_TTL", "99999999999999999999", "must be between 1 and 315360000"),
    ("REFRESH_GRACE", "-1", "must be between 0 and 3600"),
    ("LOCKOUT_PERIOD", "315360001", "must be between 0 and 315360000"),
    ("ISSUER", "https://example.com/?q=1", "without query or fragment"),
    ("LOG_LEVEL", "loud", "must be one of"),
])
def test_malformed_value_is_refused_naming_the_setting(name: str, raw: str, problem: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings.load(environ={f"TOKENSVC_{name}": raw})
    message = str(err.value)
    assert message.startswith(f"setting TOKENSVC_{name} (--{name.lower().replace('_', '-')}):")
    assert problem in message


def test_cluster_needs_a_url() -> None:
    with pytest.raises(SettingsError, match="TOKENSVC_REDIS_CLUSTER"):
        settings.load(environ={"TOKENSVC_REDIS_CLUSTER": "1"})


def test_generated_keys_are_made_once_and_kept(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var")
    first = keyfiles.with_generated_keys(s)
    again = keyfiles.with_generated_keys(s)
    assert first.admin_key and len(first.admin_key) >= 32
    assert first.admin_key == again.admin_key and first.secret_keys == again.secret_keys
    assert (tmp_path / "var" / "admin.key").read_text().strip() == first.admin_key
    assert (tmp_path / "var" / "admin.key").stat().st_mode & 0o777 == 0o600
    given = keyfiles.with_generated_keys(Settings(data_dir=tmp_path / "other", admin_key="k" * 16,
                                                  secret_keys=(KEY_A,)))
    assert given.admin_key == "k" * 16 and given.secret_keys == (KEY_A,)
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("name, content, setting", [
    ("admin.key", "\n", "TOKENSVC_ADMIN_KEY"),
    ("admin.key", "k" * 15 + "\n", "TOKENSVC_ADMIN_KEY"),
    ("secret.key", "", "TOKENSVC_SECRET_KEYS"),
    ("secret.key", "s" * 31, "TOKENSVC_SECRET_KEYS"),
], ids=["admin-empty", "admin-short", "secret-empty", "secret-short"])
def test_an_emptied_or_cut_key_file_is_refused(tmp_path: Path, name: str, content: str, setting: str) -> None:
    """A key file emptied or cut short (a full disk, a bad copy) stops the service, as the same
    key given as a setting would: an empty server key tags tokens, CSRF tokens and secret
    verifiers with a key everyone knows, and an empty admin key guards nothing."""
    var = tmp_path / "var"
    var.mkdir()
    (var / name).write_text(content)
    with pytest.raises(SettingsError) as err:
        keyfiles.with_generated_keys(Settings(data_dir=var))
    message = str(err.value)
    assert message.startswith(f"setting {setting} (") and f"the key in {var / name} " in message
    assert (var / name).read_text() == content  # left for the operator to look at


def test_no_admin_api_without_an_admin_key() -> None:
    """The admin API and console check for their key explicitly: an assert would vanish under
    `python -O`, and an empty key would then open them."""
    with pytest.raises(SettingsError, match="TOKENSVC_ADMIN_KEY"):
        settings.admin_key_of(Settings())
    assert settings.admin_key_of(Settings(admin_key="k" * 16)) == "k" * 16


# -- the CLI flags --------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A runner in an empty directory whose environment has none of the caller's TOKENSVC_*."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("TOKENSVC_"):
            monkeypatch.delenv(key)
    return CliRunner()


def test_serve_has_a_flag_for_every_setting(runner: CliRunner) -> None:
    result = runner.invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for opt in OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        assert re.search(rf"(^|\s){re.escape(flag)}[\s/]", result.output), flag
        assert f"TOKENSVC_{opt.name.upper()}" in result.output


@pytest.mark.parametrize("args, named", [
    (["--port", "abc"], "TOKENSVC_PORT (--port)"),
    (["--workers", "0"], "TOKENSVC_WORKERS (--workers)"),
    (["--redis-url", "mysql://db"], "TOKENSVC_REDIS_URL (--redis-url)"),
    (["--redis-timeout", "never"], "TOKENSVC_REDIS_TIMEOUT (--redis-timeout)"),
])
def test_serve_with_a_bad_flag_exits_2_naming_it(runner: CliRunner, args: list[str],
                                                 named: str) -> None:
    result = runner.invoke(main, ["serve", *args])
    assert result.exit_code == 2
    assert f"Error: setting {named}:" in result.output
    assert not Path("var").exists()  # stopped before starting anything


def test_serve_with_a_bad_variable_exits_2_naming_it(runner: CliRunner) -> None:
    unknown = runner.invoke(main, ["serve"], env={"TOKENSVC_FOO": "1"})
    assert unknown.exit_code == 2
    assert "setting TOKENSVC_FOO (--foo): unknown setting" in unknown.output
    bad = runner.invoke(main, ["serve"], env={"TOKENSVC_ACCESS_TOKEN_TTL": "an hour"})
    assert bad.exit_code == 2
    assert "setting TOKENSVC_ACCESS_TOKEN_TTL (--access-token-ttl)" in bad.output
    assert not Path("var").exists()


def test_a_bad_variable_is_refused_even_when_a_flag_overrides_it(runner: CliRunner) -> None:
    """Every variable is checked even when a flag overrides it: a typo never hides."""
    result = runner.invoke(main, ["serve", "--port", "9000"], env={"TOKENSVC_PORT": "x"})
    assert result.exit_code == 2
    assert "TOKENSVC_PORT" in result.output


def test_serve_with_a_cut_key_file_exits_2_naming_it(tmp_path: Path) -> None:
    """Refused before anything starts (the Redis URL given here answers nothing)."""
    var = tmp_path / "var"
    var.mkdir()
    (var / "admin.key").write_text("short\n")
    done = subprocess.run([sys.executable, "-m", "tokensvc", "serve", "--data-dir", str(var),
                           "--redis-url", "redis://127.0.0.1:9"],
                          env=service_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert (f"Error: setting TOKENSVC_ADMIN_KEY (--admin-key): the key in {var / 'admin.key'} must be "
            "at least 16 characters") in done.stderr


def test_unknown_flag_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["serve", "--no-such-flag"])
    assert result.exit_code == 2
    assert "No such option" in result.output and "--no-such-flag" in result.output


def test_help_lists_every_command(runner: CliRunner) -> None:
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for command in ("serve", "client", "user"):
        assert re.search(rf"^\s+{command}\s", top.output, re.M), command
    client = runner.invoke(main, ["client", "--help"])
    for command in ("create", "list", "show", "rotate-secret", "revoke"):
        assert re.search(rf"^\s+{command}\s", client.output, re.M), command
    user = runner.invoke(main, ["user", "--help"])
    for command in ("create", "show", "unlock", "delete"):
        assert re.search(rf"^\s+{command}\s", user.output, re.M), command


def test_readme_lists_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for opt in OPTIONS:
        row = f"| `TOKENSVC_{opt.name.upper()}` | `--{opt.name.replace('_', '-')}` |"
        assert row in readme, row
