"""Latency of the ApiFunction handler in-process, next to the bare redis-py command for the same data.

    python -m harness.bench_api [--requests 20000] [--cluster]

Routes: GET /orders/{id} (bare GET of the key), GET /products?skus= with 20
SKUs (bare MGET; per-slot MGETs on a cluster, as the read path sends them) and
GET /stores/{id}/inventory?limit=50 (bare ZRANGE BYSCORE LIMIT 0 51 WITHSCORES,
the page the read path fetches; the handler sends it inside a small script that
also tells an empty store from a missing one).

Handler and bare command run in the same process against the same server (a
private Valkey, or a local 3-master cluster with --cluster), interleaved one for
one so they see the same machine noise. The data is written by the real
IngestFunction handler; the handler gets the event API Gateway would send
(built by devkit.apigw). The difference between the two is what the handler
costs on top of Redis: event parsing, routing, validation, the response.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from devkit import localjwt, servers
from devkit.apigw import HttpApiServer, HttpApiSettings, LocalGateway, http_routes
from devkit.generator import EventGenerator, RawRecord
from devkit.sam import Handler, LocalContext, LocalFunction, describe, load_handler

ORDER_ID = "18"
STORE = "store1"
PRODUCT_LIST = 20
PAGE = 50


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean in µs of samples in seconds."""
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "mean": statistics.fmean(ordered) * 1e6}


class ReadStack:
    """A server (or cluster), both functions loaded from template.yaml, seeded through IngestFunction.

    Settings are read once per process, so use one stack per process.
    """

    def __init__(self, cluster: bool = False, redis_url: str | None = None, seed: int = 7):
        self.cluster = cluster
        self.target: servers.ServerProcess | servers.LocalCluster | None = None
        if redis_url is None:
            self.target = servers.start_cluster() if cluster else servers.start_server()
            redis_url = self.target.url
        self.url = redis_url
        self.generator = EventGenerator(seed=seed, partitions=3, stores=5, skus=200)
        # the API behind its JWT authorizer, trusting the local issuer; requests carry a staff token
        # (orders need the staff scope: the generated orders carry no owner)
        parameters = {"RedisUrl": redis_url, "JwtIssuer": localjwt.LOCAL_ISSUER, "JwtAudience": localjwt.LOCAL_AUDIENCE}
        self.ingest_fn: LocalFunction = describe("IngestFunction", parameters)
        self.api_fn: LocalFunction = describe("ApiFunction", parameters)
        os.environ.update({**self.ingest_fn.environment, **self.api_fn.environment})
        os.environ.update(
            {
                "REDIS_URL": redis_url,
                "REDIS_CLUSTER": str(cluster).lower(),
                "POWERTOOLS_LOG_LEVEL": "WARNING",
                "POWERTOOLS_METRICS_DISABLED": "true",
            }
        )
        self.ingest: Handler = load_handler(self.ingest_fn)
        self.api: Handler = load_handler(self.api_fn)
        # disabled metrics still pile up (and print every 100 values): dropped after each batch
        self._metrics = inspect.unwrap(self.ingest).__globals__.get("metrics")
        self.bare: redis.Redis | RedisCluster = (
            RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
        )
        key = localjwt.signing_key()
        staff = localjwt.mint(key, "staff-1", scopes=[self.api_fn.environment["STAFF_SCOPE"]])
        self.headers = {"Authorization": f"Bearer {staff}"}
        self.gateway = LocalGateway(
            self.api,
            http_routes("ApiFunction", parameters),
            lambda: LocalContext(self.api_fn),
            api=HttpApiSettings.from_template(localjwt.jwks(key), parameters),
        )
        self.server: HttpApiServer | None = None

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.ingest(event, LocalContext(self.ingest_fn))
        if self._metrics is not None:
            self._metrics.clear_metrics()
        return result

    def seed(self, orders: int = 2000) -> None:
        """Every product, a stock take of every SKU in every store, `orders` orders (ids 1..orders)."""
        g = self.generator
        records: list[RawRecord] = [g.product(sku) for sku in g.skus]
        records += [g.inventory("count", store, sku) for store in g.stores for sku in g.skus]
        records += [g.order() for _ in range(orders)]
        for start in range(0, len(records), 500):
            self.apply(g.event(records[start : start + 500]))

    def serve(self) -> str:
        self.server = HttpApiServer(self.gateway).start()
        return self.server.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if isinstance(self.target, servers.LocalCluster):
            self.target.stop()
        elif self.target is not None:
            self.target.remove()
        self.target = None


@dataclass
class ReadCase:
    route: str
    target: str  # what the browser asks
    bare_name: str
    bare: Callable[[], Any]  # the redis-py command(s) for the same data


def read_cases(stack: ReadStack) -> list[ReadCase]:
    skus = stack.generator.skus[:PRODUCT_LIST]
    product_keys = [f"products:{s}" for s in skus]
    client = stack.bare
    if isinstance(client, RedisCluster):
        products_bare: Callable[[], Any] = lambda: client.mget_nonatomic(product_keys)  # noqa: E731
        mget = "MGET per slot (mget_nonatomic)"
    else:
        products_bare = lambda: client.mget(product_keys)  # noqa: E731
        mget = "MGET"
    return [
        ReadCase("GET /orders/{id}", f"/orders/{ORDER_ID}", "GET", lambda: client.get(f"orders:{ORDER_ID}")),
        ReadCase(f"GET /products?skus= ({PRODUCT_LIST})", "/products?skus=" + ",".join(skus), mget, products_bare),
        ReadCase(
            f"GET /stores/{{id}}/inventory?limit={PAGE}",
            f"/stores/{STORE}/inventory?limit={PAGE}",
            f"ZRANGE BYSCORE LIMIT 0 {PAGE + 1} WITHSCORES",
            lambda: client.zrange(
                f"inventory:{STORE}", "-inf", "+inf", byscore=True, offset=0, num=PAGE + 1, withscores=True
            ),
        ),
    ]


def compare(stack: ReadStack, case: ReadCase, requests: int, warmup: int) -> dict[str, Any]:
    """Handler and bare command interleaved one for one; percentiles in µs."""
    # the event API Gateway passes on once its authorizer has verified the staff token
    reply = stack.gateway.request("GET", case.target, [("Host", "api.example"), *stack.headers.items()])
    if reply.status != 200:
        raise RuntimeError(f"{case.target} answered {reply.status}: {reply.body[:300]!r}")
    event = stack.gateway.last_event
    assert event is not None, case.target
    context = LocalContext(stack.api_fn)
    api = stack.api
    first = api(event, context)
    handler_times: list[float] = []
    bare_times: list[float] = []
    bare = case.bare
    clock = time.perf_counter
    for i in range(warmup + requests):
        started = clock()
        api(event, context)
        middle = clock()
        bare()
        ended = clock()
        if i >= warmup:
            handler_times.append(middle - started)
            bare_times.append(ended - middle)
    return {
        "route": case.route,
        "bare": case.bare_name,
        "handler": percentiles(handler_times),
        "redis": percentiles(bare_times),
        "bytes": len(first["body"]),
    }


def run(cluster: bool, requests: int, warmup: int, stack: ReadStack | None = None) -> list[dict[str, Any]]:
    own = stack is None
    stack = stack or ReadStack(cluster)
    try:
        if own:
            stack.seed()
        return [compare(stack, case, requests, warmup) for case in read_cases(stack)]
    finally:
        if own:
            stack.stop()


def table(rows: list[dict[str, Any]], label: str = "") -> str:
    lines = [
        "| route | server | handler p50 | handler p99 | bare redis-py | bare p50 | bare p99 | p50 ratio |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        h, b = r["handler"], r["redis"]
        lines.append(
            f"| {r['route']} | {label} | {h['p50']:.0f} µs | {h['p99']:.0f} µs | {r['bare']} | "
            f"{b['p50']:.0f} µs | {b['p99']:.0f} µs | {h['p50'] / b['p50']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--cluster", action="store_true", help="against a local 3-master cluster")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = run(args.cluster, args.requests, args.warmup)
    label = "3-master cluster" if args.cluster else "standalone"
    print(f"{args.requests} requests per route, {label}, Python {sys.version.split()[0]}, cpus={os.cpu_count()}\n")
    print(table(rows, label))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
