"""deploy/prometheus and deploy/grafana, checked by Prometheus's own tools and by a real Prometheus.

- promtool: `check rules` on the recording and alert rules, `check config` on the scrape config,
  `test rules` on alerts_test.yml (every alert firing and not firing).
- The dashboard: valid JSON that Grafana imports (a datasource input and variable, every panel
  with queries), and every expression in it, in the rules and in the alerts names only series
  that tokensvc exports (read from tokensvc.metrics) or that a recording rule records.
- End to end: a real `tokensvc serve --workers 2` and a real Prometheus (Debian's `prometheus`
  package) scraping it every second with the rule files loaded. The test drives every
  kind of traffic the dashboard shows (client credentials, passwords, a refresh, a reuse, a
  revocation, wrong secrets, a lockout, an authorization code and its replay, a Redis outage)
  over HTTP, waits until Prometheus has scraped it all and evaluated the rules, and then queries
  every dashboard expression and every recorded series through Prometheus's HTTP API. The
  tokens-issued total must equal the number of tokens the test obtained, and the multiprocess
  files must show that both workers issued some of them.

Without prometheus/promtool (`make prometheus` installs Debian's package as root) the tests that
need them are skipped, saying so; in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.metrics import MetricWrapperBase

from tests.support import authflow
from tests.support.api import new_client, new_user
from tests.support.redis_servers import RedisServer, free_port
from tests.support.service import Process, Service
from tokensvc import metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "tokensvc.json"
DEPLOY_README = ROOT / "deploy" / "README.md"
RULE_FILES = ("recording.yml", "alerts.yml")
JOB = "tokensvc"

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
# Without them: skipped, or in CI failed (tests/support/tools.py).
requires_prometheus = pytest.mark.usefixtures("prometheus_tools")

# Dashboard variables as Grafana would fill them in for this test's Prometheus (scraping every
# second; Grafana's $__rate_interval is at least four scrape intervals, 1m at its default 15s).
VARIABLES = {"$job": JOB, "$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
# Every bounded wait of the end-to-end test.
WAIT_SECONDS = 20.0


def load_yaml(path: Path) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


def promtool(*args: str, cwd: Path) -> None:
    """Run promtool; it must exit 0 (its output is the failure message otherwise)."""
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (f"promtool {' '.join(args)} exited {done.returncode}:\n"
                                  f"{done.stdout}\n{done.stderr}")


# -- what the files hold ---------------------------------------------------------------------


def recording_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(PROMETHEUS_DIR / "recording.yml")["groups"]:
        rules += group["rules"]
    return rules


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]:
        rules += group["rules"]
    return rules


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows, those inside collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target."""
    return [(panel["title"], target["expr"]) for panel in panels(dashboard())
            for target in panel["targets"]]


def variable_metrics() -> list[tuple[str, str]]:
    """(metric, label) of every `label_values(metric, label)` variable query."""
    found: list[tuple[str, str]] = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\(\s*([\w:]+)\s*,\s*(\w+)\s*\)", query)
        assert match is not None, f"variable {var['name']}: not label_values(metric, label): {query}"
        found.append((match.group(1), match.group(2)))
    return found


def substitute(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in (longest names first)."""
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"a variable this test does not fill in: {expr}"
    return expr


def exported_series() -> set[str]:
    """The names of every series tokensvc's metrics expose (counters end in _total, histograms
    are _bucket, _sum and _count), read from the metric objects of tokensvc.metrics."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        for family in obj.describe():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
            elif family.type == "gauge":
                names.add(family.name)
            else:
                raise AssertionError(f"{family.name}: a {family.type} (teach this test its series)")
    return names


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier that is not part of a longer one, a number or a variable, and is not a call.
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, ranges, grouping clauses,
    strings and function names left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def test_series_names_parser() -> None:
    assert series_names(
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{route=~"/x(/v2)?", le!="1e3"}[5m])))'
        ' / on (job) group_left (route) b:c:rate5m offset 1m and bool 1e3 > 0.5 or absent(up == 1)'
    ) == {"a_bucket", "b:c:rate5m", "up"}


# -- promtool --------------------------------------------------------------------------------


@requires_prometheus
def test_promtool_check_rules() -> None:
    promtool("check", "rules", *RULE_FILES, cwd=PROMETHEUS_DIR)


@requires_prometheus
def test_promtool_check_config(tmp_path: Path) -> None:
    """The scrape config as shipped, beside copies of its rule files (which it names relatively)."""
    for name in ("prometheus.yml", *RULE_FILES):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert config["rule_files"] == list(RULE_FILES)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[JOB]["metrics_path"] == "/metrics"
    assert jobs[JOB].get("scrape_interval", config["global"]["scrape_interval"]) == "15s"


@requires_prometheus
def test_promtool_test_rules() -> None:
    promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"


# -- static checks of rules, alerts and dashboard --------------------------------------------


def test_rule_names_and_alert_annotations() -> None:
    records = [rule["record"] for rule in recording_rules()]
    assert len(records) == len(set(records))
    for name in records:
        # level:metric:operations (https://prometheus.io/docs/practices/rules/)
        assert re.fullmatch(r"[a-z_]+:tokensvc_[a-z0-9_]+:[a-z0-9_]+", name), name
    anchors = {m.lower() for m in re.findall(r"^#+\s+(\S+)\s*$", DEPLOY_README.read_text(), re.M)}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert "for" in rule, f"{name} has no `for:`"
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        url = rule["annotations"]["runbook_url"]
        assert url == f"deploy/README.md#{name.lower()}", url
        assert name.lower() in anchors, f"deploy/README.md has no runbook heading `{name}`"


def test_expressions_name_only_exported_or_recorded_series() -> None:
    exported = exported_series()
    # Sanity: the reader of tokensvc.metrics found the metrics.
    assert {"tokensvc_tokens_issued_total", "tokensvc_http_request_duration_seconds_bucket",
            "tokensvc_http_requests_in_flight"} <= exported
    recorded = {rule["record"] for rule in recording_rules()}
    known = exported | recorded | {"up"}
    where: list[tuple[str, str]] = [(f"record {rule['record']}", rule["expr"]) for rule in recording_rules()]
    where += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    where += [(f"panel {title!r}", expr) for title, expr in dashboard_queries()]
    where += [(f"variable over {metric}", metric) for metric, _ in variable_metrics()]
    unknown = [f"{place}: {sorted(series_names(expr) - known)}" for place, expr in where
               if series_names(expr) - known]
    assert unknown == [], ("series that tokensvc does not export and no rule records:\n"
                           + "\n".join(unknown))
    # Every query names something (the parser did not strip it all away).
    assert all(series_names(expr) for _, expr in where)


def test_dashboard_imports_as_is() -> None:
    doc = dashboard()
    assert doc["schemaVersion"] >= 36 and doc["uid"] and doc["title"] and doc["id"] is None
    inputs = {i["name"]: i for i in doc["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert set(variables) == {"datasource", "job"}
    source = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["job"]["datasource"] == source
    ids = [p["id"] for p in doc["panels"]] + [p["id"] for row in doc["panels"]
                                               for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    found = panels(doc)
    assert len(found) >= 10
    for panel in found:
        title = panel["title"]
        assert panel["datasource"] == source, title
        assert panel.get("description"), f"{title}: no description"
        assert panel["targets"], f"{title}: no targets"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"] == source and target["expr"].strip(), title
            assert 'job=~"$job"' in target["expr"], f"{title}: not filtered by $job"
    titles = " | ".join(p["title"] for p in found).lower()
    for topic in ("grant", "errors by code", "p50 / p99", "route and status", "argon2", "hit ratio",
                  "redis operation latency", "redis errors", "lockouts", "reuse", "in flight",
                  "build info"):
        assert topic in titles, f"no panel about {topic}"


# -- end to end: a real tokensvc and a real Prometheus ---------------------------------------


class Prometheus(Process):
    """A running Prometheus server and its HTTP API."""

    name = "prometheus"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "prometheus.log")
        self.url = ""

    def api(self, path: str, **params: str) -> Any:
        resp = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5.0)
        assert resp.status_code == 200, f"GET /api/v1/{path} {params}: {resp.status_code} {resp.text}"
        body = resp.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> str:
        """The scrape targets' health, for failure messages."""
        try:
            active = self.api("targets")["activeTargets"]
        except (AssertionError, httpx.HTTPError) as exc:
            return f"(targets unavailable: {exc})"
        return "\n".join(f"  {t['scrapeUrl']}: {t['health']}, last scrape {t['lastScrape']}, "
                         f"error {t['lastError']!r}" for t in active) or "  (no targets)"

    @property
    def output(self) -> str:
        return super().output[-4000:]

    def wait_ready(self) -> None:
        self.wait_until(lambda: httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200,
                        "ready", WAIT_SECONDS)

    def wait_scraping(self) -> None:
        """Until the target has been scraped successfully (Prometheus applies its targets a few
        seconds after start)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            self.check_running()
            if any(t["health"] == "up" for t in self.api("targets")["activeTargets"]):
                return
            time.sleep(0.1)
        pytest.fail(f"prometheus did not scrape tokensvc within {WAIT_SECONDS} s:\n"
                    f"{self.targets()}\n{self.output}")


@dataclass
class Stack:
    """`tokensvc serve --workers 2`, its redis-server, where its workers keep their metrics,
    and the Prometheus scraping it."""

    live: Service
    redis: RedisServer
    metrics_dir: Path
    prometheus: Prometheus


def start_prometheus(workdir: Path, target_port: int) -> Prometheus:
    """Prometheus with deploy/prometheus/prometheus.yml's tokensvc job aimed at the live service
    and its rule files, scraping and evaluating every second (not waited for)."""
    assert PROMETHEUS is not None
    shipped = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    job = next(j for j in shipped["scrape_configs"] if j["job_name"] == JOB)
    job = {**job, "scrape_interval": "1s", "scrape_timeout": "1s",
           "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(PROMETHEUS_DIR / name) for name in shipped["rule_files"]],
              "scrape_configs": [job]}
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    prometheus = Prometheus(workdir)
    prometheus.url = f"http://127.0.0.1:{port}"
    prometheus.spawn([PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{port}"])
    return prometheus


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """tokensvc and Prometheus, started side by side, ready and scraping. The redis-server is
    the service's own, since the test stops it for a moment."""
    workdir = tmp_path_factory.mktemp("prometheus-e2e")
    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    live = Service.deployed(redis_server.url, workdir / "var", workers=2, log_level="warning").start()
    prometheus = start_prometheus(workdir, live.port)
    try:
        live.wait_ready()
        prometheus.wait_ready()
        prometheus.wait_scraping()
        # Where `tokensvc serve` puts the multiprocess files by default (tokensvc/cli/serve.py).
        metrics_dir = workdir / "var" / f"metrics-{live.port}"
        assert metrics_dir.is_dir(), f"no {metrics_dir}:\n{live.output}"
        yield Stack(live, redis_server, metrics_dir, prometheus)
    finally:
        prometheus.stop()
        live.stop()
        redis_server.stop()


def tokens_by_worker(metrics_dir: Path) -> dict[int, float]:
    """Tokens issued per worker pid, from each worker's own multiprocess files."""
    pids = {int(m.group(1)) for p in metrics_dir.glob("*.db")
            if (m := re.fullmatch(r"\w+?_(\d+)\.db", p.name))}
    counts: dict[int, float] = {}
    for pid in pids:
        with tempfile.TemporaryDirectory() as one:
            for path in metrics_dir.glob(f"*_{pid}.db"):
                shutil.copy(path, one)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=one)  # type: ignore[no-untyped-call]
            counts[pid] = sum(sample.value for family in registry.collect()
                              for sample in family.samples
                              if sample.name == "tokensvc_tokens_issued_total")
    return counts


@dataclass
class Traffic:
    """What the test did, to compare with what Prometheus saw."""

    tokens: list[str] = field(default_factory=list)
    grants: set[str] = field(default_factory=set)
    by_worker: dict[int, float] = field(default_factory=dict)

    def obtained(self, resp: httpx.Response, grant_type: str) -> dict[str, Any]:
        assert resp.status_code == 200, f"{grant_type}: {resp.status_code} {resp.text}"
        body: dict[str, Any] = resp.json()
        self.tokens.append(body["access_token"])
        self.grants.add(grant_type)
        return body


async def flushed(stack: Stack, expected: int) -> dict[int, float]:
    """Tokens issued per worker, once the workers' files hold all `expected` of them: a worker
    moves its counts into its file about once a second (tokensvc.metrics.flush)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        by_worker = tokens_by_worker(stack.metrics_dir)
        if sum(by_worker.values()) >= expected or time.monotonic() > deadline:
            assert sum(by_worker.values()) == expected, (
                f"the workers' multiprocess files count {by_worker} tokens issued; the test "
                f"obtained {expected}")
            return by_worker
        await asyncio.sleep(0.1)


async def client_credentials_on_both_workers(stack: Stack, client: dict[str, Any],
                                             traffic: Traffic) -> None:
    """Client-credentials tokens, each on a new connection, 8 at a time, until both workers
    have issued some: the kernel hands a connection to whichever worker accepts first, often
    the same one for a while."""

    async def one() -> None:
        async with stack.live.http() as http:
            resp = await http.post("/oauth/token", data={
                "grant_type": "client_credentials", "client_id": client["client_id"],
                "client_secret": client["client_secret"]})
        traffic.obtained(resp, "client_credentials")

    for _ in range(8):
        for _ in range(4):
            await asyncio.gather(*(one() for _ in range(8)))
        traffic.by_worker = await flushed(stack, len(traffic.tokens))
        if len([n for n in traffic.by_worker.values() if n > 0]) >= 2:
            return
    pytest.fail(f"{len(traffic.tokens)} tokens on new connections, all from one worker: "
                f"{traffic.by_worker}")


async def one_of_everything(stack: Stack, traffic: Traffic, round_: int) -> None:
    """Every kind of event the dashboard shows, over real HTTP, with clients and users of this
    round's own (the Redis outage at the end empties Redis)."""
    async with stack.live.http() as http:
        machine = await new_client(http, name=f"machine {round_}", grant_types=["client_credentials"])
        app = await new_client(http, name=f"app {round_}", grant_types=["password", "refresh_token"])
        web = await authflow.web_app(http)
        alice, mallory = f"alice{round_}", f"mallory{round_}"
        await new_user(http, alice)
        await new_user(http, mallory)
        machine_auth = (machine["client_id"], machine["client_secret"])
        app_auth = (app["client_id"], app["client_secret"])

        await client_credentials_on_both_workers(stack, machine, traffic)

        # Password grants, a refresh, then the rotated refresh token again: reuse.
        issued = [traffic.obtained(await http.post("/oauth/token", data={
            "grant_type": "password", "username": alice, "password": authflow.PASSWORD},
            auth=app_auth), "password") for _ in range(3)]
        refresh = {"grant_type": "refresh_token", "refresh_token": issued[0]["refresh_token"]}
        traffic.obtained(await http.post("/oauth/token", data=refresh, auth=app_auth), "refresh_token")
        reused = await http.post("/oauth/token", data=refresh, auth=app_auth)
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant", reused.text

        # Revocations, with and without a hint; an introspection.
        for token, hint in ((issued[1]["access_token"], "access_token"),
                            (issued[2]["refresh_token"], None)):
            data = {"token": token} | ({"token_type_hint": hint} if hint else {})
            resp = await http.post("/oauth/revoke", data=data, auth=app_auth)
            assert resp.status_code == 200, resp.text
        resp = await http.post("/oauth/introspect", data={"token": traffic.tokens[-1]}, auth=app_auth)
        assert resp.status_code == 200, resp.text

        # Wrong client secrets.
        for _ in range(3):
            resp = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                   auth=(machine["client_id"], "not the secret"))
            assert resp.status_code == 401 and resp.json()["error"] == "invalid_client", resp.text

        # Wrong passwords until mallory is locked (the default limit is 5).
        for attempt in range(1, 6):
            resp = await http.post("/oauth/token", data={
                "grant_type": "password", "username": mallory, "password": "guess"}, auth=app_auth)
            assert resp.status_code == (423 if attempt == 5 else 400), resp.text

        # The authorization-code flow, sign-in and consent pages included, then a replay.
        code = (await authflow.get_code(http, web, username=alice))["code"]
        traffic.obtained(await authflow.redeem(http, web, code), "authorization_code")
        replay = await authflow.redeem(http, web, code)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant", replay.text

        # Redis goes away for a moment: 503 temporarily_unavailable, and Redis errors.
        stack.redis.stop()
        try:
            for _ in range(2):
                resp = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                       auth=machine_auth)
                assert resp.status_code == 503, resp.text
                assert resp.json()["error"] == "temporarily_unavailable", resp.text
        finally:
            stack.redis.start()
    traffic.by_worker = await flushed(stack, len(traffic.tokens))


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


async def wait_until_seen(prom: Prometheus, since: float, scrapes: int) -> None:
    """Until Prometheus has scraped `scrapes` times after `since` and evaluated every rule group
    after that."""
    deadline = time.monotonic() + WAIT_SECONDS
    seen = since
    for _ in range(scrapes):
        while True:
            targets = prom.api("targets")["activeTargets"]
            scraped = [parse_time(t["lastScrape"]) for t in targets if t["health"] == "up"]
            if scraped and min(scraped) > seen:
                # The scrape started after `seen`; its samples are stored once it has finished.
                seen = max(parse_time(t["lastScrape"]) + t["lastScrapeDuration"] for t in targets)
                break
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus did not scrape tokensvc within {WAIT_SECONDS} s:\n"
                            f"{prom.targets()}")
            await asyncio.sleep(0.1)
    while True:
        groups = prom.api("rules")["groups"]
        if groups and all(parse_time(g["lastEvaluation"]) > seen for g in groups):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus did not evaluate the rules within {WAIT_SECONDS} s: "
                        f"{[(g['name'], g['lastEvaluation']) for g in groups]}")
        await asyncio.sleep(0.1)


@requires_prometheus
@pytest.mark.slow
async def test_prometheus_scrapes_every_worker_and_every_panel_has_data(stack: Stack) -> None:
    prom = stack.prometheus
    traffic = Traffic()
    # Two rounds with a scrape between them, so every counter rises while Prometheus watches:
    # a rate needs two different samples, or it is 0 and a quantile or a share of it is NaN.
    await one_of_everything(stack, traffic, 1)
    await wait_until_seen(prom, time.time(), scrapes=1)
    await one_of_everything(stack, traffic, 2)
    await wait_until_seen(prom, time.time(), scrapes=2)
    context = f"\nPrometheus targets:\n{prom.targets()}"

    # Every token the test obtained, and no other, counted once over both workers.
    issued = prom.query("sum(tokensvc_tokens_issued_total)")
    assert issued, f"no tokensvc_tokens_issued_total in Prometheus{context}"
    assert float(issued[0]["value"][1]) == len(traffic.tokens), (
        f"Prometheus counts {issued[0]['value'][1]} tokens issued, the test obtained "
        f"{len(traffic.tokens)}{context}")
    assert len(set(traffic.tokens)) == len(traffic.tokens)
    assert len([n for n in traffic.by_worker.values() if n > 0]) == 2, (
        f"tokens issued by worker: {traffic.by_worker}")

    # Every rule evaluates without error; every recorded series and every dashboard query has
    # data.
    broken = [(rule["name"], rule["lastError"]) for group in prom.api("rules")["groups"]
              for rule in group["rules"] if rule["health"] != "ok"]
    assert broken == [], f"rules failing in Prometheus: {broken}"
    queries = [(f"record {rule['record']}", rule["record"]) for rule in recording_rules()]
    queries += [(f"panel {title!r}", substitute(expr)) for title, expr in dashboard_queries()]
    queries += [(f"variable label_values({metric}, {label})", f"count by ({label}) ({metric})")
                for metric, label in variable_metrics()]
    results = {expr: prom.query(expr) for _, expr in queries}
    empty = [f"{place}: {expr}" for place, expr in queries if not results[expr]]
    assert empty == [], "no data for:\n" + "\n".join(empty) + context
    # Not just present: each has a number (a quantile or share over a rate of 0 would be NaN).
    nan = [f"{place}: {expr} = {results[expr]}" for place, expr in queries
           if all(math.isnan(float(s["value"][1])) for s in results[expr])]
    assert nan == [], "only NaN for:\n" + "\n".join(nan)

    # And they show what happened.
    def values(expr: str) -> dict[str, float]:
        """{"label=value,...": value} of an instant query, the job label left out."""
        return {",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())
                         if k not in ("job", "__name__")): float(s["value"][1])
                for s in prom.query(expr)}

    def rising(expr: str) -> set[str]:
        return {labels for labels, value in values(expr).items() if value > 0}

    assert rising("job_grant_type:tokensvc_tokens_issued:rate5m") == {
        f"grant_type={grant}" for grant in traffic.grants}
    assert {"error=invalid_client", "error=invalid_grant", "error=user_locked",
            "error=temporarily_unavailable"} <= rising("job_error:tokensvc_token_errors:rate5m")
    assert rising("job_event:tokensvc_authorization_codes:rate5m") == {
        "event=issued", "event=redeemed", "event=replayed"}
    assert rising("job_hint:tokensvc_revocations:rate5m") == {"hint=access_token", "hint=none"}
    assert rising("job_kind:tokensvc_argon2_verifications:rate5m") == {
        "kind=client_secret", "kind=password"}
    for name in ("lockouts", "client_auth_failures", "refresh_reuse_detected", "secret_cache_hits",
                 "token_5xx_per_requests:ratio", "token_unavailable_per_requests:ratio",
                 "redis_errors_per_operations:ratio"):
        record = f"job:tokensvc_{name}" + ("_rate5m" if name.endswith(":ratio") else ":rate5m")
        assert rising(record) == {""}, f"{record}: {values(record)}"
    assert {"route=/oauth/token,status=2xx", "route=/oauth/token,status=4xx",
            "route=/oauth/token,status=5xx"} <= rising("job_route_status:tokensvc_http_requests:rate5m")
    # Exact totals of what the test did twice.
    assert values(f'sum(tokensvc_client_auth_failures_total{{job="{JOB}"}})') == {"": 6}
    assert values(f'sum(tokensvc_lockouts_total{{job="{JOB}"}})') == {"": 2}
    assert values(f'sum(tokensvc_refresh_reuse_detected_total{{job="{JOB}"}})') == {"": 2}
    assert values(f'sum by (event) (tokensvc_authorization_codes_total{{job="{JOB}"}})') == {
        "event=issued": 2, "event=redeemed": 2, "event=replayed": 2}
    # Most client-secret checks were answered by the workers' caches; some ran argon2.
    assert 0.5 < values("job:tokensvc_secret_cache_hits_per_checks:ratio_rate5m")[""] < 1
