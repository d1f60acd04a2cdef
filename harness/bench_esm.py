"""Our local event source mappings catching up a backlog, and `make rebuild` replaying one (a profile, not a test).

    python -m harness.bench_esm [--records 50000] [--rebuild-records 100000] [--probes 0] \\
        [--broker apache|embedded] [--py-spy PATH [--gil]] [--top 20] [--baseline DIR [--rounds 3]]

- catch-up: `--records` orders already in a fresh 6-partition topic, then the worker
  `make bench-connect` runs (`python -m devkit.esm`, the template's mappings, batching window
  0) starts; records/s from the first key in Valkey to the group committing the last offset;
- rebuild: `--rebuild-records` orders in a fresh 6-partition topic, then
  `python -m devkit.ops rebuild --topic <it>`: the command's wall time, and the replay's
  (from "replaying from the start" to "rebuilt from");
- freshness, with `--probes`: harness.bench_connect's (probe orders under a live stream of
  50 orders/s, produce to readable in Valkey).

With `--py-spy` (the py-spy binary: `pip install --target DIR py-spy` leaves it in DIR/bin)
the catch-up's worker is sampled while it catches up, and the functions with the most
samples of their own (and the most samples under them) are listed.

With `--baseline DIR` (another checkout, e.g. `git worktree add DIR main`) both run on the
same broker and Valkey, alternately for `--rounds` rounds, and the medians are compared: on
a shared machine only such same-run ratios mean anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from devkit import brokers, servers
from devkit.children import spawn
from devkit.datagen import KafkaFeed, ensure_topics
from devkit.generator import EventGenerator
from harness import bench_connect, connect_peer
from harness.bench_connect import OURS_DB, ROOT, Progress, Stack, Worker, fresh_topics, worker


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) of a process and its living descendants so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    total, family = 0.0, {pid}
    for _ in range(4):  # children, grandchildren, ...
        family |= {p for p, (parent, _) in stats.items() if parent in family}
    for member in family:
        total += stats.get(member, (0, 0.0))[1]
    return total


def backlog(stack: Stack, topic: str, records: int) -> KafkaFeed:
    """`records` orders written to `topic` (6 partitions) and flushed."""
    ensure_topics({"bootstrap.servers": stack.bootstrap}, [topic], partitions=6)
    feed = KafkaFeed({"bootstrap.servers": stack.bootstrap}, {"orders": topic})
    generator = EventGenerator(seed=9, partitions=6)
    for start in range(0, records, 10_000):
        feed.produce(generator.records(min(10_000, records - start), ("orders",)))
    feed.flush(300)
    return feed


def catch_up(
    code: Path,
    stack: Stack,
    records: int,
    logs: Path,
    spy: str | None = None,
    top: int = 20,
    pids: dict[str, int] | None = None,
    gil: bool = False,
) -> dict[str, Any]:
    """`pids`: the servers whose CPU time during the catch-up is reported beside the worker's; `gil`:
    py-spy samples only the threads holding the GIL (where the worker's CPU goes, not its waits)."""
    names = fresh_topics(stack.bootstrap)
    feed = backlog(stack, names["orders"], records)
    client = stack.client(OURS_DB)
    client.flushall()
    running = worker_of(code, "cachesync", stack, names, logs).start()
    assert running.process is not None
    progress = Progress(stack.bootstrap, running.groups)
    sampler: subprocess.Popen[bytes] | None = None
    samples = logs / f"py-spy-{names['orders']}.txt"
    try:
        deadline = time.monotonic() + 120
        while client.dbsize() == 0:
            running.check()
            if time.monotonic() > deadline:
                raise RuntimeError("the worker wrote nothing within 120 s")
            time.sleep(0.002)
        started = time.perf_counter()
        watched = {"worker": running.process.pid, **(pids or {})}
        cpu_before = {name: tree_cpu_seconds(pid) for name, pid in watched.items()}
        if spy:  # from the first write on: the catch-up, not the worker's start-up
            sampler = spawn(
                [spy, "record", "--pid", str(running.process.pid), "--rate", "250", "--format", "raw",
                 "--output", str(samples), "--nonblocking", "--subprocesses", "--function",
                 *(["--gil"] if gil else [])],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 600
        while not progress.caught_up(feed.last_offsets):
            running.check()
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not commit the backlog within 600 s")
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        cpu = {name: tree_cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
    finally:
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its samples when interrupted
            with contextlib.suppress(subprocess.TimeoutExpired):
                sampler.wait(30)
        running.stop()
        progress.close()
        feed.close()
    result: dict[str, Any] = {"records": records, "seconds": seconds, "per_second": records / seconds, "cpu": cpu}
    if sampler is not None and samples.exists():
        result["profile"] = folded_top(samples.read_text(), top)
    return result


def worker_of(code: Path, path: str, stack: Stack, names: dict[str, str], logs: Path) -> Worker:
    """harness.bench_connect's worker, run from the checkout `code`."""
    running = worker(path, stack, names, logs)
    if code != ROOT:  # its packages first on the path (python -m would put this checkout first)
        running.command[1:3] = ["-c", f"import runpy, sys; sys.path.insert(0, {str(code)!r}); "
                                      "runpy.run_module('devkit.esm', run_name='__main__')"]  # fmt: skip
    return running


def freshness(code: Path, stack: Stack, probes: int, logs: Path) -> dict[str, Any]:
    """harness.bench_connect's freshness measurement (probes under a live stream of 50 orders/s)
    of the worker from the checkout `code`."""
    original = bench_connect.worker
    bench_connect.worker = partial(worker_of, code)  # type: ignore[assignment]
    try:
        return bench_connect.freshness(["cachesync"], stack, probes, logs, rate=50.0)["cachesync"]
    finally:
        bench_connect.worker = original


def rebuild(code: Path, stack: Stack, records: int) -> dict[str, Any]:
    names = fresh_topics(stack.bootstrap)  # every mapping's topic: the command checks them all
    topic = names["orders"]
    backlog(stack, topic, records).close()
    stack.client(OURS_DB).flushall()
    command = [sys.executable, "-m", "devkit.ops", "rebuild", "--topic", topic, "--bootstrap", stack.bootstrap]
    command += ["--parameter-overrides", *(f"{kind.capitalize()}Topic={name}" for kind, name in names.items())]
    command += [f"KafkaConsumerGroupId=rebuild-{topic}"]
    env = {**os.environ, "REDIS_URL": stack.url(OURS_DB), "REDIS_CLUSTER": "false"}
    marks: dict[str, float] = {}
    started = time.perf_counter()
    process = spawn(command, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    seen = b""
    while chunk := process.stderr.read1(4096):  # type: ignore[attr-defined]
        seen = (seen + chunk)[-4096:]
        now = time.perf_counter()
        if b"replaying from the start" in seen and "replay" not in marks:
            marks["replay"] = now
        if b"rebuilt from" in seen and "done" not in marks:
            marks["done"] = now
    status = process.wait(60)
    wall = time.perf_counter() - started
    if status != 0 or "done" not in marks:
        raise RuntimeError(f"rebuild exited with {status}: {seen.decode(errors='replace')[-800:]}")
    replay = marks["done"] - marks["replay"]
    return {"records": records, "wall_seconds": wall, "replay_seconds": replay, "per_second": records / replay}


# frames under every thread's work: they say nothing about where it goes
_EVERY_THREAD = {
    "_bootstrap (threading.py:1002)",
    "_bootstrap_inner (threading.py:1045)",
    "run (threading.py:982)",
    "_run_module_as_main (<frozen runpy>:198)",
    "_run_code (<frozen runpy>:88)",
}


def folded_top(text: str, count: int = 20) -> dict[str, list[tuple[str, float]]]:
    """py-spy's raw (folded) stacks as shares of all samples: by the frame that ran (own) and by
    every frame on the stack (under)."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        frames = [_short(frame) for frame in stack.split(";")]
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames) - _EVERY_THREAD:
            under[frame] += samples
    if not total:
        return {"own": [], "under": []}
    return {
        "own": [(name, n / total) for name, n in own.most_common(count)],
        "under": [(name, n / total) for name, n in under.most_common(count)],
    }


def _short(frame: str) -> str:
    """`function (path:line)` with the path from the project or site-packages on."""
    name, _, path = frame.partition(" (")
    for marker in ("/site-packages/", "/layers/shared/", f"{ROOT}/"):
        if marker in path:
            return f"{name} ({path.split(marker, 1)[1]}"
    return frame


def report(result: dict[str, Any]) -> str:
    lines = [f"{result['code']}:"]
    if "catch_up" in result:
        c = result["catch_up"]
        lines.append(f"catch-up: {c['records']:,} orders in {c['seconds']:.2f} s: {c['per_second']:,.0f} records/s")
        lines.append(
            "  CPU µs a record: "
            + ", ".join(f"{name} {seconds / c['records'] * 1e6:.1f}" for name, seconds in c["cpu"].items())
        )
        for view in ("own", "under"):
            for name, share in c.get("profile", {}).get(view, []):
                lines.append(f"  {view:5} {share * 100:5.1f}%  {name}")
    if "freshness" in result:
        f = result["freshness"]
        lines.append(f"freshness: {f['probes']} probes, p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms")
    if "rebuild" in result:
        r = result["rebuild"]
        lines.append(
            f"rebuild: {r['records']:,} orders, replay {r['replay_seconds']:.2f} s ({r['per_second']:,.0f} records/s), "
            f"command {r['wall_seconds']:.2f} s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=50_000, help="the catch-up's backlog (0: none)")
    parser.add_argument("--rebuild-records", type=int, default=100_000, help="the rebuild's topic (0: no rebuild)")
    default_broker = "apache" if brokers.available("apache") is None else "embedded"
    parser.add_argument("--broker", choices=brokers.BROKER_KINDS, default=default_broker)
    parser.add_argument("--py-spy", help="the py-spy binary: sample the catch-up's worker")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--gil", action="store_true", help="sample only the threads holding the GIL")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alternately with this one")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each checkout")
    parser.add_argument("--probes", type=int, default=0, help="freshness probes (harness.bench_connect's; 0: none)")
    args = parser.parse_args(argv)
    codes = [args.baseline.resolve(), ROOT] if args.baseline else [ROOT]
    broker = brokers.start_broker(args.broker)
    valkey = servers.start_server()
    logs = Path(tempfile.mkdtemp(prefix="cachesync-bench-esm-"))
    results: dict[Path, list[dict[str, Any]]] = {code: [] for code in codes}
    try:
        no_peer = connect_peer.PeerSource(None, "default", "no peer: this bench runs ours alone")
        stack = Stack(broker.bootstrap, valkey.port, args.broker, no_peer)
        assert broker.process is not None
        servers_pids = {"valkey": valkey.process.pid, "broker": broker.process.pid}
        for _ in range(args.rounds):
            for code in codes:
                result: dict[str, Any] = {"code": code}
                if args.records:
                    result["catch_up"] = catch_up(
                        code, stack, args.records, logs, args.py_spy, args.top, servers_pids, args.gil
                    )
                if args.rebuild_records:
                    result["rebuild"] = rebuild(code, stack, args.rebuild_records)
                if args.probes:
                    result["freshness"] = freshness(code, stack, args.probes, logs)
                print(report(result), flush=True)
                results[code].append(result)
    finally:
        valkey.stop()
        broker.stop()
    if args.baseline:
        print(compare(results[codes[0]], results[ROOT]))
    print(f"(worker logs in {logs})", file=sys.stderr)
    return 0


def compare(baseline: list[dict[str, Any]], ours: list[dict[str, Any]]) -> str:
    """The medians of both checkouts and this one's ratio to the baseline."""
    lines = []
    for name, field in (("catch-up records/s", "catch_up"), ("rebuild replay records/s", "rebuild")):
        if baseline and field in baseline[0]:
            before = statistics.median(r[field]["per_second"] for r in baseline)
            after = statistics.median(r[field]["per_second"] for r in ours)
            lines.append(f"{name}: baseline {before:,.0f}, this {after:,.0f}: {after / before:.2f}x")
    if baseline and "freshness" in baseline[0]:
        for quantile in ("p50_ms", "p99_ms"):
            before = statistics.median(r["freshness"][quantile] for r in baseline)
            after = statistics.median(r["freshness"][quantile] for r in ours)
            lines.append(f"freshness {quantile}: baseline {before:.1f}, this {after:.1f}")
    if baseline and "rebuild" in baseline[0]:
        before = statistics.median(r["rebuild"]["wall_seconds"] for r in baseline)
        after = statistics.median(r["rebuild"]["wall_seconds"] for r in ours)
        lines.append(f"rebuild command seconds: baseline {before:.2f}, this {after:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
