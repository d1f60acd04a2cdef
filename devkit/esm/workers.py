"""More processes for the same mappings: each one more consumer in every mapping's group.

Lambda's pollers and the execution environments they invoke run on many machines. Here one
process runs every poller and every in-process invocation, and holds one interpreter lock: it
uses about one core, however many partitions wait. Worker processes running the same mappings
join the same consumer groups, so the broker spreads each topic's partitions over them, as it
spreads them over Lambda's pollers. Exactly-once is the writer's, whichever process applies a
batch, and a partition moving between processes is a rebalance like any other.

Each worker is `python -m devkit.esm` with the parent's arguments, tied to the parent's life
(`devkit.children`): a parent that is killed takes its workers with it, also killed.

The processes start together: each polls, but invokes nothing until every group has a member
from each of them (`start_together`). A process that joined first would otherwise take every
partition, start on them, and lose that work in the rebalance the next one's joining causes.

Several processes are asked for (`--processes`), not the default: against the embedded broker
(`make kafka`), a run of two under a loaded suite once saw a group that neither settled nor
delivered anything for two minutes, which one process never met.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from devkit.children import spawn
from devkit.esm.poller import STOP_GRACE_SECONDS as POLLER_GRACE_SECONDS

if TYPE_CHECKING:
    from devkit.esm.runner import LocalMappings

log = logging.getLogger("cachesync.esm")

MAX_PROCESSES_PER_CPU = 4
START_TOGETHER_SECONDS = 30.0  # then each goes on with whoever joined (a worker that never came up)
# a worker lets its invocations in flight finish, commits and leaves its groups
STOP_GRACE_SECONDS = POLLER_GRACE_SECONDS + 10.0
WORKER_FLAG = "--worker"  # a worker process: no banner, no workers of its own


def processes_per_cpu() -> int:
    """One process per CPU, up to a few: more than the CPUs only adds rebalances."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_PROCESSES_PER_CPU, cpus))


class WorkerProcesses:
    """`count` processes of `python -m devkit.esm <arguments> --worker` beside this one."""

    def __init__(self, arguments: Sequence[str], count: int):
        self.command = [sys.executable, "-m", "devkit.esm", *arguments, WORKER_FLAG]
        self.count = count
        self.processes: list[subprocess.Popen[bytes]] = []
        self._stopping = False

    def start(self) -> WorkerProcesses:
        # stdout and stderr are this process's: nothing to drain, their lines are the run's log
        self.processes = [spawn(self.command) for _ in range(self.count)]
        return self

    def failed(self) -> list[str]:
        """Workers that ended while the run goes on: the run stops, as a failed mapping stops it."""
        if self._stopping:
            return []
        return [
            f"worker process {process.pid} exited with {process.returncode}"
            for process in self.processes
            if process.poll() is not None
        ]

    def rebalance(self) -> None:
        self._signal(signal.SIGUSR1)

    def request_stop(self) -> None:
        self._stopping = True
        self._signal(signal.SIGTERM)

    def stop(self) -> None:
        self.request_stop()
        for process in self.processes:
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _signal(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)


def start_together(mappings: LocalMappings, processes: int, hold: threading.Event) -> threading.Thread:
    """Sets `hold` once each mapping's group has `processes` times its pollers as members, settled
    (or after START_TOGETHER_SECONDS, or at once where the broker cannot describe groups)."""

    def wait() -> None:
        try:
            _wait_for_members(mappings, processes, time.monotonic() + START_TOGETHER_SECONDS)
        except Exception as error:  # a broker without DescribeGroups: start now
            log.info("not waiting for the other processes to join: %s", error)
        finally:
            hold.set()

    thread = threading.Thread(target=wait, name="esm-start-together", daemon=True)
    thread.start()
    return thread


def _wait_for_members(mappings: LocalMappings, processes: int, deadline: float) -> None:
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    if not mappings.pollers:
        return
    wanted = {m.config.consumer_group: processes * m.poller_count for m in mappings.pollers}
    admin = AdminClient({**mappings.pollers[0].kafka_settings, "log_level": 0})
    while time.monotonic() < deadline:
        described = admin.describe_consumer_groups(sorted(wanted), request_timeout=5)
        settled = [
            group
            for group, future in described.items()
            if (found := future.result(10)).state == ConsumerGroupState.STABLE and len(found.members) >= wanted[group]
        ]
        if len(settled) == len(wanted):
            return
        time.sleep(0.05)
    log.warning("the other processes did not join every group within %.0f s; going on", START_TOGETHER_SECONDS)
