"""Where a batch's time goes in IngestFunction (a profile, not a test).

    python -m harness.profile_ingest [--records 10000] [--rounds 5] [--cluster] [--top 15]

The handler runs as in `make bench` (harness.bench_ingest: the template's environment, new
records, a primary with one replica, so each batch ends with a WAIT). Two views:

- the phases, timed around the handler's own functions with no profiler on: projection (the
  event read and each record projected, `Ingestor._pending`, as the writer draws each chunk),
  planning (`Planner.steps`, `plan.pack`), transport (`Transport.submit` and `finish`, of which
  the WAIT),
  results (the writer's count of what was applied) and the rest of the invocation (dead
  letters, the operator's figures, metrics, the log line). The cyclic garbage collector's
  passes fall inside those phases; their CPU time is added up on its own too (`gc.callbacks`);
- the server's side: its CPU per record over the timed batches, and INFO commandstats (fence.lua's
  EVALSHA, and the commands it runs inside);
- cProfile over one batch: the functions with the most time of their own.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

import redis

from devkit.generator import EventGenerator
from devkit.sam import describe
from harness.bench_ingest import ingest_handler, start_target

PHASES = ("projection", "steps_of", "pack", "send", "wait", "results", "rest")
# timed around `BatchWriter.apply` as a whole, and the handler as a whole: the rest is derived
MEASURED = (*PHASES, "apply", "handler")


class PhaseClock:
    """Wall and CPU time spent in each wrapped function, and the collector's CPU, summed over the batches."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(MEASURED, 0.0)
        self.cpu_seconds: dict[str, float] = dict.fromkeys(MEASURED, 0.0)
        self.gc_seconds = [0.0, 0.0, 0.0]  # per generation
        self.gc_passes = [0, 0, 0]
        self.calls = 0  # fence.lua calls planned
        self._gc_started = 0.0

    def counted(self, pack: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
        def wrapper(*args: Any, **kwargs: Any) -> list[Any]:
            calls = pack(*args, **kwargs)
            self.calls += len(calls)
            return calls

        return wrapper

    def timed(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start
                self.cpu_seconds[phase] += time.process_time() - cpu

        return wrapper

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        # CPU time: the collector never waits, and a busy machine would stretch its wall time
        if phase == "start":
            self._gc_started = time.process_time()
        else:
            generation = info["generation"]
            self.gc_seconds[generation] += time.process_time() - self._gc_started
            self.gc_passes[generation] += 1


@contextmanager
def phases_timed(clock: PhaseClock) -> Iterator[None]:
    """The writer's planning, sending and counting timed apart. The writer draws, plans and sends
    a batch a chunk at a time: the projection is the time it takes to draw each chunk's mutations
    from the ingestor, the send is the time in the transport (its first writes, the replies read
    and what is sent again), results are what is left of `apply`."""
    from cachesync import plan, transport, writer  # the layer's path comes with devkit

    def drawn(mutations: Iterator[Any], count: int) -> list[Any]:
        return list(islice(mutations, count))

    patches: list[tuple[Any, str, Any]] = [
        (writer, "islice", clock.timed("projection", drawn)),  # the writer's own name for it
        (plan.Planner, "steps", clock.timed("steps_of", plan.Planner.steps)),
        (plan, "pack", clock.timed("pack", clock.counted(plan.pack))),
        (transport.Transport, "submit", clock.timed("send", transport.Transport.submit)),
        (transport.Transport, "finish", clock.timed("send", transport.Transport.finish)),
        (transport.Transport, "_wait", clock.timed("wait", transport.Transport._wait)),
        (writer.BatchWriter, "apply", clock.timed("apply", writer.BatchWriter.apply)),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, wrapper in patches:
        setattr(owner, name, wrapper)
    gc.callbacks.append(clock.on_gc)
    try:
        yield
    finally:
        gc.callbacks.remove(clock.on_gc)
        for owner, name, original in saved:
            setattr(owner, name, original)


def profile(
    records: int = 10_000, rounds: int = 5, cluster: bool = False, top: int = 15, freeze: bool = True
) -> dict[str, Any]:
    """The phases in ms per batch (means over `rounds`), the collector's share, and cProfile's top functions."""
    target = start_target(cluster, replicas=True)
    try:
        generator = EventGenerator(seed=1, partitions=6, stores=20, skus=2000)
        describe("IngestFunction", {"RedisUrl": target.url})
        if freeze:  # the harness's own objects, as in harness.bench_ingest
            gc.collect()
            gc.freeze()
        handler = ingest_handler(target.url, cluster)
        handler(generator.batch(records))  # warm
        clock = PhaseClock()
        timed_handler = clock.timed("handler", handler)
        primaries = [redis.Redis(port=port) for port in target.primaries]
        for primary in primaries:
            primary.config_resetstat()
        cpu_before = _server_cpu(primaries)
        with phases_timed(clock):
            for _ in range(rounds):
                timed_handler(generator.batch(records))
        server_cpu_us = (_server_cpu(primaries) - cpu_before) * 1e6 / (records * rounds)
        server = _commands(primaries, records * rounds)
        per_batch = {
            kind: _split(seconds, rounds) for kind, seconds in (("ms", clock.seconds), ("cpu_ms", clock.cpu_seconds))
        }

        profiler = cProfile.Profile()
        event = generator.batch(records)
        profiler.enable()
        handler(event)
        profiler.disable()
        return {
            "records": records,
            "rounds": rounds,
            "cluster": cluster,
            "gc_freeze": freeze,
            "total_ms": per_batch["ms"]["handler"],
            "total_cpu_ms": per_batch["cpu_ms"]["handler"],
            "phases_ms": per_batch["ms"],
            "phases_cpu_ms": per_batch["cpu_ms"],
            "gc_ms": [seconds / rounds * 1000 for seconds in clock.gc_seconds],
            "gc_passes": [passes / rounds for passes in clock.gc_passes],
            "calls": clock.calls / rounds,
            "top": _top(profiler, top),
            "server_cpu_us": server_cpu_us,
            "server": server,
        }
    finally:
        target.stop()


def _server_cpu(primaries: list[redis.Redis]) -> float:
    return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in (p.info("cpu") for p in primaries))


def _commands(primaries: list[redis.Redis], records: int) -> list[dict[str, Any]]:
    """The primaries' INFO commandstats over the timed batches: each command's calls and time per record.
    fence.lua's own commands count on their own and again inside EVALSHA's time; the time is the
    server's clock around each command, which a busy machine stretches too."""
    totals: dict[str, list[float]] = {}
    for primary in primaries:
        for name, stat in primary.info("commandstats").items():
            if name in ("cmdstat_info", "cmdstat_config|resetstat"):
                continue
            total = totals.setdefault(name.removeprefix("cmdstat_"), [0, 0.0])
            total[0] += int(stat["calls"])
            total[1] += float(stat["usec"])
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])
    return [
        {"command": name, "calls_per_record": calls / records, "us_per_record": usec / records}
        for name, (calls, usec) in ranked
    ]


def _split(seconds: dict[str, float], rounds: int) -> dict[str, float]:
    """Each phase in ms per batch: the WAIT out of the send, the results out of apply, the rest out
    of the handler."""
    ms = {name: value / rounds * 1000 for name, value in seconds.items()}
    ms["results"] = ms["apply"] - ms["projection"] - ms["steps_of"] - ms["pack"] - ms["send"]
    ms["send"] -= ms["wait"]
    ms["rest"] = ms["handler"] - ms["apply"]
    return {phase: ms[phase] for phase in (*PHASES, "handler")}


def _top(profiler: cProfile.Profile, count: int) -> list[dict[str, Any]]:
    """The functions with the most time of their own: name, calls, own and cumulative ms."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.items():
        where = path.split("/site-packages/")[-1].split("/layers/shared/")[-1]
        label = f"{where}:{line}({name})" if line else name
        rows.append({"function": label, "calls": calls, "own_ms": own * 1000, "cumulative_ms": cumulative * 1000})
    rows.sort(key=lambda row: -row["own_ms"])
    return rows[:count]


def report(result: dict[str, Any]) -> str:
    p, cpu = result["phases_ms"], result["phases_cpu_ms"]
    gc_ms = result["gc_ms"]
    lines = [
        f"{result['records']:,} new records a batch, {'cluster' if result['cluster'] else 'standalone'}, "
        f"WAIT for 1 replica, {'' if result['gc_freeze'] else 'no gc.freeze(), '}"
        f"mean of {result['rounds']} batches: {result['total_ms']:.1f} ms a batch "
        f"({result['total_cpu_ms']:.1f} ms of this process's CPU), {result['calls']:,.0f} fence.lua calls a batch",
        "",
        "| phase | ms a batch | CPU ms a batch |",
        "| --- | ---: | ---: |",
        *(f"| {phase} | {p[phase]:.1f} | {cpu[phase]:.1f} |" for phase in PHASES),
        f"| (garbage collector, within the above: generations 0 / 1 / 2) | | {sum(gc_ms):.1f} "
        f"({gc_ms[0]:.1f} / {gc_ms[1]:.1f} / {gc_ms[2]:.1f}) |",
        "",
        f"server CPU {result['server_cpu_us']:.2f} µs a record (INFO cpu, the primaries); INFO commandstats:",
        "",
        "| command | calls a record | µs a record |",
        "| --- | ---: | ---: |",
        *(
            f"| {row['command']} | {row['calls_per_record']:.3f} | {row['us_per_record']:.3f} |"
            for row in result["server"][:8]
        ),
        "",
        "| function | calls | own ms | cumulative ms |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {row['function']} | {row['calls']:,} | {row['own_ms']:.1f} | {row['cumulative_ms']:.1f} |"
            for row in result["top"]
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="leave the harness's own objects to the collector's full passes"
    )
    args = parser.parse_args()
    print(report(profile(args.records, args.rounds, args.cluster, args.top, not args.no_gc_freeze)))


if __name__ == "__main__":
    main()
