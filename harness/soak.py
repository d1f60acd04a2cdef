"""`make soak`: a million generated records through IngestFunction, then the read API under load.

1. Ingest: generated Kafka records (orders with rewrites and tombstones, stock
   movements and counts, product updates) go through the real IngestFunction
   handler, delivered at least once: every batch overlaps what came before on
   some partitions, and whole batches are sometimes delivered again. Redis is
   then compared, key by key, with the reference model (each record applied
   once, in partition order), and the handler's counts with what was sent.
2. Read API: `make run`'s local stack (ApiFunction behind the local HTTP API,
   IngestFunction streaming events into the same Valkey) under concurrent
   requests for `--api-seconds`; any answer other than 200, or a failed
   request, is an error.

    python -m harness.soak --records 1000000 --api-seconds 60

Exits non-zero when anything was lost, applied twice, or answered with an error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis

from devkit.generator import EventGenerator, RawRecord
from devkit.servers import free_port, start_server
from harness.model import ReferenceModel, redis_state


@dataclass
class IngestFigures:
    records: int = 0  # distinct records generated
    deliveries: int = 0  # invocations
    delivered: int = 0  # records delivered, replays and overlaps included
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0
    # records the handler reports applied beyond / short of the distinct records generated
    double_applied: int = 0
    lost: int = 0
    mismatched_keys: list[str] = field(default_factory=list)  # Redis against the reference model


def generated(g: EventGenerator, count: int, order_pool: int) -> list[RawRecord]:
    """Orders rewrite a bounded pool of ids (5% tombstones), stock moves and counts, product updates."""
    raws: list[RawRecord] = []
    r = g.random
    for _ in range(count):
        roll = r.random()
        if roll < 0.4:
            g.next_order_id = r.randint(1, order_pool)
            order = g.order()
            raws.append(order if r.random() >= 0.05 else RawRecord("orders", order.key, None))
        elif roll < 0.85:
            raws.append(g.inventory())
        elif roll < 0.88:
            raws.append(g.inventory("remove"))
        else:
            raws.append(g.product())
    return raws


def ingest_soak(
    handler: Callable[[dict[str, Any], Any], Any],
    context: Any,
    client: redis.Redis,
    total: int,
    seed: int,
    say: Callable[[str], None],
) -> IngestFigures:
    g = EventGenerator(seed=seed, partitions=6, stores=20, skus=500)
    rng = random.Random(seed)
    model = ReferenceModel()
    figures = IngestFigures()
    window: dict[str, deque[dict[str, Any]]] = {}  # recent records per topic-partition, for overlaps
    recent: deque[dict[str, Any]] = deque(maxlen=4)  # recent deliveries, for whole-batch replays
    started = time.perf_counter()

    def deliver(event: dict[str, Any]) -> None:
        result = handler(event, context)
        figures.deliveries += 1
        figures.delivered += sum(len(records) for records in event["records"].values())
        figures.applied += result["applied"]
        figures.duplicates += result["duplicates"]
        figures.dead_lettered += result["deadLettered"]

    while figures.records < total:
        size = min(rng.randint(500, 4000), total - figures.records)
        event = g.event(generated(g, size, order_pool=50_000))
        figures.records += size
        for name, records in event["records"].items():
            for record in records:
                model.apply(record)
            past = window.setdefault(name, deque(maxlen=500))
            if past and rng.random() < 0.3:
                # an overlap: the batch starts some records before the last delivered offset
                back = rng.randint(1, len(past))
                event["records"][name] = list(past)[-back:] + records
            past.extend(records)
        deliver(event)
        recent.append(event)
        if rng.random() < 0.1:
            deliver(rng.choice(list(recent)))  # a whole batch comes again, as after a failed invocation
        if figures.deliveries % 50 == 0:
            say(f"\ringest: {figures.records:,}/{total:,} records, {figures.delivered:,} delivered")
    figures.seconds = time.perf_counter() - started
    say(f"\ringest: {figures.records:,} records, {figures.delivered:,} delivered in {figures.seconds:.1f} s\n")

    say("comparing Redis with the reference model...\n")
    actual = redis_state(client)
    figures.mismatched_keys = [k for k in sorted(set(actual) | set(model.state)) if actual.get(k) != model.state.get(k)]
    expected = figures.records - model.poison  # each distinct record applied once
    figures.double_applied = max(0, figures.applied - expected)
    figures.lost = max(0, expected - figures.applied)
    return figures


@dataclass
class ApiFigures:
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    streamed: int = 0
    stream_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0


def api_soak(seconds: float, workers: int, seed: int, say: Callable[[str], None]) -> ApiFigures:
    from devkit.localrun import LocalRun

    run = LocalRun(port=free_port(), rate=500, seed=seed, orders=2000, movements=2000)
    run.start()
    figures = ApiFigures()
    lock = threading.Lock()
    try:
        g = run.generator
        targets = (
            [f"/orders/{n}" for n in range(1, run.orders + 1)]
            + [f"/products/{sku}" for sku in g.skus]
            + [f"/products?skus={','.join(g.random.sample(g.skus, 5))}" for _ in range(200)]
            + [f"/stores/{store}/inventory?limit=20" for store in g.stores]
            + [f"/stores/{store}/inventory?sort=sku&limit=10" for store in g.stores]
            + [f"/stores/{store}/inventory/{sku}" for store in g.stores for sku in g.skus[:50]]
            + ["/stores/store1/inventory?below=10", "/health"]
        )
        port = urlsplit(run.url).port
        signed_in = {"Authorization": f"Bearer {run.staff_token}"}
        deadline = time.monotonic() + seconds
        say(f"read API: {workers} clients for {seconds:g} s against {run.url} while events stream in\n")

        def client(n: int) -> None:
            rng = random.Random(seed * 100 + n)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            while time.monotonic() < deadline:
                target = rng.choice(targets)
                started = time.perf_counter()
                try:
                    # a staff token on every request: orders need one, the other routes ignore it
                    connection.request("GET", target, headers={"Host": "api.example", **signed_in})
                    response = connection.getresponse()
                    body = response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as error:
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    status, body = 0, repr(error).encode()
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    figures.requests += 1
                    figures.by_status[status] = figures.by_status.get(status, 0) + 1
                    figures.latencies_ms.append(elapsed)
                    if status != 200:
                        figures.errors += 1
                        if len(figures.first_errors) < 5:
                            figures.first_errors.append(f"{status} {target}: {body[:200]!r}")
            connection.close()

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        figures.seconds = time.perf_counter() - started
        figures.streamed, figures.stream_errors = run.streamed, run.stream_errors
    finally:
        run.stop()
    return figures


def load_ingest_handler(redis_url: str) -> tuple[Callable[[dict[str, Any], Any], Any], Any]:
    from devkit.sam import LocalContext, describe, load_handler

    function = describe("IngestFunction", {"RedisUrl": redis_url})
    os.environ.update(function.environment)
    os.environ.update(
        {"REDIS_URL": redis_url, "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
    )
    handler = load_handler(function)
    import inspect

    metrics = inspect.unwrap(handler).__globals__.get("metrics")

    def invoke(event: dict[str, Any], context: Any) -> Any:
        result = handler(event, context)
        if metrics is not None:
            metrics.clear_metrics()  # disabled metrics still accumulate
        return result

    return invoke, LocalContext(function)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--api-seconds", type=float, default=60)
    parser.add_argument("--api-clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    saved = dict(os.environ)
    valkey = start_server()
    try:
        handler, context = load_ingest_handler(valkey.url)
        ingest = ingest_soak(handler, context, redis.Redis.from_url(valkey.url), args.records, args.seed, say)
    finally:
        valkey.remove()
        os.environ.clear()
        os.environ.update(saved)
    api = api_soak(args.api_seconds, args.api_clients, args.seed, say) if args.api_seconds > 0 else None

    ok = not ingest.mismatched_keys and ingest.lost == 0 and ingest.double_applied == 0
    ok = ok and (api is None or api.errors == 0)
    ok = ok and ingest.applied + ingest.duplicates + ingest.dead_lettered == ingest.delivered
    print(f"ingest: {ingest.records:,} records generated, {ingest.delivered:,} delivered in {ingest.deliveries:,} ")
    print(
        f"        invocations ({ingest.delivered - ingest.records:,} replayed or overlapping) in {ingest.seconds:.1f} s"
    )
    print(f"        applied {ingest.applied:,}, duplicates skipped {ingest.duplicates:,}, ")
    print(f"        dead-lettered {ingest.dead_lettered:,}; lost {ingest.lost}, double-applied {ingest.double_applied}")
    print(
        f"        keys differing from the reference model: {len(ingest.mismatched_keys)} {ingest.mismatched_keys[:5]}"
    )
    if api is not None:
        print(
            f"api:    {api.requests:,} requests in {api.seconds:.1f} s "
            f"({api.requests / max(api.seconds, 1e-9):,.0f}/s), "
            f"errors {api.errors}; p50 {api.percentile(0.5):.2f} ms, p99 {api.percentile(0.99):.2f} ms; "
            f"{api.streamed:,} events streamed meanwhile ({api.stream_errors} stream errors)"
        )
        for line in api.first_errors:
            print(f"        {line}")
    print("PASS" if ok else "FAIL")
    if args.json:
        document = {
            "ingest": {k: v for k, v in vars(ingest).items() if k != "mismatched_keys"},
            "api": None
            if api is None
            else {k: v for k, v in vars(api).items() if k not in ("latencies_ms",)}
            | {"p50_ms": api.percentile(0.5), "p99_ms": api.percentile(0.99)},
        }
        with open(args.json, "w") as out:
            json.dump(document, out, indent=2, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
