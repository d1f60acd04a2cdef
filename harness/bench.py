"""`make bench`: ingest, reads, freshness and cold start, measured side by side in one run.

    python -m harness.bench [--output docs/performance.md] [--quick] [--no-cluster]

A benchmark, not a test: nothing here asserts a time. Every figure comes with
a baseline measured in the same run on the same machine (the naive consumer and
redis-benchmark for ingest, the bare redis-py command for reads), because
shared machines are noisy and only ratios travel.

Each part runs in a fresh interpreter (`--part`), so settings, clients and
module state never leak from one server setup into the next:

- ingest: harness.bench_ingest (IngestFunction handler on 10,000-record
  batches with WAIT for a replica and without, replayed batch, naive and
  pure-write pipelines, redis-benchmark -P 100 SET, 100-record batch);
- memory: harness.bench_memory (a document key through the handler beside a
  plain SET, on Valkey and Redis 7); profile: harness.profile_ingest (where a
  batch's time goes);
- reads: harness.bench_api in-process (handler vs bare redis-py for three routes),
  then over HTTP through the local API server (devkit.apigw) with wrk (or a
  Python client when wrk is not installed) while a live stream runs, then
  freshness (harness.freshness);
- cold: harness.coldstart, and the sizes of the `sam build` artifacts.

All against a private Valkey with a replica and a local Valkey cluster of 3 primaries with a replica each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from devkit.sam import ROOT

TARGETS = {
    # a 10,000-record batch through IngestFunction, every write fenced, WAIT on and off, against
    # baselines of the same run (issue 18): the same records' commands prepared, redis-py packing them
    "ingest_vs_pure_write_standalone": 1.0,
    "ingest_vs_pure_write_cluster": 2.0,
    "ingest_of_ceiling": 0.35,  # redis-benchmark -P 100 SET
    "cluster_of_standalone": 0.60,
    "server_cpu_vs_naive": 1.5,  # server CPU per record, next to the naive pipeline's
    "memory_vs_plain_set": 1.5,  # used_memory per Datagen order key, next to a plain SET of the same value
    # handler p50 / bare GET p50: one Powertools path (routing, validation, log context) on top of a
    # local GET; behind API Gateway and a VPC Lambda the floor is milliseconds
    "order_p50_ratio": 3.0,
    "order_p99_us": 1000.0,
    "freshness_p99_ms": 10.0,
    "kafka_freshness_p99_ms": 25.0,  # produce to readable, batching window 0
    "cold_import_ms": 150.0,  # the layer as built, with its bytecode
}
HTTP_CONNECTIONS = 8


# --- the parts, each in its own interpreter -------------------------------------------
def part_ingest(cluster: bool, quick: bool) -> dict[str, Any]:
    from harness import bench_ingest

    rows = bench_ingest.run(10_000, 2 if quick else 5, cluster)
    return {
        "rows": [
            {
                "name": r.name,
                "records": r.records,
                "seconds": r.seconds,
                "server_cpu_us": r.server_cpu_us,
                "client_cpu_us": r.client_cpu_us,
            }
            for r in rows
        ]
    }


def part_memory(cluster: bool, quick: bool) -> dict[str, Any]:
    from harness import bench_memory

    # standalone, where every key's position is in one hash (a cluster keeps one per slot)
    return {"rows": bench_memory.as_dicts(bench_memory.run(20_000 if quick else 100_000))}


def part_profile(cluster: bool, quick: bool) -> dict[str, Any]:
    from harness import profile_ingest

    return profile_ingest.profile(10_000, 2 if quick else 5, cluster, top=10)


def part_reads(cluster: bool, quick: bool) -> dict[str, Any]:
    from harness import bench_api, freshness, loadgen

    stack = bench_api.ReadStack(cluster)
    try:
        stack.seed()
        requests = 2_000 if quick else 5_000
        inprocess = bench_api.run(cluster, requests, requests // 10, stack=stack)
        url = stack.serve()
        stop = threading.Event()
        stream = threading.Thread(target=_live_stream, args=(stack, stop, 20.0), daemon=True)
        stream.start()
        http = []
        try:
            for case in bench_api.read_cases(stack):
                result = loadgen.load(url + case.target, HTTP_CONNECTIONS, 2 if quick else 4, headers=stack.headers)
                http.append({"route": case.route, **asdict(result)})
        finally:
            stop.set()
            stream.join()
        fresh = freshness.measure(stack, url, seconds=2 if quick else 5)
        return {"inprocess": inprocess, "http": http, "freshness": fresh}
    finally:
        stack.stop()


def _live_stream(stack: Any, stop: threading.Event, rate: float) -> None:
    """Generated events through IngestFunction at `rate` a second, a batch every 0.2 s (as `make run`)."""
    owed = 0.0
    while not stop.wait(0.2):
        owed += rate * 0.2
        count = int(owed)
        owed -= count
        if count:
            stack.apply(stack.generator.batch(count))


def part_cold(cluster: bool, quick: bool) -> dict[str, Any]:
    from harness import coldstart

    # the built layer behaves the same on both topologies: measured once
    return {"cold": coldstart.measure(3 if quick else 7, cluster, built=not cluster)}


def part_kafka(cluster: bool, quick: bool) -> dict[str, Any]:
    from harness import bench_kafka

    return {
        "freshness": [bench_kafka.freshness(window, 50 if quick else 200) for window in (0.0, 0.5)],
        "throughput": bench_kafka.throughput(20_000 if quick else 50_000),
        "rebuild": bench_kafka.rebuild(20_000 if quick else 100_000),
    }


def part_floor(cluster: bool, quick: bool) -> dict[str, Any]:
    from harness.fence_floor import measure_floor

    return measure_floor(10_000 if quick else 20_000, 3 if quick else 5)


PARTS = {
    "floor": part_floor,
    "ingest": part_ingest,
    "memory": part_memory,
    "profile": part_profile,
    "reads": part_reads,
    "cold": part_cold,
    "kafka": part_kafka,
}


class PartFailed(RuntimeError):
    """A part's interpreter failed: its rows are left out, and the page says so."""


def run_part(name: str, cluster: bool, quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "part.json"
        command = [sys.executable, "-m", "harness.bench", "--part", name, "--part-output", str(out)]
        command += ["--cluster"] if cluster else []
        command += ["--quick"] if quick else []
        started = time.perf_counter()
        label = "cluster" if cluster else "standalone"
        done = subprocess.run(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600
        )
        sys.stderr.write(done.stderr)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise PartFailed(f"{name} ({label}): {last}")
        result: dict[str, Any] = json.loads(out.read_text())
        print(f"  {name} ({label}): {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        return result


# --- the build, the machine ----------------------------------------------------------
BUILD_INPUTS = ("template.yaml", "layers/shared", "functions")


def ensure_build() -> str:
    """`make build` when .aws-sam/build is missing or older than what it is built from."""
    build = ROOT / ".aws-sam" / "build" / "template.yaml"
    newest = max(
        p.stat().st_mtime
        for name in BUILD_INPUTS
        for p in ([ROOT / name] if (ROOT / name).is_file() else (ROOT / name).rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and ".build" not in p.parts
    )
    if build.is_file() and build.stat().st_mtime >= newest:
        return "up to date"
    result = subprocess.run(["make", "build"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return f"`make build` failed: {result.stderr.strip().splitlines()[-1:] or result.returncode}"
    return "rebuilt"


def _version(command: list[str]) -> str:
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return (output.stdout or output.stderr).strip().splitlines()[0] if (output.stdout or output.stderr) else "?"


def machine() -> dict[str, str]:
    from devkit import servers
    from harness import loadgen

    model = "unknown"
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk = loadgen.wrk_binary()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": f"{os.cpu_count()} x {model}",
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "valkey": _version([servers.valkey_binary(), "--version"]),
        "redis-server (Redis 7)": _version(["redis-server", "--version"]) if shutil.which("redis-server") else "-",
        "redis-benchmark": _version(["redis-benchmark", "--version"]) if shutil.which("redis-benchmark") else "-",
        "load generator": _version([wrk, "-v"]) if wrk else "Python thread-pool client (wrk not installed)",
        "commit": subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    }


# --- the table ----------------------------------------------------------------------
def _us(value: float) -> str:
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} µs"


def _rate(value: float, unit: str = "") -> str:
    return f"{value:,.0f} {unit}/s" if unit else f"{value:,.0f}/s"


def _bytes(value: int) -> str:
    return f"{value / 1e6:.2f} MB" if value >= 1e6 else f"{value / 1e3:.1f} kB"


def rows_for(results: dict[str, dict[str, Any]], sizes: list[dict[str, Any]]) -> list[list[str]]:
    rows: list[list[str]] = []
    for label in ("standalone", "cluster"):
        rows += _ingest_rows(results, label)
    rows += _memory_rows(results)
    for label in ("standalone", "cluster"):
        reads = results.get(f"reads/{label}")
        if not reads:
            continue
        for r in reads["inprocess"]:
            h, b = r["handler"], r["redis"]
            target = ""
            if r["route"].startswith("GET /orders"):
                target = f"p50 ≤ {TARGETS['order_p50_ratio']:g}x bare, p99 ≤ {TARGETS['order_p99_us'] / 1000:g} ms"
            rows.append(
                [
                    "Reads, handler in-process",
                    f"{r['route']}: p50 / p99",
                    label,
                    f"{_us(h['p50'])} / {_us(h['p99'])}",
                    f"bare {r['bare']} {_us(b['p50'])} / {_us(b['p99'])}",
                    f"{h['p50'] / b['p50']:.2f}x / {h['p99'] / b['p99']:.2f}x",
                    target,
                ]
            )
    for label in ("standalone", "cluster"):
        reads = results.get(f"reads/{label}")
        if not reads:
            continue
        inprocess = {r["route"]: r for r in reads["inprocess"]}
        for r in reads["http"]:
            rows.append(
                [
                    "Reads over HTTP",
                    f"{r['route']}: {r['tool']}, {r['connections']} connections, {r['seconds']:.0f} s",
                    label,
                    f"{_rate(r['requests'] / r['seconds'], 'requests')}, p50 {_us(r['p50_us'])}, "
                    f"p99 {_us(r['p99_us'])}, errors {r['errors']}, non-2xx {r['non_2xx']}",
                    f"handler in-process p50 {_us(inprocess[r['route']]['handler']['p50'])}",
                    "-",
                    "",
                ]
            )
    for label in ("standalone", "cluster"):
        reads = results.get(f"reads/{label}")
        if not reads:
            continue
        f = reads["freshness"]
        rows.append(
            [
                "Freshness",
                f"record timestamp to 200 from the API: p50 / p99 (max), {f['probes']} probe orders "
                f"in {f['probe_rate']:g} batches/s with {f['rate']:g} live events/s",
                label,
                f"{f['p50_ms']:.2f} ms / {f['p99_ms']:.2f} ms ({f['max_ms']:.2f} ms)",
                "-",
                "-",
                f"p99 ≤ {TARGETS['freshness_p99_ms']:g} ms",
            ]
        )
    kafka = results.get("kafka/standalone")
    if kafka:
        for f in kafka["freshness"]:
            rows.append(
                [
                    "Through Kafka",
                    f"produce timestamp to first 200 from the API, batching window {f['window']:g} s: p50 / p99, "
                    f"{f['probes']} probe orders with {f['rate']:g} live events/s (embedded broker, local mappings)",
                    "standalone",
                    f"{f['p50_ms']:.1f} ms / {f['p99_ms']:.1f} ms",
                    "-",
                    "-",
                    f"p99 ≤ {TARGETS['kafka_freshness_p99_ms']:g} ms" if f["window"] == 0 else "",
                ]
            )
        t = kafka["throughput"]
        rows.append(
            [
                "Through Kafka",
                f"sustained, {t['records']:,} records from the producer through the broker and the local "
                "mappings into IngestFunction",
                "standalone",
                _rate(t["mappings"], "records"),
                f"plain confluent-kafka consumer, one command per record {_rate(t['naive'], 'records')}",
                f"{t['mappings'] / t['naive']:.2f}x",
                "",
            ]
        )
        r = kafka["rebuild"]
        rows.append(
            [
                "Through Kafka",
                f"`make rebuild` of all three topics holding {r['records']:,} records (clear, replay from the "
                "earliest offset through the mappings and IngestFunction)",
                "standalone",
                f"{r['seconds']:.1f} s ({_rate(r['records'] / r['seconds'], 'records')})",
                "-",
                "-",
                "",
            ]
        )
    for label in ("standalone", "cluster"):
        cold = results.get(f"cold/{label}")
        if not cold:
            continue
        for c in cold["cold"]:
            rows.append(
                [
                    "Cold start",
                    f"{c['function']} first on {c['event']}, "
                    + f"{c['layout']}, Python {c['python']}"
                    + f": import / first invocation / whole process (median of {c['runs']})",
                    label,
                    f"{c['import_ms']:.0f} ms / {c['first_ms']:.1f} ms / {c['process_ms']:.0f} ms",
                    f"slowest import {c['import_max_ms']:.0f} ms",
                    "-",
                    f"import ≤ {TARGETS['cold_import_ms']:g} ms",
                ]
            )
    for s in sizes:
        rows.append(
            [
                "Artifact size",
                f"{s['artifact']} (`sam build`)",
                "-",
                f"{_bytes(s['zip_bytes'])} zipped, {_bytes(s['bytes'])} unpacked, {s['files']} files",
                "-",
                "-",
                "",
            ]
        )
    return rows


def _verdict(value: float, bound: float, at_least: bool) -> str:
    return "met" if (value >= bound if at_least else value <= bound) else "missed"


def _ingest_rows(results: dict[str, dict[str, Any]], label: str) -> list[list[str]]:
    """The ingest rows of one topology, each with its ratios to the same run's baselines."""
    from harness.bench_ingest import HANDLER_NO_REPLICA, HANDLER_NO_WAIT, HANDLERS

    ingest = results.get(f"ingest/{label}")
    if not ingest:
        return []
    by_name = {r["name"]: r for r in ingest["rows"]}

    def rate(name_start: str, part: str = "ingest") -> tuple[str, float] | None:
        source = results.get(f"{part}/{label}" if part == "ingest" else part, {})
        row = next((r for r in source.get("rows", []) if r["name"].startswith(name_start)), None)
        return (row["name"], row["records"] / row["seconds"]) if row else None

    naive, pure, ceiling = rate("naive"), rate("pure-write"), rate("redis-benchmark")
    versus_pure = TARGETS[f"ingest_vs_pure_write_{label}"]
    rows: list[list[str]] = []
    for name, r in by_name.items():
        per_second = r["records"] / r["seconds"]
        baselines, ratios, targets = [], [], []
        for baseline in (naive, pure) if not name.startswith(("naive", "pure-write", "redis-benchmark")) else ():
            if baseline:
                baselines.append(f"{baseline[0].split(',')[0]} {_rate(baseline[1])}")
                ratios.append(f"{per_second / baseline[1]:.2f}x")
        if name in HANDLERS:
            if pure:
                verdict = _verdict(per_second / pure[1], versus_pure, True)
                targets.append(f"≥ {versus_pure:g}x pure-write ({verdict})")
            if ceiling:
                verdict = _verdict(per_second / ceiling[1], TARGETS["ingest_of_ceiling"], True)
                targets.append(f"≥ {TARGETS['ingest_of_ceiling']:.0%} of the ceiling ({verdict})")
            # the standalone handler of the same setting (a cluster without replicas: WAIT off)
            standalone = (
                rate(HANDLER_NO_WAIT if name == HANDLER_NO_REPLICA else name, "ingest/standalone")
                if label == "cluster"
                else None
            )
            if standalone:
                share = per_second / standalone[1]
                baselines.append(f"standalone handler {_rate(standalone[1])}")
                ratios.append(f"{share:.0%} of standalone")
                verdict = _verdict(share, TARGETS["cluster_of_standalone"], True)
                targets.insert(0, f"≥ {TARGETS['cluster_of_standalone']:.0%} of standalone ({verdict})")
        time_text = "" if name.startswith("redis-benchmark") else f" ({r['seconds'] * 1000:.1f} ms a batch)"
        cpu, client = r.get("server_cpu_us"), r.get("client_cpu_us")
        cpu_text = f", server CPU {cpu:.2f} µs/record" if cpu is not None else ""
        cpu_text += f", client CPU {client:.2f} µs/record" if client is not None else ""
        rows.append(
            [
                "Ingest",
                name,
                label,
                f"{_rate(per_second, 'records')}{time_text}{cpu_text}",
                "; ".join(baselines) or "-",
                " / ".join(ratios) or "-",
                f"{per_second / ceiling[1]:.0%}" if ceiling else "-",
                "; ".join(targets),
            ]
        )
    cpu_of = {n: r.get("server_cpu_us") for n, r in by_name.items()}
    naive_cpu = next((c for n, c in cpu_of.items() if n.startswith("naive") and "per record" in n), None)
    pure_cpu = next((c for n, c in cpu_of.items() if n.startswith("pure-write")), None)
    for name in HANDLERS:
        mine = cpu_of.get(name)
        if mine is None or not naive_cpu or not pure_cpu:
            continue
        naive_each = "; ".join(
            f"{n.removesuffix(' (prepared)')} {c:.2f} µs" for n, c in cpu_of.items() if n.startswith("naive") and c
        )
        verdict = _verdict(mine / naive_cpu, TARGETS["server_cpu_vs_naive"], False)
        rows.append(
            [
                "Ingest, server CPU",
                "server CPU (user + system, INFO cpu deltas over the primaries) per applied record, "
                f"{name.replace('new records, ', 'new records, fenced, ')}",
                label,
                f"{mine:.2f} µs/record",
                f"{naive_each}; pure-write pipeline of the same commands {pure_cpu:.2f} µs",
                f"{mine / naive_cpu:.2f}x naive / {mine / pure_cpu:.2f}x pure-write",
                "-",
                f"≤ {TARGETS['server_cpu_vs_naive']:g}x naive ({verdict})",
            ]
        )
    return rows


def _memory_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    memory = results.get("memory/standalone")
    rows: list[list[str]] = []
    for m in memory["rows"] if memory else []:
        ratio = m["fenced_bytes"] / m["plain_bytes"]
        if m["encoding"] == "default":
            what = f"{m['orders']:,} Datagen-like orders into a fresh server"
        else:
            what = (
                f"{m['orders']:,} Datagen-like orders after {m['after']:,} others, hashes as hashtables "
                "(hash-max-listpack-entries 0)"
            )
        rows.append(
            [
                "Ingest, memory",
                f"memory per document key through IngestFunction, used_memory growth (less client buffers) per "
                f"order: {what}",
                f"standalone, {m['server']}",
                f"{m['fenced_bytes']:.0f} B/key ({m['fields_per_hash']:,.0f} position fields in each of "
                f"{m['position_hashes']:,} positions hashes)",
                f"plain SET of the same values {m['plain_bytes']:.0f} B/key",
                f"{ratio:.2f}x",
                "-",
                f"≤ {TARGETS['memory_vs_plain_set']:g}x plain SET "
                f"({_verdict(ratio, TARGETS['memory_vs_plain_set'], False)})",
            ]
        )
    return rows


PHASE_TEXT = {
    "projection": "the event read; each record decoded, parsed, projected (`Ingestor._pending`), a chunk at a time",
    "steps_of": "planning: one step per key and partition, repeated records dropped (`Planner.steps`)",
    "pack": "planning: the steps into fence.lua calls, their keys and flat plan (`plan.pack`)",
    "send": "transport: each chunk's calls written, the chunk before's replies read, what was turned away sent "
    "again (`Transport.submit`, `finish`)",
    "wait": "transport: `WAIT 1` on the primary after the calls",
    "results": "the replies counted: applied, duplicates, refusals",
    "rest": "dead letters, the operator's figures, metrics, the log line",
}


def time_section(results: dict[str, dict[str, Any]]) -> str:
    """Where the handler's time goes, from this run's profile parts, beside its ingest baselines."""
    profiles = {
        label: results[f"profile/{label}"] for label in ("standalone", "cluster") if f"profile/{label}" in results
    }
    if "standalone" not in profiles:
        return ""
    header = " | ".join(f"{label} ms | {label} client CPU ms" for label in profiles)
    phases = "\n".join(
        f"| {phase} | {text} | "
        + " | ".join(f"{p['phases_ms'][phase]:.1f} | {p['phases_cpu_ms'][phase]:.1f}" for p in profiles.values())
        + " |"
        for phase, text in PHASE_TEXT.items()
    )
    gc_cells = ["garbage collector", "inside the phases above, CPU: generations 0 / 1 / 2"]
    for p in profiles.values():
        gc_cells += ["", f"{sum(p['gc_ms']):.1f} ({' / '.join(f'{g:.0f}' for g in p['gc_ms'])})"]
    gc_line = "| " + " | ".join(gc_cells) + " |"
    totals = "; ".join(
        f"{label}: {p['total_ms']:.0f} ms a batch, {p['total_cpu_ms']:.0f} ms of it this process's CPU, "
        f"{p['calls']:,.0f} fence.lua calls"
        for label, p in profiles.items()
    )
    standalone = profiles["standalone"]
    top = "\n".join(
        f"| `{row['function']}` | {row['calls']:,} | {row['own_ms']:.1f} | {row['cumulative_ms']:.1f} |"
        for row in standalone["top"]
    )
    findings = [line for label, p in profiles.items() for line in _findings(results, label, p)]
    gc_ms = standalone["gc_ms"]
    findings.append(
        f"- The cyclic garbage collector runs for {sum(gc_ms):.0f} ms of CPU a standalone batch (generations "
        f"0 / 1 / 2: {gc_ms[0]:.0f} / {gc_ms[1]:.0f} / {gc_ms[2]:.0f} ms), outside the writer: the writer pauses it "
        "while it applies a batch, whose objects (the records' mutations, steps, calls) form no cycles and die "
        "with it. Without the harness's `gc.freeze()` its full passes would also scan the SAM CLI's objects the "
        "benchmark process holds (`python -m harness.profile_ingest --no-gc-freeze`)."
    )
    server_rows = "\n".join(
        f"| {label} | `{row['command']}` | {row['calls_per_record']:.3f} | {row['us_per_record']:.2f} |"
        for label, p in profiles.items()
        for row in p.get("server", [])[:6]
    )
    server_cpu = "; ".join(
        f"{label} {p['server_cpu_us']:.2f} µs" for label, p in profiles.items() if "server_cpu_us" in p
    )
    return f"""## Where the time goes

`.venv/bin/python -m harness.profile_ingest [--cluster]` (part of `make bench`; these are this run's
numbers): IngestFunction on {standalone["records"]:,} new records a batch, WAIT for 1 replica, mean of
{standalone["rounds"]} batches. {totals}. Each phase is timed around the handler's own functions with
no profiler on; the client CPU column is this process's CPU time, steadier than the wall time on
a busy machine.

| phase | what | {header} |
| --- | --- |{" ---: | ---: |" * len(profiles)}
{phases}
{gc_line}

{chr(10).join(findings)}

The server's side of the same batches: its CPU per record over them (`INFO cpu`, the primaries:
{server_cpu}), and `INFO commandstats`, the commands with the most time. fence.lua's inner
commands count on their own and again inside `evalsha`; the times are the server's clock around
each command, which a busy machine stretches as well, so they are shares, not costs.

| server | command | calls a record | µs a record |
| --- | --- | ---: | ---: |
{server_rows}

cProfile over one standalone batch, the functions with the most time of their own (profiling
slows Python code more than the waits, so these are shares, not times):

| function | calls | own ms | cumulative ms |
| --- | ---: | ---: | ---: |
{top}

"""


def floor_section(floor: dict[str, Any] | None) -> str:
    if floor is None:
        return ""
    from harness.fence_floor import render

    return f"""## The fence's floor

`.venv/bin/python -m harness.fence_floor` (part of `make bench`; this run's numbers): what the
server spends on {floor["records"]:,} new orders, each variant on an emptied primary with one
replica, in turn, medians of {floor["rounds"]} rounds; primary and replica CPU from `INFO cpu`,
EVALSHA's own time from `INFO commandstats`.

{render(floor)}

- The shipped fence reads a call's positions with one `HMGET`, sets its documents with one
  `MSET` and moves their positions with one `HSET`. The earlier shape, each key's position in its
  slot's hash (still a cluster's, where a call is one slot's), ran three commands a record: an
  `HGET`, the write and an `HSET`, each a call from Lua and each replicated.
- Handing the shipped calls' arguments to a script that does nothing costs the server about as
  much as a naive `SET` (the last row): any fence in Lua starts there. What the shipped fence
  spends beyond it is its walk over each record's arguments and the commands' shares.
- The least a fence of each key's position does with those arguments (read the positions, set
  the newer documents, move their positions, nothing else) is the floor of this design: a
  target below that row's ratio to the naive pipeline is out of reach for any per-key fence in
  a script, whatever the rest of it does. The shipped fence's distance above it is what its
  other kinds, refusals and stops cost a call of documents.

"""


def _findings(results: dict[str, dict[str, Any]], label: str, profile: dict[str, Any]) -> list[str]:
    """What one topology's profile says beside the same run's ingest rows."""
    from cachesync.writer import CHUNK_RECORDS_CLUSTER, CHUNK_RECORDS_STANDALONE, FIRST_CHUNK_RECORDS
    from harness.bench_ingest import HANDLER_WAIT, PURE_WRITE

    ms, cpu = profile["phases_ms"], profile["phases_cpu_ms"]
    ingest = {r["name"]: r for r in results.get(f"ingest/{label}", {}).get("rows", [])}
    pure, handler = ingest.get(PURE_WRITE), ingest.get(HANDLER_WAIT)
    naive = next((r for n, r in ingest.items() if n.startswith("naive") and "per record" in n), None)
    planning = cpu["projection"] + cpu["steps_of"] + cpu["pack"]
    records = profile["records"]
    chunk = CHUNK_RECORDS_CLUSTER if label == "cluster" else CHUNK_RECORDS_STANDALONE
    lines = [
        f"- {label.capitalize()}: the client spends {planning:.0f} ms of CPU a batch drawing and planning its "
        f"records ({cpu['projection']:.0f} ms projecting, {cpu['steps_of'] + cpu['pack']:.0f} ms planning), "
        f"{FIRST_CHUNK_RECORDS:,} at first, then twice as many each time up to {chunk:,}, each chunk's calls "
        f"sent before the next is drawn: the server runs the "
        f"{profile['calls']:,.0f} calls meanwhile. The transport's {ms['send']:.0f} ms hold {cpu['send']:.0f} ms "
        f"of its CPU (packing, reading, counting what each call found) and the rest waiting for replies; then "
        f"{ms['wait']:.1f} ms for the WAIT."
    ]
    if pure and handler and handler.get("client_cpu_us") and pure.get("client_cpu_us") and naive:
        per_record_us = pure["seconds"] * 1e6 / records
        projection_us = cpu["projection"] * 1000 / records
        slower = max(handler["client_cpu_us"], handler["server_cpu_us"])
        lines.append(
            f"  In the ingest rows, the handler costs {handler['client_cpu_us']:.1f} µs of client CPU and "
            f"{handler['server_cpu_us']:.1f} µs of server CPU per record, run side by side ("
            f"{handler['seconds'] * 1000:.0f} ms a batch); the pure-write pipeline costs "
            f"{pure['client_cpu_us']:.1f} µs and {pure['server_cpu_us']:.1f} µs, {per_record_us:.1f} µs a record "
            f"of time ({pure['seconds'] * 1000:.0f} ms a batch, its commands prepared beforehand). With the two "
            f"sides overlapped, the slower one bounds the handler: {slower:.1f} µs a record, so at most "
            f"{per_record_us / slower:.2f}x the pure-write pipeline where the target asks for "
            f"{TARGETS[f'ingest_vs_pure_write_{label}']:g}x; the projection alone (decoding, parsing and "
            f"projecting each record, before any planning) takes {projection_us:.1f} µs of it."
        )
        lines.append(
            f"  The server's share is {handler['server_cpu_us'] / naive['server_cpu_us']:.1f}x the naive "
            "pipeline's: a naive record is one command, a fenced one is a step of a script call, which reads the "
            "call's positions (one HMGET), writes past them (a call's documents in one MSET) and moves them (one "
            "HSET), each a command the script calls and the primary replicates to its replica; the plan is read "
            "from flat arguments (no JSON)"
            + (
                ". On a cluster a call carries one slot's steps only, so nearly every key is a call of its own."
                if label == "cluster"
                else "."
            )
        )
    return lines


def table(rows: list[list[str]]) -> str:
    header = ["section", "measurement", "server", "result", "same-run baseline", "ratio", "of the ceiling", "target"]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | --- | --- | --- | ---: | ---: | --- |"]
    # rows without a ceiling (all but ingest) get "-" in that column, before the target
    lines += [
        "| "
        + " | ".join(cell.replace("|", "\\|") for cell in (row if len(row) == 8 else [*row[:6], "-", row[6]]))
        + " |"
        for row in rows
    ]
    return "\n".join(lines)


def document(
    table_text: str,
    info: dict[str, str],
    build: str,
    command: str,
    time_text: str = "",
    minutes: float = 0.0,
    failed: list[str] | None = None,
) -> str:
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in info.items() if k != "date")
    missing = (
        "Parts that failed in this run, whose rows are missing below (the error's last line):\n\n"
        + "\n".join(f"- {failure}" for failure in failed)
        + "\n\n"
        if failed
        else ""
    )
    return f"""# Performance

The latest `make bench` run: {info["date"]}.

## Machine

{machine_lines}
- `sam build` artifacts: {build}

## Reproduce

```sh
{command}
```

(`.venv/bin/python -m harness.bench --quick` is a shorter run; `--no-cluster` skips the cluster.)

`make bench` installs `wrk` with apt-get when it is missing and can be installed
(otherwise a Python thread-pool client generates the HTTP load), builds the SAM
artifacts when they are out of date, and takes several minutes on 2 CPUs (this run: {minutes:.0f}
minutes). Each part runs in a fresh interpreter against a private Valkey with one replica, then
a local Valkey cluster of 3 primaries with one replica each; the memory rows also on Debian's
Redis 7 when it is installed.

## Results

{missing}{table_text}

{time_text}## How to read it

- Machines are shared and noisy: compare a figure with its same-run baseline,
  not with another run. Ratios are result over baseline (for ingest, higher is
  better; for reads, the handler's cost relative to the bare command).
- Ingest: `harness/bench_ingest.py`. The handler runs in-process as deployed, every
  write fenced, on 10,000-record batches of orders, products and stock movements.
  The standalone server is a primary with one replica attached (REPLICAOF), the
  cluster 3 primaries with one replica each, so the handler's default waits
  (`WAIT 1` on each primary written, after the writes); its "WAIT off" rows set
  `REDIS_WAIT_REPLICAS=0` on the same servers. Its same-run baselines: the naive
  pipeline (decode, parse, one command per record in a redis-py pipeline; a
  `ClusterPipeline` on the cluster; no idempotence); the pure-write pipeline (the
  same records' commands prepared in advance, so only redis-py's packing, sending
  and reading is timed); and `redis-benchmark -P 100` SET (`--cluster` on the
  cluster), the server's own ceiling, which the "of the ceiling" column divides by.
  The two handler settings and those two pipelines run in turn within each round,
  so a busy spell falls on all of them alike. On the cluster, each handler row is
  also compared with the standalone handler of the same setting. Objects the
  harness holds before it loads the handler (the SAM CLI's template providers)
  are frozen out of the garbage collector's full passes (`gc.freeze()`): no Lambda
  process holds them, and scanning them would bill the handler for the harness
  (`python -m harness.bench_ingest --no-gc-freeze` shows the difference).
- Server CPU: `used_cpu_user + used_cpu_sys` from `INFO cpu` before and after each
  round, summed over the primaries (not the replicas), divided by the records: what
  ElastiCache Serverless bills (ECPUs). The naive rows send the same commands
  without exactly-once; the naive SET and ZINCRBY rows show each command's own
  cost (ZINCRBY on 20 sorted sets of 2,000 members costs more than a SET). Every
  write of the handler, documents (orders, products: SET, DEL) and stock deltas
  alike, is a step of a fence.lua script call (`cachesync/plan.py`,
  `cachesync/transport.py`): per key and partition, its applied position read (one
  HMGET a call), the writes past it (the documents of a call in one MSET) and the new
  position (one HSET a call), the plan read from flat arguments. The writer plans a batch 1,000
  records at a time and sends each chunk's calls before it draws the next, so the
  server runs them while the client projects and plans. On a cluster a call carries
  one slot's steps only, so a batch of documents with distinct keys takes about one
  call per key.
- Client CPU: the benchmark process's own CPU time (`time.process_time`) per
  record while a path ran: what the Lambda function itself pays for, and
  steadier than the wall time when other work shares the machine.
- Memory: `harness/bench_memory.py`. Datagen-like orders (one new order id each)
  go through IngestFunction into a fresh server, the same values with a plain
  `SET orders:<id>` into another fresh server of the same binary; each side's
  growth of `used_memory` (less client buffers) is divided by the orders. The
  fenced path adds each key's position: a field `<key>#<partition>` in the
  positions hash of the key's slot (`cachesync:offsets:{{<tag>}}`, 16,384 hashes at
  most). Small hashes are listpacks; a hash becomes a hashtable past
  `hash-max-listpack-entries` fields (512 by default on Valkey 8 and Redis 7, so
  past about 8.4 million document keys) or with a field longer than
  `hash-max-listpack-value` (64 bytes), which the "hashtables" rows force.
- Reads in-process: `harness/bench_api.py`. The handler gets the API Gateway
  payload v2 event; the bare command is the redis-py call for the same data,
  interleaved one for one with the handler.
- Reads over HTTP: `harness/loadgen.py` against the local API server
  (`devkit/apigw.py`, as in `make run`) while a live stream of 20 events/s runs.
  The server handles one request at a time, like one Lambda instance, so under
  {HTTP_CONNECTIONS} connections the latency is mostly queueing; wrk is closed-loop.
- Freshness: `harness/freshness.py`. It includes the IngestFunction invocation and one
  HTTP read, not the event source mapping.
- Through Kafka: `harness/bench_kafka.py`, `make run`'s stack (the embedded broker,
  the template's mappings run locally by `devkit.esm`, IngestFunction, the API
  server) in one process. Freshness runs from a probe order's produce timestamp
  to its first 200 through the API, after one warm-up request per status; the
  batching window adds up to its length. Throughput is records produced as fast
  as the producer goes, first send to last commit, next to a plain
  confluent-kafka consumer sending one Redis command per record (no exactly-once)
  on the same records and broker. The local mapping builds Lambda's JSON payload
  for every record in the same Python process as the function, which Lambda's
  pollers do elsewhere: on 2 cores that work competes with the function.
- Cold start: `harness/coldstart.py`, a new interpreter per run; sizes are those
  of `.aws-sam/build`. The "venv packages" rows run this venv's Python with the
  bytecode pip compiled. The "layer as built" rows run a CPython 3.13, as Lambda does,
  on the layer built by its own Makefile for this machine's CPU (same lock, same
  bytecode step): with the bytecode a build with a 3.13 ships, and without it (a
  build without a 3.13; Lambda cannot write bytecode under /opt, so each cold start
  then compiles what it imports). The functions' own code has no bytecode in either
  (`sam build` copies it as source). ApiFunction builds its Powertools resolver (routes, validation) at import; its
  two rows are a first request to a hot route (an order) and to a cold one (an
  inventory item).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", help="write the report here (e.g. docs/performance.md)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter loads")
    parser.add_argument("--no-cluster", action="store_true", help="standalone Valkey only")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--part-output", help=argparse.SUPPRESS)
    parser.add_argument("--cluster", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    argv_ = sys.argv[1:] if argv is None else argv

    if args.part:
        result = PARTS[args.part](args.cluster, args.quick)
        Path(args.part_output).write_text(json.dumps(result))
        return 0

    started = time.perf_counter()
    print("building the SAM artifacts if out of date...", file=sys.stderr, flush=True)
    build = ensure_build()
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []

    def part(name: str, cluster: bool) -> None:
        try:
            results[f"{name}/{'cluster' if cluster else 'standalone'}"] = run_part(name, cluster, args.quick)
        except PartFailed as error:  # the other parts still run: their rows stand on their own
            failed.append(str(error))
            print(f"  failed: {error}", file=sys.stderr, flush=True)

    for cluster in (False,) if args.no_cluster else (False, True):
        for name in ("ingest", "reads", "cold"):
            part(name, cluster)
    part("kafka", False)
    part("memory", False)
    for cluster in (False,) if args.no_cluster else (False, True):
        part("profile", cluster)
    part("floor", False)
    from harness.coldstart import artifact_sizes

    text = table(rows_for(results, artifact_sizes()))
    print(text)
    if args.output:
        command = "make bench" if not (args.quick or args.no_cluster) else " ".join(["python -m harness.bench", *argv_])
        from harness.bench_connect import carried_over

        output = Path(args.output)
        previous = output.read_text() if output.is_file() else ""
        # the section `make bench-connect` writes stays as its last run left it
        minutes = (time.perf_counter() - started) / 60
        sections = time_section(results) + floor_section(results.get("floor/standalone"))
        page = document(text, machine(), build, command, sections, minutes, failed)
        output.write_text(carried_over(previous, page))
        print(f"\nwrote {args.output} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
