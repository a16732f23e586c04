"""Reading a Prometheus scrape of the service: every sample by name and labels, the sum of a
metric's series, and the change between two scrapes (in-process apps share prometheus-client's
default registry, so only changes say what one test did)."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def scrape(http: httpx.AsyncClient) -> Samples:
    resp = await http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def metric(url: str, name: str, **labels: str) -> float:
    """`value` of `name` in one scrape of `url`."""
    return value(parse(httpx.get(url, timeout=5).text), name, **labels)


def settled_metric(url: str, name: str, expected: float, limit: float = 5.0, **labels: str) -> float:
    """Workers flush their counts every second: wait for `expected` (or the deadline), then one
    flush period more, and return the value then (so a count past `expected` shows too)."""
    deadline = time.monotonic() + limit
    while metric(url, name, **labels) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.2)  # a real timer: the workers' flush period, not a TTL
    return metric(url, name, **labels)


def scrape_until(url: str, name: str, expected: float, limit: float = 5.0) -> Samples:
    """Scrapes of `url` until `name` sums to `expected` (or the deadline); the last one."""
    deadline = time.monotonic() + limit
    while True:
        samples = parse(httpx.get(url, timeout=5).text)
        if value(samples, name) == expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)
