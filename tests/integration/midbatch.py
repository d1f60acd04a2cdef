"""A transport that does something to Redis half-way through a batch: kill it, drop its clients,
flush its scripts. The tests then check what the retry makes of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cachesync.plan import Call
from cachesync.transport import Transport
from cachesync.writer import BatchWriter


class MidBatchTransport(Transport):
    """Sends the first half of a batch's calls, runs `halfway()` once, then sends the rest."""

    def __init__(self, halfway: Callable[[], Any], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.halfway, self.done = halfway, False

    def send(self, calls: list[Call], deadline: float) -> list[Any]:
        if self.done or len(calls) < 2:
            return super().send(calls, deadline)
        self.done = True
        half = len(calls) // 2
        first = super().send(calls[:half], deadline)
        self.halfway()
        return first + super().send(calls[half:], deadline)


def mid_batch_writer(halfway: Callable[[], Any], client: Any, script_batch_size: int, **options: Any) -> BatchWriter:
    return BatchWriter(client, script_batch_size, transport=MidBatchTransport(halfway, client, **options))
