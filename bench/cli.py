"""The `python -m bench` command line: run, compare, plot, suite."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.admin import SetupError
from bench.scenarios import DEFAULT_CLIENTS, FLEET_SCENARIOS, MIXABLE, RESOURCE_SCENARIOS, SCENARIOS
from bench.services import REFERENCE_KINDS, StartError
from bench.tls import CertificateError

DESCRIPTION = """\
tokensvc's bench suite: load tokensvc (or the reference endpoints) and record the figures.

  python -m bench run --scenario client_credentials --duration 30 --connections 64
  python -m bench run --reference redis --pin-server 0 --pin-client 1 --pin-redis 1
  python -m bench run --scenario many_clients --clients 20000
  python -m bench run --scenario cold_start --pin-server 0 --pin-client 1 --pin-redis 1
  python -m bench run --scenario client_credentials --tls --new-connection-per-request
  python -m bench compare bench/results/A.json bench/results/B.json
  python -m bench plot bench/results/A.json -o out.png
  python -m bench suite
  python -m bench soak --duration 600

See bench/README.md for every option and how each figure of the issue is reproduced.
"""


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    name = key.strip().lower().replace("-", "_")
    if name.startswith("tokensvc_"):
        name = name[len("tokensvc_"):]
    from tokensvc.settings import OPTIONS

    known = {opt.name for opt in OPTIONS}
    if name not in known:
        raise argparse.ArgumentTypeError(f"unknown tokensvc setting {key!r}")
    return name, value


def _mix(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        name = name.strip()
        if not sep or name not in MIXABLE:
            raise argparse.ArgumentTypeError(f"mix parts are NAME=WEIGHT with NAME in {', '.join(MIXABLE)}")
        try:
            out[name] = int(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name} must be an integer") from None
    return out


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _load_options(p: argparse.ArgumentParser, suite: bool = False) -> None:
    p.add_argument("--duration", type=_positive(float), default=30.0,
                   help="seconds measured, after the warm-up (default 30)")
    p.add_argument("--connections", type=_positive(int), default=64,
                   help="keep-alive connections (default 64)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of load before measuring (default 3)")
    p.add_argument("--wrk", action="store_true",
                   help="send the load with wrk instead of the Python generator")
    p.add_argument("--wrk-threads", type=_positive(int), default=1, help="wrk threads (default 1)")
    p.add_argument("--set", dest="settings", action="append", type=_setting, default=[], metavar="KEY=VALUE",
                   help="a tokensvc setting for the service the bench starts (repeatable), "
                        "e.g. --set reuse_tokens=1 --set password_time_cost=1")
    p.add_argument("--ceiling-seconds", type=float, default=3.0,
                   help="seconds spent measuring the generator's ceiling first; 0 skips it (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    defaults = ", ".join(f"{k} {v:,}" for k, v in DEFAULT_CLIENTS.items())
    p.add_argument("--clients", type=_positive(int),
                   help=f"distinct clients of many_clients, cold_start and scale_out (defaults: {defaults})")
    p.add_argument("--real-hash-cost", action="store_true",
                   help="many_clients, cold_start, scale_out: keep the service's argon2 cost for the "
                        "clients' secrets (default: t=1, m=1 MiB, so set-up takes seconds, not minutes)")
    if not suite:
        p.add_argument("--pin-server", metavar="CPUS",
                       help="pin tokensvc (or the reference app) to CPUs, e.g. 0")
        p.add_argument("--pin-client", metavar="CPUS", help="pin the generator to CPUs, e.g. 1")
        p.add_argument("--pin-redis", metavar="CPUS", help="pin the private redis-server to CPUs, e.g. 1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="one measured run", description=(
        "Start tokensvc (with its own redis-server) or the reference app, or use --url; set up what "
        "the scenario needs through the admin API; measure the generator's ceiling; load; print the "
        "table and write bench/results/<timestamp>-<name>.json."))
    run.add_argument("--scenario", choices=SCENARIOS, default="client_credentials",
                     help="what to send (default client_credentials); static and noop load the "
                          "reference app")
    run.add_argument("--reference", choices=REFERENCE_KINDS,
                     help="load the reference app instead: static (/static), noredis (/token-noredis), "
                          "redis (/token-redis, with its own redis-server)")
    run.add_argument("--rate", type=_positive(float),
                     help="open loop: requests per second at fixed arrival times (default: closed loop)")
    target = run.add_mutually_exclusive_group()
    target.add_argument("--url", help="an already running service (its admin key: --admin-key or "
                                      "TOKENSVC_ADMIN_KEY)")
    target.add_argument("--start", action="store_true",
                        help="start a private redis-server and `tokensvc serve` (the default without --url)")
    run.add_argument("--workers", type=_positive(int), default=1,
                     help="tokensvc workers when started (default 1)")
    run.add_argument("--admin-key", help="admin key of the service given by --url")
    run.add_argument("--pool", type=_positive(int),
                     help="prepared tokens/codes for revocation and authorization_code (default: "
                          "sized from the duration)")
    run.add_argument("--users", type=_positive(int),
                     help="users for the password grant (default: connections)")
    run.add_argument("--mix", type=_mix,
                     help="weights of the mix, e.g. client_credentials=50,introspection=25,"
                          "token_login=10,refresh=10,revocation=5 (the default)")
    run.add_argument("--mix-by", choices=("request", "connection"), default="request",
                     help="request: every connection sends every kind, in weighted turn (default); "
                          "connection: the weights split the connections, each sends one kind")
    run.add_argument("--label", help="the result's name (default: the scenario)")
    run.add_argument("-o", "--output", type=Path,
                     help="result file (default bench/results/<stamp>-<name>.json)")
    run.add_argument("--keep", action="store_true", help="with --url: keep the clients and users set up")
    run.add_argument("--profile", type=Path, metavar="OUT.svg",
                     help="py-spy the started server during the load: a flame graph (.svg) or "
                          "speedscope (.json)")
    run.add_argument("--tls", action="store_true",
                     help="serve HTTPS (a self-signed P-256 certificate made with openssl in the run's "
                          "temp dir) and load it over TLS")
    run.add_argument("--new-connection-per-request", dest="new_connection", action="store_true",
                     help="Connection: close and a new connection for every request (with --tls: a full "
                          "TLS handshake per request); closed loop only")
    run.add_argument("--join-at", type=_positive(float), default=5.0,
                     help="scale_out: seconds into the load when instance B is started (default 5)")
    run.add_argument("--peak-seconds", type=_positive(float), default=5.0,
                     help="scale_out: closed-loop seconds measuring A's peak (default 5)")
    run.add_argument("--load-fraction", type=_fraction, default=0.7,
                     help="scale_out: the open-loop rate as a fraction of A's peak (default 0.7); "
                          "--rate sets it directly")
    run.add_argument("--pin-second", metavar="CPUS",
                     help="scale_out: instance B's CPUs (default: those not in --pin-server)")
    _load_options(run)

    soak = sub.add_parser("soak", help="a long open-loop run at half the peak; errors and server memory",
                          description="Start tokensvc (with its own redis-server), measure the peak "
                          "with a short closed-loop run (unless --rate), then load open loop at half "
                          "that rate for --duration, sampling the server's RSS from /proc. Writes "
                          "bench/results/<stamp>-soak.json.")
    soak.add_argument("--duration", type=_positive(float), default=600.0,
                      help="seconds of open-loop load (default 600)")
    soak.add_argument("--rate", type=_positive(float),
                      help="requests per second (default: half the peak measured first)")
    soak.add_argument("--scenario", choices=[s for s in SCENARIOS if s not in
                                             ("static", "noop", *FLEET_SCENARIOS, *RESOURCE_SCENARIOS)],
                      default="client_credentials", help="what to send (default client_credentials)")
    soak.add_argument("--connections", type=_positive(int), default=64,
                      help="keep-alive connections (default 64)")
    soak.add_argument("--workers", type=_positive(int), default=1, help="tokensvc workers (default 1)")
    soak.add_argument("--peak-seconds", type=_positive(float), default=10.0,
                      help="closed-loop seconds measuring the peak (default 10)")
    soak.add_argument("--warmup", type=float, default=3.0,
                      help="warm-up seconds before the peak measurement (default 3)")
    soak.add_argument("--sample-seconds", type=_positive(float), default=5.0,
                      help="seconds between memory samples (default 5)")
    soak.add_argument("--set", dest="settings", action="append", type=_setting, default=[],
                      metavar="KEY=VALUE", help="a tokensvc setting (repeatable)")
    soak.add_argument("-o", "--output", type=Path,
                      help="result file (default bench/results/<stamp>-soak.json)")
    soak.add_argument("--quiet", action="store_true", help="no progress lines")

    compare = sub.add_parser("compare", help="throughput and p99 ratios against the first result")
    compare.add_argument("results", nargs="+", type=Path, metavar="RESULT.json")
    compare.add_argument("--markdown", action="store_true", help="a Markdown table")

    plot = sub.add_parser("plot", help="throughput and latency over time (PNG; needs matplotlib)")
    plot.add_argument("results", nargs="+", type=Path, metavar="RESULT.json")
    plot.add_argument("-o", "--output", type=Path, required=True, help="the PNG to write")

    suite = sub.add_parser("suite", help="the issue's goal set, repeated, medians and ratios as Markdown",
                           description="Runs the references (static, noredis, redis), client_credentials "
                           "with reuse off and on, introspection, password, and 2 workers, each "
                           "--repeat times (round-robin), pinned server CPU 0, Redis and generator "
                           "CPU 1; prints a Markdown table of medians and ratios.")
    suite.add_argument("--repeat", type=_positive(int), default=3, help="runs per configuration (default 3)")
    suite.add_argument("--only", nargs="+", metavar="KEY",
                       help="only these: static noredis redis cc cc_reuse introspection password cc_w2, "
                            "and, not in the default set: mix_password (client_credentials with "
                            "password logins alongside), many_clients, cold_start, scale_out, tls, "
                            "tls_handshake, cc_jwt (JWT access tokens), resource_jwt, "
                            "resource_introspection (the resource-server kit), cc_dpop (DPoP-bound "
                            "client_credentials, a proof per request)")
    suite.add_argument("--markdown", type=Path, help="also write the table to this file")
    suite.add_argument("--pin-server", default="0", metavar="CPUS", help="default 0")
    suite.add_argument("--pin-client", default="1", metavar="CPUS", help="default 1")
    suite.add_argument("--pin-redis", default="1", metavar="CPUS", help="default 1")
    suite.add_argument("--no-pin", action="store_true", help="pin nothing")
    _load_options(suite, suite=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(args_list)
    if args.command == "compare":
        from bench.results import compare_table, load_result

        docs = [load_result(p) for p in args.results]
        print(compare_table(docs, markdown=args.markdown))
        return 0
    if args.command == "plot":
        from bench.plot import plot
        from bench.results import load_result

        out = plot([load_result(p) for p in args.results], args.output)
        print(out)
        return 0

    import uvloop

    if args.command == "soak":
        from bench.soak import SoakOptions, soak, soak_summary

        sopts = SoakOptions(duration=args.duration, rate=args.rate, scenario=args.scenario,
                            connections=args.connections, workers=args.workers,
                            peak_seconds=args.peak_seconds, warmup=args.warmup,
                            sample_seconds=args.sample_seconds, settings=dict(args.settings),
                            output=args.output, quiet=args.quiet)
        try:
            sdoc = uvloop.run(soak(sopts, args_list))
        except (StartError, SetupError, CertificateError, ConnectionError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        print(soak_summary(sdoc))
        return 0 if sdoc["errors"]["total"] == 0 else 2

    from bench.runner import RunOptions, execute, print_summary

    common = {"duration": args.duration, "connections": args.connections, "warmup": args.warmup,
              "wrk": args.wrk, "wrk_threads": args.wrk_threads, "settings": dict(args.settings),
              "ceiling_seconds": args.ceiling_seconds, "quiet": args.quiet, "clients": args.clients,
              "real_hash_cost": args.real_hash_cost}
    try:
        if args.command == "run":
            opts = RunOptions(
                scenario=args.scenario, rate=args.rate, url=args.url, workers=args.workers,
                pin_server=args.pin_server, pin_client=args.pin_client, pin_redis=args.pin_redis,
                reference=args.reference, admin_key=args.admin_key, pool=args.pool, users=args.users,
                mix=args.mix, mix_by_connection=args.mix_by == "connection", output=args.output,
                label=args.label, keep=args.keep, profile=args.profile, tls=args.tls,
                new_connection=args.new_connection, join_at=args.join_at, peak_seconds=args.peak_seconds,
                load_fraction=args.load_fraction, pin_second=args.pin_second, **common)
            doc = uvloop.run(execute(opts, args_list))
            print_summary(doc)
            return 0
        from bench.suite import run_suite

        pins = (None, None, None) if args.no_pin else (args.pin_server, args.pin_client, args.pin_redis)
        base = RunOptions(pin_server=pins[0], pin_client=pins[1], pin_redis=pins[2], **common)
        if args.no_pin:
            from bench import suite as suite_mod

            suite_mod.CONFIGS = tuple(
                suite_mod.Config(c.key, c.title, {k: v for k, v in c.changes.items() if k != "pin_server"},
                                 c.default)
                for c in suite_mod.CONFIGS)
        table = uvloop.run(run_suite(base, args.repeat, args.only, args.markdown))
        print(table)
        return 0
    except (StartError, SetupError, CertificateError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
