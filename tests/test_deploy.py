"""deploy/: the container image, compose, Kubernetes and Redis files, checked without Docker.

Docker and Kubernetes cannot run here, so this checks what can be checked against the project
itself: every YAML file parses; the image's entry command is the project's console script and
the serve arguments of the image, compose and the Deployment are flags `tokensvc serve`
accepts; every TOKENSVC_* variable they set is a valid setting; the probe and healthcheck
paths answer 200 from the app; the ports agree everywhere (serve --port, EXPOSE, containerPort,
TOKENSVC_METRICS_PORT, the Service, the ServiceMonitor, nginx, Prometheus); a real
redis-server loads deploy/redis.conf with AOF every second and noeviction; Grafana's
provisioning finds the dashboard; nginx balances over both compose instances.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import redis
import yaml
from click.testing import CliRunner

from tests.support.redis_servers import RedisServer
from tokensvc import cli, settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
REDIS_CONF = DEPLOY / "redis.conf"
NGINX_CONF = DEPLOY / "nginx.conf"
TOKENSVC_SERVICES = ("tokensvc-1", "tokensvc-2")

# Valid stand-ins for values the files leave to the operator (placeholders, Secret entries).
STAND_INS = {
    "TOKENSVC_SECRET_KEYS": "0123456789abcdef0123456789abcdef0123456789abcdef",
    "TOKENSVC_ADMIN_KEY": "an-admin-key-of-enough-length",
    "TOKENSVC_REDIS_URL": "redis://:password@redis.example.internal:6379/0",
}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


# -- reading the files --------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every manifest under deploy/k8s by kind (one object of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in found, f"two {doc['kind']} manifests"
            found[doc["kind"]] = doc
    return found


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    starts = [i for i, (name, _) in enumerate(instructions) if name == "FROM"]
    assert len(starts) >= 2, "the Dockerfile should be multi-stage"
    return instructions[starts[-1]:]


def exec_form(instructions: list[tuple[str, str]], name: str) -> list[str]:
    values = [args for inst, args in instructions if inst == name]
    assert len(values) == 1, f"expected one {name}"
    parsed = json.loads(values[0])
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), name
    return parsed


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for inst, args in final_stage():
        if inst == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(COMPOSE)
    return doc


def compose_value(value: str) -> str:
    """A compose string with its ${...} replaced: the default, else a valid stand-in."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if op in (":-", "-"):
            return arg
        assert name in STAND_INS, f"no stand-in for the required variable {name}"
        return STAND_INS[name]

    return COMPOSE_VARIABLE.sub(replace, value)


def compose_env(service: str) -> dict[str, str]:
    env = compose()["services"][service]["environment"]
    assert isinstance(env, dict), "environment as a mapping"
    return {key: compose_value(str(value)) for key, value in env.items()}


def deployment_container() -> dict[str, Any]:
    containers = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def deployment_env() -> dict[str, str]:
    """The Deployment's environment, Secret references resolved against the example Secret."""
    objects = k8s_objects()
    secret = objects["Secret"]
    env: dict[str, str] = {}
    for item in deployment_container()["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], f"{item['name']} names another Secret"
        assert ref["key"] in secret["stringData"], f"the example Secret has no {ref['key']}"
        env[item["name"]] = STAND_INS[ref["key"]]
    return env


def flag_value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} once in {args}"
    return args[args.index(flag) + 1]


def serve_commands() -> dict[str, list[str]]:
    """The tokensvc command line of the image, each compose instance and the Deployment."""
    commands = {"Dockerfile": exec_form(final_stage(), "CMD")}
    for name in TOKENSVC_SERVICES:
        commands[f"compose {name}"] = compose()["services"][name]["command"]
    commands["Deployment"] = deployment_container()["args"]
    return commands


def nginx_upstream() -> list[str]:
    block = re.search(r"upstream\s+tokensvc\s*\{(.*?)\}", NGINX_CONF.read_text(), re.S)
    assert block is not None, "nginx.conf has no `upstream tokensvc` block"
    return re.findall(r"^\s*server\s+(\S+?)[\s;]", block.group(1), re.M)


def redis_directives() -> dict[str, str]:
    directives: dict[str, str] = {}
    for line in REDIS_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            assert key not in directives, f"{key} set twice in redis.conf"
            directives[key.lower()] = value.strip()
    return directives


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(doc, dict) for doc in docs), f"{path} holds no mapping"


def test_the_new_files_are_there() -> None:
    for name in ("Dockerfile", "compose.yaml", "redis.conf", "nginx.conf", "prometheus-compose.yml",
                 "env.example", "k8s/redis-cluster.md"):
        assert (DEPLOY / name).is_file(), name
    assert set(k8s_objects()) == {"Deployment", "Service", "HorizontalPodAutoscaler",
                                  "PodDisruptionBudget", "ServiceMonitor", "Secret"}


def test_image_is_multi_stage_slim_and_non_root() -> None:
    instructions = dockerfile_instructions()
    stages = [args for inst, args in instructions if inst == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS builder")
    args = dict(a.split("=", 1) for inst, a in instructions if inst == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    final = final_stage()
    assert [a for i, a in final if i == "USER"] == ["10001:10001"]
    copies = [a for i, a in final if i == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the final stage gets only the venv"
    assert "redis-server" not in DOCKERFILE.read_text().replace("no redis-server", "")
    env = dockerfile_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    exposed = [a for i, a in final if i == "EXPOSE"]
    assert exposed and exposed[0].split() == ["8000", "9100"]


def test_docker_context_holds_what_the_build_copies() -> None:
    """.dockerignore is an allow-list: every COPY source of the builder is allowed and exists."""
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    builder = dockerfile_instructions()[:len(dockerfile_instructions()) - len(final_stage())]
    sources = [src for inst, args in builder if inst == "COPY" for src in args.split()[:-1]]
    assert sources, "the builder copies nothing"
    for src in sources:
        assert src in allowed, f"{src} is excluded by .dockerignore"
        assert (ROOT / src).exists(), src


def test_entrypoint_is_the_console_script() -> None:
    entrypoint = exec_form(final_stage(), "ENTRYPOINT")
    assert entrypoint == ["tokensvc"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts[entrypoint[0]].partition(":")
    assert getattr(import_module(module), attr) is cli.main


@pytest.mark.parametrize("where", ["Dockerfile", "compose tokensvc-1", "compose tokensvc-2",
                                   "Deployment"])
def test_serve_arguments_are_accepted(where: str) -> None:
    args = serve_commands()[where]
    assert args[0] == "serve"
    help_text = CliRunner().invoke(cli.main, ["serve", "--help"]).output
    for flag in (a for a in args if a.startswith("--")):
        assert re.search(rf"(^|\s){re.escape(flag)}\b", help_text), f"{flag} not in serve --help"
    # click parses the whole command line (without running the command).
    serve = cli.main.get_command(cli.main.make_context("tokensvc", list(args)), "serve")
    assert serve is not None
    ctx = serve.make_context("serve", list(args[1:]))
    assert ctx.params["host"] == "0.0.0.0"  # noqa: S104 -- the container must listen on its own interface
    assert settings.load(ctx.params, environ={}).port == int(flag_value(args, "--port"))


@pytest.mark.parametrize("where", ["Dockerfile", *TOKENSVC_SERVICES, "Deployment"])
def test_environment_is_valid_settings(where: str) -> None:
    if where == "Dockerfile":
        env = dockerfile_env()
    elif where == "Deployment":
        env = deployment_env()
    else:
        env = {**dockerfile_env(), **compose_env(where)}
    ours = {k: v for k, v in env.items() if k.startswith(settings.ENV_PREFIX)}
    assert ours, f"{where} sets no TOKENSVC_* variable"
    loaded = settings.load(environ=ours)  # raises SettingsError naming a bad one
    if where != "Dockerfile":
        # The image has no redis-server and every instance must share the keys.
        assert loaded.redis_url and loaded.secret_keys and loaded.admin_key and loaded.issuer
        assert loaded.metrics_port == 9100


def test_secret_example_holds_only_settings() -> None:
    secret = k8s_objects()["Secret"]
    names = {f"{settings.ENV_PREFIX}{opt.name.upper()}" for opt in settings.OPTIONS}
    assert set(secret["stringData"]) <= names
    assert set(secret["stringData"]) <= set(STAND_INS)


def test_compose_variables_are_documented() -> None:
    """Every ${NAME} compose.yaml reads is in env.example, and the required ones are the keys."""
    text = COMPOSE.read_text()
    used = {m.group(1) for m in COMPOSE_VARIABLE.finditer(text)}
    required = {m.group(1) for m in COMPOSE_VARIABLE.finditer(text) if m.group(2) in (":?", "?")}
    example = {line.split("=", 1)[0] for line in (DEPLOY / "env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    assert used <= example, used - example
    assert required == {"TOKENSVC_SECRET_KEYS", "TOKENSVC_ADMIN_KEY"}


def probe_paths() -> set[tuple[str, str]]:
    """(where, path) of every health check and probe."""
    found: set[tuple[str, str]] = set()
    url = re.compile(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)")
    healthchecks = {"Dockerfile": " ".join(a for i, a in final_stage() if i == "HEALTHCHECK")}
    for name in TOKENSVC_SERVICES:
        healthchecks[f"compose {name}"] = " ".join(compose()["services"][name]["healthcheck"]["test"])
    for where, text in healthchecks.items():
        matches = url.findall(text)
        assert len(matches) == 1, f"{where}: no single health check URL in {text!r}"
        port, path = matches[0]
        assert port == "8000", f"{where} checks port {port}"
        found.add((where, path))
    container = deployment_container()
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "http"
        found.add((f"Deployment {probe}", get["path"]))
    return found


def test_probes_are_the_expected_ones() -> None:
    paths = dict(probe_paths())
    assert paths["Deployment readinessProbe"] == "/readyz"
    assert paths["Deployment livenessProbe"] == "/healthz"
    assert paths["Dockerfile"] == "/healthz"


async def test_probe_paths_answer_200(http: httpx.AsyncClient) -> None:
    for where, path in sorted(probe_paths()):
        resp = await http.get(path)
        assert resp.status_code == 200, f"{where}: GET {path} -> {resp.status_code} {resp.text}"
        assert resp.json()["status"] == "ok"


def test_kubernetes_ports_and_selectors_line_up() -> None:
    objects = k8s_objects()
    container = deployment_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(flag_value(container["args"], "--port"))
    assert ports["metrics"] == int(deployment_env()["TOKENSVC_METRICS_PORT"])
    exposed = next(a for i, a in final_stage() if i == "EXPOSE").split()
    assert {str(p) for p in ports.values()} <= set(exposed)

    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for name, port in service_ports.items():
        target = port["targetPort"]
        assert target in ports or target in ports.values(), f"Service port {name} -> {target}"
    assert service_ports["metrics"]["targetPort"] in ("metrics", ports["metrics"])

    monitor = objects["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    assert service["metadata"]["name"] == "tokensvc", "the job label alerts.yml expects"

    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    pdb = objects["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_kubernetes_pod_is_locked_down() -> None:
    pod = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    container = deployment_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    # Everything written goes to an emptyDir: /tmp, the data dir and the metrics files.
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {PurePosixPath(m["mountPath"]) for m in container["volumeMounts"] if m["name"] in empty_dirs}
    env = deployment_env()
    # Checks that the pod mounts a writable /tmp; nothing is written there.
    for path in ("/tmp", env["TOKENSVC_DATA_DIR"], env["PROMETHEUS_MULTIPROC_DIR"]):  # noqa: S108
        assert any(PurePosixPath(path).is_relative_to(m) for m in mounts), f"{path} is not writable"


def test_compose_wiring() -> None:
    services = compose()["services"]
    serve_port = {int(flag_value(services[n]["command"], "--port")) for n in TOKENSVC_SERVICES}
    assert serve_port == {8000}
    # nginx balances over both instances on their serve port, passing the client address.
    assert sorted(nginx_upstream()) == [f"{n}:8000" for n in TOKENSVC_SERVICES]
    text = NGINX_CONF.read_text()
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in text
    assert "least_conn" not in text and "ip_hash" not in text, "round-robin"
    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    nginx_ip = nginx["networks"]["backend"]["ipv4_address"]
    for name in TOKENSVC_SERVICES:
        env = compose_env(name)
        assert env["TOKENSVC_TRUSTED_PROXIES"] == nginx_ip
        assert env["TOKENSVC_REDIS_URL"].startswith("redis://redis:6379")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert "ports" not in services[name], "instances are reached through nginx only"
    # Both instances share the keys.
    assert compose_env("tokensvc-1") == compose_env("tokensvc-2")
    # Redis runs deploy/redis.conf on a volume.
    redis_svc = services["redis"]
    conf_mount = next(v for v in redis_svc["volumes"] if v.startswith("./redis.conf:"))
    assert conf_mount.split(":")[1] in redis_svc["command"]
    assert any(v.split(":")[1] == "/data" for v in redis_svc["volumes"])


def test_compose_prometheus_scrapes_both_instances() -> None:
    services = compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    config_path = next(t for s, t in mounts.items() if s == "./prometheus-compose.yml")
    assert f"--config.file={config_path}" in services["prometheus"]["command"]
    config = load_yaml(DEPLOY / "prometheus-compose.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tokensvc")
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    metrics_port = compose_env("tokensvc-1")["TOKENSVC_METRICS_PORT"]
    assert sorted(targets) == [f"{n}:{metrics_port}" for n in TOKENSVC_SERVICES]
    # The rule files resolve (relative to the config file) to deploy/prometheus/, mounted.
    config_dir = PurePosixPath(config_path).parent
    for rule_file in config["rule_files"]:
        in_container = config_dir / rule_file
        source = next(s for s, t in mounts.items()
                      if s == "./prometheus" and in_container.is_relative_to(t))
        local = DEPLOY / source / in_container.relative_to(mounts[source])
        assert local.is_file(), f"{rule_file} -> {local}"


def test_compose_prometheus_config_passes_promtool(tmp_path: Path,
                                                   prometheus_tools: tuple[str, str]) -> None:
    """The container's /etc/prometheus layout, rebuilt in a temporary directory."""
    shutil.copy(DEPLOY / "prometheus-compose.yml", tmp_path / "prometheus.yml")
    shutil.copytree(DEPLOY / "prometheus", tmp_path / "tokensvc")
    done = subprocess.run([prometheus_tools[1], "check", "config", "prometheus.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 rule files found" in done.stdout


def test_grafana_provisions_the_dashboard() -> None:
    services = compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = load_yaml(provisioning / "dashboards" / "tokensvc.yaml")["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    dashboards_dir = PurePosixPath(providers[0]["options"]["path"])
    dashboard_target = PurePosixPath(mounts["./grafana/tokensvc.json"])
    assert dashboard_target.parent == dashboards_dir
    dashboard = json.loads((DEPLOY / "grafana" / "tokensvc.json").read_text())
    assert dashboard["panels"]
    sources = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert [(s["type"], s["url"], s["isDefault"]) for s in sources] == [
        ("prometheus", "http://prometheus:9090", True)]
    assert "9090:9090" in services["prometheus"]["ports"]


def test_redis_conf_directives() -> None:
    conf = redis_directives()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["aof-use-rdb-preamble"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["save"], "RDB snapshots as an extra"
    assert "dir" not in conf, "a dir line would stop --dir from overriding it"


@pytest.fixture
def redis_with_conf(tmp_path: Path) -> Iterator[redis.Redis]:
    """redis-server running deploy/redis.conf, on a free loopback port, with its data in tmp."""
    server = RedisServer(tmp_path, mode="aof")
    server.start()
    client = server.sync(socket_timeout=1, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def test_redis_loads_the_conf(redis_with_conf: redis.Redis, tmp_path: Path) -> None:
    r = redis_with_conf

    def config(name: str) -> str:
        value: dict[str, str] = r.config_get(name)  # type: ignore[assignment]
        return value[name]

    assert config("appendonly") == "yes"
    assert config("appendfsync") == "everysec"
    assert config("aof-use-rdb-preamble") == "yes"
    assert config("maxmemory-policy") == "noeviction"
    assert config("save") != ""
    r.set("tsv:deploy-test", "1")
    assert (tmp_path / "appendonlydir").is_dir(), "the AOF is written under --dir"
