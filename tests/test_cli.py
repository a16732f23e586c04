"""The `tokensvc` command as a user runs it: real processes, a real embedded redis-server.

`tokensvc serve` runs as a subprocess in a temporary directory with no Redis URL, so what is
tested is the first-run experience: it starts its own redis-server under ./var, the admin
commands run from the same directory reach that Redis, and a signal stops both processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from jwskate import Jwk, Jwt, SymmetricJwk

from tests.support.config import service_env
from tests.support.redis_servers import RedisServer, free_port
from tests.support.service import Service
from tokensvc.cli.admin import NO_REDIS_HINT
from tokensvc.store import keys
from tokensvc.store.embedded import EmbeddedRedis, EmbeddedRedisError

TOKENSVC = Path(sys.executable).parent / "tokensvc"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


class CliService(Service):
    """`tokensvc serve` run from `cwd` as a user runs it: the installed command, no settings
    but cheap argon2 (so its own redis-server and keys under ./var), signals to it alone."""

    def __init__(self, cwd: Path, *, env: dict[str, str] | None = None, workers: int = 1) -> None:
        super().__init__(cwd, env if env is not None else service_env(), workers=workers,
                         program=(str(TOKENSVC),), own_group=False)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Another `tokensvc` command, from the service's directory and environment."""
        return run_cli(self.workdir, *args, input=input, env=self.env)

    def redis_pid(self) -> int:
        return int((self.workdir / "var" / "redis.pid").read_text())


def run_cli(cwd: Path, *args: str, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOKENSVC), *args], cwd=cwd, env=env if env is not None else service_env(),
                          input=input, capture_output=True, text=True, timeout=60)


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliService]:
    """One service for the admin-command tests; each test makes its own clients and users."""
    svc = CliService(tmp_path_factory.mktemp("serve")).start()
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


# -- serve with the embedded redis-server -------------------------------------------------


def test_serve_starts_embedded_redis_on_a_private_socket(service: CliService) -> None:
    var = service.workdir / "var"
    sock = var / "redis.sock"
    assert sock.is_socket()
    assert sock.stat().st_mode & 0o777 == 0o700
    assert pid_alive(service.redis_pid())
    r = redis.Redis(unix_socket_path=str(sock))
    try:
        assert r.config_get("port") == {"port": "0"}  # no TCP listener: never 6379
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert r.config_get("save") == {"save": ""}
        assert r.config_get("dir") == {"dir": str(var.resolve())}
    finally:
        r.close()
    assert (var / "appendonlydir").is_dir()
    assert (var / "redis.log").is_file()


def test_serve_answers_health_and_readiness(service: CliService) -> None:
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["redis"] is True


def test_serve_prints_where_the_admin_key_is_but_not_the_key(service: CliService) -> None:
    key_file = service.workdir / "var" / "admin.key"
    key = key_file.read_text().strip()
    assert len(key) >= 32
    assert key_file.stat().st_mode & 0o777 == 0o600
    out = service.output
    assert str(key_file.resolve()) in out
    assert key not in out
    assert service.url in out
    assert "tokensvc client create --name demo" in out
    # ... and the admin API takes that key.
    resp = httpx.get(f"{service.url}/admin/clients", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200


def test_client_create_reaches_the_service_and_its_secret_gets_a_token(service: CliService) -> None:
    made = json_out(service.cli("client", "create", "--name", "demo", "--scope", "read",
                                "--scope", "write", "--website", "https://demo.example"))
    assert made["name"] == "demo" and made["scopes"] == ["read", "write"]
    assert made["client_secret"].startswith("tsv_cs_")
    assert made["grant_types"] == ["client_credentials", "password", "refresh_token"]
    resp = httpx.post(f"{service.url}/oauth/token", data={"grant_type": "client_credentials",
                                                           "scope": "read"},
                      auth=(made["client_id"], made["client_secret"]))
    assert resp.status_code == 200, resp.text
    assert resp.json()["access_token"].startswith("tsv_at_")
    assert resp.json()["scope"] == "read"


def test_client_list_and_show_never_show_the_secret(service: CliService) -> None:
    made = json_out(service.cli("client", "create", "--name", "listed",
                                "--grant-type", "client_credentials"))
    listed = json_out(service.cli("client", "list"))
    mine = [c for c in listed if c["client_id"] == made["client_id"]]
    assert len(mine) == 1 and mine[0]["name"] == "listed"
    assert all("client_secret" not in c for c in listed)
    shown = json_out(service.cli("client", "show", made["client_id"]))
    assert shown["grant_types"] == ["client_credentials"]
    assert "client_secret" not in shown and "secret_hash" not in shown


def test_client_show_unknown_exits_1_with_the_registry_message(service: CliService) -> None:
    result = service.cli("client", "show", "no-such-client")
    assert result.returncode == 1
    assert "No such client." in result.stderr
    assert result.stdout == ""


def test_client_create_refusal_exits_1_with_its_description(service: CliService) -> None:
    result = service.cli("client", "create", "--name", "bad", "--grant-type", "implicit")
    assert result.returncode == 1
    assert "grant type 'implicit' is not supported" in result.stderr


def test_client_create_sets_resources_and_introspection(service: CliService) -> None:
    """RFC 8707 `resources` and RFC 7662 §4 `introspection`, as the admin API takes them."""
    plain = json_out(service.cli("client", "create", "--name", "app"))
    assert plain["introspection"] == "own" and plain["resources"] == []
    rs = json_out(service.cli("client", "create", "--name", "gateway", "--introspection", "all",
                              "--resource", "https://b.example", "--resource", "https://a.example"))
    assert rs["introspection"] == "all" and rs["resources"] == ["https://a.example", "https://b.example"]
    token = httpx.post(f"{service.url}/oauth/token", data={"grant_type": "client_credentials"},
                       auth=(plain["client_id"], plain["client_secret"])).json()["access_token"]
    seen = httpx.post(f"{service.url}/oauth/introspect", data={"token": token},
                      auth=(rs["client_id"], rs["client_secret"]))
    assert seen.status_code == 200 and seen.json()["client_id"] == plain["client_id"]
    refused = service.cli("client", "create", "--name", "bad", "--resource", "https://a.example/#x")
    assert refused.returncode == 1
    assert "'resources': 'https://a.example/#x' has a fragment" in refused.stderr
    wrong = service.cli("client", "create", "--name", "bad", "--introspection", "everyone")
    assert wrong.returncode == 2 and "--introspection" in wrong.stderr


def test_public_client_has_no_secret(service: CliService) -> None:
    made = json_out(service.cli("client", "create", "--name", "spa", "--public"))
    assert made["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in made


def test_client_create_with_key_based_authentication(service: CliService, tmp_path: Path) -> None:
    """RFC 7523: --auth-method and --jwks; the command seals a client_secret_jwt secret under
    the deployment's key (the embedded default's key file), so the service can check it."""
    key = Jwk.generate(alg="ES256", kid="cli-1")
    jwks = {"keys": [key.public_jwk().to_dict()]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    keyed = json_out(service.cli("client", "create", "--name", "batch", "--auth-method",
                                 "private_key_jwt", "--jwks", str(tmp_path / "jwks.json")))
    assert keyed["token_endpoint_auth_method"] == "private_key_jwt" and keyed["jwks"] == jwks
    assert "client_secret" not in keyed
    hmac = json_out(service.cli("client", "create", "--name", "hmac", "--auth-method",
                                "client_secret_jwt"))
    issuer = httpx.get(f"{service.url}/.well-known/oauth-authorization-server").json()["issuer"]
    secret = SymmetricJwk.from_bytes(hmac["client_secret"].encode())
    for client, signing in ((keyed, key), (hmac, secret)):
        now = int(time.time())
        assertion = Jwt.sign({"iss": client["client_id"], "sub": client["client_id"], "aud": issuer,
                              "exp": now + 60, "jti": f"cli-{client['client_id']}"}, key=signing,
                             alg="ES256" if client is keyed else "HS256")
        resp = httpx.post(f"{service.url}/oauth/token", data={
            "grant_type": "client_credentials", "client_assertion": str(assertion),
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
        assert resp.status_code == 200, resp.text
    both = service.cli("client", "create", "--name", "x", "--public", "--auth-method",
                       "client_secret_post")
    assert both.returncode == 1 and "--public and --auth-method exclude each other" in both.stderr
    missing = service.cli("client", "create", "--name", "x", "--auth-method", "private_key_jwt")
    assert missing.returncode == 1 and "private_key_jwt needs 'jwks'" in missing.stderr
    # From private_key_jwt back to a secret: a rotation naming the method.
    back = json_out(service.cli("client", "rotate-secret", keyed["client_id"], "--auth-method",
                                "client_secret_basic"))
    resp = httpx.post(f"{service.url}/oauth/token", data={"grant_type": "client_credentials"},
                      auth=(keyed["client_id"], back["client_secret"]))
    assert resp.status_code == 200, resp.text
def test_client_create_sets_dpop_bound_access_tokens(service: CliService) -> None:
    """RFC 9449 §5.2: the client's token requests need a DPoP proof."""
    assert json_out(service.cli("client", "create", "--name", "free"))["dpop_bound_access_tokens"] is False
    made = json_out(service.cli("client", "create", "--name", "bound", "--dpop-bound-access-tokens"))
    assert made["dpop_bound_access_tokens"] is True
    resp = httpx.post(f"{service.url}/oauth/token", data={"grant_type": "client_credentials"},
                      auth=(made["client_id"], made["client_secret"]))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_dpop_proof"


def test_rotate_secret_and_revoke_take_effect_on_the_running_service(service: CliService) -> None:
    made = json_out(service.cli("client", "create", "--name", "rotating"))
    token_url = f"{service.url}/oauth/token"
    form = {"grant_type": "client_credentials"}
    assert httpx.post(token_url, data=form, auth=(made["client_id"], made["client_secret"])
                      ).status_code == 200
    rotated = json_out(service.cli("client", "rotate-secret", made["client_id"]))
    assert rotated["client_secret"] != made["client_secret"]
    old = httpx.post(token_url, data=form, auth=(made["client_id"], made["client_secret"]))
    assert old.status_code == 401 and old.json()["error"] == "invalid_client"
    new = httpx.post(token_url, data=form, auth=(made["client_id"], rotated["client_secret"]))
    assert new.status_code == 200
    revoked = service.cli("client", "revoke", made["client_id"])
    assert revoked.returncode == 0, revoked.stderr
    after = httpx.post(token_url, data=form, auth=(made["client_id"], rotated["client_secret"]))
    assert after.status_code == 401 and after.json()["error"] == "invalid_client"


def test_user_create_reads_the_password_from_stdin(service: CliService) -> None:
    made = json_out(service.cli("user", "create", "--username", "carol", "--password-stdin",
                                "--verified", input="correct horse battery\n"))
    assert made == {"username": "carol", "verified": True, "created_at": made["created_at"],
                    "failed_logins": 0, "locked": False}
    client = json_out(service.cli("client", "create", "--name", "app"))
    # The trailing newline was the echo's: the password is exactly what came before it.
    resp = httpx.post(f"{service.url}/oauth/token", data={
        "grant_type": "password", "username": "carol", "password": "correct horse battery"},
        auth=(client["client_id"], client["client_secret"]))
    assert resp.status_code == 200, resp.text
    assert resp.json()["refresh_token"].startswith("tsv_rt_")
    shown = json_out(service.cli("user", "show", "carol"))
    assert shown["verified"] is True and shown["failed_logins"] == 0


def test_user_create_defaults_to_unverified(service: CliService) -> None:
    made = json_out(service.cli("user", "create", "--username", "dave", "--password-stdin",
                                input="long enough password"))
    assert made["verified"] is False


def test_user_create_refusals_exit_1(service: CliService) -> None:
    short = service.cli("user", "create", "--username", "erin", "--password-stdin", input="short\n")
    assert short.returncode == 1
    assert "'password' must be a string of 8 to 1024 characters." in short.stderr
    first = service.cli("user", "create", "--username", "frank", "--password-stdin",
                        input="a fine password\n")
    assert first.returncode == 0, first.stderr
    again = service.cli("user", "create", "--username", "frank", "--password-stdin",
                        input="a fine password\n")
    assert again.returncode == 1
    assert "A user with that username already exists." in again.stderr


def test_user_unlock_and_delete(service: CliService) -> None:
    json_out(service.cli("user", "create", "--username", "gina", "--password-stdin",
                         input="gina's password\n"))
    assert service.cli("user", "unlock", "gina").returncode == 0
    deleted = service.cli("user", "delete", "gina")
    assert deleted.returncode == 0, deleted.stderr
    gone = service.cli("user", "show", "gina")
    assert gone.returncode == 1 and "No such user." in gone.stderr


# -- admin commands without the service -----------------------------------------------------


def test_admin_command_without_a_running_redis_says_what_to_do(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "client", "list")
    assert result.returncode == 1
    assert NO_REDIS_HINT in result.stderr
    assert str((tmp_path / "var").resolve()) in result.stderr
    assert not (tmp_path / "var" / "redis.sock").exists()  # it did not start one


def test_admin_command_with_redis_url(tmp_path: Path, redis_db: redis.Redis,
                                      redis_server: RedisServer) -> None:
    env = service_env(redis_url=redis_server.url)
    made = json_out(run_cli(tmp_path, "client", "create", "--name", "remote", env=env))
    assert redis_db.exists(keys.client(made["client_id"])) == 1
    shown = json_out(run_cli(tmp_path, "client", "show", made["client_id"],
                             "--redis-url", redis_server.url))
    assert shown["name"] == "remote"


def test_admin_command_with_unreachable_redis_url(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli(tmp_path, "client", "list", "--redis-url", url)
    assert result.returncode == 1
    assert f"Redis at {url} is not reachable" in result.stderr


# -- stopping -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_service_and_its_redis_server(tmp_path: Path, sig: int) -> None:
    svc = CliService(tmp_path).start()
    svc.wait_ready()
    redis_pid = svc.redis_pid()
    assert pid_alive(redis_pid)
    assert svc.stop(sig) == 0
    assert wait_gone(redis_pid), "the embedded redis-server outlived the service"
    var = tmp_path / "var"
    assert not (var / "redis.sock").exists()
    assert not (var / "redis.owner").exists()
    assert "Shutting down" in svc.output


def test_data_survives_a_restart(tmp_path: Path) -> None:
    first = CliService(tmp_path).start()
    first.wait_ready()
    made = json_out(first.cli("client", "create", "--name", "durable"))
    assert first.stop() == 0
    second = CliService(tmp_path).start()
    try:
        second.wait_ready()
        resp = httpx.post(f"{second.url}/oauth/token", data={"grant_type": "client_credentials"},
                          auth=(made["client_id"], made["client_secret"]))
        assert resp.status_code == 200, resp.text
    finally:
        second.stop()


def test_serve_reuses_a_running_embedded_redis_and_leaves_it_to_its_owner(tmp_path: Path) -> None:
    owner = EmbeddedRedis(tmp_path / "var")
    owner.start()
    try:
        assert owner.proc is not None
        svc = CliService(tmp_path).start()
        svc.wait_ready()
        assert svc.redis_pid() == owner.proc.pid  # no second server
        assert "reusing the running redis-server" in svc.output
        assert svc.stop() == 0
        assert owner.proc.poll() is None  # still ours, still running
        assert owner.proc.pid and pid_alive(owner.proc.pid)
    finally:
        owner.stop()
    assert not (tmp_path / "var" / "redis.sock").exists()


def test_serve_adopts_a_redis_left_behind_and_stops_it(tmp_path: Path) -> None:
    """A redis-server whose starter is gone (no live owner) is reused, then stopped with the service."""
    var = tmp_path / "var"
    var.mkdir()
    binary = shutil.which("redis-server")
    assert binary is not None
    sock = var / "redis.sock"
    orphan = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--dir", str(var),
                               "--save", "", "--pidfile", str(var / "redis.pid")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        (var / "redis.owner").write_text("999999999\n")  # a pid that cannot exist
        svc = CliService(tmp_path).start()
        svc.wait_ready()
        assert svc.redis_pid() == orphan.pid
        assert "reusing the running redis-server" in svc.output
        assert svc.stop() == 0
        assert orphan.wait(15) == 0  # shut down cleanly by the service
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


# -- failures at start ----------------------------------------------------------------------


def test_missing_redis_server_fails_with_the_install_command(tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**service_env(), "PATH": str(empty_bin)}
    result = subprocess.run([str(TOKENSVC), "serve", "--port", str(free_port())], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "`redis-server` is not on PATH" in result.stderr
    assert "apt-get install redis-server" in result.stderr
    assert "brew install redis" in result.stderr
    assert "--redis-url" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var" / "redis.sock").exists()


def test_too_long_socket_path_is_refused_with_advice(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with pytest.raises(EmbeddedRedisError, match="use a shorter --data-dir"):
        EmbeddedRedis(deep).start()
    assert not deep.exists()


def test_redis_server_failing_at_start_shows_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR (fake)' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(EmbeddedRedisError, match=r"(?s)exited with code 1.*FATAL CONFIG FILE ERROR"):
        EmbeddedRedis(tmp_path / "var", binary=str(fake)).start()


def test_stale_socket_left_by_a_crash_does_not_stop_a_start(tmp_path: Path) -> None:
    """A socket file nobody listens on (a server killed with SIGKILL) is replaced, quickly."""
    var = tmp_path / "var"
    var.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(var / "redis.sock"))
    stale.close()  # the file stays; connecting to it is refused
    server = EmbeddedRedis(var)
    started = time.monotonic()
    url = server.start()
    try:
        assert time.monotonic() - started < 5
        assert server.proc is not None and not server.reused
        r = redis.Redis.from_url(url)
        try:
            assert r.ping() is True
        finally:
            r.close()
    finally:
        server.stop()
    assert server.proc is None


def test_serve_with_several_workers(tmp_path: Path) -> None:
    """Workers are separate processes: they get the resolved settings (the embedded Redis URL,
    the generated keys) through the environment, and a revocation reaches all of them."""
    svc = CliService(tmp_path, workers=2).start()
    try:
        svc.wait_ready()
        made = json_out(svc.cli("client", "create", "--name", "multi"))
        auth = (made["client_id"], made["client_secret"])
        with httpx.Client(base_url=svc.url) as http:
            for _ in range(6):  # new connections, spread over both workers
                resp = http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=auth,
                                 headers={"Connection": "close"})
                assert resp.status_code == 200, resp.text
        assert svc.cli("client", "revoke", made["client_id"]).returncode == 0
        for _ in range(6):
            resp = httpx.post(f"{svc.url}/oauth/token", data={"grant_type": "client_credentials"},
                              auth=auth)
            assert resp.status_code == 401
        redis_pid = svc.redis_pid()
    finally:
        assert svc.stop() == 0
    assert wait_gone(redis_pid)
    assert "Started parent process" in svc.output
