"""`make esm`: the template's Kafka event source mappings, locally, against a real broker.

    python -m devkit.esm --bootstrap 127.0.0.1:9092
    KAFKA_BOOTSTRAP=pkc-xxxxx.us-east-1.aws.confluent.cloud:9092 KAFKA_USERNAME=<key> KAFKA_PASSWORD=<secret> \\
        python -m devkit.esm --mapping OrdersMapping

Each mapping joins its consumer group, batches as the template says and
invokes its function in-process against `REDIS_URL` (or the private Valkey
that `make invoke` uses), its partitions concurrently. With `--processes N`
N processes share each group's partitions, as Lambda's pollers do: one per CPU
catches a backlog up fastest. SIGUSR1 rebalances every mapping's consumer group
(`kill -USR1 <pid>`). Ctrl-C stops it; the next run resumes from the committed
offsets.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

from devkit import localredis
from devkit.esm.kafka import MappingError
from devkit.esm.mapping import STARTING_POSITIONS, TemplateError
from devkit.esm.poller import DEFAULT_CONCURRENCY
from devkit.esm.runner import LocalMappings, tune_collector
from devkit.esm.workers import WORKER_FLAG, WorkerProcesses, processes_per_cpu, start_together
from devkit.sam import TEMPLATE, parameter_overrides


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _seconds(text: str) -> float:
    number = float(text)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the template's Kafka event source mappings locally.")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"), help="host:port[,host:port]")
    parser.add_argument("--mapping", action="append", default=[], help="a mapping's logical id (default: all)")
    parser.add_argument("--template", default=str(TEMPLATE))
    parser.add_argument("--starting-position", choices=STARTING_POSITIONS, help="override the template's")
    parser.add_argument("--starting-timestamp", type=float, help="AT_TIMESTAMP: Unix seconds")
    parser.add_argument("--batching-window", type=float, help="seconds, override the template's")
    parser.add_argument("--use-secret", action="store_true", help="read credentials from the mapping's secret ARN")
    parser.add_argument(
        "--pollers", type=_positive, help="consumers per mapping (default: 1, MinimumPollers if provisioned)"
    )
    parser.add_argument(
        "--concurrency", type=_positive, default=DEFAULT_CONCURRENCY, help="partitions a poller invokes at once"
    )
    parser.add_argument("--function-timeout", type=_seconds, help="seconds, override the function's Timeout")
    parser.add_argument(
        "--processes",
        type=_positive,
        default=1,
        help=f"processes sharing each mapping's partitions (default 1; one per CPU here: {processes_per_cpu()})",
    )
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--parameter-overrides", nargs="*", default=[], metavar="KEY=VALUE", help="template parameters, as for sam"
    )
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(arguments)
    parameters = parameter_overrides(args.parameter_overrides)
    if not args.bootstrap:
        parser.error("give --bootstrap host:port or set KAFKA_BOOTSTRAP")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    redis_url = os.environ.get("REDIS_URL") or localredis.ensure()
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("REDIS_CLUSTER", "false")  # the local Redis decides the client, not the cloud cache
    overrides: dict[str, object] = {}
    if args.starting_position:
        overrides["starting_position"] = args.starting_position
    if args.starting_timestamp is not None:
        overrides["starting_timestamp"] = args.starting_timestamp
    if args.batching_window is not None:
        overrides["window_seconds"] = args.batching_window
    signal.signal(signal.SIGTERM, _interrupt)
    # the workers start with this process, so that every consumer joins its groups at about the same
    # time: one joining later takes partitions from the others in a rebalance mid-run
    workers = WorkerProcesses(arguments, 0 if args.worker else args.processes - 1).start()
    hold = threading.Event() if args.processes > 1 else None
    mappings: LocalMappings | None = None
    try:
        try:
            mappings = LocalMappings(
                pollers=args.pollers,
                concurrency=args.concurrency,
                function_timeout=args.function_timeout,
                bootstrap=args.bootstrap,
                parameters={**parameters, "RedisUrl": redis_url, "KafkaBootstrapServers": args.bootstrap},
                template=Path(args.template),
                only=tuple(args.mapping),
                use_secret=args.use_secret,
                overrides=overrides,
                hold=hold,
            )
            mappings.apply_environment({"REDIS_URL": redis_url})
            mappings.start()
        except (MappingError, TemplateError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        tune_collector()
        if hold is not None:
            start_together(mappings, args.processes, hold)
        signal.signal(signal.SIGUSR1, partial(_rebalance, mappings, workers))
        if not args.worker:
            processes = f" in {args.processes} processes" if args.processes > 1 else ""
            print(
                f"consuming {args.bootstrap} into {redis_url}{processes}:\n{mappings.describe()}\nCtrl-C stops it.",
                file=sys.stderr,
            )
        while not mappings.failed() and not workers.failed():
            time.sleep(0.5)
        for name, why in mappings.failed():
            print(f"error: {name}: {why}", file=sys.stderr)
        for ended in workers.failed():
            print(f"error: {ended}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            workers.request_stop()  # every process leaves its groups at once
            if mappings is not None:
                mappings.stop()
            workers.stop()


def _rebalance(mappings: LocalMappings, workers: WorkerProcesses, signum: int, frame: object) -> None:
    mappings.rebalance()
    workers.rebalance()


if __name__ == "__main__":
    sys.exit(main())
