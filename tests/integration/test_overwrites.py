"""Property: document writes (a SET or DEL per record, guarded per partition rather than by a
script per slot) never show a reader an older value after a newer one: not across replays,
overlaps and retries, and not while a retry runs after an attempt that failed mid-way
(after any subset of its writes, in any order), whether the retry is shorter or longer."""

from __future__ import annotations

import base64
import random
import time
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync import writer as writer_module
from cachesync.connection import RedisClient
from cachesync.deadletter import RedisStreamSink
from cachesync.ingest import Ingestor
from cachesync.writer import BatchWriter, PartitionBusy
from devkit.generator import RawRecord, kafka_record, partition_for
from harness.model import model_state, redis_state

PARTITIONS = 2
Log = dict[tuple[str, int], list[dict[str, Any]]]


def orders_log(rng: random.Random, size: int) -> Log:
    """Few order ids, so values and tombstones of one key follow each other; every value unique."""
    log: Log = {}
    for n in range(size):
        order_id = rng.randint(1, 4)
        key = str(order_id).encode()
        value = None if rng.random() < 0.25 else orjson.dumps({"orderid": order_id, "n": n})
        partition = partition_for(key, PARTITIONS, n)
        records = log.setdefault(("orders", partition), [])
        raw = RawRecord("orders", key, value)
        records.append(kafka_record("orders", partition, len(records), raw, 1_700_000_000_000 + n))
    return log


class Reader:
    """Reads a key after every single write and checks it never goes back in its partition's order."""

    def __init__(self, log: Log):
        self.offsets: dict[bytes, int] = {}  # value -> its offset (values are unique)
        self.tombstones: dict[str, list[int]] = {}  # key -> offsets of its tombstones
        for records in log.values():
            for record in records:
                key = "orders:" + _b64(record["key"]).decode()
                if record["value"] is None:
                    self.tombstones.setdefault(key, []).append(record["offset"])
                else:
                    self.offsets[_b64(record["value"])] = record["offset"]
        self.floor: dict[str, int] = {}  # key -> the newest offset a reader has seen it reflect

    def observe(self, key: str, value: bytes | None) -> None:
        seen = self.floor.get(key, -1)
        if value is None:
            if seen in self.tombstones.get(key, []):
                return  # still deleted
            # the absence is explained by a tombstone after what was seen (the earliest such)
            later = [t for t in self.tombstones.get(key, []) if t > seen]
            if seen >= 0:
                assert later, f"{key} disappeared after offset {seen} with no tombstone after it"
                self.floor[key] = min(later)
            return
        offset = self.offsets[value]
        assert offset >= seen, f"{key} went back from offset {seen} to {offset}"
        self.floor[key] = offset


class WatchedWriter(BatchWriter):
    """Writes the overwrites one at a time, in a shuffled order (nodes answer in any order),
    a reader looking after each; with `cut`, the connection drops after that many writes."""

    def __init__(self, reader: Reader, rng: random.Random, cut: int | None, *args: Any):
        super().__init__(*args)
        self.reader, self.rng, self.cut = reader, rng, cut

    def _write_once(self, client: Any, commands: list[tuple[Any, ...]]) -> None:
        order = list(commands)
        self.rng.shuffle(order)
        for done, command in enumerate(order):
            if self.cut is not None and done == self.cut:
                break
            client.execute_command(*command)
            self.reader.observe(command[1], client.get(command[1]))
        if self.cut is not None:  # mid-way, or after the last write with its reply lost
            raise redis.exceptions.ConnectionError("INJECTED: the connection dropped mid-batch")


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _ingestor(target: Any, client: RedisClient, writer: BatchWriter) -> Ingestor:
    config = target.settings()
    return Ingestor(config, writer, RedisStreamSink(client, config.dlq_stream_key, config.dlq_stream_maxlen))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), size=st.integers(1, 40), data=st.data())
def test_readers_never_see_an_older_document_even_during_a_retry(
    target: Any, seed: int, size: int, data: st.DataObject
) -> None:
    target.flush()
    rng = random.Random(seed)
    log = orders_log(rng, size)
    reader = Reader(log)
    client = target.client()
    committed = dict.fromkeys(log, 0)  # what the consumer group has committed: where a delivery may start
    for _ in range(data.draw(st.integers(1, 6))):
        records: dict[str, list[dict[str, Any]]] = {}
        ends: dict[tuple[str, int], int] = {}
        for tp in data.draw(st.permutations(list(log))):
            start = data.draw(st.integers(0, committed[tp]))  # a replay, an overlap, or the next records
            end = data.draw(st.integers(start, len(log[tp])))  # shorter or longer than the attempt before
            if end > start:
                records[f"{tp[0]}-{tp[1]}"] = log[tp][start:end]
                ends[tp] = end
        batch = {"eventSource": "SelfManagedKafka", "records": records}
        cut = data.draw(st.none() | st.integers(0, 8))
        ingest = _ingestor(target, client, WatchedWriter(reader, rng, cut, client, 1000))
        try:
            ingest.process(batch)
        except redis.exceptions.ConnectionError as error:
            assert "INJECTED" in str(error)
            continue  # not committed: Lambda delivers these records again
        for tp, end in ends.items():
            committed[tp] = max(committed[tp], end)
    tail = {f"{tp[0]}-{tp[1]}": log[tp][committed[tp] :] for tp in log if committed[tp] < len(log[tp])}
    _ingestor(target, client, WatchedWriter(reader, rng, None, client, 1000)).process(
        {"eventSource": "SelfManagedKafka", "records": tail}
    )
    every_record = [record for records in log.values() for record in records]
    assert redis_state(client) == model_state(target.settings(), every_record)
    for key in list(reader.floor):
        reader.observe(key, client.get(key))


def test_a_shorter_retry_leaves_a_newer_value_alone(valkey: Any) -> None:
    """The attempt wrote the key's last value of records 0-3 and failed; the retry delivers
    records 0-1 only: it must not write record 1's older value over record 3's."""
    valkey.flush()
    client = valkey.client()
    key = b"7"
    values = [orjson.dumps({"orderid": 7, "n": n}) for n in range(4)]
    records = [
        kafka_record("orders", 0, n, RawRecord("orders", key, v), 1_700_000_000_000 + n) for n, v in enumerate(values)
    ]
    log: Log = {("orders", 0): records}
    reader = Reader(log)
    failing = _ingestor(valkey, client, WatchedWriter(reader, random.Random(0), 1, client, 1000))
    with pytest.raises(redis.exceptions.ConnectionError):
        failing.process({"eventSource": "SelfManagedKafka", "records": {"orders-0": records[:3]}})
    failing = _ingestor(valkey, client, WatchedWriter(reader, random.Random(0), 0, client, 1000))
    with pytest.raises(redis.exceptions.ConnectionError):  # the next attempt is longer and writes nothing
        failing.process({"eventSource": "SelfManagedKafka", "records": {"orders-0": records}})
    assert client.get("orders:7") == values[2]
    shorter = _ingestor(valkey, client, WatchedWriter(reader, random.Random(0), None, client, 1000))
    outcome = shorter.process({"eventSource": "SelfManagedKafka", "records": {"orders-0": records[:2]}})
    assert outcome.applied == 2
    assert client.get("orders:7") == values[2]  # not values[1]
    final = _ingestor(valkey, client, WatchedWriter(reader, random.Random(0), None, client, 1000))
    final.process({"eventSource": "SelfManagedKafka", "records": {"orders-0": records}})
    assert client.get("orders:7") == values[3]


def _one_partition(values: list[tuple[int, int | None]]) -> list[dict[str, Any]]:
    """Records of orders partition 0, each (order id, n) a unique value, or (order id, None) a tombstone."""
    return [
        kafka_record(
            "orders",
            0,
            offset,
            RawRecord("orders", str(order).encode(), None if n is None else orjson.dumps({"orderid": order, "n": n})),
            1_700_000_000_000 + offset,
        )
        for offset, (order, n) in enumerate(values)
    ]


def _event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eventSource": "SelfManagedKafka", "records": {"orders-0": records}}


class PausedWriter(WatchedWriter):
    """Runs `meanwhile` once its intent and lease are registered, before its first write lands."""

    def __init__(self, meanwhile: Any, *args: Any):
        super().__init__(*args)
        self.meanwhile = meanwhile

    def _write_once(self, client: Any, commands: list[tuple[Any, ...]]) -> None:
        self.meanwhile()
        super()._write_once(client, commands)


def test_an_overlapping_invocation_waits_for_the_lease_and_never_leaves_an_older_value(target: Any) -> None:
    """A rebalance: invocation A applies offsets 0-2 (order 1 at 1) while B, the new owner,
    starts at the last commit with 0-4 (order 1 at 3). B finds A's lease live: it writes
    nothing and fails, to be retried; A completes; B's retry leaves order 1 at offset 3."""
    target.flush()
    client = target.client()
    records = _one_partition([(2, 0), (1, 1), (2, 2), (1, 3), (2, None)])
    reader = Reader({("orders", 0): records})
    rng = random.Random(0)
    refusals: list[str] = []

    def b_runs_while_a_holds_the_lease() -> None:
        before = redis_state(client)
        b = _ingestor(target, client, WatchedWriter(reader, rng, None, client, 1000))
        with pytest.raises(PartitionBusy) as busy:
            b.process(_event(records))
        refusals.append(str(busy.value))
        assert redis_state(client) == before  # B wrote nothing

    a = _ingestor(target, client, PausedWriter(b_runs_while_a_holds_the_lease, reader, rng, None, client, 1000))
    assert a.process(_event(records[:3])).applied == 3
    assert refusals and refusals[0].startswith("PartitionBusy: orders/0 is being applied by another invocation until")
    assert client.get("orders:1") == orjson.dumps({"orderid": 1, "n": 1})
    retried = _ingestor(target, client, WatchedWriter(reader, rng, None, client, 1000)).process(_event(records))
    assert (retried.applied, retried.duplicates) == (2, 3)
    assert client.get("orders:1") == orjson.dumps({"orderid": 1, "n": 3})
    assert redis_state(client) == model_state(target.settings(), records)
    assert client.xlen(target.settings().dlq_stream_key) == 0  # retried, never dead-lettered
    for key in ("orders:1", "orders:2"):
        reader.observe(key, client.get(key))


def test_a_failed_attempt_ends_its_lease_so_the_retry_proceeds_at_once(target: Any) -> None:
    target.flush()
    client = target.client()
    records = _one_partition([(1, 0), (2, 1), (1, 2), (3, 3)])
    reader = Reader({("orders", 0): records})
    failing = _ingestor(target, client, WatchedWriter(reader, random.Random(1), 1, client, 1000))
    with pytest.raises(redis.exceptions.ConnectionError):
        failing.process(_event(records))
    lease = client.hget("cachesync:offsets", "lease:orders/0")
    assert lease is not None and lease.endswith(b" 0")  # ended, its intent kept
    assert client.hget("cachesync:offsets", "intent:orders/0")
    retry = _ingestor(target, client, WatchedWriter(reader, random.Random(2), None, client, 1000))
    assert retry.process(_event(records)).applied == 4  # the default lease, yet no wait
    assert redis_state(client) == model_state(target.settings(), records)


def test_a_crashed_attempts_lease_runs_out_and_its_intent_is_honoured(
    target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt wrote order 1's value of offset 3 and died without ending its lease:
    a retry is refused until the deadline, then a shorter one leaves that value alone."""
    target.flush()
    client = target.client()
    records = _one_partition([(1, 0), (1, 1), (1, 2), (1, 3)])
    reader = Reader({("orders", 0): records})
    lease = 2.0
    with monkeypatch.context() as crash:
        crash.setattr(writer_module, "_release", lambda *_: None)  # the process is gone
        crashed = _ingestor(target, client, WatchedWriter(reader, random.Random(0), 1, client, 1000, 3, lease))
        with pytest.raises(redis.exceptions.ConnectionError):
            crashed.process(_event(records))
    assert client.get("orders:1") == orjson.dumps({"orderid": 1, "n": 3})
    shorter = _ingestor(target, client, WatchedWriter(reader, random.Random(0), None, client, 1000, 3, lease))
    with pytest.raises(PartitionBusy):
        shorter.process(_event(records[:2]))
    deadline = int(client.hget("cachesync:offsets", "lease:orders/0").split()[1])
    while _server_ms(client) <= deadline:
        time.sleep(0.05)
    assert shorter.process(_event(records[:2])).applied == 2
    assert client.get("orders:1") == orjson.dumps({"orderid": 1, "n": 3})  # not offset 1's value
    shorter.process(_event(records))
    assert redis_state(client) == model_state(target.settings(), records)
    reader.observe("orders:1", client.get("orders:1"))


def _server_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000
