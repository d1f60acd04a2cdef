"""Latency of the ApiFunction handler in-process for GET /orders/{id}, next to a bare redis-py GET.

    python -m devkit.bench_api [--requests 20000]

Both run in the same process against the same Valkey (a private one unless
REDIS_URL is set), interleaved one for one so they see the same machine noise.
The order is written by the real IngestFunction handler from
events/kafka-orders.json; the handler gets events/api-get-order.json, the event
API Gateway would send. The difference between the two is what the handler
costs on top of Redis: event parsing, routing, validation, logging context,
the response.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import redis

from devkit.sam import ROOT, LocalContext, describe, load_handler
from devkit.servers import server_version, start_server


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "mean": statistics.fmean(ordered) * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    args = parser.parse_args(argv)

    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = start_server()
        url = server.url
    try:
        ingest_fn, api_fn = describe("IngestFunction", {"RedisUrl": url}), describe("ApiFunction", {"RedisUrl": url})
        os.environ.update({**ingest_fn.environment, **api_fn.environment})
        os.environ.update({"REDIS_URL": url, "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"})
        ingest = load_handler(ingest_fn)
        api = load_handler(api_fn)
        ingest(json.loads((ROOT / "events" / "kafka-orders.json").read_text()), LocalContext(ingest_fn))
        event = json.loads((ROOT / "events" / "api-get-order.json").read_text())
        key = "orders:" + event["pathParameters"]["orderId"]

        bare = redis.Redis.from_url(url)
        cached = bare.get(key)
        context = LocalContext(api_fn)
        first = api(event, context)
        assert first["statusCode"] == 200 and first["body"].encode() == cached, first

        handler_times: list[float] = []
        redis_times: list[float] = []
        clock = time.perf_counter
        for i in range(args.warmup + args.requests):
            started = clock()
            api(event, context)
            middle = clock()
            bare.get(key)
            ended = clock()
            if i >= args.warmup:
                handler_times.append(middle - started)
                redis_times.append(ended - middle)

        rows = {"ApiFunction handler": percentiles(handler_times), "bare redis-py GET": percentiles(redis_times)}
        print(f"GET /orders/{event['pathParameters']['orderId']} ({len(cached or b'')} B), {args.requests} requests")
        print(f"against {server_version(url)} at {url}, Python {sys.version.split()[0]}\n")
        print(f"{'':22}{'p50 µs':>10}{'p90 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
        for name, row in rows.items():
            print(f"{name:22}" + "".join(f"{row[k]:10.1f}" for k in ("p50", "p90", "p99", "mean")))
        overhead = {k: rows["ApiFunction handler"][k] - rows["bare redis-py GET"][k] for k in ("p50", "p99")}
        print(f"\nhandler cost on top of Redis: p50 {overhead['p50']:.1f} µs, p99 {overhead['p99']:.1f} µs")
        output = os.environ.get("BENCH_JSON")
        if output:
            Path(output).write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        if server is not None:
            server.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
