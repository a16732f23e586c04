"""`python -m bench suite`: the issue's goal set, each run `repeat` times, medians, ratios.

Runs go round-robin (every configuration once, then again), so a drift of the machine touches
all of them alike. Pinning follows the issue: server on CPU 0, Redis and the generator on
CPU 1 (the two-worker run gets both CPUs for the server; scale_out's second instance gets
CPU 1).

The fleet rows (many_clients, cold_start, scale_out, tls, tls_handshake) and the JWT rows
(cc_jwt, resource_jwt, resource_introspection) run only when named with --only; their own
figures (time to 90 % of the warm rate, argon2 runs on a new process, scale-out times, tokens
per server CPU with a handshake per request, requests per CPU-second of the processes checking
a protected API's tokens) go to a second table.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import RESULTS_DIR, now_stamp
from bench.runner import RunOptions, execute, run_argv

# Figures quoted from the issue (measured there with wrk on a 2-core machine like ours; the
# peers are not part of this project and are not run by the bench).
PEERS = {
    "node-oidc-provider 9.13, Redis adapter": 5330.0,
    "node-oidc-provider 9.13, in-memory": 8000.0,
    "node-oidc-provider introspection, Redis": 6190.0,
}
# Keycloak's published sizing: client_credentials grants per second per vCPU, each with a TLS
# handshake (quoted; Keycloak is not run here).
KEYCLOAK_PER_VCPU = 120.0
# Goals of the fleet issue.
MANY_CLIENTS_RATIO = 0.9
# Goals of the JWT issue: issuing a JWT access token (an ES256 signature per token) against an
# opaque one, and the kit's local verification per core against introspection per core.
JWT_ISSUANCE_RATIO = 0.8
KIT_PER_CORE_RATIO = 3.0


@dataclass(frozen=True)
class Config:
    key: str
    title: str
    changes: dict[str, Any]
    default: bool = True


CONFIGS: tuple[Config, ...] = (
    Config("static", "reference: static JSON (stack ceiling)", {"reference": "static"}),
    Config("noredis", "reference: form + token, no Redis", {"reference": "noredis"}),
    Config("redis", "reference: form + token + 2 SET pipeline", {"reference": "redis"}),
    Config("cc", "client_credentials, reuse off", {"scenario": "client_credentials"}),
    Config("cc_reuse", "client_credentials, reuse on", {"scenario": "client_credentials_reuse"}),
    Config("introspection", "introspection", {"scenario": "introspection"}),
    Config("password", "password grant (argon2 per request)", {"scenario": "password"}),
    Config("cc_w2", "client_credentials, 2 workers (CPUs 0-1)",
           {"scenario": "client_credentials", "workers": 2, "pin_server": "0-1"}),
    # Not in the default set (`--only ... mix_password`): issuance while password logins run.
    Config("mix_password", "client_credentials on 60 connections, password on 4",
           {"scenario": "mix", "mix": {"client_credentials": 60, "password": 4},
            "mix_by_connection": True}, default=False),
    # The fleet issue's rows (`--only cc many_clients cold_start scale_out tls tls_handshake`).
    Config("many_clients", "client_credentials, many clients in turn",
           {"scenario": "many_clients", "clients": 20_000}, default=False),
    Config("cold_start", "cold start: a new instance, the known clients in turn",
           {"scenario": "cold_start", "clients": 10_000}, default=False),
    Config("scale_out", "scale-out: open loop at 70 % of A's peak, B joins",
           {"scenario": "scale_out"}, default=False),
    Config("tls", "client_credentials over TLS, keep-alive", {"scenario": "client_credentials", "tls": True},
           default=False),
    Config("tls_handshake", "client_credentials, a TLS handshake per request",
           {"scenario": "client_credentials", "tls": True, "new_connection": True}, default=False),
    # The JWT issue's rows (`--only cc cc_jwt introspection resource_jwt resource_introspection`).
    Config("cc_jwt", "client_credentials, JWT access tokens",
           {"scenario": "client_credentials", "settings": {"access_token_format": "jwt"}}, default=False),
    Config("resource_jwt", "protected API, JWT verified locally by the kit",
           {"scenario": "resource_jwt"}, default=False),
    Config("resource_introspection", "protected API, kit introspecting every request (no cache)",
           {"scenario": "resource_introspection"}, default=False),
    # The DPoP row (`--only static cc cc_dpop`): a bound token per request, a proof each, signed
    # by the generator before the timed phase.
    Config("cc_dpop", "client_credentials, DPoP-bound (a proof per request)",
           {"scenario": "client_credentials_dpop"}, default=False),
)
# Rows of a protected API (not token requests): no ratios against the token references.
RESOURCE_ROWS = ("resource_jwt", "resource_introspection")
NO_RATIOS = ("password", "mix_password", "cold_start", "scale_out", "tls", "tls_handshake", *RESOURCE_ROWS)
# Rows whose title gets the number of clients the runs had.
WITH_CLIENTS = ("many_clients", "cold_start", "scale_out")


def _median_doc(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ranked = sorted(docs, key=lambda d: d["summary"]["throughput"])
    return ranked[len(ranked) // 2]


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def summarise(by_key: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """The Markdown table and the goal checks from the runs of each configuration."""
    med: dict[str, dict[str, float]] = {}
    for key, docs in by_key.items():
        if not docs:
            continue
        med[key] = {
            "throughput": statistics.median(d["summary"]["throughput"] for d in docs),
            "p99": statistics.median(d["summary"]["latency_ms"]["p99"] for d in docs),
            "bound": float(any(d.get("generator_bound") for d in docs)),
        }
    redis = med.get("redis", {}).get("throughput")
    static = med.get("static", {}).get("throughput")
    noredis = med.get("noredis", {}).get("throughput")
    titles = {c.key: c.title for c in CONFIGS}
    for key in WITH_CLIENTS:
        clients = [d.get("workload", {}).get("clients") for d in by_key.get(key, [])]
        if clients and clients[0]:
            titles[key] += f" ({clients[0]:,} clients)"
    lines = ["| configuration | req/s (median) | p99 ms (median) | vs redis ref | vs no-Redis ref "
             "| vs static | runs (req/s) |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, m in med.items():
        runs = ", ".join(f"{d['summary']['throughput']:.0f}" for d in by_key[key])
        flag = " (generator-bound)" if m["bound"] else ""
        ratios = ("-", "-", "-") if key in NO_RATIOS else (
            _ratio(m["throughput"], redis), _ratio(m["throughput"], noredis), _ratio(m["throughput"], static))
        lines.append(f"| {titles.get(key, key)}{flag} | {m['throughput']:.0f} | {m['p99']:.2f} | "
                     f"{' | '.join(ratios)} | {runs} |")
    goals: list[tuple[str, bool | None, str]] = []
    cc = med.get("cc", {}).get("throughput")
    cc_p99 = med.get("cc", {}).get("p99")

    def check(name: str, value: float | None, target: float | None, shown: str) -> None:
        ok = None if value is None or target is None else value >= target
        goals.append((name, ok, shown))

    check("client_credentials >= 1.45x the redis reference", cc, 1.45 * redis if redis else None,
          _ratio(cc, redis))
    check("client_credentials >= 27 % of static", cc, 0.27 * static if static else None,
          f"{cc / static:.0%}" if cc and static else "-")
    goals.append(("client_credentials p99 < 15 ms", None if cc_p99 is None else cc_p99 < 15,
                  f"{cc_p99:.2f} ms" if cc_p99 is not None else "-"))
    check("client_credentials >= 1.5x node-oidc-provider with Redis (5,330/s, quoted)", cc,
          1.5 * PEERS["node-oidc-provider 9.13, Redis adapter"], f"{cc:.0f}/s" if cc else "-")
    check("client_credentials >= node-oidc-provider in memory (8,000/s, quoted)", cc,
          PEERS["node-oidc-provider 9.13, in-memory"], f"{cc:.0f}/s" if cc else "-")
    intro = med.get("introspection", {}).get("throughput")
    check("introspection >= 1.5x node-oidc-provider with Redis (6,190/s, quoted)", intro,
          1.5 * PEERS["node-oidc-provider introspection, Redis"], f"{intro:.0f}/s" if intro else "-")
    reuse = med.get("cc_reuse", {}).get("throughput")
    check("reuse on >= 2x reuse off", reuse, 2 * cc if cc else None, _ratio(reuse, cc))
    w2 = med.get("cc_w2", {}).get("throughput")
    check("2 workers >= 1.6x 1 worker", w2, 1.6 * cc if cc else None, _ratio(w2, cc))
    mixed = [d["labels"]["client_credentials"]["latency_ms"]["p99"] for d in by_key.get("mix_password", [])
             if "client_credentials" in (d.get("labels") or {})]
    if mixed and cc_p99:
        p99_mixed = statistics.median(mixed)
        goals.append(("client_credentials p99 while password logins run (vs alone)",
                      None, f"{p99_mixed:.2f} ms vs {cc_p99:.2f} ms"))
    jwt = med.get("cc_jwt", {}).get("throughput")
    if jwt is not None:
        check(f"JWT issuance >= {JWT_ISSUANCE_RATIO}x opaque", jwt, JWT_ISSUANCE_RATIO * cc if cc else None,
              _ratio(jwt, cc))
    bound = med.get("cc_dpop", {}).get("throughput")
    if bound is not None:
        goals.append(("DPoP-bound client_credentials vs bearer (same run)", None, _ratio(bound, cc)))
    fleet_lines, fleet_goals, fleet = fleet_summary(by_key, med)
    goals += fleet_goals
    lines += ["", "| goal | measured | met |", "| --- | ---: | :---: |"]
    for name, ok, shown in goals:
        lines.append(f"| {name} | {shown} | {'-' if ok is None else ('yes' if ok else 'no')} |")
    hit_rates = [d["server_metrics"]["secret_cache_hit_rate"] for d in by_key.get("cc", [])
                 if d.get("server_metrics") and d["server_metrics"].get("secret_cache_hit_rate") is not None]
    if hit_rates:
        lines.append("")
        lines.append(f"Verified-secret cache hit rate (client_credentials runs): "
                     f"{statistics.median(hit_rates):.4%} (median).")
    if fleet_lines:
        lines += ["", *fleet_lines]
    return "\n".join(lines), {"medians": med, "fleet": fleet,
                              "goals": [{"goal": g, "met": ok, "measured": s} for g, ok, s in goals]}


def _get(doc: dict[str, Any], *path: str) -> Any:
    value: Any = doc
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _values(docs: Sequence[dict[str, Any]], pick: Callable[[dict[str, Any]], Any]) -> list[float | None]:
    out: list[float | None] = []
    for doc in docs:
        value = pick(doc)
        out.append(float(value) if isinstance(value, int | float) else None)
    return out


def _median(values: Sequence[float | None]) -> float | None:
    """The median of the runs that have the figure."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _kit(doc: dict[str, Any], *path: str) -> Any:
    return _get(doc, "resource_kit", *path)


def _per_cpu(doc: dict[str, Any]) -> float | None:
    cpu = _get(doc, "cpu", "server")
    tput = _get(doc, "summary", "throughput")
    return tput / cpu if cpu and tput is not None else None


# (row, figure, how it is read from a result, unit)
FLEET_FIGURES: tuple[tuple[str, str, Callable[[dict[str, Any]], Any], str], ...] = (
    ("cold_start", "start command -> /healthz", lambda d: _get(d, "cold_start", "start_to_healthz_s"), "s"),
    ("cold_start", "time to 90 % of the warm rate (from the first request)",
     lambda d: _get(d, "cold_start", "time_to_90_s"), "s"),
    ("cold_start", "warm rate", lambda d: _get(d, "cold_start", "warm_rate"), "req/s"),
    ("cold_start", "p50, first 10 s", lambda d: _get(d, "cold_start", "early_latency_ms", "p50"), "ms"),
    ("cold_start", "p99, first 10 s", lambda d: _get(d, "cold_start", "early_latency_ms", "p99"), "ms"),
    ("cold_start", "argon2 runs (client secrets) on the new process",
     lambda d: _get(d, "cold_start", "argon2_client_secret_runs"), ""),
    ("cold_start", "secret-cache hits on the new process",
     lambda d: _get(d, "cold_start", "secret_cache_hits"), ""),
    ("scale_out", "A's peak (closed loop)", lambda d: _get(d, "scale_out", "peak", "throughput"), "req/s"),
    ("scale_out", "open-loop rate", lambda d: _get(d, "scale_out", "rate"), "req/s"),
    ("scale_out", "B: start command -> /healthz", lambda d: _get(d, "scale_out", "start_to_healthz_s"), "s"),
    ("scale_out", "B: start command -> carries its share (>= 40 % of a 1 s window, p99 < 15 ms)",
     lambda d: _get(d, "scale_out", "start_to_share_s"), "s"),
    ("tls", "tokens/s per server CPU", _per_cpu, "req/s"),
    ("tls_handshake", "tokens/s per server CPU", _per_cpu, "req/s"),
    ("tls_handshake", "server CPU", lambda d: _get(d, "cpu", "server"), "cores"),
    ("tls_handshake", "generator ceiling (same handshakes)",
     lambda d: _get(d, "ceiling", "throughput"), "req/s"),
    ("resource_jwt", "requests per CPU-second (API)", lambda d: _kit(d, "requests_per_cpu_second"), "req/s"),
    ("resource_jwt", "API CPU", lambda d: _kit(d, "cpu_cores", "api"), "cores"),
    ("resource_jwt", "JWKS fetches (since the API started)", lambda d: _kit(d, "jwks_fetches"), ""),
    ("resource_introspection", "requests per CPU-second (API + tokensvc + Redis)",
     lambda d: _kit(d, "requests_per_cpu_second"), "req/s"),
    ("resource_introspection", "API CPU", lambda d: _kit(d, "cpu_cores", "api"), "cores"),
    ("resource_introspection", "tokensvc CPU", lambda d: _kit(d, "cpu_cores", "server"), "cores"),
    ("resource_introspection", "Redis CPU", lambda d: _kit(d, "cpu_cores", "redis"), "cores"),
    ("resource_introspection", "introspection requests per API request",
     lambda d: _kit(d, "introspections_per_request"), "ratio"),
)


def _shown(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit in ("cores", "ratio"):
        return f"{value:.2f}"
    return f"{value:.0f}" + (f" {unit}" if unit else "")


def fleet_summary(by_key: dict[str, list[dict[str, Any]]], med: dict[str, dict[str, float]]
                  ) -> tuple[list[str], list[tuple[str, bool | None, str]], dict[str, Any]]:
    """The fleet rows' own figures (medians over the runs that have them; a run that never
    reached a time shows as "never"), and their goals."""
    titles = {c.key: c.title for c in CONFIGS}
    lines: list[str] = []
    facts: dict[str, Any] = {}
    for key, name, pick, unit in FLEET_FIGURES:
        docs = by_key.get(key) or []
        if not docs:
            continue
        values = _values(docs, pick)
        middle = _median(values)
        facts.setdefault(key, {})[name] = middle
        # a missing time is one never reached; any other missing figure was not measured
        runs = ", ".join("never" if v is None and unit == "s" else _shown(v, unit) for v in values)
        lines.append(f"| {titles[key]} | {name} | {_shown(middle, unit)} | {runs} |")
    if lines:
        lines = ["| configuration | figure | median | runs |", "| --- | --- | ---: | --- |", *lines]
    goals: list[tuple[str, bool | None, str]] = []
    cc = med.get("cc", {}).get("throughput")
    many = med.get("many_clients", {}).get("throughput")
    if many is not None:
        goals.append((f"many clients >= {MANY_CLIENTS_RATIO}x one-client client_credentials",
                      None if not cc else many >= MANY_CLIENTS_RATIO * cc, _ratio(many, cc)))
    cold = by_key.get("cold_start") or []
    if cold:
        reached = _values(cold, lambda d: _get(d, "cold_start", "time_to_90_s"))
        # a run that never reached 90 % counts as the slowest
        ordered = sorted(reached, key=lambda v: float("inf") if v is None else v)
        mid = ordered[len(ordered) // 2]
        goals.append(("cold start: >= 90 % of the warm rate within 2 s", mid is not None and mid <= 2.0,
                      "never" if mid is None else f"{mid:.2f} s"))
        p99 = _median(_values(cold, lambda d: _get(d, "cold_start", "early_latency_ms", "p99")))
        goals.append(("cold start: p99 < 50 ms over the first 10 s", None if p99 is None else p99 < 50.0,
                      _shown(p99, "ms")))
        argon2 = [v for v in _values(cold, lambda d: _get(d, "cold_start", "argon2_client_secret_runs"))
                  if v is not None]
        goals.append(("cold start: argon2 runs on the new process = 0",
                      (max(argon2) == 0) if argon2 else None,
                      f"{max(argon2):.0f} (most of any run)" if argon2 else "-"))
    handshake = by_key.get("tls_handshake") or []
    if handshake:
        per_cpu = _median(_values(handshake, _per_cpu))
        goals.append((f"tokens/s per server CPU with a TLS handshake per request (Keycloak's published "
                      f"sizing: {KEYCLOAK_PER_VCPU:.0f}/s per vCPU, quoted)", None, _shown(per_cpu, "req/s")))
    goals += kit_goals(by_key)
    return lines, goals, facts


def kit_goals(by_key: dict[str, list[dict[str, Any]]]) -> list[tuple[str, bool | None, str]]:
    """The kit's local verification per core against introspection per core (medians of the
    runs' requests per CPU-second)."""
    local = _median(_values(by_key.get("resource_jwt") or [], lambda d: _kit(d, "requests_per_cpu_second")))
    remote = _median(_values(by_key.get("resource_introspection") or [],
                             lambda d: _kit(d, "requests_per_cpu_second")))
    if local is None and remote is None:
        return []
    shown = _ratio(local, remote)
    if local is not None and remote is not None:
        shown += f" ({local:.0f} vs {remote:.0f} req per CPU-second)"
    met = None if local is None or remote is None else local >= KIT_PER_CORE_RATIO * remote
    name = f"kit local verification per core >= {KIT_PER_CORE_RATIO:g}x introspection per core"
    return [(name, met, shown)]


def config_options(base: RunOptions, cfg: Config) -> RunOptions:
    """The run options of one suite row: the suite's own, changed as the row says."""
    changes = dict(cfg.changes)
    if "settings" in changes:  # the row's settings over the suite's --set
        changes["settings"] = {**base.settings, **changes["settings"]}
    if base.clients is not None:
        changes.pop("clients", None)  # --clients given to the suite wins
    opts = dataclasses.replace(base, **changes)
    if opts.scenario == "scale_out" and opts.join_at >= opts.duration:
        opts = dataclasses.replace(opts, join_at=round(opts.duration / 3, 1))
    return opts


async def run_suite(base: RunOptions, repeat: int, only: Sequence[str] | None,
                    markdown: Path | None) -> str:
    configs = [c for c in CONFIGS if (c.key in only if only else c.default)]
    unknown = set(only or ()) - {c.key for c in CONFIGS}
    if unknown:
        raise SystemExit(f"unknown suite keys: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(c.key for c in CONFIGS)}")
    by_key: dict[str, list[dict[str, Any]]] = {c.key: [] for c in configs}
    paths: list[str] = []
    for round_no in range(1, repeat + 1):
        for cfg in configs:
            opts = config_options(base, cfg)
            print(f"[suite] round {round_no}/{repeat}: {cfg.title}", file=sys.stderr, flush=True)
            doc = await execute(opts, run_argv(opts))
            by_key[cfg.key].append(doc)
            paths.append(str(doc.get("path")))
            print(f"[suite]   {doc['summary']['throughput']:.0f} req/s, p99 "
                  f"{doc['summary']['latency_ms']['p99']:.2f} ms", file=sys.stderr, flush=True)
    table, facts = summarise(by_key)
    stamp = now_stamp()[1]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{stamp}-suite.json").write_text(json.dumps(
        {"format": "tokensvc-bench-suite/1", "runs": paths, **facts}, indent=2) + "\n")
    if markdown is not None:
        markdown.write_text(table + "\n")
    return table
