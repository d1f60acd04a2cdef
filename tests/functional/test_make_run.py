"""`make run` as the README documents it, run as a developer runs it: each way to start it serves what
it should and touches only what it should, and whatever stops it, it leaves no server behind."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from cachesync import config
from devkit import children
from devkit.datagen import LOW_STOCK_SKUS
from tests.functional.runkit import StackRun, fetch, fetch_json, gone, wait_for

# the seed as the README describes it: a document for each of 200 products, a stock take of every
# product in store1 to store5, 2,000 orders, 2,000 stock movements, a dozen products left below 10
SEED_EVENTS = 200 + 5 * 200 + 2000 + 2000 + 12
CHEAP = "ARGS=--rate 0 --orders 20 --movements 20"  # a stack that starts fast, for the tests of how it stops
ORDER_18 = (
    b'{"ordertime":1497014222380,"orderid":18,"itemid":"Item_184",'
    b'"address":{"city":"Mountain View","state":"CA","zipcode":94041}}'
)


def end_offsets(bootstrap: str) -> dict[str, int]:
    """Each topic's records: the sum of its partitions' end offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "make-run-test-probe", "log_level": 0})
    try:
        topics = consumer.list_topics(timeout=30).topics
        return {
            name: sum(consumer.get_watermark_offsets(TopicPartition(name, p), timeout=30)[1] for p in topic.partitions)
            for name, topic in topics.items()
            if not name.startswith("__")
        }
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 0})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(60) == 0
    producer.close()


@pytest.fixture
def runs(tmp_path: Path) -> Any:
    """Starts `make run`s; kills whatever is left of them at the end."""
    started: list[StackRun] = []

    def start(*make_arguments: str, env: dict[str, str] | None = None, name: str = "run") -> StackRun:
        run = StackRun.start(tmp_path / f"{name}-{len(started)}", ("make", "-s", "run", *make_arguments), env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


def test_make_run_serves_seed_and_stream_on_its_port_and_ctrl_c_stops_everything(runs: Any) -> None:
    run = runs()  # PORT in the environment, as `PORT=3001 make run`
    banner = run.banner()
    assert f"cachesync read API on {run.url}" in banner and "streaming 20 events/s" in banner
    kinds = sorted(entry.command.split()[0].rsplit("/", 1)[-1] for entry in run.servers())
    assert kinds == ["noida-db", "valkey-server"]  # a private Valkey and a broker of its own
    status, order = fetch_json(f"{run.url}/orders/18", run.staff())
    assert status == 200 and order["orderid"] == 18
    assert fetch(f"{run.url}/orders/18")[0] == 401  # the template's authorizer, as deployed
    status, page = fetch(f"{run.url}/")
    assert status == 200 and b"cachesync shop" in page  # the storefront
    status, low = fetch_json(f"{run.url}/stores/store1/inventory?below=10")
    assert status == 200 and len(low["items"]) == LOW_STOCK_SKUS
    assert all(item["quantity"] < 10 for item in low["items"])
    # the live stream: orders after the 2,000 seeded ones reach the API
    wait_for(lambda: fetch(f"{run.url}/orders/2001", run.staff())[0] == 200, "a streamed order")

    run.signal_group(signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground job
    run.wait_exit()
    run.wait_servers_gone()
    assert "stopped (streamed" in run.stderr
    # the clients stopped before the broker: none of them kept knocking on its closed port
    assert "Connection refused" not in run.stderr, run.stderr[-3000:]
    assert fetch(f"{run.url}/health")[0] == 0  # and the server is gone


def test_make_run_with_redis_url_creates_the_topics_and_writes_only_what_it_consumes(runs: Any, valkey: Any) -> None:
    """REDIS_URL=...: your Redis, a broker of its own with the topics created, nothing generated."""
    mine = redis.Redis.from_url(valkey.url)
    run = runs(env={"REDIS_URL": valkey.url})
    banner = run.banner()
    assert f"(Redis {valkey.url}, producing nothing)" in banner
    assert [e.command.split()[0].rsplit("/", 1)[-1] for e in run.servers()] == ["noida-db"]  # no Valkey
    assert mine.dbsize() == 0  # the mappings run, the API serves, and nothing was written into it
    bootstrap = run.kafka_bootstrap()
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
    assert {name: len(topics[name].partitions) for name in ("orders", "inventory", "products")} == {
        "orders": 6,
        "inventory": 6,
        "products": 6,
    }
    assert end_offsets(bootstrap) == {"orders": 0, "inventory": 0, "products": 0}  # empty: nothing produced
    produce(bootstrap, "orders", b"18", ORDER_18)  # as the banner's kcat line does
    wait_for(lambda: fetch(f"{run.url}/orders/18", run.staff())[0] == 200, "the produced order")
    assert fetch(f"{run.url}/orders/18", run.staff())[1] == ORDER_18
    assert mine.get("orders:18") == ORDER_18
    run.signal_group(signal.SIGINT)
    run.wait_exit()
    run.wait_servers_gone()
    assert mine.ping()  # yours: left running


def test_make_run_with_rate_0_produces_the_seed_and_nothing_after(runs: Any) -> None:
    run = runs("ARGS=--rate 0")
    assert "streaming 0 events/s" in run.banner()
    bootstrap = run.kafka_bootstrap()
    seeded = end_offsets(bootstrap)
    assert sum(seeded.values()) == SEED_EVENTS
    for _ in range(10):  # a second and more of serving, five ticks of a stream that would run
        assert fetch(f"{run.url}/health")[0] == 200
        time.sleep(0.1)
    assert fetch_json(f"{run.url}/orders/2000", run.staff())[0] == 200  # the last seeded order
    assert end_offsets(bootstrap) == seeded
    assert fetch(f"{run.url}/orders/2001", run.staff())[0] == 404  # and no order after it


@pytest.mark.parametrize(("values", "registry"), [("avro", None), ("avro", "JSON"), ("protobuf", None)])
def test_make_run_with_avro_or_protobuf_values_serves_the_decoded_documents(
    runs: Any, values: str, registry: str | None
) -> None:
    """`make run VALUES=avro` (or protobuf, and with REGISTRY=JSON): the seed and the stream in
    Confluent's wire format, through the mappings and IngestFunction to the API as JSON."""
    run = runs(f"VALUES={values}", *([f"REGISTRY={registry}"] if registry else []), "ARGS=--rate 0")
    banner = run.banner()
    assert f"({values} values, Confluent's wire format)" in banner, banner
    assert (f"through the local schema registry ({registry})" in banner) == (registry is not None)
    # the records on the broker really are in the wire format: magic byte 0, then a schema id
    consumer = Consumer(
        {"bootstrap.servers": run.kafka_bootstrap(), "group.id": "wire-probe", "auto.offset.reset": "earliest"}
    )
    consumer.assign([TopicPartition("orders", p, 0) for p in range(6)])
    message = None
    deadline = time.monotonic() + 60
    while message is None and time.monotonic() < deadline:
        polled = consumer.poll(0.5)
        message = polled if polled is not None and polled.error() is None else None
    consumer.close()
    assert message is not None and message.value()[:1] == b"\0" and len(message.value()) > 5  # not JSON
    status, order = fetch_json(f"{run.url}/orders/18", run.staff())
    assert status == 200 and order["orderid"] == 18
    assert set(order) == {"ordertime", "orderid", "itemid", "orderunits", "address"}
    assert set(order["address"]) == {"city", "state", "zipcode"}
    status, low = fetch_json(f"{run.url}/stores/store1/inventory?below=10")
    assert status == 200 and len(low["items"]) == LOW_STOCK_SKUS


def template_readings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The template files the SAM CLI reads from now on, one entry per reading."""
    from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

    readings: list[str] = []
    read = SamLocalStackProvider.get_stacks

    def counted(template_file: str, *args: Any, **kwargs: Any) -> Any:
        readings.append(template_file)
        return read(template_file, *args, **kwargs)

    monkeypatch.setattr(SamLocalStackProvider, "get_stacks", staticmethod(counted))
    return readings


def test_make_run_reads_the_template_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its functions, mappings and gateway share one reading of the template by the SAM CLI."""
    from devkit.localrun import LocalRun

    readings = template_readings(monkeypatch)
    run = LocalRun(port=0, rate=0, orders=5, movements=5).start()
    try:
        assert len(readings) == 1, readings
        assert run.mappings is not None and len(run.mappings.configs) == 3
        assert fetch(f"{run.url}/health")[0] == 200
    finally:
        run.stop()


def test_make_invoke_reads_the_template_once(monkeypatch: pytest.MonkeyPatch, valkey: Any) -> None:
    import devkit.sam
    from devkit.invoke import invoke
    from devkit.sam import ROOT

    readings = template_readings(monkeypatch)
    # `make invoke` is a process of its own: nothing read yet (another test of this process may
    # have read the template with the same parameters, a server's URL on a port used again)
    monkeypatch.setattr(devkit.sam, "_stacks_read", {})
    saved = dict(os.environ)
    config.settings.cache_clear()  # read once per process
    try:
        event = json.loads((ROOT / "events" / "kafka-orders.json").read_text())
        response = invoke("IngestFunction", event, {"REDIS_URL": valkey.url, "REDIS_CLUSTER": "false"})
    finally:
        os.environ.clear()
        os.environ.update(saved)
        config.settings.cache_clear()
    assert response["applied"] == 9 and len(readings) == 1, readings


# --- however it stops, nothing is left --------------------------------------------------


@pytest.mark.parametrize(
    ("whom", "signum"),
    [
        ("make", signal.SIGTERM),  # what `timeout`, systemd or an IDE's stop button send
        ("stack", signal.SIGTERM),
        ("stack", signal.SIGKILL),  # no clean-up of any kind: the kernel stops its servers
        ("group", signal.SIGHUP),  # the terminal closed: to make and to the stack
    ],
)
def test_make_run_leaves_no_server_behind(runs: Any, whom: str, signum: int) -> None:
    run = runs(CHEAP)
    run.banner()
    servers = run.servers()
    assert len(servers) == 2 and all(children.running(entry) for entry in servers)
    stack = run.stack_pid()
    if whom == "make":
        os.kill(run.process.pid, signum)
    elif whom == "stack":
        os.kill(stack, signum)
    else:
        run.signal_group(signum)
        time.sleep(0.3)
        run.signal_group(signum)  # a closing terminal may hang up twice (the kernel, then the shell)
    run.wait_exit()
    wait_for(lambda: gone(stack), "the stack to exit")
    run.wait_servers_gone()
    if signum != signal.SIGKILL:
        assert "stopped (streamed 0 events)" in run.stderr, run.stderr[-3000:]  # the clean way


def test_sigint_stops_make_run_even_when_started_ignoring_it(tmp_path: Path) -> None:
    """A shell starts a background job (`make run &`) with SIGINT ignored: `kill -INT` stops the run all
    the same."""
    command = [sys.executable, "-m", "devkit.localrun", "--rate", "0", "--orders", "20", "--movements", "20"]
    run = StackRun.start(tmp_path, command, ignore_sigint=True)
    try:
        run.banner()
        run.process.send_signal(signal.SIGINT)
        assert run.wait_exit() == 0
        run.wait_servers_gone()
        assert "stopped (streamed 0 events)" in run.stderr
    finally:
        run.kill()
