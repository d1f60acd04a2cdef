"""Live resharding of a local Redis Cluster while a workload runs, for fault tests.

Slots move the way `redis-cli --cluster reshard` moves them (CLUSTER SETSLOT
IMPORTING on the target and MIGRATING on the source, MIGRATE of the slot's
keys, SETSLOT NODE on the target, then on the source and the others), but in
small steps with the workload let through between them, so it meets every
half-way state: a slot migrating with all its keys still on the source, with
some of them moved (multi-key commands get TRYAGAIN, missing keys ASK), with
all of them moved, and owned by the target while the source still migrates it.

    progress = Progress()                       # the workload calls begin() and tick() around each batch
    resharder = Resharder(cluster.nodes, pace=progress.wait_next)
    resharder.move_slot(slot, target)           # key by key, a batch between steps
    resharder.move_slots(range(0, 500), target) # a block of slots
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from devkit.servers import ServerProcess

MIGRATE_TIMEOUT_MS = 5000


class Stopped(Exception):
    """The workload stopped before the resharding finished."""


class Progress:
    """What the workload has done so far; the resharder waits for it between its own steps.
    The workload calls `begin()` before each batch and `tick()` after it, however it ended."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.started = 0
        self.count = 0  # batches ended
        self.stopped = False

    def begin(self) -> None:
        with self._changed:
            self.started += 1
            self._changed.notify_all()

    def tick(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def stop(self) -> None:
        with self._changed:
            self.stopped = True
            self._changed.notify_all()

    def wait_next(self, timeout: float = 60.0, grace: float = 0.5) -> None:
        """Until the workload has run a batch since the call: the one under way, else the next to
        start; until it ends or has run on for `grace` seconds, since a batch may be waiting for the
        migration itself to go on (TRYAGAIN while a slot's keys are split between two nodes).
        Stopped if the workload ended."""
        with self._changed:
            if self.started == self.count:  # between batches: the next one must start
                mark = self.started
                if not self._changed.wait_for(lambda: self.started > mark or self.stopped, timeout):
                    raise TimeoutError(f"the workload started no batch in {timeout}s")
            running = self.started
            self._changed.wait_for(lambda: self.count >= running or self.stopped, grace)
            if self.stopped:
                raise Stopped


@dataclass
class Resharder:
    nodes: list[ServerProcess]  # the cluster's primaries
    pace: Callable[[], None] = lambda: None  # called between steps
    keys_moved: int = 0
    slots_moved: int = 0
    paused_half_way: int = 0  # how many times the workload ran while a slot was mid-migration
    _ids: dict[int, str] = field(default_factory=dict)

    def node_id(self, node: ServerProcess) -> str:
        if node.port not in self._ids:
            self._ids[node.port] = str(node.command("CLUSTER", "MYID"))
        return self._ids[node.port]

    def owner(self, slot: int) -> ServerProcess:
        """The primary that serves `slot`, as the first node sees it (every node agrees between moves)."""
        for start, end, primary, *_ in self.nodes[0].command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return next(node for node in self.nodes if self.node_id(node) == primary[2])
        raise LookupError(f"no node serves slot {slot}")

    def move_slot(self, slot: int, target: ServerProcess, keys_per_step: int = 1) -> None:
        """Move one slot to `target`, `keys_per_step` keys per MIGRATE, the workload let through
        after every step."""
        self.move_slots([slot], target, keys_per_step)

    def move_slots(self, slots: Iterable[int], target: ServerProcess, keys_per_step: int = 10) -> None:
        """Move slots to `target` together: all of them migrating at once, their keys moved
        slot by slot, `keys_per_step` at a time, then all of them handed over."""
        by_source: dict[int, list[int]] = {}
        sources: dict[int, ServerProcess] = {}
        for slot in slots:
            source = self.owner(slot)
            if source is not target:
                by_source.setdefault(source.port, []).append(slot)
                sources[source.port] = source
        for port, moving in by_source.items():
            self._move(sources[port], target, moving, keys_per_step)

    def _move(self, source: ServerProcess, target: ServerProcess, slots: list[int], keys_per_step: int) -> None:
        self.begin(source, target, slots)
        self._let_through()  # migrating, every key still on the source
        for slot in slots:
            while names := source.command("CLUSTER", "GETKEYSINSLOT", slot, keys_per_step):
                self.move_keys(source, target, names)
                self._let_through()  # some keys moved, perhaps all
        self.hand_over(target, slots, let_through=True)

    def begin(self, source: ServerProcess, target: ServerProcess, slots: list[int]) -> None:
        """The slots start moving: IMPORTING on the target, MIGRATING on the source."""
        for slot in slots:
            target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
            source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))

    def move_keys(self, source: ServerProcess, target: ServerProcess, names: list[str]) -> None:
        """These keys (of migrating slots) move to the target (MIGRATE, atomic per call)."""
        source.command("MIGRATE", "127.0.0.1", target.port, "", 0, MIGRATE_TIMEOUT_MS, "KEYS", *names)
        self.keys_moved += len(names)

    def hand_over(self, target: ServerProcess, slots: list[int], let_through: bool = False) -> None:
        """The target owns the slots (SETSLOT NODE), then every other node learns it; with
        `let_through`, the workload runs once in between, the source still migrating them."""
        for slot in slots:
            target.command("CLUSTER", "SETSLOT", slot, "NODE", self.node_id(target))
        if let_through:
            self._let_through()
        for node in self.nodes:
            if node is not target:
                for slot in slots:
                    node.command("CLUSTER", "SETSLOT", slot, "NODE", self.node_id(target))
        self.slots_moved += len(slots)

    def _let_through(self) -> None:
        self.pace()
        self.paused_half_way += 1
