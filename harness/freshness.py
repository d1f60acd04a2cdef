"""Freshness: time from a record's Kafka timestamp to its being visible through the read API.

    python -m harness.freshness [--seconds 5] [--probes 100] [--rate 100] [--cluster]

A live stream of generated events (orders, stock movements, product updates,
`--rate` a second) flows through the real IngestFunction handler in batches,
`--probes` batches a second; each batch also carries one new order (a probe)
whose record timestamp is the moment the batch is produced. Right after each
invocation, a keep-alive HTTP client asks the local API server (devkit.apigw
in front of the real ApiFunction handler) for the probe order until it
answers 200. Freshness is that answer's arrival minus the record's timestamp
(Kafka timestamps are whole milliseconds, truncated: up to 1 ms of the figure
is that rounding).

What it leaves out: the event source mapping's own polling and batching
window in AWS, which local runs cannot reproduce. What it includes: building
the event, the handler's whole invocation (parsing, projections, the
exactly-once script, logging), one HTTP round trip and the API handler.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from harness.bench_api import ReadStack


def measure(
    stack: ReadStack, url: str, seconds: float = 5.0, probes: float = 100.0, rate: float = 100.0
) -> dict[str, Any]:
    """Freshness in ms (p50/p99/max) of probe orders sent with the live stream; `url` is the API server."""
    g = stack.generator
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    interval = 1.0 / probes
    owed = 0.0
    samples: list[float] = []
    misses = 0  # reads that came before the order was visible
    streamed = 0
    deadline = time.perf_counter() + seconds
    next_at = time.perf_counter()
    while next_at < deadline:
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        next_at += interval
        owed += rate * interval
        live = g.records(int(owed))
        owed -= len(live)
        probe = g.order()
        assert probe.key is not None
        produced_ms = int(time.time() * 1000)
        stack.apply(g.event([*live, probe], now_ms=produced_ms))
        streamed += len(live)
        path = f"/orders/{probe.key.decode()}"
        while True:
            connection.request("GET", path, headers=stack.headers)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                visible = time.time()
                break
            misses += 1
            if time.perf_counter() > deadline + 5:
                raise RuntimeError(f"{path} never became visible (last status {response.status})")
        samples.append(visible * 1000 - produced_ms)
    connection.close()
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "probes": len(samples),
        "streamed": streamed,
        "seconds": seconds,
        "rate": rate,
        "probe_rate": probes,
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1],
        "misses": misses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--probes", type=float, default=100.0, help="batches (each with one probe order) per second")
    parser.add_argument("--rate", type=float, default=100.0, help="live stream events per second besides the probes")
    parser.add_argument("--cluster", action="store_true", help="against a local 3-master cluster")
    args = parser.parse_args(argv)
    stack = ReadStack(args.cluster)
    try:
        stack.seed()
        url = stack.serve()
        print(json.dumps(measure(stack, url, args.seconds, args.probes, args.rate), indent=2))
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
