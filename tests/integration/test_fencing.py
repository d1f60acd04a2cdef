"""Property: whatever reaches Redis late, twice, or never, the cache ends as if every record were
applied once in partition order, and a reader never sees a document go back.

Attempts of a batch (replays, overlaps after a rebalance, retries with other boundaries) send
their fenced calls; some calls are held, as by a network that delivers a closed connection's
bytes later, and their attempt fails as its client gives up. Held calls land at any later time,
in any order, after newer batches. Lambda's one rule stays: a partition's next batch starts
from the offset the last successful attempt reached (the consumer group's commit)."""

from __future__ import annotations

import base64
import random
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync import keys
from cachesync.connection import RedisClient
from cachesync.deadletter import RedisStreamSink
from cachesync.ingest import Ingestor
from cachesync.plan import Call
from cachesync.transport import FENCE_SCRIPT, Batch, Transport
from cachesync.writer import BatchWriter
from devkit.generator import RawRecord, kafka_record, partition_for
from harness.model import model_state, redis_state

PARTITIONS = 2
Log = dict[tuple[str, int], list[dict[str, Any]]]


def mixed_log(rng: random.Random, size: int) -> Log:
    """Few order ids and one store, so one key's values, tombstones and deltas follow each other;
    every order value unique."""
    log: Log = {}
    for n in range(size):
        if rng.random() < 0.6:
            order_id = rng.randint(1, 4)
            key = str(order_id).encode()
            value = None if rng.random() < 0.25 else orjson.dumps({"orderid": order_id, "n": n})
            raw = RawRecord("orders", key, value)
        else:
            sku = f"000000000{rng.randint(1, 3)}"
            kind = rng.choice(["shipment", "purchase", "count"])
            raw = RawRecord(
                "inventory",
                f"store1:{sku}".encode(),
                orjson.dumps({"type": kind, "store": "store1", "sku": sku, "units": rng.randint(1, 9)}),
            )
        partition = partition_for(raw.key or b"", PARTITIONS, n)
        records = log.setdefault((raw.topic, partition), [])
        records.append(kafka_record(raw.topic, partition, len(records), raw, 1_700_000_000_000 + n))
    return log


class Reader:
    """Reads document keys after every delivery and checks none goes back in its partition's order."""

    def __init__(self, log: Log):
        self.offsets: dict[bytes, int] = {}  # value -> its offset (values are unique)
        self.tombstones: dict[str, list[int]] = {}  # key -> offsets of its tombstones
        for (topic, _), records in log.items():
            for record in records:
                if topic != "orders":
                    continue
                key = "orders:" + base64.b64decode(record["key"]).decode()
                if record["value"] is None:
                    self.tombstones.setdefault(key, []).append(record["offset"])
                else:
                    self.offsets[base64.b64decode(record["value"])] = record["offset"]
        self.floor: dict[str, int] = {}  # key -> the newest offset a reader has seen it reflect

    def observe_all(self, client: RedisClient) -> None:
        for key in {*self.tombstones, *(f"orders:{orjson.loads(v)['orderid']}" for v in self.offsets)}:
            self.observe(key, client.get(key))

    def observe(self, key: str, value: bytes | None) -> None:
        seen = self.floor.get(key, -1)
        if value is None:
            if seen in self.tombstones.get(key, []):
                return  # still deleted
            later = [t for t in self.tombstones.get(key, []) if t > seen]
            if seen >= 0:
                assert later, f"{key} disappeared after offset {seen} with no tombstone after it"
                self.floor[key] = min(later)
            return
        offset = self.offsets[value]
        assert offset >= seen, f"{key} went back from offset {seen} to {offset}"
        self.floor[key] = offset


class HoldingTransport(Transport):
    """Holds the calls from the one `hold` picks on: they stay in `late` (a stalled connection holds
    everything written after its stall), and the attempt fails as a client whose reply never came."""

    def __init__(self, late: list[Call], hold: Any, *args: Any):
        super().__init__(*args)
        self.late, self.hold = late, hold
        self.holding = False

    def start(self, deadline: float) -> Batch:
        self.holding = False
        return super().start(deadline)

    def submit(self, batch: Batch, calls: list[Call]) -> list[int]:
        if self.holding:  # everything after the stall
            self.late.extend(calls)
            return []
        cut = next((i for i in range(len(calls)) if self.hold()), len(calls))
        read = super().submit(batch, calls[:cut]) if cut else []
        if cut < len(calls):
            self.holding = True
            self.late.extend(calls[cut:])
        return read

    def finish(self, batch: Batch) -> list[Any]:
        replies = super().finish(batch)
        if self.holding:
            raise redis.exceptions.TimeoutError("INJECTED: no reply before the socket timeout")
        return replies


def deliver(client: RedisClient, call: Call) -> None:
    """A held call's bytes reach Redis: it runs; nobody reads its reply."""
    try:
        client.execute_command("EVAL", FENCE_SCRIPT, *call.args())
    except redis.exceptions.ResponseError as error:
        assert "CACHESYNC_GAP" in str(error), error  # an earlier call of its attempt never ran


def ingestor(target: Any, client: RedisClient, transport: Transport) -> Ingestor:
    config = target.settings()
    # small calls and chunks: keys' steps span calls, and a batch is planned and sent in several chunks
    writer = BatchWriter(client, 3, transport=transport, chunk_records=5)
    return Ingestor(config, writer, RedisStreamSink(client, config.dlq_stream_key, config.dlq_stream_maxlen))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), size=st.integers(1, 40), data=st.data())
def test_late_repeated_and_overlapping_writes_never_move_a_key_back(
    target: Any, seed: int, size: int, data: st.DataObject
) -> None:
    target.flush()
    rng = random.Random(seed)
    log = mixed_log(rng, size)
    reader = Reader(log)
    client = target.client()
    late: list[Call] = []
    hold_rate = data.draw(st.sampled_from([0.0, 0.2, 0.5]))
    transport = HoldingTransport(late, lambda: rng.random() < hold_rate, client)
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
        try:
            ingestor(target, client, transport).process({"eventSource": "SelfManagedKafka", "records": records})
        except redis.exceptions.TimeoutError as error:
            assert "INJECTED" in str(error)
        else:
            for tp, end in ends.items():
                committed[tp] = max(committed[tp], end)
        reader.observe_all(client)
        for call in data.draw(st.permutations(late))[: data.draw(st.integers(0, len(late)))]:
            late.remove(call)
            deliver(client, call)  # late, after newer batches, in any order
            reader.observe_all(client)
    tail = {f"{tp[0]}-{tp[1]}": log[tp][committed[tp] :] for tp in log if committed[tp] < len(log[tp])}
    ingestor(target, client, Transport(client)).process({"eventSource": "SelfManagedKafka", "records": tail})
    for call in late:  # whatever was still on the wire
        deliver(client, call)
        reader.observe_all(client)
    every_record = [record for records in log.values() for record in records]
    assert redis_state(client) == model_state(target.settings(), every_record)


@pytest.mark.parametrize("code", ["Q", "q"])
def test_a_plan_the_script_cannot_read_stops_the_call_keeping_what_it_wrote(valkey: Any, code: str) -> None:
    """An op code the script does not know stops the call with CACHESYNC_PLAN, in lower case too
    (which says a TTL follows, here none that is a number): the document before it is written with
    its position, the rest is not."""
    valkey.flush()
    client = valkey.client()
    hash_name = keys.STANDALONE_POSITIONS_KEY
    first, second = "orders:1", "orders:2"
    with pytest.raises(redis.exceptions.ResponseError, match="CACHESYNC_PLAN unknown mutation code"):
        client.execute_command(
            "EVAL", FENCE_SCRIPT, 3, hash_name, first, second,
            0, keys.position_field(first, 0), keys.position_field(second, 0),
            "S", 5, b'{"orderid":1}',
            code, 6, b'{"orderid":2}',
        )  # fmt: skip
    assert client.get(first) == b'{"orderid":1}'
    assert client.hget(hash_name, keys.position_field(first, 0)) == b"5"
    assert client.exists(second) == 0
    assert client.hget(hash_name, keys.position_field(second, 0)) is None


def test_a_call_that_applied_everything_answers_a_number_and_a_replay_the_positions(valkey: Any) -> None:
    """The usual call answers 0 (the server builds no table for it); a replay of it answers each
    entry with the position that made it skip, and an overwrite of several records is answered
    too, so the writer can count those at or below the position as repeats."""
    valkey.flush()
    client = valkey.client()
    hash_name = keys.STANDALONE_POSITIONS_KEY
    args = (
        3, hash_name, "orders:1", "orders:2",
        0, keys.position_field("orders:1", 0), keys.position_field("orders:2", 0),
        "S", 5, b'{"orderid":1}', "S", 6, b'{"orderid":2}',
    )  # fmt: skip
    assert client.execute_command("EVAL", FENCE_SCRIPT, *args) == 0
    assert client.execute_command("EVAL", FENCE_SCRIPT, *args) == [[1, 5, 2, 6], []]
    collapsed = (2, hash_name, "orders:1", 1, 1, -1, keys.position_field("orders:1", 0), "S", 9, b'{"orderid":1}')
    assert client.execute_command("EVAL", FENCE_SCRIPT, *collapsed) == [[1, 5], []]
    assert client.get("orders:1") == b'{"orderid":1}'
    assert client.hget(hash_name, keys.position_field("orders:1", 0)) == b"9"
