"""A writer that does something to Redis half-way through a batch: kill it, drop its clients,
flush its scripts. The tests then check what the retry makes of it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis

from cachesync.writer import BatchWriter, Pending, _Call


class MidBatchWriter(BatchWriter):
    """Runs `halfway()` once the server at `url` has run half of the batch's script calls."""

    def __init__(self, url: str, halfway: Callable[[], Any], *args: Any):
        super().__init__(*args)
        self.url, self.halfway = url, halfway

    def _calls(
        self, items: Iterable[tuple[int, Pending]], offsets_key: str, slot: int | None = None
    ) -> Iterator[_Call]:
        calls = list(super()._calls(items, offsets_key, slot))
        yield from calls[: len(calls) // 2]
        watcher = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while evals(watcher) < len(calls) // 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        self.halfway()
        yield from calls[len(calls) // 2 :]


def evals(client: redis.Redis) -> int:
    """EVAL calls the server has run since its stats were last reset."""
    return int(client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0))
