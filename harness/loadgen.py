"""HTTP load against the local server: `wrk` when installed, else a thread-pool client.

    python -m harness.loadgen http://127.0.0.1:3000/orders/18 --connections 16 --seconds 5 \
        --header "Authorization: Bearer $STAFF_TOKEN"

Both keep connections alive and report requests/s, latency p50/p99 and errors
(connection or socket errors, and every answer that is not 2xx or 3xx).
wrk is a closed-loop generator (each connection waits for its answer), so the
latencies are those of a saturated server, not of an open arrival rate.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

# wrk's `done` hook: its own percentiles (µs) and error counters, as one JSON line
_WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"seconds":%f,"p50_us":%d,"p99_us":%d,"max_us":%d,"errors":%d,"non_2xx":%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class LoadResult:
    tool: str
    url: str
    connections: int
    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    max_us: float
    errors: int  # connect/read/write errors and timeouts
    non_2xx: int  # answers with a status that is not 2xx or 3xx

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    url: str, connections: int, seconds: float, threads: int = 2, headers: Mapping[str, str] | None = None
) -> LoadResult:
    binary = wrk_binary()
    assert binary is not None
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "report.lua"
        script.write_text(_WRK_REPORT)
        command = [binary, "-t", str(min(threads, connections)), "-c", str(connections)]
        command += ["-d", f"{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script)]
        command += [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
        command.append(url)
        output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next((x for x in output.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report: {output[-500:]}")
    data = json.loads(line.removeprefix("WRKJSON "))
    return LoadResult("wrk", url, connections, **data)


def run_threads(url: str, connections: int, seconds: float, headers: Mapping[str, str] | None = None) -> LoadResult:
    """The fallback: one thread and one keep-alive connection per simulated client."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    deadline = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    non_2xx = [0] * connections

    def client(n: int) -> None:
        connection: http.client.HTTPConnection | None = None
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
                connection.request("GET", target, headers=dict(headers or {}))
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors[n] += 1
                if connection is not None:
                    connection.close()
                connection = None
                continue
            latencies[n].append(time.perf_counter() - started)
            if response.status >= 400:
                non_2xx[n] += 1
        if connection is not None:
            connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(x for per_client in latencies for x in per_client)
    if not ordered:
        ordered = [0.0]

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    requests = sum(len(x) for x in latencies)
    return LoadResult(
        "python threads", url, connections, requests, elapsed, at(0.5), at(0.99), ordered[-1] * 1e6,
        sum(errors), sum(non_2xx),
    )  # fmt: skip


def load(url: str, connections: int = 16, seconds: float = 5.0, headers: Mapping[str, str] | None = None) -> LoadResult:
    if wrk_binary():
        return run_wrk(url, connections, seconds, headers=headers)
    return run_threads(url, connections, seconds, headers=headers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", action="store_true", help="use the Python client even when wrk is installed")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', sent with every request")
    args = parser.parse_args(argv)
    headers = {}
    for header in args.header:
        name, separator, value = header.partition(":")
        if not separator or not name.strip():
            parser.error(f"--header {header!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    run = run_threads if args.threads else load
    print(json.dumps(asdict(run(args.url, args.connections, args.seconds, headers=headers)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
