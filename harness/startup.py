"""`make run`'s start-up: from the command to its first served request, and its shutdown.

    python -m harness.startup [--runs 3] [--command "make -s run ARGS='--rate 0 --quiet'"]

Each run starts the command in a session of its own with `PORT` set to a free
port, polls `/health` until it answers 200 (the time to the first served
request), then sends SIGINT, as Ctrl-C does, and times the exit. Prints each
run and the medians. A measurement, never a test: the figures depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request

from devkit.children import spawn
from devkit.sam import ROOT
from devkit.servers import free_port

DEFAULT_COMMAND = "make -s run ARGS='--rate 0 --quiet'"


def served(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def one_run(command: str, deadline_s: float) -> tuple[float, float]:
    """Seconds to the first 200 from /health, and seconds from SIGINT to the command's exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KAFKA_BOOTSTRAP")} | {"PORT": str(port)}
    with tempfile.TemporaryFile() as output:  # the command's output, read only when it fails
        started = time.perf_counter()
        # SIGTERM should this end first: make passes it on, and the run stops what it started
        process = spawn(
            shlex.split(command), death_signal=signal.SIGTERM, cwd=ROOT, env=env, stdout=output, stderr=output
        )
        try:
            while not served(f"http://127.0.0.1:{port}/health"):
                if process.poll() is not None or time.perf_counter() - started > deadline_s:
                    output.seek(0)
                    raise RuntimeError(f"{command} never served /health:\n{output.read().decode()[-2000:]}")
                time.sleep(0.02)
            first_request = time.perf_counter() - started
            interrupted = time.perf_counter()
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=deadline_s)
            return first_request, time.perf_counter() - interrupted
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--command", default=DEFAULT_COMMAND, help="run from the repository's root, PORT set")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds before a run counts as failed")
    args = parser.parse_args(argv)
    firsts, exits = [], []
    for number in range(1, args.runs + 1):
        first, exit_s = one_run(args.command, args.deadline)
        firsts.append(first)
        exits.append(exit_s)
        print(f"run {number}: first request after {first:.2f} s, exit {exit_s:.2f} s after SIGINT", flush=True)
    print(
        f"{args.command}: median {statistics.median(firsts):.2f} s to the first request, "
        f"{statistics.median(exits):.2f} s from SIGINT to exit ({args.runs} runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
