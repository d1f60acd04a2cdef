"""What one public read request costs Redis, request by request, on a store of many ties.

    python -m harness.read_cost [--ties 50000] [--redis-url redis://host:port/0] [--cluster]

Builds `inventory:store1` with `--ties` SKUs out of stock (quantity 0, the tie group a
forged cursor used to make Redis walk) and a few hundred in stock, then sends every
public request shape through the real ApiFunction handler behind the local gateway:
first pages, low stock, cursors at the start, middle and end of the tie group, stale
and forged cursors, sort=sku, single items, product lists, health.

For each request it reads what Redis itself recorded: SLOWLOG with
slowlog-log-slower-than 0 (every command of the API's connection, with its duration
in µs as Redis measured it) and the INFO commandstats deltas (commands run, the ones a
script runs included). It prints a table and the worst command; the tests use
`request_cost` for command counts, never the durations.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster

from devkit import servers
from devkit.apigw import LocalGateway, http_routes
from devkit.sam import Handler, LocalContext, LocalFunction, describe, load_handler

STORE = "store1"
CLIENT_NAME = "cachesync"  # what the functions' connections call themselves (cachesync.connection)


def tie_sku(n: int) -> str:
    return f"{n:010d}"


def build_store(client: redis.Redis | RedisCluster, ties: int, in_stock: int = 300, store: str = STORE) -> None:
    """`ties` SKUs at quantity 0 and `in_stock` more at quantities 1 to 30."""
    from cachesync import keys  # after devkit, which puts the layer on sys.path

    key = keys.inventory_key(store)
    client.delete(key)
    for start in range(0, ties, 5000):
        client.zadd(key, {keys.sku_member(tie_sku(n)): 0 for n in range(start, min(ties, start + 5000))})
    client.zadd(key, {keys.sku_member(f"9{n:09d}"): 1 + n % 30 for n in range(in_stock)})
    products = {keys.product_key(tie_sku(n)): json.dumps({"sku": tie_sku(n), "price": 1}) for n in range(100)}
    if isinstance(client, RedisCluster):
        client.mset_nonatomic(products)
    else:
        client.mset(products)


def forged_cursor(sort: str, below: int | None, score: float, sku: str) -> str:
    """A cursor as a client can write one: the API's cursors are base64 JSON of this list."""
    raw = json.dumps([1, sort, below, score, sku], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def requests(ties: int) -> list[tuple[str, str]]:
    """(what, target) of every public request shape worth measuring on the tie store."""
    middle, last = tie_sku(ties // 2), tie_sku(ties - 1)
    inventory = f"/stores/{STORE}/inventory"
    return [
        ("first page", inventory),
        ("first page, limit 500", f"{inventory}?limit=500"),
        ("low stock, first page", f"{inventory}?below=1"),
        ("cursor at the tie group's start", f"{inventory}?cursor={forged_cursor('quantity', None, 0, tie_sku(0))}"),
        ("cursor mid tie group", f"{inventory}?cursor={forged_cursor('quantity', None, 0, middle)}"),
        ("cursor at the tie group's end", f"{inventory}?cursor={forged_cursor('quantity', None, 0, last)}"),
        (
            "cursor mid tie group, limit 500",
            f"{inventory}?limit=500&cursor={forged_cursor('quantity', None, 0, middle)}",
        ),
        ("low stock, cursor at the end", f"{inventory}?below=1&cursor={forged_cursor('quantity', 1, 0, last)}"),
        ("stale cursor (SKU gone)", f"{inventory}?cursor={forged_cursor('quantity', None, 0, middle + 'x')}"),
        ("forged cursor after every tie", f"{inventory}?cursor={forged_cursor('quantity', None, 0, 'zzzz')}"),
        ("forged cursor, score between", f"{inventory}?cursor={forged_cursor('quantity', None, 0.5, 'a')}"),
        ("forged cursor, huge score", f"{inventory}?cursor={forged_cursor('quantity', None, 1e300, 'a')}"),
        ("forged cursor, tiny score", f"{inventory}?cursor={forged_cursor('quantity', None, -1e300, 'zzzz')}"),
        ("sort=sku", f"{inventory}?sort=sku"),
        ("sort=sku, low stock", f"{inventory}?sort=sku&below=1"),
        ("sort=sku, cursor", f"{inventory}?sort=sku&cursor={forged_cursor('sku', None, 0, middle)}"),
        ("one item", f"{inventory}/{middle}"),
        ("100 products", "/products?skus=" + ",".join(tie_sku(n) for n in range(100))),
        ("one product", f"/products/{tie_sku(1)}"),
        ("health", "/health"),
    ]


@dataclass
class Cost:
    what: str
    target: str
    status: int
    commands: dict[str, int] = field(default_factory=dict)  # INFO commandstats deltas, scripts' included
    logged: list[tuple[int, str]] = field(default_factory=list)  # SLOWLOG: (µs, command) of the API's connection

    @property
    def total_commands(self) -> int:
        return sum(self.commands.values())

    @property
    def worst(self) -> tuple[int, str]:
        return max(self.logged, default=(0, ""))


def _nodes(client: redis.Redis | RedisCluster) -> list[redis.Redis]:
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]  # type: ignore[no-untyped-call]
    return [client]


def _calls(nodes: list[redis.Redis]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for node in nodes:
        for name, stats in node.info("commandstats").items():
            totals[name] = totals.get(name, 0) + int(stats["calls"])
    return totals


@contextmanager
def slowlog_everything(client: redis.Redis | RedisCluster) -> Iterator[None]:
    """SLOWLOG records every command while inside; the server's setting put back after."""
    nodes = _nodes(client)
    saved = [str(node.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]) for node in nodes]
    saved_len = [str(node.config_get("slowlog-max-len")["slowlog-max-len"]) for node in nodes]
    try:
        for node in nodes:
            node.config_set("slowlog-log-slower-than", 0)
            node.config_set("slowlog-max-len", 1024)
        yield
    finally:
        for node, threshold, length in zip(nodes, saved, saved_len, strict=True):
            node.config_set("slowlog-log-slower-than", threshold)
            node.config_set("slowlog-max-len", length)


def request_cost(
    gateway: LocalGateway, client: redis.Redis | RedisCluster, what: str, target: str, headers: list[tuple[str, str]]
) -> Cost:
    """One request through the gateway, with what Redis recorded for it (inside `slowlog_everything`)."""
    nodes = _nodes(client)
    for node in nodes:
        node.slowlog_reset()
    before = _calls(nodes)
    reply = gateway.request("GET", target, [("Host", "api.example"), *headers])
    after = _calls(nodes)
    # the measuring connection's own INFO calls are not the request's
    commands = {
        name.removeprefix("cmdstat_"): after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0) and name not in ("cmdstat_info", "cmdstat_slowlog")
    }
    commands.pop("info", None)
    logged = []
    for node in nodes:
        for entry in node.slowlog_get(1024):
            if entry.get("client_name", b"") in (CLIENT_NAME, CLIENT_NAME.encode()):
                command = entry["command"]
                text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
                logged.append((int(entry["duration"]), _shorten(text)))
    return Cost(what, target, reply.status, commands, logged)


def _shorten(command: str) -> str:
    words = command.split(" ")
    if words[0].upper() in ("EVALSHA", "EVAL"):
        words[1] = words[1][:8] + "…"
    text = " ".join(words)
    return text if len(text) <= 110 else text[:107] + "…"


def load_api(redis_url: str, cluster: bool) -> tuple[Handler, LocalFunction]:
    function = describe("ApiFunction", {"RedisUrl": redis_url})
    os.environ.update(function.environment)
    os.environ.update(
        {
            "REDIS_URL": redis_url,
            "REDIS_CLUSTER": str(cluster).lower(),
            "POWERTOOLS_LOG_LEVEL": "ERROR",
            "POWERTOOLS_METRICS_DISABLED": "true",
        }
    )
    return load_handler(function), function


def measure(redis_url: str, cluster: bool, ties: int) -> list[Cost]:
    client: redis.Redis | RedisCluster
    client = RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
    build_store(client, ties)
    handler, function = load_api(redis_url, cluster)
    gateway = LocalGateway(handler, http_routes("ApiFunction"), lambda: LocalContext(function))
    cases = requests(ties)
    for _, target in cases:  # connect and load the scripts before measuring
        gateway.request("GET", target, [("Host", "api.example")])
    with slowlog_everything(client):
        return [request_cost(gateway, client, what, target, []) for what, target in cases]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ties", type=int, default=50_000)
    parser.add_argument("--redis-url", help="a server to use (it is written to); default: a private Valkey")
    parser.add_argument("--cluster", action="store_true", help="a local 3-master cluster (or --redis-url is one)")
    parser.add_argument("--redis7", action="store_true", help="Debian's redis-server instead of Valkey")
    args = parser.parse_args(argv)
    own: servers.ServerProcess | servers.LocalCluster | None = None
    url = args.redis_url
    if url is None:
        binary = servers.redis_binary() if args.redis7 else None
        own = servers.start_cluster(binary) if args.cluster else servers.start_server(binary)
        url = own.url
    try:
        costs = measure(url, args.cluster, args.ties)
    finally:
        if isinstance(own, servers.LocalCluster):
            own.stop()
        elif own is not None:
            own.remove()
    print(f"{'request':<36} {'status':>6} {'cmds':>5} {'worst µs':>9}  worst command")
    for cost in costs:
        duration, command = cost.worst
        print(f"{cost.what:<36} {cost.status:>6} {cost.total_commands:>5} {duration:>9}  {command}")
    duration, command = max(cost.worst for cost in costs)
    worst = next(c for c in costs if c.worst == (duration, command))
    print(f"\nworst: {duration} µs, {command!r} ({worst.what}: {worst.target[:120]})", file=sys.stderr)


if __name__ == "__main__":
    main()
