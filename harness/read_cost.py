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
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


class ReadRequest(NamedTuple):
    what: str
    target: str
    items: int  # the most items (or keys) its answer may hold: the page size, in the cost's terms


def requests(ties: int) -> list[ReadRequest]:
    """Every public request shape worth measuring on the tie store."""
    middle, last = tie_sku(ties // 2), tie_sku(ties - 1)
    inventory = f"/stores/{STORE}/inventory"

    def page(what: str, query: str, **cursor: Any) -> ReadRequest:
        limit = 500 if "limit=500" in query else 50
        if cursor:
            query += "&cursor=" + forged_cursor(**cursor)
        return ReadRequest(what, f"{inventory}?{query.lstrip('&')}", limit)

    return [
        page("first page", ""),
        page("first page, limit 500", "limit=500"),
        page("low stock, first page", "below=1"),
        page("cursor at the tie group's start", "", sort="quantity", below=None, score=0, sku=tie_sku(0)),
        page("cursor mid tie group", "", sort="quantity", below=None, score=0, sku=middle),
        page("cursor at the tie group's end", "", sort="quantity", below=None, score=0, sku=last),
        page("cursor mid tie group, limit 500", "limit=500", sort="quantity", below=None, score=0, sku=middle),
        page("low stock, cursor at the end", "below=1", sort="quantity", below=1, score=0, sku=last),
        page("stale cursor (SKU gone)", "", sort="quantity", below=None, score=0, sku=middle + "x"),
        page("forged cursor after every tie", "", sort="quantity", below=None, score=0, sku="zzzz"),
        page("forged cursor, score between", "", sort="quantity", below=None, score=0.5, sku="a"),
        page("forged cursor, huge score", "", sort="quantity", below=None, score=1e300, sku="a"),
        page("forged cursor, tiny score", "", sort="quantity", below=None, score=-1e300, sku="zzzz"),
        page("sort=sku", "sort=sku"),
        page("sort=sku, low stock", "sort=sku&below=1"),
        page("sort=sku, cursor", "sort=sku", sort="sku", below=None, score=0, sku=middle),
        ReadRequest("one item", f"{inventory}/{middle}", 1),
        ReadRequest("100 products", "/products?skus=" + ",".join(tie_sku(n) for n in range(100)), 100),
        ReadRequest("one product", f"/products/{tie_sku(1)}", 1),
        ReadRequest("health", "/health", 1),
    ]


@dataclass
class Cost:
    what: str
    target: str
    status: int
    commands: dict[str, int] = field(default_factory=dict)  # INFO commandstats deltas, scripts' included
    logged: list[tuple[int, str]] = field(default_factory=list)  # SLOWLOG: (µs, command) of the API's connection
    watched: list[str] = field(default_factory=list)  # MONITOR: every command run for it, scripts' included

    @property
    def total_commands(self) -> int:
        return sum(self.commands.values())

    @property
    def worst(self) -> tuple[int, str]:
        return max(self.logged, default=(0, ""))

    @property
    def entries(self) -> int | None:
        """Sorted-set entries and keys the request's commands read at most (`entries_read`);
        None when one of them may read without bound."""
        counts = [entries_read(command) for command in self.watched]
        return None if None in counts else sum(c for c in counts if c is not None)


# Commands that read one entry or key after an O(log N) descent at most
_SINGLE = frozenset({"EXISTS", "ZSCORE", "ZRANK", "ZCOUNT", "ZCARD", "ZLEXCOUNT", "GET", "PING"})


def entries_read(command: str) -> int | None:
    """An upper bound of the entries (or keys) one command reads beyond its O(log N) descent,
    from its arguments as MONITOR shows them; None when the arguments do not bound it.
    Raises for a command it has no model for, so a new command cannot slip past the tests."""
    words = command.split(" ")
    name = words[0].upper()
    if name in ("EVALSHA", "EVAL"):
        return 0  # what the script runs is watched command by command
    if name in _SINGLE:
        return 1
    if name == "MGET":
        return len(words) - 1
    if name == "ZRANGE":
        options = [w.upper() for w in words[4:]]
        if "BYSCORE" in options or "BYLEX" in options:
            if "LIMIT" not in options:
                return None
            at = 4 + options.index("LIMIT")
            offset, count = int(words[at + 1]), int(words[at + 2])
            return None if count < 0 else offset + count  # LIMIT walks its offset entry by entry
        start, stop = int(words[2]), int(words[3])
        return None if start < 0 or stop < 0 else max(0, stop - start + 1)
    raise ValueError(f"no cost model for {name}: add it to entries_read")


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


# what the recorder itself sends, never counted as a request's
_OWN_COMMANDS = frozenset({"info", "slowlog", "echo", "config", "monitor"})


class Recorder:
    """Records what Redis runs for each request: SLOWLOG with slowlog-log-slower-than 0 (the
    durations Redis measured, for people to read), INFO commandstats deltas, and with
    `watch` MONITOR (which slows the commands it shows: durations are taken without it)."""

    def __init__(self, client: redis.Redis | RedisCluster, watch: bool = False):
        self.nodes = _nodes(client)
        self.watch = watch
        self._monitors: list[Any] = []
        self._saved: list[tuple[str, str]] = []

    def __enter__(self) -> Recorder:
        for node in self.nodes:
            threshold = str(node.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"])
            self._saved.append((threshold, str(node.config_get("slowlog-max-len")["slowlog-max-len"])))
            node.config_set("slowlog-log-slower-than", 0)
            node.config_set("slowlog-max-len", 1024)
            if self.watch:
                monitor = node.monitor()  # type: ignore[no-untyped-call]
                monitor.__enter__()
                self._monitors.append(monitor)
        return self

    def __exit__(self, *_: object) -> None:
        for monitor in self._monitors:
            monitor.__exit__()
        self._monitors.clear()
        for node, (threshold, length) in zip(self.nodes, self._saved, strict=True):
            node.config_set("slowlog-log-slower-than", threshold)
            node.config_set("slowlog-max-len", length)
        self._saved.clear()

    def request(self, gateway: LocalGateway, what: str, target: str, headers: Iterable[tuple[str, str]] = ()) -> Cost:
        """One GET through the gateway, with what Redis recorded for it."""
        self._watched()  # whatever came before is not this request's
        for node in self.nodes:
            node.slowlog_reset()
        before = _calls(self.nodes)
        reply = gateway.request("GET", target, [("Host", "api.example"), *headers])
        after = _calls(self.nodes)
        commands = {
            name.removeprefix("cmdstat_"): after[name] - before.get(name, 0)
            for name in after
            if after[name] != before.get(name, 0) and name.removeprefix("cmdstat_") not in _OWN_COMMANDS
        }
        logged = []
        for node in self.nodes:
            for entry in node.slowlog_get(1024):
                if entry.get("client_name", b"") in (CLIENT_NAME, CLIENT_NAME.encode()):
                    command = entry["command"]
                    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
                    logged.append((int(entry["duration"]), _shorten(text)))
        return Cost(what, target, reply.status, commands, logged, self._watched())

    def _watched(self) -> list[str]:
        """The commands each monitor showed since the last call, up to a marker sent now."""
        seen: list[str] = []
        if not self.watch:
            return seen
        for node, monitor in zip(self.nodes, self._monitors, strict=True):
            marker = f"read-cost-marker-{uuid.uuid4().hex}"
            node.echo(marker)
            while True:
                command = str(monitor.next_command()["command"])
                if command == f"ECHO {marker}":
                    break
                if command.split(" ", 1)[0].lower() not in _OWN_COMMANDS:
                    seen.append(command)
        return seen


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
    for case in cases:  # connect and load the scripts before measuring
        gateway.request("GET", case.target, [("Host", "api.example")])
    with Recorder(client) as recorder:
        costs = [recorder.request(gateway, case.what, case.target) for case in cases]
    with Recorder(client, watch=True) as recorder:  # apart: MONITOR slows what it shows
        for cost in costs:
            cost.watched = recorder.request(gateway, cost.what, cost.target).watched
    return costs


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
    print(f"{'request':<36} {'status':>6} {'cmds':>5} {'entries':>8} {'worst µs':>9}  worst command")
    for cost in costs:
        duration, command = cost.worst
        entries = "unbound" if cost.entries is None else str(cost.entries)
        print(f"{cost.what:<36} {cost.status:>6} {cost.total_commands:>5} {entries:>8} {duration:>9}  {command}")
    duration, command = max(cost.worst for cost in costs)
    worst = next(c for c in costs if c.worst == (duration, command))
    print(f"\nworst: {duration} µs, {command!r} ({worst.what}: {worst.target[:120]})", file=sys.stderr)


if __name__ == "__main__":
    main()
