"""`--wrk`: the same prebuilt requests sent by wrk (a C generator) instead of the Python one.

A Lua script is generated per scenario: it returns the prebuilt raw requests in turn (each
thread takes every n-th one, so pools are not sent twice), or, for refresh chains, builds each
request from the refresh token of an earlier answer. `done()` prints the figures in lines
starting with `BENCH`, which are parsed here (wrk's own text is kept in the result too).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from bench.scenarios import Workload
from bench.services import pinned

WRK = "/usr/bin/wrk"


def find_wrk() -> str | None:
    return shutil.which("wrk") or (WRK if shutil.which(WRK) else None)


def _lua_string(value: str) -> str:
    """A Lua string literal (quoted, escaped: long brackets would turn CR LF into LF)."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 32 <= code < 127:
            out.append(ch)
        elif code < 256:
            out.append(f"\\{code:03d}")
        else:
            raise ValueError("wrk scripts carry Latin-1 text only")
    out.append('"')
    return "".join(out)


_DONE = """
function done(summary, latency, requests)
  io.write(string.format("BENCH requests %d\\n", summary.requests))
  io.write(string.format("BENCH duration_us %d\\n", summary.duration))
  io.write(string.format("BENCH errors_status %d\\n", summary.errors.status))
  io.write(string.format("BENCH errors_connect %d\\n", summary.errors.connect))
  io.write(string.format("BENCH errors_read %d\\n", summary.errors.read))
  io.write(string.format("BENCH errors_write %d\\n", summary.errors.write))
  io.write(string.format("BENCH errors_timeout %d\\n", summary.errors.timeout))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("BENCH p%s %d\\n", tostring(p), latency:percentile(p)))
  end
  io.write(string.format("BENCH max %d\\n", latency.max))
  io.write(string.format("BENCH mean %f\\n", latency.mean))
end
"""

_THREADS = """
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
"""


def lua_script(workload: Workload, threads: int, hostport: str, data_path: str) -> str:
    """The wrk script for a workload (cycle, pool or refresh chain). Prebuilt requests go to
    `data_path` (NUL-separated), which every wrk thread reads at start."""
    if workload.kind in ("cycle", "pool"):
        with open(data_path, "wb") as fh:
            fh.write(b"\0".join(workload.requests))
        return f"""
local step = {threads}
{_THREADS}
function init(args)
  local f = assert(io.open({_lua_string(data_path)}, "rb"))
  local data = f:read("*a")
  f:close()
  reqs = {{}}
  local pos = 1
  while true do
    local s = string.find(data, "\\0", pos, true)
    if not s then table.insert(reqs, string.sub(data, pos)); break end
    table.insert(reqs, string.sub(data, pos, s - 1))
    pos = s + 1
  end
  n = #reqs
  i = tonumber(args[1] or "0") + tid
end
function request()
  local r = reqs[(i % n) + 1]
  i = i + step
  return r
end
{_DONE}"""
    if workload.kind == "chain":
        assert workload.chain is not None
        starts = ",\n".join(_lua_string(t) for t in workload.chain["starts"])
        prefix = _lua_string(workload.chain["prefix"])
        head = _lua_string(f"POST {workload.chain['path']} HTTP/1.1\r\nHost: {hostport}\r\n"
                           "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: ")
        name = workload.chain["field"]
        return f"""
local starts = {{
{starts}
}}
local prefix = {prefix}
local head = {head}
local step = {threads}
{_THREADS}
function init(args)
  tokens = {{}}
  for k = tid + 1, #starts, step do table.insert(tokens, starts[k]) end
end
function request()
  local t = table.remove(tokens)
  if t == nil then t = last end
  last = t
  local body = prefix .. t
  return head .. #body .. "\\r\\n\\r\\n" .. body
end
function response(status, headers, body)
  local t = string.match(body, '"{name}"%s*:%s*"([^"]+)"')
  if t then table.insert(tokens, t) end
end
{_DONE}"""
    raise ValueError(f"wrk cannot run a {workload.kind} workload (use the Python generator)")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_duration_ms(text: str) -> float:
    """wrk's `1.23ms` / `850.00us` / `2.01s` in milliseconds."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if found is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def parse_output(text: str) -> dict[str, Any]:
    """The figures of a wrk run: from our `BENCH` lines when present, else from wrk's text
    (Requests/sec, the --latency distribution, Non-2xx, socket errors)."""
    bench: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("BENCH "):
            _, key, value = line.split()
            bench[key] = float(value)
    out: dict[str, Any] = {"latency_ms": {}, "errors": {}}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["throughput"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", text)
    if m:
        out["requests"] = int(m.group(1))
        out["duration"] = parse_duration_ms(m.group(2)) / 1000.0
    for pct, value in re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)\s*$", text, re.M):
        out["latency_ms"][f"p{pct}"] = parse_duration_ms(value)
    m = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", text)
    if m:
        out["latency_ms"]["mean"] = parse_duration_ms(m.group(1))
        out["latency_ms"]["max"] = parse_duration_ms(m.group(3))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["errors"]["non_2xx_3xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        for key, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            if int(value):
                out["errors"][key] = int(value)
    if bench:
        out["requests"] = int(bench["requests"])
        out["duration"] = bench["duration_us"] / 1e6
        out["throughput"] = bench["requests"] / max(out["duration"], 1e-9)
        out["latency_ms"] = {"p50": bench["p50"] / 1000, "p90": bench["p90"] / 1000,
                             "p99": bench["p99"] / 1000, "p99_9": bench["p99.9"] / 1000,
                             "max": bench["max"] / 1000, "mean": bench["mean"] / 1000}
        errors = {"non_2xx_3xx": int(bench["errors_status"])}
        for key in ("connect", "read", "write", "timeout"):
            if bench.get(f"errors_{key}"):
                errors[key] = int(bench[f"errors_{key}"])
        out["errors"] = errors
    return out


def run_wrk(url: str, script: str | None, connections: int, duration: float, threads: int,
            cpus: str | None, args: Sequence[str] = (), timeout_s: int = 10) -> tuple[dict[str, Any], str]:
    """Run wrk once; its parsed figures and its output."""
    binary = find_wrk()
    if binary is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    cmd = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
           "--latency", "--timeout", f"{timeout_s}s"]
    if script is not None:
        cmd += ["-s", script]
    cmd.append(url)
    if args:
        cmd += ["--", *args]
    proc = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, check=False,
                          timeout=duration + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    return parse_output(proc.stdout), proc.stdout
