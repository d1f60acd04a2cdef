"""Our path beside the Kafka Connect Redis sink, on the same broker, the same Valkey and the same records.

    python -m harness.bench_connect [--records 50000] [--kill-records 30000] [--kill-rate 1000] \\
        [--kills 10] [--probes 300] [--rate 50] [--broker apache|embedded] [--peer-source DIR] \\
        [--output docs/performance.md]

The peer is the connector of the original design, `jcustenborder/kafka-connect-redis`,
built from its source (harness.connect_peer: `--peer-source`, `$CONNECT_REDIS_SOURCE`
or `../shared/peers/kafka-connect-redis`) and run by Apache Kafka's standalone Connect
worker (connect-runtime 4.4 from Maven Central). Without that source it is
harness.sink_peer, a hand-written consumer doing what a sink task does, and the
output says so.

Ours is `python -m devkit.esm` (the template's mappings, batching window 0) into
Redis database 0; the peer writes to database 1 of the same server. The records
are Datagen-shaped orders keyed `orders:<orderid>`: the connector SETs the record
key as it is, ours names the key from the value's `orderid`.

- catch-up: a backlog produced before either starts; each system in turn, alone,
  from its first write to Redis to its last (every partition's last order
  readable), and to its commit of the last offset;
- freshness: both running at once and consuming the same live stream of orders
  at `--rate` a second; probe orders produced one at a time, each timed from its
  produce timestamp to `GET orders:<id>` returning it, in each database;
- a kill test: orders (new ones and updates of recent ones), stock movements and
  products produced at a steady rate while the worker is SIGKILLed `--kills`
  times mid-stream and restarted; once it has caught up, what Redis holds is
  compared with the reference model (`harness.model`: each record applied once,
  in partition order), so each order with its last record's value.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from devkit import brokers, servers
from devkit.children import spawn
from devkit.datagen import KafkaFeed, ensure_topics
from devkit.esm.payload import lambda_record
from devkit.esm.workers import processes_per_cpu
from devkit.generator import TOPICS, EventGenerator, RawRecord, partition_for
from harness import connect_peer

if TYPE_CHECKING:
    from harness.model import State

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 6
OURS_DB, PEER_DB = 0, 1  # the connector's redis.database defaults to 1
PERIODIC = 5.0  # seconds between the periodic hand-written peer's commits
SECTION_START = "<!-- bench-connect:start -->"
SECTION_END = "<!-- bench-connect:end -->"
KILL_TOPICS = ("orders", "inventory", "products")  # the kill test's streams; the connector takes orders
WARM_UP = 60  # orders applied before a measurement: the worker has joined its group
OFFSET_KEY_PREFIX = "__kafka.offset."  # the connector's own offsets, in its database


@dataclass
class Stack:
    bootstrap: str
    redis_port: int
    broker_kind: str
    peer: connect_peer.PeerSource
    plugins: Path | None = None  # the connector's plugin.path, once built

    def url(self, database: int) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{database}"

    def client(self, database: int) -> redis.Redis:
        return redis.Redis(port=self.redis_port, db=database)

    @property
    def peer_path(self) -> str:
        return "connector" if self.peer.path is not None else "peer"


@dataclass
class Worker:
    """One system's worker process; `groups` maps each topic it consumes to the group that commits it."""

    name: str
    command: list[str]
    env: dict[str, str]
    groups: dict[str, str]
    log: Path
    database: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started: float = 0.0
    start_retries: int = 0

    def start(self) -> Worker:
        self.started = time.monotonic()
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the child process
        self.process = spawn(  # dies with the bench, however the bench ends
            self.command, cwd=ROOT, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT
        )
        return self

    def check(self) -> None:
        """Raises when the worker has exited; one that gave up while starting (its start-up check of
        the broker timed out, as happens on a loaded machine) is started again, a few times."""
        if self.process is None or self.process.poll() is None:
            return
        tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        if time.monotonic() - self.started < 60 and self.start_retries < 3:
            self.start_retries += 1
            print(f"the {self.name} worker exited while starting; again: {tail[-1:]}", file=sys.stderr)
            self.start()
            return
        raise RuntimeError(f"the {self.name} worker exited with {self.process.returncode}:\n" + "\n".join(tail))

    def kill(self) -> None:
        """SIGKILL: the crash under test, wherever the worker is in its batch."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, wait=20)
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int, wait: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)  # its own session: the group id is its pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=wait)


def worker(path: str, stack: Stack, names: dict[str, str], logs: Path) -> Worker:
    """`path`: cachesync (ours), connector (Kafka Connect), peer or peer-periodic (hand-written)."""
    tag = names["orders"]
    log = logs / f"{path}-{tag}.log"
    if path == "cachesync":
        prefix = f"cachesync-{tag}"
        parameters = [f"{kind.capitalize()}Topic={name}" for kind, name in names.items()]
        command = [sys.executable, "-m", "devkit.esm", "--bootstrap", stack.bootstrap, "--batching-window", "0"]
        command += ["--processes", str(processes_per_cpu())]
        # no log line per batch: these records are keyed as the connector needs (`orders:<id>`), which
        # ours reports at WARNING, once a batch, as breaking its keying rule (the record key is the id).
        # The template's environment (LogLevel) overrides the worker's own.
        command += ["--parameter-overrides", *parameters, f"KafkaConsumerGroupId={prefix}", "LogLevel=ERROR"]
        quiet = {"POWERTOOLS_METRICS_DISABLED": "true"}
        env = {"REDIS_URL": stack.url(OURS_DB), "REDIS_CLUSTER": "false", **quiet}
        groups = {name: f"{prefix}-{kind}" for kind, name in names.items()}
        return Worker(path, command, env, groups, log, OURS_DB)
    if path == "connector":
        assert stack.plugins is not None, "the connector is not built"
        directory = logs / f"connect-{tag}"
        directory.mkdir(exist_ok=True)
        name = f"redis-sink-{tag}"
        properties = connect_peer.worker_properties(
            stack.bootstrap, directory, stack.plugins, servers.free_port(), f"{name}-worker"
        )
        connector = connect_peer.connector_properties(name, names["orders"], stack.redis_port, PEER_DB)
        command = connect_peer.standalone_command(directory, properties, connector)
        return Worker(path, command, {}, {names["orders"]: connect_peer.group_of(name)}, log, PEER_DB)
    group = f"{path}-{tag}"  # "peer", or "peer-periodic": committing every PERIODIC seconds
    command = [sys.executable, "-m", "harness.sink_peer", "--bootstrap", stack.bootstrap]
    command += ["--redis", stack.url(PEER_DB), "--group", group]
    command += ["--commit-interval", str(PERIODIC if path == "peer-periodic" else 0)]
    command += [f"--topic={kind}={names[kind]}" for kind in KILL_TOPICS]
    return Worker(path, command, {}, {names[kind]: group for kind in KILL_TOPICS}, log, PEER_DB)


class Progress:
    """The offsets each topic's group has committed, read from Kafka as the worker leaves them."""

    def __init__(self, bootstrap: str, groups: dict[str, str]):
        from confluent_kafka import Consumer

        self.groups = groups
        self.last_error = ""
        self.consumers = {
            group: Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
            for group in set(groups.values())
        }

    def committed(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        from confluent_kafka import TopicPartition

        found: dict[tuple[str, int], int] = {}
        for group, consumer in self.consumers.items():
            mine = [TopicPartition(t, p) for t, p in partitions if self.groups.get(t) == group]
            if mine:
                for tp in self._committed(consumer, mine):
                    found[(tp.topic, tp.partition)] = max(tp.offset, 0)  # negative: nothing committed yet
        return found

    def _committed(self, consumer: Any, partitions: list[Any]) -> list[Any]:
        from confluent_kafka import KafkaException

        try:
            return list(consumer.committed(partitions, timeout=10))
        except KafkaException as error:  # NOT_COORDINATOR and the like while a group settles: none known yet
            self.last_error = str(error)
            return []

    def caught_up(self, last_offsets: dict[tuple[str, int], int]) -> bool:
        """Whether the worker has committed past the last offsets of the topics it consumes."""
        mine = {tp: offset for tp, offset in last_offsets.items() if tp[0] in self.groups}
        committed = self.committed(list(mine))
        return all(committed.get(tp, 0) > offset for tp, offset in mine.items())

    def records_committed(self) -> int:
        """Records behind the commits: offsets start at 0 in these fresh topics."""
        return sum(self.committed([(t, p) for t in self.groups for p in range(PARTITIONS)]).values())

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()


# --- the records -----------------------------------------------------------------------------------
def keyed(order: RawRecord) -> RawRecord:
    """An order keyed by the Redis key it names (`orders:<orderid>`), as the connector needs."""
    identifier = json.loads(order.value or b"{}")["orderid"]
    return RawRecord("orders", f"orders:{identifier}".encode(), order.value, order.headers, order.timestamp)


def new_orders(generator: EventGenerator, count: int) -> list[RawRecord]:
    return [keyed(generator.order()) for _ in range(count)]


def order_stream(generator: EventGenerator, count: int, topics: Sequence[str] = KILL_TOPICS) -> list[RawRecord]:
    """Orders (half of them updates of one of the last 500 orders: their key's last value changes),
    and stock movements and products in between when `topics` name them."""
    pick = random.Random(generator.random.random())
    records: list[RawRecord] = []
    for _ in range(count):
        kind = pick.choice(topics)
        if kind != "orders":
            records.append(generator.record(kind))
            continue
        order = generator.order()
        if generator.next_order_id > 2 and pick.random() < 0.5:  # an update of a recent order
            value = json.loads(order.value or b"{}")
            value["orderid"] = pick.randint(max(1, generator.next_order_id - 500), generator.next_order_id - 1)
            order = RawRecord("orders", None, json.dumps(value, separators=(",", ":")).encode())
        records.append(keyed(order))
    return records


def last_per_partition(records: Sequence[RawRecord], partitions: int = PARTITIONS) -> dict[bytes, bytes]:
    """Each partition's last order (its key and value) as Kafka's default partitioner places it: once
    a database holds all of them, a system that writes in partition order has written every order."""
    last: dict[int, tuple[bytes, bytes]] = {}
    for raw in records:
        if raw.topic == "orders" and raw.key is not None and raw.value is not None:
            last[partition_for(raw.key, partitions, 0)] = (raw.key, raw.value)
    return dict(last.values())


def holds(client: redis.Redis, expected: dict[bytes, bytes]) -> bool:
    keys = list(expected)
    return [expected[k] for k in keys] == client.mget(keys)


def fresh_topics(bootstrap: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    names = {kind: f"{kind}-{suffix}" for kind in TOPICS}
    ensure_topics({"bootstrap.servers": bootstrap}, list(names.values()), partitions=PARTITIONS)
    return names


def feed_of(stack: Stack, names: dict[str, str]) -> KafkaFeed:
    return KafkaFeed({"bootstrap.servers": stack.bootstrap}, names)


def wait_until(done: Callable[[], bool], running: Sequence[Worker], progress: Progress | None, timeout: float,
               what: str, poll: float = 0.005) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while not done():
        for one in running:
            one.check()
        if time.monotonic() > deadline:
            why = (
                f" (last error reading the commits: {progress.last_error})" if progress and progress.last_error else ""
            )
            names = " and ".join(one.name for one in running)
            raise RuntimeError(f"the {names} worker: {what} not within {timeout:.0f} s{why}")
        time.sleep(poll)


@contextlib.contextmanager
def started_workers(paths: Sequence[str], stack: Stack, names: dict[str, str], logs: Path) -> Iterator[list[Worker]]:
    """The workers, running and past their group join (a few warm-up orders readable); stopped after."""
    running = [worker(path, stack, names, logs) for path in paths]
    for one in running:
        stack.client(one.database).flushdb()
        one.start()
    try:
        feed = feed_of(stack, names)
        warm_up = new_orders(EventGenerator(seed=3, partitions=PARTITIONS, first_order_id=900_000_000), WARM_UP)
        feed.produce(warm_up)
        feed.flush(60)
        last = last_per_partition(warm_up)
        clients = [stack.client(one.database) for one in running]
        wait_until(lambda: all(holds(c, last) for c in clients), running, None, 180, "warm-up orders readable")
        yield running
    finally:
        for one in running:
            one.stop()


# --- the three measurements ----------------------------------------------------------------------
def catch_up(path: str, stack: Stack, names: dict[str, str], backlog: list[RawRecord], last_offsets: dict[
        tuple[str, int], int], logs: Path) -> dict[str, Any]:  # fmt: skip
    """One system alone on the backlog, from its first write to its last, and to its last commit."""
    running = worker(path, stack, names, logs)
    client = stack.client(running.database)
    client.flushdb()
    last = last_per_partition(backlog)
    progress = Progress(stack.bootstrap, running.groups)
    running.start()
    try:
        wait_until(lambda: int(client.dbsize()) > 0, [running], None, 300, "a first write", poll=0.001)
        first = time.perf_counter()
        wait_until(lambda: holds(client, last), [running], None, 600, "every order readable", poll=0.002)
        written = time.perf_counter()
        wait_until(lambda: progress.caught_up(last_offsets), [running], progress, 600, "every offset committed")
        committed = time.perf_counter()
    finally:
        running.stop()
        progress.close()
    records = len(backlog)
    return {
        "records": records,
        "seconds": written - first,
        "per_second": records / (written - first),
        "to_commit_seconds": committed - first,
        "per_second_to_commit": records / (committed - first),
    }


def throughput(
    paths: Sequence[str], stack: Stack, records: int, logs: Path, rounds: int = 1
) -> dict[str, dict[str, Any]]:
    """Each system's catch-up, `rounds` times in turn (the order swapped each round, each round on a
    backlog of its own): the round with the median rate, and every round's rate. A shared machine's
    load swings more between minutes than between two systems measured back to back."""
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
    for n in range(rounds):
        names = fresh_topics(stack.bootstrap)
        backlog = new_orders(EventGenerator(seed=9 + n, partitions=PARTITIONS), records)
        feed = feed_of(stack, names)
        feed.produce(backlog)
        feed.flush(120)
        for path in paths if n % 2 == 0 else reversed(paths):
            runs[path].append(catch_up(path, stack, names, backlog, feed.last_offsets, logs))
    result = {}
    for path, each in runs.items():
        ordered = sorted(each, key=lambda run: run["per_second"])
        result[path] = {**ordered[len(ordered) // 2], "rounds": [run["per_second"] for run in each]}
    return result


def freshness(paths: Sequence[str], stack: Stack, probes: int, logs: Path, rate: float) -> dict[str, dict[str, Any]]:
    """Both systems at once on the same live stream: every order of it a probe, produced at `rate` a
    second at random moments (exponential gaps, so no probe waits for the previous one and none
    lines up with a worker's poll loop), each timed from its produce timestamp to readable in each
    system's database."""
    names = fresh_topics(stack.bootstrap)
    sent: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()

    def live_stream() -> None:
        feed = feed_of(stack, names)
        generator = EventGenerator(seed=6, partitions=PARTITIONS, first_order_id=800_000_000)
        gaps = random.Random(6)
        for _ in range(probes):
            order = keyed(generator.order())
            assert order.key is not None
            produced_ms = int(time.time() * 1000)
            feed.produce([RawRecord(order.topic, order.key, order.value, timestamp=produced_ms)])
            feed.flush()
            sent.put((order.key, produced_ms))
            time.sleep(gaps.expovariate(rate))
        sent.put(None)

    samples: dict[str, list[float]] = {path: [] for path in paths}
    with started_workers(paths, stack, names, logs) as running:
        clients = {one.name: stack.client(one.database) for one in running}
        pending: dict[str, dict[bytes, int]] = {path: {} for path in paths}
        stream = threading.Thread(target=live_stream, daemon=True)
        stream.start()
        streaming, deadline = True, time.monotonic() + probes / rate + 120
        while streaming or any(pending.values()):
            while streaming:
                try:
                    item = sent.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    streaming = False
                    break
                for waiting in pending.values():
                    waiting[item[0]] = item[1]
            for path, waiting in pending.items():
                if not waiting:
                    continue
                keys = list(waiting)
                pipe = clients[path].pipeline(transaction=False)
                for key in keys:
                    pipe.exists(key)
                now_ms = time.time() * 1000
                for key, found in zip(keys, pipe.execute(), strict=True):
                    if found:
                        samples[path].append(now_ms - waiting.pop(key))
            if time.monotonic() > deadline:
                for one in running:
                    one.check()
                late = {path: len(waiting) for path, waiting in pending.items() if waiting}
                raise RuntimeError(f"probes never became readable: {late}")
            time.sleep(0.0005)
        stream.join(30)
    return {path: {"rate": rate, **percentiles(found)} for path, found in samples.items()}


def percentiles(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"probes": len(samples), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ordered[-1]}


def kill_test(path: str, stack: Stack, records: int, kills: int, logs: Path, rate: float) -> dict[str, Any]:
    """`records` produced at `rate` a second; the worker SIGKILLed `kills` times, each a random moment
    (up to 0.2 s) after Redis holds evenly spaced fractions of the new orders, and restarted half a
    second later; at the end, what Redis holds against the model of the topics it consumes."""
    from harness.model import model_state, redis_state

    names = fresh_topics(stack.bootstrap)
    generated = order_stream(EventGenerator(seed=13, partitions=PARTITIONS), records)
    jitter = random.Random(13)
    killed_at: list[int] = []
    orders = len({raw.key for raw in generated if raw.topic == "orders"})  # each a new key
    with started_workers([path], stack, names, logs) as (running,):
        client = stack.client(running.database)
        progress = Progress(stack.bootstrap, running.groups)
        feed, base = feed_of(stack, names), client.dbsize()

        def produce() -> None:
            for start in range(0, len(generated), 100):
                feed.produce(generated[start : start + 100])
                time.sleep(100 / rate)
            feed.flush(120)

        try:
            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            for n in range(1, kills + 1):
                # progress as Redis shows it (new order keys), not as the commits do: a sink that commits
                # seldom is killed mid-stream all the same; no kill once the stream is over and applied
                mark = max(base + orders * n // (kills + 1), int(client.dbsize()) + 1)  # and some since a restart
                over = partial(_stream_over, producer, progress, feed)
                wait_until(partial(_holds_keys, client, mark, over), [running], progress, 300, f"{mark} keys")
                if over():
                    break
                time.sleep(jitter.uniform(0, 0.2))  # anywhere in the worker's loop
                running.kill()
                killed_at.append(progress.records_committed())
                time.sleep(0.5)
                running.start()
            producer.join(300)
            wait_until(lambda: progress.caught_up(feed.last_offsets), [running], progress, 600, "every commit")
        finally:
            progress.close()
    consumed = {kind: name for kind, name in names.items() if name in running.groups}
    renamed = {f"TOPIC_{kind.upper()}": name for kind, name in names.items()}  # as the worker's functions read it
    expected = model_state(renamed, read_back(stack.bootstrap, consumed))
    actual = {
        k: v for k, v in redis_state(stack.client(running.database)).items() if not k.startswith(OFFSET_KEY_PREFIX)
    }
    summary = {"records": records, "rate": rate, "kills": len(killed_at), "committed_at_kills": killed_at}
    summary["offsets_read_from_redis"] = _requested_offsets(running.log) if path == "connector" else None
    return {**summary, **compare(expected, actual, documents_prefix="orders:")}


def _requested_offsets(log: Path) -> int:
    """How often the connector's task asked Connect to seek to an offset it keeps in Redis
    (RedisSinkTask.start logs "Requesting offset"): its own offsets in use after a restart."""
    return log.read_text(errors="replace").count("Requesting offset")


def _holds_keys(client: redis.Redis, keys: int, over: Callable[[], bool]) -> bool:
    return int(client.dbsize()) >= keys or over()


def _stream_over(producer: threading.Thread, progress: Progress, feed: KafkaFeed) -> bool:
    return not producer.is_alive() and progress.caught_up(feed.last_offsets)


def read_back(bootstrap: str, names: dict[str, str], partitions: int = 6) -> list[dict[str, Any]]:
    """Every record of the topics, with its coordinates, as the model takes them."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-back-{uuid.uuid4().hex[:6]}"})
    try:
        ends: dict[tuple[str, int], int] = {}
        for name in names.values():
            for p in range(partitions):
                ends[(name, p)] = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for (t, p), end in ends.items() if end > 0])
        records: list[dict[str, Any]] = []
        remaining = sum(ends.values())
        deadline = time.monotonic() + 120
        while remaining > 0 and time.monotonic() < deadline:
            for message in consumer.consume(1000, 1.0):
                if message.error() is None:
                    _, timestamp = message.timestamp()
                    topic, partition, offset = (
                        str(message.topic()),
                        int(message.partition() or 0),
                        int(message.offset() or 0),
                    )
                    records.append(lambda_record(topic, partition, offset, timestamp, message.key(), message.value()))
                    remaining -= 1
        if remaining:
            raise RuntimeError(f"{remaining} records could not be read back")
        return records
    finally:
        consumer.close()


def compare(expected: State, actual: State, documents_prefix: str = "") -> dict[str, Any]:
    """How far Redis is from the model: documents (strings whose key starts with `documents_prefix`)
    and stock entries (sorted set members)."""
    documents = {
        k
        for k in expected.keys() | actual.keys()
        if k.startswith(documents_prefix) and not isinstance(expected.get(k, actual.get(k)), dict)
    }
    stock: dict[tuple[str, str], tuple[float, float]] = {}
    for key in expected.keys() | actual.keys():
        want, got = expected.get(key, {}), actual.get(key, {})
        if isinstance(want, dict) and isinstance(got, dict):
            for member in want.keys() | got.keys():
                stock[(key, member)] = (want.get(member, 0.0), got.get(member, 0.0))
    wrong = {entry: got - want for entry, (want, got) in stock.items() if got != want}
    return {
        "documents": len(documents),
        "documents_wrong": sum(1 for k in documents if expected.get(k) != actual.get(k)),
        "stock_entries": len(stock),
        "stock_entries_wrong": len(wrong),
        "stock_units_off": sum(abs(d) for d in wrong.values()),
        "stock_units_net": sum(wrong.values()),
    }


# --- the report ----------------------------------------------------------------------------------
def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def rounds_note(run: dict[str, Any]) -> str:
    rounds = len(run.get("rounds", [])) or 1
    return f", median of {rounds} rounds, each system in turn" if rounds > 1 else ""


def spread(run: dict[str, Any]) -> str:
    rounds = run.get("rounds", [])
    return f" ({', '.join(f'{r:,.0f}' for r in rounds)})" if len(rounds) > 1 else ""


def round_ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """Each round's ratio: how far apart two systems measured back to back were, round by round."""
    pairs = list(zip(ours.get("rounds", []), theirs.get("rounds", []), strict=False))
    return f" (rounds: {', '.join(ratio(a, b) for a, b in pairs)})" if len(pairs) > 1 else ""


def section(result: dict[str, Any], command: str) -> str:
    peer_path = result["peer_path"]
    connector = peer_path == "connector"
    t, f, k = result["throughput"], result["freshness"], result["kill"]
    ours_t, peer_t = t["cachesync"], t[peer_path]
    ours_f, peer_f = f["cachesync"], f[peer_path]
    ours_k, peer_k = k["cachesync"], k[peer_path]
    peer_name = "the connector" if connector else "peer (commit after each batch)"

    def documents(kill: dict[str, Any]) -> str:
        return f"{kill['kills']} kills: {kill['documents_wrong']} of {kill['documents']:,} orders wrong"

    def stock(kill: dict[str, Any]) -> str:
        return (
            f"{kill['stock_entries_wrong']} of {kill['stock_entries']:,} entries wrong "
            f"({kill['stock_units_off']:,.0f} units off, net {kill['stock_units_net']:+,.0f})"
        )

    def fresh(x: dict[str, Any]) -> str:
        return f"{x['p50_ms']:.1f} / {x['p99_ms']:.1f} ms ({x['max_ms']:.1f})"

    rows = [
        f"| measure | cachesync | {peer_name} | cachesync / {'connector' if connector else 'peer'} |",
        "| --- | --- | --- | --- |",
        f"| catch-up of a {ours_t['records']:,}-order backlog ({PARTITIONS} partitions), first write to last"
        f"{rounds_note(ours_t)} | {ours_t['per_second']:,.0f} orders/s{spread(ours_t)} "
        f"| {peer_t['per_second']:,.0f} orders/s{spread(peer_t)} "
        f"| {ratio(ours_t['per_second'], peer_t['per_second'])}{round_ratios(ours_t, peer_t)} |",
        f"| the same, first write to the last offset committed "
        f"| {ours_t['per_second_to_commit']:,.0f} orders/s | {peer_t['per_second_to_commit']:,.0f} orders/s "
        f"| {ratio(ours_t['per_second_to_commit'], peer_t['per_second_to_commit'])} |",
        f"| freshness, produce timestamp to readable: p50 / p99 (max), both at once on a live stream of "
        f"{ours_f['probes']:,} orders at {ours_f['rate']:.0f}/s | {fresh(ours_f)} | {fresh(peer_f)} "
        f"| p50 {ratio(ours_f['p50_ms'], peer_f['p50_ms'])}, p99 {ratio(ours_f['p99_ms'], peer_f['p99_ms'])} |",
        f"| orders after SIGKILLs mid-stream and restarts ({ours_k['records']:,} records at "
        f"{ours_k['rate']:,.0f}/s), against the last record per key | {documents(ours_k)} | {documents(peer_k)} | |",
        f"| stock counts (sorted sets of deltas) after the same | {stock(ours_k)} "
        + ("| cannot: it writes SET and DEL only (no ZINCRBY) | |" if connector else f"| {stock(peer_k)} | |"),
    ]
    if not connector:
        periodic = k["peer-periodic"]
        rows.append(
            f"| the same, the peer committing every {PERIODIC:g} s as Connect does (default 60 s) "
            f"| | {documents(periodic)}; stock {stock(periodic)} | |"
        )
    header = [
        SECTION_START,
        "## Beside the Kafka Connect Redis sink",
        "",
        f"The latest `{command}` run: {result['date']}, {result['broker']} broker, commit {result['commit']};",
        f"load average (1 min) {result['load']} (2 CPUs, shared with other work: read the ratios, not the",
        "absolute figures).",
        "",
    ]
    if connector:
        peer_text = [
            "The peer is the connector of the original design, `jcustenborder/kafka-connect-redis`",
            "(`com.github.jcustenborder.kafka.connect.redis.RedisSinkConnector`, one task), built from its",
            "source with Maven and run by Apache Kafka's standalone Connect worker",
            "(`org.apache.kafka.connect.cli.ConnectStandalone`, connect-runtime 4.4.0 from Maven Central, Java",
            f"17) into Redis database {PEER_DB} (its default); ours is `python -m devkit.esm` (the template's",
            f"mappings in {processes_per_cpu()} processes, one per CPU, batching window 0, metrics off, logs at",
            "ERROR, into IngestFunction in-process) into",
            f"database {OURS_DB} of the same Valkey. Same broker, same records: Datagen-shaped orders keyed",
            "`orders:<orderid>`, since the connector SETs the record key as it is; ours names the key from",
            "the value's `orderid` and counts such a record key as a keying mismatch (a metric, and a",
            "warning a batch, which ERROR silences).",
            "",
            "The worker: `StringConverter` keys, `ByteArrayConverter` values, static group membership (as",
            f"our mappings use), `offset.flush.interval.ms={connect_peer.FLUSH_INTERVAL_MS}` (its default is",
            "60 000; it bounds how long after its last write the worker commits, and what a crash replays).",
            "",
            "Catch-up: the backlog is produced first, then each system runs alone on it, timed from its first",
            "write to Redis to its last (every partition's last order readable), so neither start-up (the JVM,",
            "the group join, our processes waiting for each other to join) is counted; the second row runs to",
            "the group's commit of the last offset, which Connect makes on its flush interval. Each round",
            "produces a backlog of its own and runs both systems on it in turn (the order swapped every",
            "round); the rows give the median round and every round, since the load of a shared machine",
            "swings between minutes more than between two systems measured back to back. Freshness: both",
            "run at once on the same live stream, every",
            "order of it a probe polled in both databases, produced at random moments (exponential gaps), so",
            "none waits for the one before or lines up with a poll loop. Kill test: each system alone,",
            "SIGKILLed at random moments (up to 0.2 s after Redis holds evenly spaced fractions of the",
            "stream's new orders) and restarted, but not once the stream is over and applied;",
            "half the orders update one of the last 500, so a key's last value matters; the stream also has",
            "stock movements and products, which ours applies and the connector does not consume.",
        ]
    else:
        peer_text = [
            f"**No connector source was found** ({result['peer_note']}).",
            "",
            "So the peer is `harness/sink_peer.py`, what a Redis sink task does without Connect: a",
            "confluent-kafka consumer that writes each batch (up to 500 records) to Redis in one pipeline",
            "and then commits its offsets synchronously, into database 1 of the same Valkey; ours is",
            "`python -m devkit.esm` (the template's mappings, batching window 0) into database 0. The last",
            f"row runs it committing every {PERIODIC:g} s, closer to Connect (every `offset.flush.interval.ms`).",
        ]
    verified = (
        [
            "",
            "What the connector guarantees, from its source (`RedisSinkTask`, `SinkOperation`) and this run:",
            "",
            "- At least once. `put()` writes each batch with `MSET` (a run of null values with `DEL`) and",
            "  nothing else; its offsets are written by `flush()`, after the data and only when Connect",
            "  commits (every `offset.flush.interval.ms`, and on a clean stop), as",
            "  `__kafka.offset.<topic>.<partition>` keys; then Connect commits the same offsets to Kafka",
            "  (group `connect-<name>`).",
            "- After a crash Connect resumes from the group's offsets in Kafka: the task reads its Redis",
            "  offsets only in `start()`, when nothing is assigned yet, so it never seeks to them"
            + (
                f'\n  ("Requesting offset" logged {peer_k["offsets_read_from_redis"]} times in the kill test).'
                if peer_k.get("offsets_read_from_redis") is not None
                else "."
            ),
            "  Everything since the last commit is written again: until the replay has passed a key, a",
            "  reader sees it back at an older value (a late write replacing a newer one), though the",
            "  last record per key wins in the end, as the kill test's orders show.",
            "- Strings only: no sorted sets, so no stock counts (`ZINCRBY`), and no TTL, no dead letters (a",
            "  record with a null key or a non-string value fails the task), no check of the value.",
            "- Ours applies each record once: every write is checked against its key's applied position",
            "  (the offset of the last record of its partition applied to it) in the same Lua call, so a",
            "  replay after a kill skips what was applied and a key never goes back to an older value.",
        ]
        if connector
        else []
    )
    source = [
        "",
        "The connector's source: `--peer-source DIR`, else `$CONNECT_REDIS_SOURCE`, else",
        "`../shared/peers/kafka-connect-redis` beside the repository. To get it, clone",
        f"{connect_peer.UPSTREAM} there (or anywhere, and pass its path)",
        "with a `pom.xml` that builds from Maven Central alone: the project's own pom needs a repository",
        "that is not Maven Central, so replace it with a minimal one (`connect-api` provided,",
        "`lettuce-core`, `connect-utils`, `connect-utils-jackson`, and `maven-dependency-plugin` copying",
        "the runtime dependencies to `target/lib`). The bench builds it into `.local/connect/` and fetches",
        "Connect's runtime there too; without a source it falls back to `harness/sink_peer.py` and says so.",
    ]
    lines = [*header, *peer_text, "", *rows, *verified, *source, "", SECTION_END]
    return "\n".join(lines) + "\n"


def with_section(document: str, text: str) -> str:
    """`document` with its bench-connect section replaced by `text` (appended when it has none)."""
    start, end = document.find(SECTION_START), document.find(SECTION_END)
    if start != -1 and end > start:
        return document[:start] + text + document[end + len(SECTION_END) :].lstrip("\n")
    return document.rstrip("\n") + "\n\n" + text


def carried_over(previous: str, document: str) -> str:
    """`document` (e.g. make bench's new docs/performance.md) with `previous`'s bench-connect section kept."""
    start, end = previous.find(SECTION_START), previous.find(SECTION_END)
    if start == -1 or end < start:
        return document
    return with_section(document, previous[start : end + len(SECTION_END)] + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=50_000, help="orders in the catch-up backlog")
    parser.add_argument("--kill-records", type=int, default=30_000, help="records for the kill test")
    parser.add_argument("--kill-rate", type=float, default=1000, help="records/s produced during the kill test")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="catch-up rounds of each system, in turn")
    parser.add_argument("--probes", type=int, default=1000, help="orders of the live stream, each a probe")
    parser.add_argument("--rate", type=float, default=50, help="the live stream's orders/s")
    default_broker = "apache" if brokers.available("apache") is None else "embedded"
    parser.add_argument("--broker", choices=brokers.BROKER_KINDS, default=default_broker)
    parser.add_argument(
        "--peer-source",
        help=f"the connector's source (else ${connect_peer.SOURCE_VARIABLE}, else ../shared/peers/kafka-connect-redis)",
    )
    parser.add_argument("--output", help="write the section into this document (e.g. docs/performance.md)")
    parser.add_argument("--command", default="python -m harness.bench_connect", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        peer = connect_peer.find_source(args.peer_source)
    except connect_peer.PeerSourceMissing as error:
        parser.error(str(error))
    print(f"peer: {peer.note}", file=sys.stderr, flush=True)
    plugins = None
    if peer.path is not None:
        plugins = connect_peer.build_plugin(peer.path)
        connect_peer.fetch_runtime()
    load_before = os.getloadavg()[0]
    broker = brokers.start_broker(args.broker)
    valkey = servers.start_server()
    logs = Path(tempfile.mkdtemp(prefix="cachesync-bench-connect-"))
    stack = Stack(broker.bootstrap, valkey.port, args.broker, peer, plugins)
    paths = ("cachesync", stack.peer_path)
    try:
        print(f"catch-up of {args.records:,} orders, each alone...", file=sys.stderr, flush=True)
        caught_up = throughput(paths, stack, args.records, logs, args.rounds)
        print(f"freshness, {args.probes} probes, both at once...", file=sys.stderr, flush=True)
        fresh = freshness(paths, stack, args.probes, logs, args.rate)
        kills: dict[str, dict[str, Any]] = {}
        for path in paths if stack.peer_path == "connector" else (*paths, "peer-periodic"):
            print(f"{path}: kill test...", file=sys.stderr, flush=True)
            kills[path] = kill_test(path, stack, args.kill_records, args.kills, logs, args.kill_rate)
    finally:
        broker.remove()
        valkey.remove()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "broker": {"apache": "Apache Kafka 4.4 (KRaft)", "embedded": "embedded (noida-db)"}[args.broker],
        "commit": commit.stdout.strip(),
        "load": f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "peer_path": stack.peer_path,
        "peer_note": peer.note,
        "throughput": caught_up,
        "freshness": fresh,
        "kill": kills,
    }
    print(json.dumps(result, indent=2))
    print(summary(result), file=sys.stderr)
    if args.output:
        target = Path(args.output)
        existing = target.read_text() if target.exists() else ""
        target.write_text(with_section(existing, section(result, args.command)))
        print(f"wrote {args.output}; worker logs in {logs}", file=sys.stderr)
    return 0


def summary(result: dict[str, Any]) -> str:
    """The ratios, ours over the peer's, one a line."""
    peer = result["peer_path"]
    t, f = result["throughput"], result["freshness"]
    return "\n".join(
        [
            f"peer: {result['peer_note']}",
            f"catch-up, first write to last: cachesync / {peer} "
            f"{ratio(t['cachesync']['per_second'], t[peer]['per_second'])}",
            f"freshness p50: {ratio(f['cachesync']['p50_ms'], f[peer]['p50_ms'])}, "
            f"p99: {ratio(f['cachesync']['p99_ms'], f[peer]['p99_ms'])} (lower is fresher)",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
