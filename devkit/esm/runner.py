"""Runs a template's Kafka mappings against a broker, each invoking its function in-process."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import json
import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from devkit.esm.kafka import MappingError, client_settings, credentials
from devkit.esm.mapping import read_mappings, read_queue_subscriptions
from devkit.esm.poller import DEFAULT_CONCURRENCY, LocalEventSourceMapping
from devkit.sam import TEMPLATE, Handler, LocalContext, LocalFunction, describe, load_handler

log = logging.getLogger("cachesync.esm")

# Collector passes for a process that runs mappings: the first after this many new objects
# (Python's default is 700), a full pass every few million. A poller holds thousands of fetched
# records at a time, and each pass of the default thresholds went through them again.
COLLECTOR_THRESHOLDS = (20_000, 20, 20)


def tune_collector() -> None:
    """For the tools' own processes (make esm, make rebuild), once they have started: what they
    loaded so far stays out of the collector's passes (as IngestFunction's module does with its
    own), and the passes come less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


class InProcessFunction:
    """A template function invoked in-process, one execution environment per concurrent invocation.

    Lambda runs concurrent invocations in separate execution environments, each with the
    handler module's globals of its own (IngestFunction's ingestor and writer). Here an
    environment is a copy of the handler module, loaded when every existing one is busy (a
    cold start) and reused once its invocation returns. What the copies share in this process
    is thread-safe: the layer's Redis client (redis-py clients share a connection pool between
    threads) and its settings; Powertools' Metrics, which keep their store in class attributes,
    get a store per environment.

    `around_handler(call, event)` wraps each call of the handler (`call()` runs it): tests use
    it for a slow handler, or one that fails after its writes. A `handler` given instead of
    the template's is shared by every invocation and must be thread-safe itself.
    """

    def __init__(
        self,
        function: LocalFunction,
        handler: Handler | None = None,
        around_handler: Callable[[Callable[[], Any], dict[str, Any]], Any] | None = None,
    ):
        self.function = function
        self._shared = handler
        self._around = around_handler
        self._idle: list[_Environment] = []
        self._lock = threading.Lock()
        self.environments = 0  # loaded so far: the cold starts

    @property
    def timeout_s(self) -> float:
        return float(self.function.timeout_s)

    def __call__(self, event: dict[str, Any]) -> Any:
        environment = self._acquire()
        try:

            def call() -> Any:
                return environment.handler(event, LocalContext(self.function))

            return self._around(call, event) if self._around is not None else call()
        finally:
            environment.after_call()
            with self._lock:
                self._idle.append(environment)

    def _acquire(self) -> _Environment:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.environments += 1
        if self._shared is not None:
            return _Environment(self._shared, [])
        return _Environment.load(self.function)


class _Environment:
    """One execution environment: a copy of the handler module and its Metrics."""

    _loading = threading.Lock()  # sys.path and Powertools' class attributes change while loading

    def __init__(self, handler: Handler, metrics: list[Any]):
        self.handler = handler
        self._metrics = metrics

    @classmethod
    def load(cls, function: LocalFunction) -> _Environment:
        with cls._loading:
            try:
                from aws_lambda_powertools.metrics.metrics import Metrics
            except ImportError:  # a handler without Powertools
                return cls(load_handler(function), [])
            stores = ("_metrics", "_dimensions", "_metadata", "_default_dimensions")
            shared = {name: getattr(Metrics, name) for name in stores}
            try:
                for name in stores:  # instances made while the module loads bind these
                    setattr(Metrics, name, {})
                handler = load_handler(function)
            finally:
                for name, store in shared.items():
                    setattr(Metrics, name, store)
        module_globals = inspect.unwrap(handler).__globals__
        return cls(handler, [value for value in module_globals.values() if isinstance(value, Metrics)])

    def after_call(self) -> None:
        if not self._metrics:
            return
        from aws_lambda_powertools.metrics.functions import is_metrics_disabled

        if is_metrics_disabled():  # disabled metrics still pile up and print every 100 values: drop them
            for metrics in self._metrics:
                metrics.clear_metrics()


class LocalMappings:
    """Every Kafka mapping of a template (or the chosen ones), polling until stopped."""

    def __init__(
        self,
        bootstrap: str | None = None,
        parameters: Mapping[str, str] | None = None,
        template: Path = TEMPLATE,
        only: tuple[str, ...] = (),
        functions: Mapping[str, InProcessFunction] | None = None,
        use_secret: bool = False,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        failure_dir: Path = Path(".local/esm-failures"),
        backoff: tuple[float, float] = (0.1, 5.0),
        on_failure_subscriber: Callable[[dict[str, Any]], None] | None = None,
        pollers: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        function_timeout: float | None = None,
        around_handler: Callable[[Callable[[], Any], dict[str, Any]], Any] | None = None,
        hold: threading.Event | None = None,
    ):
        """`pollers` (default: one, MinimumPollers in provisioned mode), `concurrency` (lanes per
        poller) and `function_timeout` (default: the function's Timeout) set how the mappings run;
        `around_handler` wraps each handler call of the functions made here (InProcessFunction);
        with `hold`, the mappings poll but invoke nothing until it is set."""
        configs = read_mappings(parameters, template)
        if only:
            unknown = sorted(set(only) - {c.logical_id for c in configs})
            if unknown:
                names = ", ".join(c.logical_id for c in configs) or "none"
                raise MappingError(f"no Kafka mapping {', '.join(unknown)} in {template.name}; mappings: {names}")
            configs = [c for c in configs if c.logical_id in only]
        configs = [c for c in configs if c.enabled]
        if bootstrap:
            configs = [c.with_bootstrap(bootstrap) for c in configs]
        if overrides:  # e.g. a batching window or starting position to try locally
            configs = [replace(c, **overrides) for c in configs]
        self.configs = configs
        functions = dict(functions or {})
        for config in configs:
            if config.function not in functions:
                described = describe(config.function, parameters, template)
                functions[config.function] = InProcessFunction(described, around_handler=around_handler)
        self.functions = functions
        subscriptions = read_queue_subscriptions(parameters, template)
        subscribers = {}
        for config in configs:
            subscriber = subscriptions.get(config.on_failure or "")
            if subscriber is not None and on_failure_subscriber is None:
                if subscriber not in functions:
                    functions[subscriber] = InProcessFunction(describe(subscriber, parameters, template))
                subscribers[config.logical_id] = _sqs_delivery(functions[subscriber])
        self.pollers = [
            LocalEventSourceMapping(
                config,
                functions[config.function],
                client_settings(config, credentials(config, env, use_secret), env),
                failure_dir=failure_dir,
                backoff=backoff,
                on_failure_subscriber=on_failure_subscriber or subscribers.get(config.logical_id),
                pollers=pollers,
                concurrency=concurrency,
                timeout=function_timeout if function_timeout is not None else functions[config.function].timeout_s,
                hold=hold,
            )
            for config in configs
        ]

    def start(self, check_timeout: float = 5.0) -> LocalMappings:
        for poller in self.pollers:
            poller.check(check_timeout)  # a clear error now rather than a silent poller later
        for poller in self.pollers:
            poller.start()
        return self

    def stop(self) -> None:
        for poller in self.pollers:  # all at once: each lets its invocations in flight finish
            poller.request_stop()
        for poller in self.pollers:
            with contextlib.suppress(Exception):
                poller.stop()

    def rebalance(self) -> None:
        """A consumer-group rebalance of every mapping now (SIGUSR1 to `make esm` does this)."""
        for poller in self.pollers:
            poller.rebalance()

    def wait_idle(self, timeout: float) -> bool:
        """Until no invocation runs, those abandoned after a timeout or a rebalance included."""
        deadline = time.monotonic() + timeout
        return all(p.wait_idle(max(0.0, deadline - time.monotonic())) for p in self.pollers)

    def apply_environment(self, overrides: Mapping[str, str] | None = None) -> None:
        """Every function's template environment, then `overrides`, in this process; settings the
        layer read once are read again."""
        for function in self.functions.values():
            os.environ.update(function.function.environment)
        os.environ.update(overrides or {})
        config = sys.modules.get("cachesync.config")
        if config is not None:
            config.settings.cache_clear()  # type: ignore[attr-defined]

    def committed(self) -> dict[str, int]:
        """topic-partition -> the next offset each poller has committed."""
        merged: dict[str, int] = {}
        for poller in self.pollers:
            merged |= poller.stats.committed
        return merged

    def caught_up(self, last_offsets: Mapping[tuple[str, int], int]) -> bool:
        """Committed past each (topic, partition)'s `last_offsets` (a producer's last written offsets)."""
        committed = self.committed()
        return all(committed.get(f"{t}-{p}", 0) > offset for (t, p), offset in last_offsets.items())

    def failed(self) -> list[tuple[str, BaseException]]:
        return [(p.config.logical_id, p.error) for p in self.pollers if p.error is not None]

    def describe(self) -> str:
        lines = []
        for p in self.pollers:
            c = p.config
            lines.append(
                f"  {c.logical_id}: {','.join(c.topics)} -> {c.function}  group {c.consumer_group}, "
                f"{c.starting_position}, batch {c.batch_size}, window {c.window_seconds:g} s, "
                f"{p.poller_count} poller{'s' if p.poller_count > 1 else ''} of up to {p.concurrency} partitions "
                f"at once, timeout {'none' if p.timeout is None else format(p.timeout, 'g') + ' s'}"
                + (f", retries {c.retry_limit}, on failure {p.destinations.describe()}" if c.provisioned else "")
            )
        return "\n".join(lines)


def _sqs_delivery(function: InProcessFunction) -> Callable[[dict[str, Any]], None]:
    """What the template's SQS event source hands the queue's function, one message each; like SQS,
    a message the function fails on is delivered again (every second) until it succeeds."""
    waiting: queue.Queue[dict[str, Any]] = queue.Queue()

    def deliver_forever() -> None:
        while True:
            message = waiting.get()
            while True:
                try:
                    function({"Records": [message]})
                    break
                except Exception as error:
                    log.warning(
                        "%s failed on an SQS message; it is delivered again: %r", function.function.logical_id, error
                    )
                    time.sleep(1.0)
                    attributes = message["attributes"]
                    attributes["ApproximateReceiveCount"] = str(int(attributes["ApproximateReceiveCount"]) + 1)

    threading.Thread(target=deliver_forever, name="sqs-" + function.function.logical_id, daemon=True).start()

    def send(document: dict[str, Any]) -> None:
        body = json.dumps(document)
        waiting.put(
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "local",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000))},
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:local",
                "awsRegion": "us-east-1",
            }
        )

    return send
