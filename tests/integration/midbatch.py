"""A transport that does something to Redis half-way through a batch: kill it, drop its clients,
flush its scripts. The tests then check what the retry makes of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cachesync.plan import Call
from cachesync.transport import Batch, Transport
from cachesync.writer import BatchWriter


class MidBatchTransport(Transport):
    """Sends the first half of a batch's calls and reads their replies, runs `halfway()` once, then
    sends the rest. The writer streams a batch in chunks: the first chunk of two calls or more is
    cut in half, or else the batch is cut between two chunks."""

    def __init__(self, halfway: Callable[[], Any], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.halfway, self.done = halfway, False

    def submit(self, batch: Batch, calls: list[Call]) -> list[int]:
        if self.done or (not batch.calls and len(calls) < 2):
            return super().submit(batch, calls)
        self.done = True
        half = 0 if batch.calls else len(calls) // 2
        read = super().submit(batch, calls[:half]) if half else []
        unread, batch.unread = batch.unread, []
        read += self._read_all(batch, unread)  # the first half answered before `halfway`
        self.halfway()
        return read + super().submit(batch, calls[half:])


def mid_batch_writer(halfway: Callable[[], Any], client: Any, script_batch_size: int, **options: Any) -> BatchWriter:
    return BatchWriter(client, script_batch_size, transport=MidBatchTransport(halfway, client, **options))
