"""Upper bounds that follow from the configuration, for tests that a failure comes in time.

Not speed targets: a bound is the longest the configured timeouts and retries allow, and a
test allows a generous multiple of it for a busy machine. What it catches is a failure that
does not follow the configuration at all: a timeout left out, retries without end, a backoff
far beyond its cap.
"""

from __future__ import annotations

from cachesync.config import Settings

BUSY_MACHINE_FACTOR = 3.0
FIXED_COSTS_S = 1.0  # the code around the calls (logging, metrics, a first import), however slow the machine
REDIS_BACKOFF_CAP_S = 0.5  # cachesync.connection: ExponentialBackoff(cap=0.5) between attempts


def redis_command_bound(settings: Settings, commands: int = 1) -> float:
    """The longest `commands` Redis commands may take against a server that does not answer:
    each attempt (the first and `retries` more) waits for a connection and for a reply, with the
    capped backoff between attempts."""
    attempts = 1 + settings.retries
    per_command = (
        attempts * (settings.connect_timeout + settings.socket_timeout) + settings.retries * REDIS_BACKOFF_CAP_S
    )
    return commands * per_command


def assert_within(elapsed: float, bound: float, what: str) -> None:
    allowed = BUSY_MACHINE_FACTOR * bound + FIXED_COSTS_S
    assert elapsed <= allowed, (
        f"{what} took {elapsed:.2f} s; the configuration allows {bound:.2f} s ({allowed:.2f} s here)"
    )
