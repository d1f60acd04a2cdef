"""Our path beside a peer sink, on the same broker, the same Valkey and the same records.

    python -m harness.bench_connect [--records 50000] [--kill-records 30000] [--kill-rate 1000] \\
        [--kills 10] [--probes 200] [--broker apache|embedded] [--no-maven] [--output docs/performance.md]

The peer would be Kafka Connect with a Redis sink connector. Maven Central serves
`org.apache.kafka:connect-runtime` but no Redis sink connector (each run asks
Maven again and reports what it found), so the peer is what such a sink task
does, without Connect: `harness.sink_peer`, a confluent-kafka consumer that
writes each batch to Redis in one pipeline and commits after the write.

Both run as worker processes of their own: ours is `python -m devkit.esm` (the
template's mappings into IngestFunction, batching window 0), the peer
`python -m harness.sink_peer`. For each:

- throughput: records produced as fast as the producer goes, from the first
  send to the worker's group committing the last offset;
- freshness: probe orders produced one at a time under a live stream, from the
  record's produce timestamp to `GET orders:<id>` returning it from Redis;
- a kill test: records produced at a steady rate while the worker is SIGKILLed
  `--kills` times mid-stream and restarted; once it has caught up, what Redis
  holds is compared with the reference model (`harness.model`: each record
  applied once, in partition order). The peer runs it twice: committing after
  each batch, and every few seconds as Connect commits a sink's offsets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from devkit import brokers, servers
from devkit.children import spawn
from devkit.datagen import KafkaFeed, ensure_topics
from devkit.esm.payload import lambda_record
from devkit.generator import TOPICS, EventGenerator, RawRecord

if TYPE_CHECKING:
    from harness.model import State

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("cachesync", "peer")
PERIODIC = 5.0  # seconds between the periodic peer's commits (Connect's offset.flush.interval.ms; default 60 s)
CONNECTORS = (
    "org.apache.kafka:connect-runtime:4.4.0",
    "com.redis:redis-kafka-connect:0.9.1",
    "com.github.jcustenborder.kafka.connect:kafka-connect-redis:0.0.2.17",
    "com.github.jcustenborder.kafka.connect:kafka-connect-redis:0.0.2.2",
    "io.github.jaredpetersen:kafka-connect-redis:1.2.3",
)
SECTION_START = "<!-- bench-connect:start -->"
SECTION_END = "<!-- bench-connect:end -->"
SEED_TOPICS = ("orders", "inventory", "products")  # the Datagen-shaped streams both sinks take
WARM_UP = 60  # records applied before a measurement: the worker has joined its groups


@dataclass
class Stack:
    bootstrap: str
    redis_url: str
    broker_kind: str


@dataclass
class Worker:
    """One path's worker process; `groups` maps each topic to the consumer group that commits it."""

    name: str
    command: list[str]
    env: dict[str, str]
    groups: dict[str, str]
    log: Path
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
    tag = names["orders"]
    if path == "cachesync":
        prefix = f"cachesync-{tag}"
        parameters = [f"{kind.capitalize()}Topic={name}" for kind, name in names.items()]
        command = [sys.executable, "-m", "devkit.esm", "--bootstrap", stack.bootstrap, "--batching-window", "0"]
        command += ["--parameter-overrides", *parameters, f"KafkaConsumerGroupId={prefix}"]
        quiet = {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR"}
        env = {"REDIS_URL": stack.redis_url, "REDIS_CLUSTER": "false", **quiet}
        groups = {name: f"{prefix}-{kind}" for kind, name in names.items()}
    else:  # "peer", or "peer-periodic": committing every PERIODIC seconds
        group = f"{path}-{tag}"
        command = [sys.executable, "-m", "harness.sink_peer", "--bootstrap", stack.bootstrap]
        command += ["--redis", stack.redis_url, "--group", group]
        command += ["--commit-interval", str(PERIODIC if path == "peer-periodic" else 0)]
        command += [f"--topic={kind}={names[kind]}" for kind in SEED_TOPICS]
        env, groups = {}, {names[kind]: group for kind in SEED_TOPICS}
    return Worker(path, command, env, groups, logs / f"{path}-{tag}.log")


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
        committed = self.committed(list(last_offsets))
        return all(committed.get(tp, 0) > offset for tp, offset in last_offsets.items())

    def records_committed(self, names: dict[str, str], partitions: int = 6) -> int:
        """Records behind the commits: offsets start at 0 in these fresh topics."""
        return sum(self.committed([(t, p) for t in names.values() for p in range(partitions)]).values())

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()


def fresh_topics(bootstrap: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    names = {kind: f"{kind}-{suffix}" for kind in TOPICS}
    ensure_topics({"bootstrap.servers": bootstrap}, list(names.values()), partitions=6)
    return names


def wait_until(done: Callable[[], bool], running: Worker, progress: Progress, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        running.check()
        if time.monotonic() > deadline:
            why = f" (last error reading the commits: {progress.last_error})" if progress.last_error else ""
            raise RuntimeError(f"the {running.name} worker: {what} not within {timeout:.0f} s{why}")
        time.sleep(0.005)


@contextlib.contextmanager
def started_worker(path: str, stack: Stack, names: dict[str, str], logs: Path) -> Iterator[tuple[Worker, Progress]]:
    """The worker, running and past its group join (a few warm-up records applied); stopped after."""
    redis.Redis.from_url(stack.redis_url).flushall()
    running = worker(path, stack, names, logs).start()
    progress = Progress(stack.bootstrap, running.groups)
    try:
        feed = KafkaFeed({"bootstrap.servers": stack.bootstrap}, names)
        feed.produce(EventGenerator(seed=3, partitions=6, first_order_id=900_000_000).records(WARM_UP, SEED_TOPICS))
        feed.flush(60)
        wait_until(lambda: progress.caught_up(feed.last_offsets), running, progress, 120, "warm-up records committed")
        yield running, progress
    finally:
        running.stop()
        progress.close()


# --- the three measurements --------------------------------------------------------------------
def feed_of(stack: Stack, names: dict[str, str]) -> KafkaFeed:
    return KafkaFeed({"bootstrap.servers": stack.bootstrap}, names)


def throughput(path: str, stack: Stack, records: int, logs: Path) -> dict[str, Any]:
    names = fresh_topics(stack.bootstrap)
    with started_worker(path, stack, names, logs) as (running, progress):
        feed = feed_of(stack, names)
        generated = EventGenerator(seed=9, partitions=6).records(records, SEED_TOPICS)
        started = time.perf_counter()
        feed.produce(generated)
        feed.flush(120)
        wait_until(lambda: progress.caught_up(feed.last_offsets), running, progress, 600, "every record committed")
        seconds = time.perf_counter() - started
    return {"records": records, "seconds": seconds, "per_second": records / seconds}


def freshness(path: str, stack: Stack, probes: int, logs: Path, rate: float = 50.0) -> dict[str, Any]:
    names = fresh_topics(stack.bootstrap)
    client = redis.Redis.from_url(stack.redis_url)
    stop = threading.Event()

    def live_stream() -> None:  # the background events the probes queue behind
        feed = feed_of(stack, names)
        generator = EventGenerator(seed=5, partitions=6, first_order_id=1)
        while not stop.wait(1 / rate):
            feed.produce(generator.records(1, SEED_TOPICS))
        feed.flush(30)

    samples: list[float] = []
    with started_worker(path, stack, names, logs) as (running, _):
        stream = threading.Thread(target=live_stream, daemon=True)
        stream.start()
        try:
            feed = feed_of(stack, names)
            generator = EventGenerator(seed=6, partitions=6, first_order_id=800_000_000)
            for probe in range(-1, probes):  # probe -1 warms the producer up (its first metadata): not counted
                order = generator.order()
                assert order.key is not None
                produced_ms = int(time.time() * 1000)
                feed.produce([RawRecord(order.topic, order.key, order.value, timestamp=produced_ms)])
                feed.flush()
                key = f"orders:{order.key.decode()}"
                deadline = time.monotonic() + 10
                while client.get(key) is None:
                    if time.monotonic() > deadline:
                        running.check()
                        raise RuntimeError(f"{key} never became readable through the {path} worker")
                    time.sleep(0.0005)
                if probe >= 0:
                    samples.append(time.time() * 1000 - produced_ms)
                time.sleep(0.01)
        finally:
            stop.set()
            stream.join(30)
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    slowest = sorted(range(len(samples)), key=samples.__getitem__)[-3:]
    return {
        "probes": len(samples),
        "rate": rate,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1],
        "slowest": [(i, round(samples[i], 1)) for i in slowest],  # (probe number, ms)
    }


def kill_test(path: str, stack: Stack, records: int, kills: int, logs: Path, rate: float) -> dict[str, Any]:
    """`records` produced at `rate` a second; the worker SIGKILLed `kills` times, each a random moment
    (up to 0.2 s) after Redis holds evenly spaced fractions of the new orders, and restarted half a
    second later; at the end, what Redis holds against the model."""
    from harness.model import model_state, redis_state

    names = fresh_topics(stack.bootstrap)
    generated = EventGenerator(seed=13, partitions=6).records(records, SEED_TOPICS)
    jitter = random.Random(13)
    killed_at: list[int] = []
    client = redis.Redis.from_url(stack.redis_url)
    orders = sum(1 for raw in generated if raw.topic == "orders")  # each a new key
    with started_worker(path, stack, names, logs) as (running, progress):
        feed, base = feed_of(stack, names), client.dbsize()

        def produce() -> None:
            for start in range(0, len(generated), 100):
                feed.produce(generated[start : start + 100])
                time.sleep(100 / rate)
            feed.flush(120)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        for n in range(1, kills + 1):
            # progress as Redis shows it (new order keys), not as the commits do: a sink that commits
            # seldom is killed mid-stream all the same; no kill once the stream is over and applied
            mark = max(base + orders * n // (kills + 1), int(client.dbsize()) + 1)  # and some since a restart
            over = partial(_stream_over, producer, progress, feed)
            wait_until(partial(_holds, client, mark, over), running, progress, 300, f"{mark} keys in Redis")
            if over():
                break
            time.sleep(jitter.uniform(0, 0.2))  # anywhere in the worker's loop
            running.kill()
            killed_at.append(progress.records_committed(names))
            time.sleep(0.5)
            running.start()
        producer.join(300)
        wait_until(lambda: progress.caught_up(feed.last_offsets), running, progress, 600, "every record committed")
    renamed = {f"TOPIC_{kind.upper()}": name for kind, name in names.items()}  # as the worker's functions read it
    expected = model_state(renamed, read_back(stack.bootstrap, names))
    actual = redis_state(redis.Redis.from_url(stack.redis_url))
    summary = {"records": records, "rate": rate, "kills": len(killed_at), "committed_at_kills": killed_at}
    return {**summary, **compare(expected, actual)}


def _holds(client: redis.Redis, keys: int, over: Callable[[], bool]) -> bool:
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


def compare(expected: State, actual: State) -> dict[str, Any]:
    """How far Redis is from the model: documents (strings) and stock entries (sorted set members)."""
    documents = {k for k in expected.keys() | actual.keys() if not isinstance(expected.get(k, actual.get(k)), dict)}
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


# --- Kafka Connect's connectors on Maven Central ------------------------------------------------
def probe_connectors(repository: Path = ROOT / ".local" / "connect" / "m2") -> list[dict[str, str]]:
    """Whether Maven resolves each artifact from Maven Central, and Maven's own words when not."""
    mvn = shutil.which("mvn")
    found = []
    for artifact in CONNECTORS:
        if mvn is None:
            found.append({"artifact": artifact, "served": "unknown", "why": "mvn is not on PATH"})
            continue
        command = [
            mvn,
            "-B",
            "-U",
            "-Dstyle.color=never",
            "dependency:get",
            f"-Dartifact={artifact}",
            "-Dtransitive=false",
        ]
        result = subprocess.run(
            [*command, f"-Dmaven.repo.local={repository}"], capture_output=True, text=True, timeout=300, check=False
        )
        text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
        errors = [line for line in text.splitlines() if "Could not find artifact" in line]
        why = re.sub(r".*?(Could not find artifact \S+ in \S+).*", r"\1", errors[0]) if errors else ""
        if result.returncode != 0 and not why:
            why = (text.strip().splitlines() or ["Maven failed"])[-1]
        found.append({"artifact": artifact, "served": "yes" if result.returncode == 0 else "no", "why": why})
    return found


# --- the report ----------------------------------------------------------------------------------
def section(result: dict[str, Any], command: str) -> str:
    paths = result["paths"]
    ours, peer = paths["cachesync"], paths["peer"]

    def kill_row(k: dict[str, Any]) -> str:
        return (
            f"{k['kills']} kills: {k['documents_wrong']} of {k['documents']:,} documents wrong; "
            f"{k['stock_entries_wrong']} of {k['stock_entries']:,} stock entries wrong "
            f"({k['stock_units_off']:,.0f} units off, net {k['stock_units_net']:+,.0f})"
        )

    def fresh(f: dict[str, Any]) -> str:
        return f"{f['p50_ms']:.1f} ms / {f['p99_ms']:.1f} ms ({f['max_ms']:.1f} ms)"

    t, f, k = ours["throughput"], ours["freshness"], ours["kill"]
    pt, pf, pk = peer["throughput"], peer["freshness"], peer["kill"]
    periodic = paths["peer-periodic"]["kill"]
    rows = [
        "| measure | cachesync | peer (commit after each batch) | cachesync / peer |",
        "| --- | --- | --- | --- |",
        f"| throughput, {t['records']:,} records produced as fast as the producer goes, first send to last commit "
        f"| {t['per_second']:,.0f} records/s | {pt['per_second']:,.0f} records/s "
        f"| {t['per_second'] / pt['per_second']:.2f}x |",
        f"| freshness, produce timestamp to readable in Redis: p50 / p99 (max), {f['probes']} probe orders "
        f"with {f['rate']:.0f} live events/s | {fresh(f)} | {fresh(pf)} | p99 {f['p99_ms'] / pf['p99_ms']:.2f}x |",
        f"| after SIGKILLs mid-stream and restarts ({k['records']:,} records at {k['rate']:,.0f}/s), "
        f"Redis against the reference model | {kill_row(k)} | {kill_row(pk)} | |",
        f"| the same, the peer committing every {PERIODIC:g} s as Connect does (default 60 s) "
        f"| | {kill_row(periodic)} | |",
    ]
    probes = [
        f"- `{p['artifact']}`: " + ("served" if p["served"] == "yes" else f"not served ({p['why'] or p['served']})")
        for p in result["maven"]
    ]
    lines = [
        SECTION_START,
        "## Beside a peer: Kafka Connect's place, a plain at-least-once sink",
        "",
        f"The latest `{command}` run: {result['date']}, {result['broker']} broker, commit {result['commit']};",
        f"load average (1 min) {result['load']} (2 CPUs, shared).",
        "",
        "The peer we meant to run is Kafka Connect (standalone, on the same broker) with a Redis sink",
        "connector. Maven Central, the only Java registry here, serves the runtime but no Redis sink",
        "connector; the run asked Maven (`mvn dependency:get`) for each of these:",
        "",
        *probes,
        "",
        "So the peer is what a Redis sink task does, without Connect (`harness/sink_peer.py`): a",
        "confluent-kafka consumer that writes each batch (up to 500 records) to Redis in one pipeline",
        "and then commits its offsets synchronously. That is the most a sink can do for at-least-once.",
        "Connect itself commits a sink's offsets every `offset.flush.interval.ms` (60 s by default), so",
        f"a killed Connect worker replays more: the last row runs the peer committing every {PERIODIC:g} s.",
        "Both workers use static group membership, so a restarted one gets its partitions back at once.",
        "",
        "Same broker, same Valkey, same generated Datagen-shaped records (orders, inventory movements,",
        "products). Each worker is its own process: ours is `python -m devkit.esm` (the template's",
        "mappings, batching window 0, three pollers, into IngestFunction in-process), the peer",
        "`python -m harness.sink_peer` (one consumer of the three topics).",
        "",
        *rows,
        "",
        "What the peer can and cannot do, so the comparison stays fair:",
        "",
        "- Documents (`orders:<id>`, `products:<sku>`) are `SET` as produced, like a Redis sink",
        "  writing the record value under its key. A replay writes the same values again in",
        "  partition order, so documents converge after a crash.",
        "- Stock is a sorted set changed by deltas (`ZINCRBY` for shipments and purchases, `ZADD` for",
        "  a stock take). No Redis sink connector offers `ZINCRBY`; the closest they offer is a stream",
        "  entry (`XADD`) or a `SET` of the last event per key, neither of which is the stock count.",
        "  The peer sends the same commands as ours so that the results compare; what a crash",
        "  between its write and its commit replays is applied again: stock counted twice.",
        "- Ours checks every mutation against its partition's applied offset in the same Lua call",
        "  (exactly once), so a replay after a kill skips what was applied.",
        "- The peer does less per record (no offset check, no dead-lettering, no key-rule metric,",
        "  no Lambda payload), which its throughput shows. The local mapping also builds Lambda's",
        "  JSON payload in the same Python process, work Lambda's pollers do elsewhere, and the",
        "  function writes its EMF metrics for each invocation to the worker's log, as in Lambda.",
        "- Freshness polls `GET orders:<id>` on Redis itself (not the API), the same way for both.",
        "- A kill lands at a random moment (up to 0.2 s after Redis holds evenly spaced fractions",
        "  of the stream's new orders). The peer committing after each batch double-counts only what a kill",
        "  catches between its write and its commit, so its count varies from run to run; the",
        "  periodic one replays everything since its last commit. Ours must show 0 every time.",
        "",
        SECTION_END,
    ]
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
    parser.add_argument("--records", type=int, default=50_000, help="records for the throughput run")
    parser.add_argument("--kill-records", type=int, default=30_000, help="records for the kill test")
    parser.add_argument("--kill-rate", type=float, default=1000, help="records/s produced during the kill test")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--probes", type=int, default=200)
    default_broker = "apache" if brokers.available("apache") is None else "embedded"
    parser.add_argument("--broker", choices=brokers.BROKER_KINDS, default=default_broker)
    parser.add_argument("--no-maven", action="store_true", help="do not ask Maven for the connectors")
    parser.add_argument("--output", help="write the section into this document (e.g. docs/performance.md)")
    parser.add_argument("--command", default="python -m harness.bench_connect", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    maven = [] if args.no_maven else probe_connectors()
    load_before = os.getloadavg()[0]
    broker = brokers.start_broker(args.broker)
    valkey = servers.start_server()
    logs = Path(tempfile.mkdtemp(prefix="cachesync-bench-connect-"))
    stack = Stack(broker.bootstrap, valkey.url, args.broker)
    paths: dict[str, dict[str, Any]] = {}
    try:
        for path in PATHS:
            print(f"{path}: throughput, freshness, kill test...", file=sys.stderr, flush=True)
            paths[path] = {
                "throughput": throughput(path, stack, args.records, logs),
                "freshness": freshness(path, stack, args.probes, logs),
                "kill": kill_test(path, stack, args.kill_records, args.kills, logs, args.kill_rate),
            }
        print("peer-periodic: kill test...", file=sys.stderr, flush=True)
        paths["peer-periodic"] = {
            "kill": kill_test("peer-periodic", stack, args.kill_records, args.kills, logs, args.kill_rate)
        }
    finally:
        broker.remove()
        valkey.remove()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "broker": {"apache": "Apache Kafka 4.4 (KRaft)", "embedded": "embedded (noida-db)"}[args.broker],
        "commit": commit.stdout.strip(),
        "load": f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "maven": maven,
        "paths": paths,
    }
    print(json.dumps(result, indent=2))
    if args.output:
        target = Path(args.output)
        existing = target.read_text() if target.exists() else ""
        target.write_text(with_section(existing, section(result, args.command)))
        print(f"wrote {args.output}; worker logs in {logs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
